"""ONNX -> minifw: models exported by PyTorch (TorchScript-based and dynamo-based exporters,
default and newer opset) load as Sequentials equal to torch within 1e-5, run on every
portable backend, fine-tune with fit and save again; anything outside the supported chains
is refused, before any weight is read, naming the first node it cannot take."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import minifw as mf

torch = pytest.importorskip("torch", reason="torch is not installed: no models to import")
onnx = pytest.importorskip("onnx", reason="onnx is not installed (torch.onnx.export needs it)")
helper = onnx.helper
TP = onnx.TensorProto

EXPORTERS = ["torchscript", "dynamo"]
OPSETS = [None, 23]  # torch's default, and a newer one


def _has_onnxscript() -> bool:
    try:
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
        warnings.simplefilter("ignore")
        yield


def torch_export(
    module: Any, sample: tuple[int, ...], path: Path, exporter: str, opset: int | None, **kw: Any
) -> Path:
    """``module`` exported by torch.onnx.export with a dynamic batch axis."""
    if exporter == "dynamo" and not _has_onnxscript():
        pytest.skip("torch.onnx.export(dynamo=True) needs onnxscript, which is not installed")
    x = torch.randn(2, *sample)
    args: dict[str, Any] = {
        "input_names": ["x"],
        "output_names": ["y"],
        "dynamic_axes": {"x": {0: "N"}, "y": {0: "N"}},
        "dynamo": exporter == "dynamo",
        **kw,
    }
    if opset is not None:
        args["opset_version"] = opset
    with _quiet():
        torch.onnx.export(module.eval(), (x,), str(path), **args)
    return path


def _torch_out(module: Any, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module.eval()(torch.from_numpy(x)).numpy()  # type: ignore[no-any-return]


def _mlps() -> dict[str, tuple[Any, tuple[int, ...]]]:
    torch.manual_seed(0)
    nn = torch.nn
    return {
        "linear-relu-softmax": (
            nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10), nn.Softmax(dim=1)),
            (784,),
        ),
        "flatten-sigmoid-tanh": (
            nn.Sequential(
                nn.Flatten(),
                nn.Linear(784, 32),
                nn.Sigmoid(),
                nn.Linear(32, 16),
                nn.Tanh(),
                nn.Linear(16, 10),
            ),
            (1, 28, 28),
        ),
    }


class ViewNet(torch.nn.Module):  # type: ignore[misc,name-defined]
    """``x.view(x.size(0), -1)``: the Shape/Gather/Unsqueeze/Concat/Reshape pattern."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(784, 20)
        self.fc2 = torch.nn.Linear(20, 10)

    def forward(self, x: Any) -> Any:
        x = x.view(x.size(0), -1)
        return torch.softmax(self.fc2(torch.relu(self.fc1(x))), dim=-1)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("name", [*_mlps(), "view"])
