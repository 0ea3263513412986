"""ONNX and the convolution layers: export of Conv2D, MaxPool2D, AvgPool2D, GlobalAvgPool2D,
BatchNorm and Dropout checked against ONNX Runtime (1e-5, batch 1 and 1000) and round
tripped bit for bit; the book's SimpleConvNet and DeepConvNet and a BatchNorm/Dropout CNN,
written as torch.nn modules and exported by both PyTorch exporters, import equal to torch
(1e-5) on random inputs and on Fashion-MNIST test images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import minifw as mf

if not hasattr(mf, "Conv2D"):
    pytest.skip("this minifw has no convolution layers", allow_module_level=True)
onnx = pytest.importorskip("onnx", reason="the optional onnx extra is not installed")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
torch = pytest.importorskip("torch", reason="torch is not installed")

from test_onnx_import import EXPORTERS, OPSETS, _torch_out, torch_export  # noqa: E402

nn = torch.nn


def _run_ort(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]  # type: ignore[no-any-return]


def _bn(c: int) -> Any:
    bn = mf.BatchNorm(c, eps=1e-3, momentum=0.2)
    rng = np.random.default_rng(c)
    bn.weight = rng.uniform(0.5, 1.5, c).astype(np.float32)
    bn.bias = rng.standard_normal(c).astype(np.float32)
    bn.running_mean = rng.standard_normal(c).astype(np.float32)
    bn.running_var = rng.uniform(0.5, 2.0, c).astype(np.float32)
    return bn


def _minifw_cnns() -> dict[str, Any]:
    return {
        "conv-maxpool-dense": mf.Sequential(
            mf.Conv2D(2, 4, 3, stride=1, padding=1),
            mf.ReLU(),
            mf.MaxPool2D(2),
            mf.Flatten(),
            mf.Dense(4 * 6 * 6, 5),
            mf.Softmax(),
        ),
        "conv-stride-avgpool-pad": mf.Sequential(
            mf.Conv2D(2, 3, (3, 2), stride=(2, 1), padding=(1, 0), bias=False),
            mf.Tanh(),
            mf.AvgPool2D(3, stride=2, padding=1),
            mf.Flatten(),
            mf.Dense(3 * 3 * 6, 4),
        ),
        "conv-bn-gap-dropout": mf.Sequential(
            mf.Conv2D(2, 6, 3),
            _bn(6),
            mf.ReLU(),
            mf.GlobalAvgPool2D(),
            mf.Dropout(0.3),
            mf.Dense(6, 3),
            _bn(3),
            mf.Sigmoid(),
        ),
    }


@pytest.mark.parametrize("name", list(_minifw_cnns()))
@pytest.mark.parametrize("opset", [17, 21])
def test_conv_layers_match_onnxruntime_and_round_trip(
    tmp_path: Path, name: str, opset: int
) -> None:
    model = _minifw_cnns()[name]
    path = tmp_path / "c.onnx"
    mf.onnx.export(model, path, opset=opset, input_shape=(2, 12, 12))
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    rng = np.random.default_rng(0)
    for batch in (1, 1000):
        x = rng.standard_normal((batch, 2, 12, 12)).astype(np.float32)
        np.testing.assert_allclose(_run_ort(path, x), model(x), rtol=1e-5, atol=1e-5)
    back = mf.load(path)
    assert [type(m).__name__ for m in back] == [
        type(m).__name__ for m in model if not isinstance(m, mf.Dropout)
    ]
    x = rng.standard_normal((17, 2, 12, 12)).astype(np.float32)
    assert np.array_equal(back(x), model(x))
    bn_in = [m for m in model if isinstance(m, mf.BatchNorm)]
    bn_out = [m for m in back if isinstance(m, mf.BatchNorm)]
    for a, b in zip(bn_in, bn_out, strict=True):
        assert (a.eps, a.momentum) == (b.eps, b.momentum)


# -- PyTorch models ---------------------------------------------------------------------------


def simple_convnet() -> Any:
    """The book's SimpleConvNet (ch. 7): conv 30x5x5, ReLU, 2x2 max-pool, 100, ReLU, 10."""
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(1, 30, 5),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Flatten(),
        nn.Linear(30 * 12 * 12, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
        nn.Softmax(dim=1),
    )


