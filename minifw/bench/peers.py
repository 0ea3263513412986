"""The peers minifw is measured against, each computing the same network from a
:class:`~minifw.bench.nets.Net`'s weights: the hand-written NumPy function of the reference
text, the bare GEMM floor, PyTorch eager, ``jax.jit`` and ONNX Runtime (with the ONNX graph
builder). ``torch_eager``, ``jax_jit`` and ``onnxruntime_cpu`` bind the input ``x`` in and
return ``(run, note)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from minifw._util import cores

from .nets import Net


def hand_written(net: Net) -> Callable[[np.ndarray], np.ndarray]:
    """The book's style ("Deep Learning from Scratch" ch. 3): plain NumPy, a new array for every step."""
    W1, W2, W3 = net.W
    b1, b2, b3 = net.b
    if net.act == "sigmoid":

        def act(a: np.ndarray) -> np.ndarray:
            return 1 / (1 + np.exp(-a))  # type: ignore[no-any-return]
    else:

        def act(a: np.ndarray) -> np.ndarray:
            return np.maximum(0, a)

    def softmax(a: np.ndarray) -> np.ndarray:
        e = np.exp(a - np.max(a, axis=-1, keepdims=True))
        return e / np.sum(e, axis=-1, keepdims=True)  # type: ignore[no-any-return]

    def predict(x: np.ndarray) -> np.ndarray:
        z1 = act(np.dot(x, W1) + b1)
        z2 = act(np.dot(z1, W2) + b2)
        return softmax(np.dot(z2, W3) + b3)

    return predict


def gemm_floor(net: Net, x: np.ndarray) -> Callable[[], Any]:
    """Only the three matmuls, into preallocated outputs: the hardware limit here."""
    W1, W2, W3 = net.W
    n = x.shape[0]
    o1, o2, o3 = (np.empty((n, w), np.float32) for w in net.sizes[1:])

    def run() -> np.ndarray:
        np.matmul(x, W1, out=o1)
        np.matmul(o1, W2, out=o2)
        return np.matmul(o2, W3, out=o3)

    return run


def torch_sequential(net: Net) -> Any:
    """The network as a ``torch.nn.Sequential`` in eval mode, on the CPU, with ``net``'s
    weights (torch stores ``Linear.weight`` as (out, in): the transpose of minifw's)."""
    import torch

    act = torch.nn.Sigmoid if net.act == "sigmoid" else torch.nn.ReLU
    mods: list[Any] = []
    for i in range(3):
        lin = torch.nn.Linear(net.sizes[i], net.sizes[i + 1])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(net.W[i].T)))
            lin.bias.copy_(torch.from_numpy(net.b[i]))
        mods += [lin, act()] if i < 2 else [lin, torch.nn.Softmax(dim=-1)]
    return torch.nn.Sequential(*mods).eval()


def torch_eager(net: Net, x: np.ndarray) -> tuple[Callable[[], Any], str]:
    """ "torch eager": the network as ``torch.nn`` modules, run under
    ``torch.inference_mode()`` on the CPU, on ``x`` as a tensor sharing its memory."""
    return torch_module_runner(torch_sequential(net), x)


def torch_module_runner(seq: Any, x: np.ndarray) -> tuple[Callable[[], Any], str]:
    """``seq`` (a ``torch.nn`` module) on ``x`` under ``torch.inference_mode()``, and the
    engine's description."""
    import torch

    xt = torch.from_numpy(x)

    def run() -> Any:
        with torch.inference_mode():
            return seq(xt)

    ver = f"torch {torch.__version__}, torch.nn modules, inference_mode, CPU"
    return run, f"{ver}, {torch.get_num_threads()} threads"


def jax_jit(net: Net, x: np.ndarray) -> tuple[Callable[[], Any], str]:
    """ "jax.jit": the forward pass (``jnp.dot``, bias add, activation, ``jax.nn.softmax``)
    compiled by ``jax.jit``, the weights passed as ``jnp`` arrays, ``x`` already on JAX's
    default device; compiled here, by one call. Each timed call waits for its result
    (``block_until_ready``): JAX dispatches asynchronously."""
    import jax
    import jax.numpy as jnp

    act = jax.nn.sigmoid if net.act == "sigmoid" else jax.nn.relu
    params = [(jnp.asarray(w), jnp.asarray(b)) for w, b in zip(net.W, net.b, strict=True)]

    @jax.jit
    def forward(params: list[tuple[Any, Any]], x: Any) -> Any:
        h = x
        for i, (w, b) in enumerate(params):
            h = jnp.dot(h, w) + b
            h = act(h) if i < len(params) - 1 else jax.nn.softmax(h, axis=-1)
        return h

    xj = jnp.asarray(x)

    def run() -> Any:
        return forward(params, xj).block_until_ready()

    run()  # compile (for this shape) before anything is timed
    return run, f"jax {jax.__version__}, jax.jit on {xj.devices().pop()}"


def onnx_model_bytes(net: Net) -> bytes:
    """The same network as an ONNX graph (MatMul, Add, Sigmoid/Relu, Softmax; opset 17)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    cur = "x"
    for i in range(3):
        inits += [
            numpy_helper.from_array(net.W[i], f"W{i}"),
            numpy_helper.from_array(net.b[i], f"b{i}"),
        ]
        nodes.append(helper.make_node("MatMul", [cur, f"W{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]))
        if i < 2:
            op = "Sigmoid" if net.act == "sigmoid" else "Relu"
            nodes.append(helper.make_node(op, [f"a{i}"], [f"h{i}"]))
            cur = f"h{i}"
        else:
            nodes.append(helper.make_node("Softmax", [f"a{i}"], ["y"], axis=-1))
    graph = helper.make_graph(
        nodes,
        f"minifw_bench_{net.name}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, net.sizes[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, net.sizes[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()  # type: ignore[no-any-return]


def onnxruntime_cpu(net: Net, x: np.ndarray) -> tuple[Callable[[], Any], str]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = cores()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(onnx_model_bytes(net), so, providers=["CPUExecutionProvider"])

    def run() -> np.ndarray:
        return sess.run(None, {"x": x})[0]  # type: ignore[no-any-return]

    return run, f"onnxruntime {ort.__version__}, CPU EP, {cores()} intra-op threads"