def test_pytorch_mlps_import_equal_to_torch(
    tmp_path: Path, exporter: str, opset: int | None, name: str
) -> None:
    module, sample = (ViewNet(), (1, 28, 28)) if name == "view" else _mlps()[name]
    path = torch_export(module, sample, tmp_path / "m.onnx", exporter, opset)
    model = mf.load(path)
    assert isinstance(model, mf.Sequential)
    x = np.random.default_rng(0).standard_normal((100, *sample)).astype(np.float32)
    np.testing.assert_allclose(model(x), _torch_out(module, x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model(x[:1]), _torch_out(module, x[:1]), rtol=1e-5, atol=1e-5)
    dense = [m for m in model if isinstance(m, mf.Dense)]
    linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    for d, lin in zip(dense, linears, strict=True):  # PyTorch's (out, in) transposed
        assert np.array_equal(d.weight, lin.weight.detach().numpy().T)


def test_pytorch_mlp_on_fashion_mnist(tmp_path: Path, data_dir: Path) -> None:
    from minifw import datasets

    x, _ = datasets.load_fashion_mnist("test", data_dir=data_dir, download=False)
    x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    for name, (module, sample) in _mlps().items():
        for exporter in EXPORTERS:
            path = torch_export(module, sample, tmp_path / f"{name}.onnx", exporter, None)
            model = mf.load(path)
            xs = x.reshape(len(x), *sample)
            np.testing.assert_allclose(model(xs), _torch_out(module, xs), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_imported_model_runs_everywhere_fine_tunes_and_saves_again(
    tmp_path: Path, exporter: str, backend_name: str
) -> None:
    module, sample = _mlps()["linear-relu-softmax"]
    path = torch_export(module, sample, tmp_path / "m.onnx", exporter, None)
    model = mf.load(path, backend=backend_name)
    assert model.backend.name == backend_name
    rng = np.random.default_rng(1)
    x = rng.random((64, 784), dtype=np.float32)
    np.testing.assert_allclose(mf.to_numpy(model(x)), _torch_out(module, x), rtol=1e-5, atol=1e-5)
    y = rng.integers(0, 10, 64)
    before = mf.to_numpy(model.state_dict()["0.weight"]).copy()
    model.fit(x, y, epochs=1, batch_size=16, progress=False)
    assert not np.array_equal(mf.to_numpy(model.state_dict()["0.weight"]), before)
    model.save(tmp_path / "tuned.npz")
    again = mf.load(tmp_path / "tuned.npz")
    assert np.array_equal(mf.to_numpy(again(x)), mf.to_numpy(model.to("numpy")(x)))
    pytest.importorskip("onnxruntime")
    model.save(tmp_path / "tuned.onnx")
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / "tuned.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"input": x})[0], model(x), rtol=1e-5, atol=1e-6)


def test_external_data_beside_the_model_loads(tmp_path: Path) -> None:
    module, sample = _mlps()["linear-relu-softmax"]
    path = tmp_path / "m.onnx"
    proto = _proto_of(module, sample, tmp_path)
    onnx.save_model(
        proto, str(path), save_as_external_data=True, location="m.onnx.data", size_threshold=0
    )
    assert (tmp_path / "m.onnx.data").is_file()
    x = np.random.default_rng(2).random((10, 784), dtype=np.float32)
    np.testing.assert_allclose(mf.load(path)(x), _torch_out(module, x), rtol=1e-5, atol=1e-5)
    sub = tmp_path / "weights"
    sub.mkdir()
    onnx.save_model(
        proto,
        str(tmp_path / "n.onnx"),
        save_as_external_data=True,
        location="weights/n.bin",
        size_threshold=0,
    )
    np.testing.assert_allclose(
        mf.load(tmp_path / "n.onnx")(x), _torch_out(module, x), rtol=1e-5, atol=1e-5
    )
    with pytest.raises(mf.FormatError, match="external"):
        mf.onnx.loads(path.read_bytes())


def _proto_of(module: Any, sample: tuple[int, ...], tmp: Path) -> Any:
    p = torch_export(module, sample, tmp / "_tmp.onnx", "torchscript", None)
    proto = onnx.load(str(p))
    p.unlink()
    return proto


def test_import_needs_neither_onnx_nor_onnxruntime(tmp_path: Path) -> None:
    module, sample = _mlps()["linear-relu-softmax"]
    path = torch_export(module, sample, tmp_path / "m.onnx", "torchscript", None)
    x = np.random.default_rng(3).random((4, 784), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    code = (
        "import sys\n"
        "for m in ('onnx', 'onnxruntime', 'google.protobuf', 'google', 'torch'):\n"
        "    sys.modules[m] = None\n"
        "import numpy as np, minifw as mf\n"
        f"m = mf.load({str(path)!r})\n"
        f"print(m(np.load({str(tmp_path / 'x.npy')!r})).tolist())\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = np.array(eval(r.stdout))
    np.testing.assert_allclose(got, _torch_out(module, x), rtol=1e-5, atol=1e-5)


# -- refusals ---------------------------------------------------------------------------------


def _vi(name: str, dims: list[Any], t: int = TP.FLOAT) -> Any:
    return helper.make_tensor_value_info(name, t, dims)


def _write(
    tmp: Path,
    nodes: list[Any],
    inits: list[Any],
    *,
    out_dims: Any = None,
    inputs: list[Any] | None = None,
    outputs: list[Any] | None = None,
    opset: int = 17,
) -> Path:
    g = helper.make_graph(
        nodes,
        "g",
        inputs or [_vi("x", ["N", 4])],
        outputs or [_vi("y", out_dims or ["N", 3])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    path = tmp / "g.onnx"
    path.write_bytes(m.SerializeToString())
    return path


def _w(name: str, shape: tuple[int, ...], poison: bool = False) -> Any:
    """An initializer; ``poison``: raw data of the wrong length, so reading it would fail."""
    t = onnx.numpy_helper.from_array(np.ones(shape, np.float32), name)
    if poison:
        t.raw_data = b"\x00" * 3
    return t


def _refused(path: Path, *needles: str) -> str:
    with pytest.raises(mf.FormatError) as e:
        mf.load(path)
    msg = str(e.value)
    for n in needles:
        assert n in msg, msg
    return msg


def test_unsupported_op_is_named_with_what_is_supported(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Gemm", ["x", "W"], ["h"], name="fc"),
        helper.make_node("LeakyRelu", ["h"], ["y"], name="act"),
    ]
    msg = _refused(
        _write(tmp_path, nodes, [_w("W", (4, 3), poison=True)]),
        "node 1 (LeakyRelu 'act')",
        "'LeakyRelu' is not supported",
        "Gemm",
        "Relu",
    )
    assert "raw_data" not in msg  # refused before any weight was read


def test_branch_is_refused(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="r"),
        helper.make_node("Sigmoid", ["x"], ["b"], name="s"),
        helper.make_node("Gemm", ["a", "W"], ["y"], name="fc"),
    ]
    _refused(
        _write(tmp_path, nodes, [_w("W", (4, 3), poison=True)]), "node 1 (Sigmoid 's')", "branch"
    )
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="r"),
        helper.make_node("Add", ["a", "x"], ["b"], name="join"),
        helper.make_node("Gemm", ["b", "W"], ["y"], name="fc"),
    ]
    _refused(_write(tmp_path, nodes, [_w("W", (4, 3))]), "node 1 (Add 'join')", "branch")


def test_non_constant_weight_is_refused(tmp_path: Path) -> None:
    nodes = [helper.make_node("MatMul", ["x", "w_in"], ["y"], name="mm")]
    path = _write(tmp_path, nodes, [], inputs=[_vi("x", ["N", 4]), _vi("w_in", [4, 3])])
    _refused(path, "2 inputs")
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="r"),
        helper.make_node("Shape", ["x"], ["s"], name="sh"),
        helper.make_node("Cast", ["s"], ["sf"], name="c", to=TP.FLOAT),
        helper.make_node("Gemm", ["r", "sf"], ["y"], name="fc"),
    ]
    _refused(_write(tmp_path, nodes, []), "node 2 (Cast 'c')")


def test_dynamic_reshape_is_refused(tmp_path: Path) -> None:
    shape = onnx.numpy_helper.from_array(np.array([-1, 2], np.int64), "shape")
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["r"], name="rs"),
        helper.make_node("Gemm", ["r", "W"], ["y"], name="fc"),
    ]
    _refused(
        _write(tmp_path, nodes, [shape, _w("W", (2, 3), poison=True)]),
        "node 0 (Reshape 'rs')",
        "not a flatten of the batch",
    )


