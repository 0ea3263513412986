"""The convolutional cases of ``minifw bench``: the book's networks ("Deep Learning from
Scratch" ch. 7 and 8) with random float32 weights, inputs ``(N, 1, 28, 28)``:

* **C1** ``SimpleConvNet``: Conv 1→30 5x5, ReLU, MaxPool 2x2, Dense 4320→100, ReLU,
  Dense 100→10, softmax;
* **C2** ``DeepConvNet``: six 3x3 convs (16, 16, 32, 32, 64, 64 filters, paddings
  1, 1, 1, 2, 1, 1) each with ReLU, MaxPool 2x2 after the 2nd, 4th and 6th, Dense 1024→50,
  ReLU, Dropout(0.5), Dense 50→10, Dropout(0.5), softmax (Dropout: the identity at
  inference, in every engine).

Inference on minifw (``model(x)``, ``predict(x)``, NumPy) against PyTorch eager
(``torch.nn`` modules, ``inference_mode``, CPU) and ONNX Runtime (Conv, Relu, MaxPool,
Flatten, Gemm, Softmax built with ``onnx.helper``); the float64 reference is a plain NumPy
forward (``einsum`` over strided windows) on the first rows. Training: one epoch of a
conv-BN-ReLU-pool CNN (the network of ``examples/train_convnet.py``) on Fashion-MNIST,
batch 100, Adam 1e-3, against PyTorch from the same initial weights on the same batch order.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from minifw._util import cores

from .nets import MINIFW_REF
from .peers import torch_module_runner
from .timing import Engine, peer_engines

#: the CNN cases: name -> convs (in, out, kernel, padding, pool after), dense widths
CONV_NETWORKS: dict[str, dict[str, Any]] = {
    "C1": {
        "convs": ((1, 30, 5, 0, True),),
        "dense": (4320, 100, 10),
        "dropout": False,
        "batches": (1, 100, 10000),
        "title": "SimpleConvNet",
    },
    "C2": {
        "convs": (
            (1, 16, 3, 1, False),
            (16, 16, 3, 1, True),
            (16, 32, 3, 1, False),
            (32, 32, 3, 2, True),
            (32, 64, 3, 1, False),
            (64, 64, 3, 1, True),
        ),
        "dense": (1024, 50, 10),
        "dropout": True,
        "batches": (1, 100, 10000),
        "title": "DeepConvNet",
    },
}
CONV_SMOKE_BATCHES = {"C1": (1, 8), "C2": (1, 8)}
#: rows of the float64 reference output each configuration is checked on
REF_ROWS = 64
TRAIN_BATCH = 100
TRAIN_LR = 1e-3


class ConvNet:
    """Random float32 weights for one CNN case, shared by every engine."""

    input_shape = (1, 28, 28)

    def __init__(self, name: str, seed: int = 0) -> None:
        spec = CONV_NETWORKS[name]
        self.name = name
        self.convs: tuple[tuple[int, int, int, int, bool], ...] = spec["convs"]
        self.dense: tuple[int, ...] = spec["dense"]
        self.dropout: bool = spec["dropout"]
        self.title: str = spec["title"]
        rng = np.random.default_rng(seed)
        self.cw: list[np.ndarray] = []
        self.cb: list[np.ndarray] = []
        for c, f, k, _, _ in self.convs:
            std = np.sqrt(2.0 / (c * k * k))
            self.cw.append((rng.standard_normal((f, c, k, k)) * std).astype(np.float32))
            self.cb.append((rng.standard_normal(f) * 0.1).astype(np.float32))
        self.W: list[np.ndarray] = []
        self.b: list[np.ndarray] = []
        for k, n in zip(self.dense[:-1], self.dense[1:], strict=True):
            self.W.append((rng.standard_normal((k, n)) * np.sqrt(2.0 / k)).astype(np.float32))
            self.b.append((rng.standard_normal(n) * 0.1).astype(np.float32))
        # per-sample output shape of every conv (after its pool) for flops and memory
        self.shapes: list[tuple[tuple[int, int, int], tuple[int, int, int]]] = []
        h = 28
        for _, f, k, p, pool in self.convs:
            h = h + 2 * p - k + 1
            conv_out = (f, h, h)
            if pool:
                h //= 2
            self.shapes.append((conv_out, (f, h, h)))
        assert self.shapes[-1][1][0] * h * h == self.dense[0], name

    def describe(self) -> str:
        convs = " ".join(
            f"conv{f}x{k}" + (f"p{p}" if p else "") + ("+pool" if pool else "")
            for _, f, k, p, pool in self.convs
        )
        return f"{self.title}: {convs}, " + "-".join(map(str, self.dense)) + " relu/softmax"

    def flops(self, batch: int) -> int:
        per = sum(
            2 * c * k * k * out[0] * out[1] * out[2]
            for (c, _, k, _, _), (out, _) in zip(self.convs, self.shapes, strict=True)
        )
        per += sum(2 * a * b for a, b in zip(self.dense[:-1], self.dense[1:], strict=True))
        return batch * per

    def act_bytes(self, batch: int) -> list[int]:
        """Bytes of every layer's output at ``batch`` (float32): each conv (= its ReLU),
        each pool, each Dense."""
        sizes: list[int] = []
        for out, pooled in self.shapes:
            sizes.append(int(np.prod(out)))
            if pooled != out:
                sizes.append(int(np.prod(pooled)))
        sizes += list(self.dense[1:])
        return [batch * s * 4 for s in sizes]

    # -- the engines' networks ---------------------------------------------------------
    def minifw_model(self, backend: str = "numpy") -> Any:
        import minifw as mf

        with mf.backend.use(backend):
            layers: list[Any] = []
            for c, f, k, p, pool in self.convs:
                layers += [mf.Conv2D(c, f, k, padding=p), mf.ReLU()]
                if pool:
                    layers.append(mf.MaxPool2D(2))
            layers += [mf.Flatten(), mf.Dense(self.dense[0], self.dense[1]), mf.ReLU()]
            if self.dropout:
                layers.append(mf.Dropout(0.5))
            layers.append(mf.Dense(self.dense[1], self.dense[2]))
            if self.dropout:
                layers.append(mf.Dropout(0.5))
            layers.append(mf.Softmax())
            model = mf.Sequential(*layers)
        params = [(w, b) for w, b in zip(self.cw, self.cb, strict=True)]
        params += [(w, b) for w, b in zip(self.W, self.b, strict=True)]
        slots = [i for i, m in enumerate(model) if m.num_parameters()]
        model.load_state_dict(
            {
                f"{i}.{k}": v
                for i, (w, b) in zip(slots, params, strict=True)
                for k, v in (("weight", w), ("bias", b))
            }
        )
        return model

    def torch_sequential(self) -> Any:
        import torch

        nn = torch.nn
        mods: list[Any] = []
        for (c, f, k, p, pool), w, b in zip(self.convs, self.cw, self.cb, strict=True):
            conv: Any = nn.Conv2d(c, f, k, padding=p)
            with torch.no_grad():
                conv.weight.copy_(torch.from_numpy(w))
                conv.bias.copy_(torch.from_numpy(b))
            mods += [conv, nn.ReLU()]
            if pool:
                mods.append(nn.MaxPool2d(2))
        mods.append(nn.Flatten())
        for i, (w, b) in enumerate(zip(self.W, self.b, strict=True)):
            lin = nn.Linear(*w.shape)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))
                lin.bias.copy_(torch.from_numpy(b))
            mods.append(lin)
            if i == 0:
                mods.append(nn.ReLU())
            if self.dropout:
                mods.append(nn.Dropout(0.5))
        mods.append(nn.Softmax(dim=-1))
        return nn.Sequential(*mods).eval()

    def onnx_model_bytes(self) -> bytes:
        """The network as an ONNX graph: Conv, Relu, MaxPool, Flatten, Gemm, Softmax
        (opset 17; Dropout, the identity at inference, left out)."""
        from onnx import TensorProto, helper, numpy_helper

        nodes, inits = [], []
        cur = "x"
        for i, ((_, _, k, p, pool), w, b) in enumerate(
            zip(self.convs, self.cw, self.cb, strict=True)
        ):
            inits += [numpy_helper.from_array(w, f"cw{i}"), numpy_helper.from_array(b, f"cb{i}")]
            nodes.append(
                helper.make_node(
                    "Conv",
                    [cur, f"cw{i}", f"cb{i}"],
                    [f"c{i}"],
                    kernel_shape=[k, k],
                    pads=[p, p, p, p],
                    strides=[1, 1],
                )  # fmt: skip
            )
            nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
            cur = f"r{i}"
            if pool:
                nodes.append(
                    helper.make_node(
                        "MaxPool", [cur], [f"p{i}"], kernel_shape=[2, 2], strides=[2, 2]
                    )
                )
                cur = f"p{i}"
        nodes.append(helper.make_node("Flatten", [cur], ["flat"], axis=1))
        cur = "flat"
        for i, (w, b) in enumerate(zip(self.W, self.b, strict=True)):
            inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"b{i}")]
            nodes.append(helper.make_node("Gemm", [cur, f"W{i}", f"b{i}"], [f"g{i}"]))
            cur = f"g{i}"
            if i == 0:
                nodes.append(helper.make_node("Relu", [cur], ["h0"]))
                cur = "h0"
        nodes.append(helper.make_node("Softmax", [cur], ["y"], axis=-1))
        graph = helper.make_graph(
            nodes,
            f"minifw_bench_{self.name}",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1, 28, 28])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, self.dense[-1]])],
            inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        return model.SerializeToString()  # type: ignore[no-any-return]

    def reference(self, x: np.ndarray) -> np.ndarray:
        """The float64 output of the first :data:`REF_ROWS` rows of ``x``: plain NumPy
        (zero padding, ``einsum`` over the strided windows, reshaped max-pool)."""
        h = x[:REF_ROWS].astype(np.float64)
        for (_, _, k, p, pool), w, b in zip(self.convs, self.cw, self.cb, strict=True):
            h = np.pad(h, ((0, 0), (0, 0), (p, p), (p, p)))
            win = sliding_window_view(h, (k, k), axis=(2, 3))  # (N, C, OH, OW, k, k)
            h = np.einsum("nchwij,fcij->nfhw", win, w.astype(np.float64), optimize=True)
            h = np.maximum(h + b.astype(np.float64)[:, None, None], 0.0)
            if pool:
                n, c, hh, ww = h.shape
                h = h[:, :, : hh // 2 * 2, : ww // 2 * 2].reshape(n, c, hh // 2, 2, ww // 2, 2)
                h = h.max(axis=(3, 5))
        h = h.reshape(h.shape[0], -1)
        h = np.maximum(h @ self.W[0].astype(np.float64) + self.b[0], 0.0)
        z = h @ self.W[1].astype(np.float64) + self.b[1]
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


# -- engines ------------------------------------------------------------------------------------


def _torch_eager(net: ConvNet, x: np.ndarray) -> tuple[Callable[[], Any], str]:
    return torch_module_runner(net.torch_sequential(), x)


def _onnxruntime_cpu(net: ConvNet, x: np.ndarray) -> tuple[Callable[[], Any], str]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = cores()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(net.onnx_model_bytes(), so, providers=["CPUExecutionProvider"])

    def run() -> np.ndarray:
        return sess.run(None, {"x": x})[0]  # type: ignore[no-any-return]

    return run, f"onnxruntime {ort.__version__}, CPU EP, {cores()} intra-op threads"


CONV_PEERS: dict[str, Callable[[ConvNet, np.ndarray], tuple[Callable[[], Any], str]]] = {
    "torch eager": _torch_eager,
    "onnxruntime CPU": _onnxruntime_cpu,
}


def build_conv_engines(net: ConvNet, x: np.ndarray, notes: dict[str, str]) -> list[Engine]:
    """minifw (NumPy: ``model(x)`` and ``predict(x)``) and the peers, input bound in.
    minifw's other backends are not measured on the CNN cases."""
    model = net.minifw_model("numpy")
    engines = [
        Engine(MINIFW_REF, lambda: model(x), kind="minifw"),
        Engine("minifw numpy predict(x)", lambda: model.predict(x), kind="minifw"),
    ]
    notes.setdefault(
        "CNN cases (C1, C2)",
        "minifw on NumPy only (its other backends run the generic convolution, not measured)",
    )
    notes[f"minifw {net.name} convolutions"] = conv_paths(model)
    return engines + peer_engines(CONV_PEERS, net, x, notes)