class DeepConvNet(nn.Module):  # type: ignore[misc,name-defined]
    """The book's DeepConvNet (ch. 8), with x.view(x.size(0), -1) before the first Linear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        c = [1, 16, 16, 32, 32, 64, 64]
        pads = [1, 1, 1, 2, 1, 1]
        layers: list[Any] = []
        for i in range(6):
            layers += [nn.Conv2d(c[i], c[i + 1], 3, padding=pads[i]), nn.ReLU()]
            if i % 2 == 1:
                layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Linear(64 * 4 * 4, 50),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(50, 10),
            nn.Dropout(0.5),
            nn.Softmax(dim=1),
        )

    def forward(self, x: Any) -> Any:
        x = self.features(x)
        return self.head(x.view(x.size(0), -1))


def bn_cnn() -> Any:
    """Conv + BatchNorm2d (eval, trained statistics) + Dropout, average pools, a GAP head."""
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AvgPool2d(2, padding=1),
        nn.Dropout(0.25),
        nn.Conv2d(16, 32, 3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(32, 10),
    )
    with torch.no_grad():  # statistics as after training
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.eval()


TORCH_CNNS = {"simple_convnet": simple_convnet, "deep_convnet": DeepConvNet, "bn_cnn": bn_cnn}


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("name", list(TORCH_CNNS))
def test_pytorch_cnns_import_equal_to_torch(
    tmp_path: Path, exporter: str, opset: int | None, name: str
) -> None:
    module = TORCH_CNNS[name]().eval()
    path = torch_export(module, (1, 28, 28), tmp_path / "m.onnx", exporter, opset)
    model = mf.load(path)
    x = np.random.default_rng(0).random((100, 1, 28, 28), dtype=np.float32)
    np.testing.assert_allclose(model(x), _torch_out(module, x), rtol=1e-5, atol=1e-5)


def test_conv_batchnorm_pairs_stay_conv_and_batchnorm(tmp_path: Path) -> None:
    """With constant folding off, the TorchScript exporter keeps Conv + BatchNormalization:
    they import as Conv2D + BatchNorm (not folded), so fine-tuning trains both."""
    module = bn_cnn()
    path = torch_export(
        module, (1, 28, 28), tmp_path / "m.onnx", "torchscript", None, do_constant_folding=False
    )
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "BatchNormalization" in ops
    model = mf.load(path)
    names = [type(m).__name__ for m in model]
    assert names[:3] == ["Conv2D", "BatchNorm", "ReLU"] and names.count("BatchNorm") == 2
    x = np.random.default_rng(1).random((100, 1, 28, 28), dtype=np.float32)
    np.testing.assert_allclose(model(x), _torch_out(module, x), rtol=1e-5, atol=1e-5)
    y = np.random.default_rng(2).integers(0, 10, 100)
    model.fit(x, y, loss="cross_entropy", epochs=1, batch_size=25, progress=False)
    model.save(tmp_path / "tuned.onnx")
    np.testing.assert_allclose(_run_ort(tmp_path / "tuned.onnx", x), model(x), rtol=1e-5, atol=1e-5)


def test_pytorch_cnns_on_fashion_mnist(tmp_path: Path, data_dir: Path) -> None:
    from minifw import datasets

    x, _ = datasets.load_fashion_mnist("test", data_dir=data_dir, download=False)
    x = np.asarray(x, dtype=np.float32).reshape(-1, 1, 28, 28)[:2000]
    for name, make in TORCH_CNNS.items():
        module = make().eval()
        for exporter in EXPORTERS:
            path = torch_export(module, (1, 28, 28), tmp_path / f"{name}.onnx", exporter, None)
            got = mf.load(path).predict(x, batch_size=500)
            np.testing.assert_allclose(got, _torch_out(module, x), rtol=1e-5, atol=1e-5)


def test_conv_refusals(tmp_path: Path) -> None:
    helper = onnx.helper
    w = onnx.numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "W")
    for attrs, msg in [
        ({"group": 2}, "grouped"),
        ({"dilations": [2, 2]}, "dilation"),
        ({"pads": [1, 0, 0, 0]}, "same on both sides"),
        ({"auto_pad": "SAME_UPPER"}, "auto_pad"),
    ]:
        g = helper.make_graph(
            [helper.make_node("Conv", ["x", "W"], ["y"], name="c", **attrs)],
            "g",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 1, 8, 8])],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
            [w],
        )
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        (tmp_path / "c.onnx").write_bytes(m.SerializeToString())
        with pytest.raises(mf.FormatError, match=msg):
            mf.load(tmp_path / "c.onnx")
    g = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["y"], name="gap")],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [],
    )
    (tmp_path / "g.onnx").write_bytes(
        helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    )
    with pytest.raises(mf.FormatError, match="followed by a flatten"):
        mf.load(tmp_path / "g.onnx")