def test_other_refusals(tmp_path: Path) -> None:
    gemm = helper.make_node("Gemm", ["x", "W"], ["y"], name="fc", alpha=2.0)
    _refused(_write(tmp_path, [gemm], [_w("W", (4, 3))]), "alpha")
    gemm = helper.make_node("Gemm", ["x", "W"], ["y"], name="fc")
    _refused(_write(tmp_path, [gemm], [_w("W", (5, 3))]), "4 features")
    path = _write(tmp_path, [gemm], [_w("W", (4, 3))], inputs=[_vi("x", ["N", 4], TP.INT64)])
    _refused(path, "element type INT64")
    add = helper.make_node("Add", ["x", "b"], ["y"], name="plus")
    _refused(_write(tmp_path, [add], [_w("b", (4,))]), "bias right after a MatMul")
    sm = helper.make_node("Softmax", ["x"], ["y"], name="sm", axis=0)
    _refused(_write(tmp_path, [sm], [], opset=11), "before opset 13")
    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Relu", ["y"], ["z"])]
    _refused(_write(tmp_path, nodes, []), "not the end of the chain")
    _refused(_write(tmp_path, [helper.make_node("Relu", ["x"], ["y"])], [], opset=26), "opset 26")
    custom = helper.make_node("Relu", ["x"], ["y"], domain="com.example")
    _refused(_write(tmp_path, [custom], []), "domain 'com.example'")


def test_accepted_hand_written_patterns(tmp_path: Path) -> None:
    """MatMul+Add, Gemm transB=1, Greater+Cast, Dropout, Identity, Flatten."""
    rng = np.random.default_rng(5)
    w1 = rng.standard_normal((4, 6)).astype(np.float32)
    b1 = rng.standard_normal(6).astype(np.float32)
    w2 = rng.standard_normal((3, 6)).astype(np.float32)  # (out, in): transB=1
    nh = onnx.numpy_helper
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], axis=1),
        helper.make_node("MatMul", ["f", "w1"], ["m"]),
        helper.make_node("Add", ["b1", "m"], ["a"]),
        helper.make_node("Greater", ["a", "zero"], ["g"]),
        helper.make_node("Cast", ["g"], ["s"], to=TP.FLOAT),
        helper.make_node("Dropout", ["s", "ratio"], ["d"]),
        helper.make_node("Identity", ["d"], ["i"]),
        helper.make_node("Gemm", ["i", "w2"], ["y"], transB=1),
    ]
    inits = [
        nh.from_array(w1, "w1"),
        nh.from_array(b1, "b1"),
        nh.from_array(w2, "w2"),
        nh.from_array(np.array(0, np.float32), "zero"),
        nh.from_array(np.array(0.5, np.float32), "ratio"),
    ]
    path = _write(tmp_path, nodes, inits, inputs=[_vi("x", ["N", 2, 2])])
    model = mf.load(path)
    assert [type(m).__name__ for m in model] == ["Flatten", "Dense", "Step", "Identity", "Dense"]
    x = rng.standard_normal((7, 2, 2)).astype(np.float32)
    want = (((x.reshape(7, 4) @ w1 + b1) > 0).astype(np.float32)) @ w2.T
    np.testing.assert_allclose(model(x), want, rtol=1e-6)