def conv_paths(model: Any) -> str:
    """How minifw computes the model's convolutions in ``predict``, from
    ``mf.plan.explain``: how many on the compiled kernel (and which), the rest im2col +
    GEMM."""
    import minifw as mf

    text = mf.plan.explain(model)
    total = sum(isinstance(m, mf.Conv2D) for m in model)
    kernels = re.findall(r"\((\w+) kernel\)", text)
    if not kernels:
        return f"{total} of {total} im2col + GEMM (none on the compiled kernel)"
    return (
        f"{len(kernels)} of {total} on the compiled {kernels[0]} kernel, "
        f"{total - len(kernels)} im2col + GEMM"
    )


# -- training ----------------------------------------------------------------------------------


def train_model(seed: int = 0) -> Any:
    """The CNN of ``examples/train_convnet.py`` (conv-BN-ReLU-pool twice, Dense 1568→256,
    ReLU, Dropout(0.3), Dense 256→10, softmax), minifw's seeded initial weights."""
    import minifw as mf

    mf.seed(seed)
    return mf.Sequential(
        mf.Conv2D(1, 16, 3, padding=1), mf.BatchNorm(16), mf.ReLU(), mf.MaxPool2D(2),
        mf.Conv2D(16, 32, 3, padding=1), mf.BatchNorm(32), mf.ReLU(), mf.MaxPool2D(2),
        mf.Flatten(), mf.Dense(32 * 7 * 7, 256), mf.ReLU(), mf.Dropout(0.3),
        mf.Dense(256, 10), mf.Softmax(),
    )  # fmt: skip


