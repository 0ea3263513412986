"""minifw -> ONNX: every built-in layer's mapping checked by onnx.checker (full check) and run
by ONNX Runtime against minifw (1e-5, float32, batch 1 and 1000); the round trip minifw ->
ONNX -> minifw gives the same bits; the custom-layer hook; clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import minifw as mf
from minifw import cli

onnx = pytest.importorskip("onnx", reason="the optional onnx extra is not installed")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")


def _run_ort(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]  # type: ignore[no-any-return]


def _mlp_models() -> dict[str, tuple[Any, tuple[int, ...]]]:
    """name -> (model, one sample's shape): every built-in MLP layer at least once."""
    return {
        "dense-sigmoid-softmax": (
            mf.Sequential(mf.Dense(12, 20), mf.Sigmoid(), mf.Dense(20, 5), mf.Softmax()),
            (12,),
        ),
        "relu-tanh-identity-nobias": (
            mf.Sequential(
                mf.Dense(12, 16, bias=False), mf.ReLU(), mf.Dense(16, 8), mf.Tanh(), mf.Identity()
            ),
            (12,),
        ),
        "step": (mf.Sequential(mf.Dense(12, 10), mf.Step(), mf.Dense(10, 3)), (12,)),
        "flatten-4d": (
            mf.Sequential(mf.Flatten(), mf.Dense(2 * 3 * 4, 6), mf.ReLU(), mf.Dense(6, 4)),
            (2, 3, 4),
        ),
        "dense-on-3d (MatMul+Add)": (
            mf.Sequential(mf.Dense(5, 7), mf.ReLU(), mf.Dense(7, 3), mf.Softmax(axis=1)),
            (4, 5),
        ),
        "nested sequential": (
            mf.Sequential(mf.Sequential(mf.Dense(12, 9), mf.ReLU()), mf.Dense(9, 2)),
            (12,),
        ),
    }


@pytest.mark.parametrize("name", list(_mlp_models()))
@pytest.mark.parametrize("opset", [17, 21])
def test_every_layer_matches_onnxruntime_at_batch_1_and_1000(
    tmp_path: Path, name: str, opset: int
) -> None:
    model, sample = _mlp_models()[name]
    for layer in model.modules():  # non-zero biases: a missing bias would show
        if isinstance(layer, mf.Dense) and layer.use_bias:
            layer.bias = np.linspace(-0.5, 0.5, layer.out_features, dtype=np.float32)
    path = tmp_path / "m.onnx"
    mf.onnx.export(model, path, opset=opset, input_shape=sample)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version == opset
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    rng = np.random.default_rng(0)
    for batch in (1, 1000):
        x = rng.standard_normal((batch, *sample)).astype(np.float32)
        np.testing.assert_allclose(_run_ort(path, x), model(x), rtol=1e-5, atol=1e-5)


def test_dense_is_gemm_on_2d_and_matmul_add_on_more_axes(tmp_path: Path) -> None:
    m = mf.Sequential(mf.Dense(3, 4), mf.ReLU())
    ops = [n.op_type for n in mf.onnx.to_model_proto(m).graph.node]
    assert ops == ["Gemm", "Relu"]
    gemm = mf.onnx.to_model_proto(m).graph.node[0]
    assert {a.name: a.i for a in gemm.attribute}["transB"] == 0  # minifw's (in, out) weight
    ops3 = [n.op_type for n in mf.onnx.to_model_proto(m, input_shape=(2, 3)).graph.node]
    assert ops3 == ["MatMul", "Add", "Relu"]
    step = [
        n.op_type
        for n in mf.onnx.to_model_proto(mf.Sequential(mf.Dense(3, 2), mf.Step())).graph.node
    ]
    assert step == ["Gemm", "Greater", "Cast"]


def test_float64_models_export_as_double(tmp_path: Path) -> None:
    m = mf.Sequential(mf.Dense(6, 5, dtype="float64"), mf.Tanh(), mf.Dense(5, 2, dtype="float64"))
    m.save(tmp_path / "m.onnx")
    x = np.random.default_rng(1).standard_normal((9, 6))
    np.testing.assert_allclose(_run_ort(tmp_path / "m.onnx", x), m(x), rtol=1e-12)
    back = mf.load(tmp_path / "m.onnx")
    assert back.dtype == "float64" and np.array_equal(back(x), m(x))


@pytest.mark.parametrize("name", list(_mlp_models()))
def test_round_trip_gives_the_same_bits(tmp_path: Path, name: str, backend_name: str) -> None:
    model, sample = _mlp_models()[name]
    path = tmp_path / "m.onnx"
    mf.onnx.export(model, path, input_shape=sample)
    back = mf.load(path, backend=backend_name)
    assert back.backend.name == backend_name
    x = np.random.default_rng(2).standard_normal((33, *sample)).astype(np.float32)
    with mf.backend.use(backend_name):
        model_b = model.to(backend_name)
        assert np.array_equal(mf.to_numpy(back(x)), mf.to_numpy(model_b(x)))
    assert [type(m).__name__ for m in back] == [
        type(m).__name__ for m in model.modules() if not isinstance(m, mf.Sequential)
    ]
    assert set(back.state_dict()) <= {f"{i}.{k}" for i in range(20) for k in ("weight", "bias")}
    for a, b in zip(
        [v for k, v in sorted(model.state_dict().items())],
        [v for k, v in sorted(back.state_dict().items())],
        strict=True,
    ):
        assert np.array_equal(a, b)


def test_save_by_extension_and_convert_command(tmp_path: Path, capsys: Any) -> None:
    m = mf.Sequential(mf.Dense(8, 4), mf.ReLU(), mf.Dense(4, 3), mf.Softmax())
    m.save(tmp_path / "m.npz")
    assert cli.main(["convert", str(tmp_path / "m.npz"), str(tmp_path / "m.onnx")]) == 0
    assert "wrote" in capsys.readouterr().out
    x = np.random.default_rng(3).random((5, 8), dtype=np.float32)
    np.testing.assert_allclose(_run_ort(tmp_path / "m.onnx", x), m(x), rtol=1e-5, atol=1e-6)
    assert cli.main(["convert", str(tmp_path / "m.onnx"), str(tmp_path / "back.npz")]) == 0
    assert np.array_equal(mf.load(tmp_path / "back.npz")(x), m(x))
    assert (
        cli.main(["convert", str(tmp_path / "m.npz"), str(tmp_path / "o.onnx"), "--opset", "19"])
        == 0
    )
    assert onnx.load(str(tmp_path / "o.onnx")).opset_import[0].version == 19
    # a model whose first layer does not tell its input shape: --input-shape
    f = mf.Sequential(mf.Flatten(), mf.Dense(12, 2))
    f.save(tmp_path / "f.npz")
    assert cli.main(["convert", str(tmp_path / "f.npz"), str(tmp_path / "f.onnx")]) == 2
    assert "--input-shape" in capsys.readouterr().err
    args = ["convert", str(tmp_path / "f.npz"), str(tmp_path / "f.onnx"), "--input-shape", "3,4"]
    assert cli.main(args) == 0
    assert not list(tmp_path.glob("*.tmp*"))


class Swish(mf.Module):
    """A custom layer with its own ONNX nodes (the documented hook)."""

    def forward(self, x: Any) -> Any:
        return x / (1 + self.xp.exp(-x))

    def to_onnx(self, ctx: mf.onnx.OnnxBuilder, x: str) -> str:
        return ctx.add_node("Mul", [x, ctx.add_node("Sigmoid", [x])])


class Scale(mf.Module):
    """A custom layer with a parameter, written as an initializer."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.add_parameter("s", np.arange(1, n + 1, dtype=np.float32))

    def forward(self, x: Any) -> Any:
        return x * self.s

    def to_onnx(self, ctx: mf.onnx.OnnxBuilder, x: str) -> str:
        return ctx.add_node("Mul", [x, ctx.add_initializer(self.s, "s")], "scaled")


class NoMapping(mf.Module):
    def forward(self, x: Any) -> Any:
        return x * 2


def test_custom_layer_provides_its_own_nodes(tmp_path: Path) -> None:
    m = mf.Sequential(mf.Dense(4, 3), Swish(), Scale(3), mf.Softmax())
    m.save(tmp_path / "c.onnx")
    ops = [n.op_type for n in onnx.load(str(tmp_path / "c.onnx")).graph.node]
    assert ops == ["Gemm", "Sigmoid", "Mul", "Mul", "Softmax"]
    x = np.random.default_rng(4).standard_normal((1000, 4)).astype(np.float32)
    np.testing.assert_allclose(_run_ort(tmp_path / "c.onnx", x), m(x), rtol=1e-5, atol=1e-6)


def test_custom_layer_without_mapping_is_named(tmp_path: Path) -> None:
    m = mf.Sequential(mf.Dense(4, 3), NoMapping())
    with pytest.raises(TypeError, match=r"layer 1 \(NoMapping\).*to_onnx"):
        m.save(tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_a_bad_custom_graph_is_caught_by_the_checker(tmp_path: Path) -> None:
    class Bad(mf.Module):
        def forward(self, x: Any) -> Any:
            return x

        def to_onnx(self, ctx: Any, x: str) -> str:
            return ctx.add_node("NoSuchOp", [x])

    with pytest.raises(mf.FormatError, match="not valid"):
        mf.onnx.export(mf.Sequential(mf.Dense(2, 2), Bad()), tmp_path / "b.onnx")


def test_bad_arguments() -> None:
    m = mf.Sequential(mf.Dense(2, 2))
    with pytest.raises(ValueError, match="opset"):
        mf.onnx.to_model_proto(m, opset=11)
    with pytest.raises(ValueError, match="input_shape"):
        mf.onnx.to_model_proto(mf.Sequential(mf.Flatten(), mf.Dense(4, 2)))
    with pytest.raises(ValueError, match="input_shape"):
        mf.onnx.to_model_proto(m, input_shape=(0,))
    with pytest.raises(TypeError, match="Module"):
        mf.onnx.to_model_proto("model")


def test_export_without_onnx_says_what_to_install(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['onnx'] = None\n"
        "import minifw as mf\n"
        "m = mf.Sequential(mf.Dense(2, 2))\n"
        "try:\n"
        f"    m.save({str(tmp_path / 'm.onnx')!r})\n"
        "except ImportError as e:\n"
        "    print('ERR', e)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert 'pip install "minifw[onnx]"' in r.stdout, r.stderr