def torch_twin(model: Any) -> Any:
    """``model`` (Conv2D, BatchNorm, ReLU, MaxPool2D, Flatten, Dense, Dropout, Softmax) as
    ``torch.nn`` modules with its current weights, ending in the logits."""
    import torch

    import minifw as mf

    nn = torch.nn
    mods: list[Any] = []
    for m in model:
        pairs: dict[str, Any] = {}
        if isinstance(m, mf.Conv2D):
            t: Any = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding)
            pairs = {"weight": m.weight, "bias": m.bias}
        elif isinstance(m, mf.BatchNorm):
            t = nn.BatchNorm2d(m.num_features, eps=m.eps, momentum=m.momentum)
            pairs = {k: getattr(m, k) for k in ("weight", "bias", "running_mean", "running_var")}
        elif isinstance(m, mf.Dense):
            t = nn.Linear(m.in_features, m.out_features)
            pairs = {"weight": mf.to_numpy(m.weight).T, "bias": m.bias}
        elif isinstance(m, mf.ReLU):
            t = nn.ReLU()
        elif isinstance(m, mf.MaxPool2D):
            t = nn.MaxPool2d(m.kernel_size, m.stride, m.padding)
        elif isinstance(m, mf.Flatten):
            t = nn.Flatten()
        elif isinstance(m, mf.Dropout):
            t = nn.Dropout(m.p)
        elif isinstance(m, mf.Softmax):
            continue  # CrossEntropyLoss takes the logits
        else:
            raise TypeError(f"no torch twin for {type(m).__name__}")
        with torch.no_grad():
            for k, v in pairs.items():
                getattr(t, k).copy_(torch.from_numpy(np.ascontiguousarray(mf.to_numpy(v))))
        mods.append(t)
    return nn.Sequential(*mods)


def _fashion(data_dir: Path | None, n: int | None) -> tuple[np.ndarray, np.ndarray, str]:
    f = None if data_dir is None else data_dir / "fashion-mnist"
    if f is not None and (f / "train-images-idx3-ubyte.gz").is_file():
        from minifw.datasets import load_fashion_mnist

        x, y = load_fashion_mnist("train", flatten=False, data_dir=f, download=False)
        x = x.reshape(-1, 1, 28, 28)
        what = "Fashion-MNIST train split"
    else:
        rng = np.random.default_rng(0)
        x = rng.random((60000, 1, 28, 28), dtype=np.float32)
        y = rng.integers(0, 10, 60000)
        what = "random data of Fashion-MNIST's shape"
    if n is not None and n < len(x):
        x, y, what = x[:n], y[:n], f"{what}, first {n} images"
    return x, y, what


def bench_cnn_training(data_dir: Path | None, epochs: int, samples: int | None) -> dict[str, Any]:
    """``epochs`` epochs of :func:`train_model` per engine (minifw ``fit``, PyTorch's usual
    loop), alternating, on the same batch order; median seconds per epoch and the ratio."""
    import minifw as mf

    x, y, what = _fashion(data_dir, samples)
    model = train_model(0)
    opt = mf.optim.Adam(lr=TRAIN_LR)
    res: dict[str, Any] = {
        "task": "Fashion-MNIST epoch, CNN conv16-BN-ReLU-pool, conv32-BN-ReLU-pool, "
        "Dense 1568-256 ReLU Dropout 0.3, Dense 256-10; batch 100, Adam lr 1e-3, float32",
        "data": what,
        "samples": int(len(x)),
        "minifw": {"seconds": [], "loss": []},
    }
    try:
        import torch
    except ImportError:
        torch = None  # type: ignore[assignment]
        res["torch"] = "not installed (pip install torch); skipped"
    if torch is not None:
        net = torch_twin(model)
        topt = torch.optim.Adam(net.parameters(), lr=TRAIN_LR)
        lossf = torch.nn.CrossEntropyLoss()
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        res["torch"] = {"seconds": [], "loss": [], "version": torch.__version__}
        res["torch_threads"] = torch.get_num_threads()
    for e in range(epochs):
        seed = 1000 + e
        t0 = time.perf_counter()
        h = model.fit(
            x, y, optimizer=opt, epochs=1, batch_size=TRAIN_BATCH, seed=seed, progress=False
        )
        res["minifw"]["seconds"].append(time.perf_counter() - t0)
        res["minifw"]["loss"].append(h.history["loss"][0])
        if torch is None:
            continue
        time.sleep(0.2)  # let the other library's threads stop spinning
        order = torch.from_numpy(np.random.default_rng(seed).permutation(len(x)))  # fit's
        net.train()
        t0 = time.perf_counter()
        total = 0.0
        for s in range(0, len(x), TRAIN_BATCH):
            idx = order[s : s + TRAIN_BATCH]
            xb, yb = xt.index_select(0, idx), yt.index_select(0, idx)
            topt.zero_grad(set_to_none=True)
            loss = lossf(net(xb), yb)
            loss.backward()
            topt.step()
            total += loss.item() * len(idx)
        res["torch"]["seconds"].append(time.perf_counter() - t0)
        res["torch"]["loss"].append(total / len(x))
        time.sleep(0.2)
    for k in ("minifw", "torch"):
        if isinstance(res.get(k), dict):
            res[k]["median_s"] = statistics.median(res[k]["seconds"])
    if isinstance(res.get("torch"), dict):
        res["ratio_minifw_over_torch"] = res["minifw"]["median_s"] / res["torch"]["median_s"]
        res["paired_ratio_minifw_over_torch"] = statistics.median(
            a / b for a, b in zip(res["minifw"]["seconds"], res["torch"]["seconds"], strict=True)
        )
    return res
