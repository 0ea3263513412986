"""Conv2D, MaxPool2D, AvgPool2D, GlobalAvgPool2D as layers: finite differences and torch
autograd for backward, hypothesis properties, other engines, summary, save/load, errors."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import assert_namespace, simple_convnet
from hypothesis import given
from hypothesis import strategies as st

import minifw as mf

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_JAX = importlib.util.find_spec("jax") is not None


# -- finite differences -----------------------------------------------------------------------
def numeric_grads(
    layer: mf.Module, x: np.ndarray, g: np.ndarray, before: Callable[[], None] = lambda: None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Central differences of ``sum(layer(x) * g)`` with respect to x and each parameter."""
    eps = 1e-6

    def loss() -> float:
        before()
        return float(np.sum(layer._forward(x, False, True)[0] * g))

    def fd(a: np.ndarray) -> np.ndarray:
        out = np.zeros_like(a)
        it = np.nditer(a, flags=["multi_index"])
        for _ in it:
            i = it.multi_index
            old = a[i]
            a[i] = old + eps
            up = loss()
            a[i] = old - eps
            down = loss()
            a[i] = old
            out[i] = (up - down) / (2 * eps)
        return out

    dparams = {n: fd(layer.get_param(n)) for n in layer.param_names}
    return fd(x), dparams


def analytic_grads(
    layer: mf.Module, x: np.ndarray, g: np.ndarray, before: Callable[[], None] = lambda: None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    before()
    layer.train()
    layer.forward(x)
    dx = layer.backward(g)
    return dx, {n: layer.grads[n] for n in layer.param_names}


def check_layer(
    layer: mf.Module, x_shape: tuple[int, ...], seed: int = 0, ties: bool = False
) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape)
    layer.train()
    y = layer.forward(x)
    g = rng.standard_normal(y.shape)
    dx, dp = analytic_grads(layer, x, g)
    ndx, ndp = numeric_grads(layer, x, g)
    np.testing.assert_allclose(dx, ndx, rtol=1e-6, atol=1e-7)
    for n in dp:
        np.testing.assert_allclose(dp[n], ndp[n], rtol=1e-6, atol=1e-7, err_msg=n)


CONV_CASES = [
    # (C, F, kernel, stride, padding, input H, W)
    (2, 3, 3, 1, 0, 5, 5),
    (1, 2, 3, 2, 1, 7, 6),  # stride 2, padding, odd sizes
    (3, 2, (2, 3), (1, 2), (1, 0), 5, 7),  # non-square kernel, stride, padding
    (2, 2, (3, 1), 1, (0, 1), 4, 3),
    (1, 1, 1, 1, 0, 3, 3),
    (2, 3, 3, 3, 0, 6, 8),  # stride = kernel (disjoint windows)
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_gradients_by_finite_differences(case: tuple[Any, ...]) -> None:
    c, f, k, s, p, h, w = case
    layer = mf.Conv2D(c, f, k, s, p, dtype="float64")
    layer.bias = np.random.default_rng(1).standard_normal(f)
    check_layer(layer, (2, c, h, w))


def test_conv2d_without_bias_and_one_sample() -> None:
    layer = mf.Conv2D(2, 3, 3, padding=1, bias=False, dtype="float64")
    assert layer.param_names == ("weight",)
    check_layer(layer, (1, 2, 4, 5))
    x = np.random.default_rng(0).standard_normal((2, 4, 5))
    y1 = layer(x)
    assert y1.shape == (3, 4, 5)
    np.testing.assert_allclose(y1, layer(x[None])[0])
    layer.train()
    layer.forward(x)
    dx = layer.backward(np.ones((3, 4, 5)))
    assert dx.shape == (2, 4, 5)


def test_conv2d_backward_after_other_calls_on_the_thread() -> None:
    """Inference calls between a training forward and its backward (they use the same
    per-thread scratch buffers on NumPy), and a copy of the layer, still give the
    gradients of the forward's input."""
    import copy

    rng = np.random.default_rng(3)
    layer = mf.Conv2D(3, 4, 3, padding=1)
    x = rng.standard_normal((5, 3, 6, 7)).astype(np.float32)
    g = rng.standard_normal((5, 4, 6, 7)).astype(np.float32)
    b = mf.backend.get("numpy")
    ref_dx, ref_dw, ref_db = b.conv2d_backward(g, x, layer.weight, 1, 1)
    layer.train()
    layer.forward(x)
    # an eval-mode forward (as a predict would run it) uses the thread's scratch
    layer._forward(rng.standard_normal((2, 3, 6, 7)).astype(np.float32), False, False)
    twin = copy.deepcopy(layer)
    for m in (layer, twin):
        dx = m.backward(g)
        np.testing.assert_allclose(dx, ref_dx, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(m.grads["weight"], ref_dw, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(m.grads["bias"], ref_db, rtol=1e-5, atol=1e-5)


POOL_CASES = [
    (2, None, 0, (2, 2, 6, 6)),
    (3, 2, 1, (1, 2, 7, 5)),  # overlapping windows, padding, odd sizes
    ((2, 3), (1, 2), (1, 1), (2, 1, 5, 7)),  # non-square
    (2, 1, 0, (1, 2, 4, 5)),
]


@pytest.mark.parametrize("case", POOL_CASES)
@pytest.mark.parametrize("cls", [mf.MaxPool2D, mf.AvgPool2D])
def test_pool_gradients_by_finite_differences(cls: Any, case: tuple[Any, ...]) -> None:
    k, s, p, shape = case
    check_layer(cls(k, s, p), shape)


def test_global_avg_pool_gradients_by_finite_differences() -> None:
    check_layer(mf.GlobalAvgPool2D(), (2, 3, 4, 5))


def test_maxpool_ties_send_the_gradient_to_the_first_maximum() -> None:
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 0, 1] = x[0, 0, 1, 0] = 1.0  # a tie in the first window: (0, 1) wins
    layer = mf.MaxPool2D(2).train()
    layer.forward(x)
    dx = layer.backward(np.ones((1, 1, 2, 2)))
    assert dx[0, 0, 0, 1] == 1.0 and dx[0, 0, 1, 0] == 0.0
    assert dx.sum() == 4.0  # all-zero windows: their first element gets it
    assert dx[0, 0, 0, 2] == 1.0 and dx[0, 0, 2, 0] == 1.0 and dx[0, 0, 2, 2] == 1.0


# -- against torch autograd -------------------------------------------------------------------
torch_only = pytest.mark.skipif(not HAS_TORCH, reason="needs torch")


def _torch_grads(fn: Callable[..., Any], x: np.ndarray, g: np.ndarray, *params: np.ndarray) -> Any:
    import torch

    ts = [torch.tensor(a, requires_grad=True) for a in (x, *params)]
    y = fn(*ts)
    y.backward(torch.tensor(g))
    return y.detach().numpy(), [t.grad.numpy() for t in ts]


@torch_only
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_matches_torch_autograd(case: tuple[Any, ...]) -> None:
    import torch.nn.functional as F

    c, f, k, s, p, h, w = case
    rng = np.random.default_rng(2)
    layer = mf.Conv2D(c, f, k, s, p, dtype="float64").train()
    layer.bias = rng.standard_normal(f)
    x = rng.standard_normal((3, c, h, w))
    y = layer.forward(x)
    g = rng.standard_normal(y.shape)
    dx = layer.backward(g)
    ty, (tdx, tdw, tdb) = _torch_grads(
        lambda a, wt, bt: F.conv2d(a, wt, bt, stride=s, padding=p), x, g, layer.weight, layer.bias
    )
    np.testing.assert_allclose(y, ty, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, tdx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.grads["weight"], tdw, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.grads["bias"], tdb, rtol=1e-12, atol=1e-12)


@torch_only
@pytest.mark.parametrize("case", POOL_CASES)
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pools_match_torch_autograd(kind: str, case: tuple[Any, ...]) -> None:
    import torch.nn.functional as F

    k, s, p, shape = case
    rng = np.random.default_rng(3)
    x = rng.integers(-2, 3, shape).astype(np.float64)  # small integers: many ties
    layer = (mf.MaxPool2D if kind == "max" else mf.AvgPool2D)(k, s, p).train()
    y = layer.forward(x)
    g = rng.standard_normal(y.shape)
    dx = layer.backward(g)
    fn = F.max_pool2d if kind == "max" else F.avg_pool2d
    ty, (tdx,) = _torch_grads(lambda a: fn(a, k, s if s is not None else k, p), x, g)
    np.testing.assert_allclose(y, ty, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, tdx, rtol=1e-12, atol=1e-12)


@torch_only
def test_global_avg_pool_matches_torch_autograd() -> None:
    import torch.nn.functional as F

    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 5, 4))
    layer = mf.GlobalAvgPool2D().train()
    y = layer.forward(x)
    g = rng.standard_normal(y.shape)
    dx = layer.backward(g)
    ty, (tdx,) = _torch_grads(lambda a: F.adaptive_avg_pool2d(a, 1).flatten(1), x, g)
    np.testing.assert_allclose(y, ty, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, tdx, rtol=1e-12, atol=1e-12)


# -- properties -------------------------------------------------------------------------------
@given(
    n=st.integers(1, 3),
    c=st.integers(1, 4),
    f=st.integers(1, 4),
    h=st.integers(1, 5),
    w=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_conv_1x1_equals_dense_over_channels(
    n: int, c: int, f: int, h: int, w: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    conv = mf.Conv2D(c, f, 1, dtype="float64")
    conv.bias = rng.standard_normal(f)
    dense = mf.Dense(c, f, dtype="float64")
    dense.weight = conv.weight.reshape(f, c).T
    dense.bias = conv.bias
    x = rng.standard_normal((n, c, h, w))
    y = conv(x)
    y_dense = dense(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(y, y_dense, rtol=1e-12, atol=1e-12)


@given(n=st.integers(1, 6), seed=st.integers(0, 2**16), data=st.data())
def test_batch_invariance(n: int, seed: int, data: st.DataObject) -> None:
    """Each sample's eval-mode output does not depend on the rest of the batch."""
    k = data.draw(st.integers(1, 3), label="kernel")
    s = data.draw(st.integers(1, 2), label="stride")
    p = data.draw(st.integers(0, 1), label="padding")
    model = mf.Sequential(
        mf.Conv2D(2, 3, k, s, p, dtype="float64"),
        mf.BatchNorm(3, dtype="float64"),
        mf.ReLU(),
        mf.MaxPool2D(2, 1),
        mf.Dropout(0.3),
        mf.AvgPool2D(2, 1, 1),
        mf.GlobalAvgPool2D(),
        mf.Dense(3, 4, dtype="float64"),
        mf.Softmax(),
    )
    x = np.random.default_rng(seed).standard_normal((n, 2, 6, 7))
    whole = model.predict(x)
    one_by_one = np.concatenate([model.predict(x[i : i + 1]) for i in range(n)])
    np.testing.assert_allclose(whole, one_by_one, rtol=1e-12, atol=1e-14)


@given(
    seed=st.integers(0, 2**16),
    k=st.sampled_from([1, 2, 3, (2, 3)]),
    s=st.sampled_from([None, 1, 2]),
)
def test_maxpool_is_at_least_avgpool(seed: int, k: Any, s: Any) -> None:
    x = np.random.default_rng(seed).standard_normal((2, 3, 5, 6))
    assert np.all(mf.MaxPool2D(k, s)(x) >= mf.AvgPool2D(k, s)(x) - 1e-12)


def test_flatten_is_c_order_on_images() -> None:
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float64).reshape(2, 3, 4, 5)
    y = mf.Flatten()(x)
    np.testing.assert_array_equal(y, x.reshape(2, -1))
    assert y.shape == (2, 60)


# -- other engines ----------------------------------------------------------------------------
def _engines() -> list[Any]:
    out: list[Any] = ["array_api_strict"]
    out.append(pytest.param("torch", marks=torch_only))
    out.append(pytest.param("jax", marks=pytest.mark.skipif(not HAS_JAX, reason="needs jax")))
    return out


def _x64(name: str) -> bool:
    if name != "jax":
        return True
    import jax

    return bool(jax.config.jax_enable_x64)


def _cnn(dtype: str) -> mf.Sequential:
    return mf.Sequential(
        mf.Conv2D(2, 3, (3, 2), stride=(1, 2), padding=1, dtype=dtype),
        mf.BatchNorm(3, dtype=dtype),
        mf.ReLU(),
        mf.MaxPool2D(2, 1, 1),
        mf.AvgPool2D(2),
        mf.Flatten(),
        mf.Dense(3 * 3 * 2, 5, dtype=dtype),
        mf.Softmax(),
    )


@pytest.mark.parametrize("engine", _engines())
def test_engines_match_numpy(engine: str) -> None:
    dtype = "float64" if _x64(engine) else "float32"
    tol = 1e-10 if dtype == "float64" else 2e-4
    mf.seed(7)
    ref = _cnn(dtype)
    other = _cnn(dtype)
    other.load_state_dict(ref.state_dict())
    other.to(engine)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 2, 6, 7)).astype(dtype)
    g = rng.standard_normal((4, 5)).astype(dtype)
    y_ref = ref.predict(x)
    xb = other.backend.asarray(x)
    y = other(xb)
    assert_namespace(y, engine)
    np.testing.assert_allclose(mf.to_numpy(y), y_ref, rtol=tol, atol=tol)
    # training mode: output, input gradient and every parameter gradient
    ref.train()
    other.train()
    y_ref = ref.forward(x)
    y = other.forward(xb)
    np.testing.assert_allclose(mf.to_numpy(y), y_ref, rtol=tol, atol=tol)
    dx_ref = ref.backward(g)
    dx = other.backward(other.backend.asarray(g))
    assert_namespace(dx, engine)
    np.testing.assert_allclose(mf.to_numpy(dx), dx_ref, rtol=tol, atol=tol)
    for (key, m, n), (_, m2, n2) in zip(
        ref.named_parameter_slots(), other.named_parameter_slots(), strict=True
    ):
        assert_namespace(m2.grads[n2], engine)
        np.testing.assert_allclose(
            mf.to_numpy(m2.grads[n2]), m.grads[n], rtol=tol, atol=tol, err_msg=key
        )
    for key, v in ref.state_dict().items():  # running statistics moved the same way
        np.testing.assert_allclose(other.state_dict()[key], v, rtol=tol, atol=tol, err_msg=key)


def test_dask_inference_matches_numpy() -> None:
    pytest.importorskip("dask")
    import dask.array as da

    model = _cnn("float64")
    x = np.random.default_rng(0).standard_normal((10, 2, 6, 7))
    lazy = model.predict(da.from_array(x, chunks=(3, 2, 6, 7)))
    np.testing.assert_allclose(mf.to_numpy(lazy), model.predict(x), rtol=1e-12)


# -- summary, save/load, errors ---------------------------------------------------------------
def test_summary_shapes_and_counts() -> None:
    text = simple_convnet().summary(input_shape=(1, 28, 28), print_fn=lambda s: None)
    assert "Conv2D 1→30 5x5  (None, 30, 24, 24)      780" in text
    assert "MaxPool2D 2x2    (None, 30, 12, 12)        0" in text
    assert "(None, 4320)" in text
    assert "Total params: 433,890" in text
    # without an input shape: the channels are known, the sizes are not
    text = simple_convnet().summary(print_fn=lambda s: None)
    assert "(None, 30, None, None)" in text


def test_describe_repr_config() -> None:
    conv = mf.Conv2D(1, 30, 5)
    assert conv._describe() == "Conv2D 1→30 5x5"
    assert repr(conv) == "Conv2D(1, 30, kernel_size=(5, 5))"
    assert conv.get_config()["kernel_size"] == [5, 5]
    assert (
        repr(mf.MaxPool2D(3, 2, 1))
        == "MaxPool2D(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1))"
    )
    assert mf.AvgPool2D(2).get_config() == {
        "kernel_size": [2, 2],
        "stride": [2, 2],
        "padding": [0, 0],
    }
    decl = mf.Conv2D.declared_parameters(conv.get_config())
    assert decl == {"weight": ((30, 1, 5, 5), "float32"), "bias": ((30,), "float32")}


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_save_load_round_trip(tmp_path: Path, suffix: str) -> None:
    model = _cnn("float64")
    x = np.random.default_rng(0).standard_normal((8, 2, 6, 7))
    y = np.arange(8) % 5
    model.fit(x, y, epochs=2, batch_size=4, progress=False, seed=0)
    assert not np.allclose(model[1].running_mean, 0)
    path = tmp_path / f"m{suffix}"
    model.save(path)
    back = mf.load(path)
    assert [type(m) for m in back] == [type(m) for m in model]
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[k], v, err_msg=k)
    np.testing.assert_array_equal(back.predict(x), model.predict(x))


def test_to_and_back_keeps_everything() -> None:
    pytest.importorskip("torch")
    model = _cnn("float64")
    x = np.random.default_rng(0).standard_normal((3, 2, 6, 7))
    before = model.predict(x)
    model.to("torch").to("numpy")
    np.testing.assert_array_equal(model.predict(x), before)


def test_fit_evaluate_predict_on_a_convnet() -> None:
    rng = np.random.default_rng(0)
    y = np.arange(64) % 2
    x = (rng.standard_normal((64, 1, 8, 8)) + (y - 0.5)[:, None, None, None]).astype(np.float32)
    model = mf.Sequential(
        mf.Conv2D(1, 4, 3, padding=1),
        mf.BatchNorm(4),
        mf.ReLU(),
        mf.MaxPool2D(2),
        mf.Dropout(0.2),
        mf.Flatten(),
        mf.Dense(64, 2),
        mf.Softmax(),
    )
    hist = model.fit(x, y, epochs=15, batch_size=16, progress=False, seed=1, optimizer="adam")
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    res = model.evaluate(x, y)
    assert res["accuracy"] > 0.8
    assert model.predict(x).shape == (64, 2)


def test_errors_name_the_layer() -> None:
    model = mf.Sequential(mf.Conv2D(3, 4, 5), mf.MaxPool2D(2))
    with pytest.raises(
        mf.ShapeError, match=r"layer 0 \(Conv2D 3→4 5x5\) expects input \(N, 3, H, W\)"
    ):
        model.predict(np.zeros((1, 2, 8, 8), np.float32))
    with pytest.raises(
        mf.ShapeError, match=r"layer 0 \(Conv2D 3→4 5x5\): kernel \(5, 5\) is larger"
    ):
        model.predict(np.zeros((1, 3, 4, 8), np.float32))
    with pytest.raises(
        mf.ShapeError, match=r"layer 1 \(MaxPool2D 2x2\): kernel \(2, 2\) is larger"
    ):
        model.predict(np.zeros((1, 3, 5, 5), np.float32))
    with pytest.raises(mf.ShapeError, match=r"layer 0 \(Conv2D"):
        model.summary(input_shape=(2, 8, 8), print_fn=lambda s: None)
    with pytest.raises(mf.ShapeError, match="expects input"):
        mf.Conv2D(1, 2, 3)(np.zeros((4, 4), np.float32))
    with pytest.raises(mf.ShapeError, match="GlobalAvgPool2D"):
        mf.GlobalAvgPool2D()(np.zeros((2, 3), np.float32))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: mf.Conv2D(0, 2, 3), "in_channels must be a positive int"),
        (lambda: mf.Conv2D(1, 2, 0), "kernel_size must be a positive int"),
        (lambda: mf.Conv2D(1, 2, (3, -1)), "kernel_size"),
        (lambda: mf.Conv2D(1, 2, 3, stride=0), "stride must be a positive int"),
        (lambda: mf.Conv2D(1, 2, 3, padding=-1), "padding must be a non-negative int"),
        (lambda: mf.Conv2D(1, 2, 3.0), "kernel_size"),
        (lambda: mf.Conv2D(1, 2, 3, dtype="int8"), "dtype"),
        (lambda: mf.MaxPool2D(0), "kernel_size"),
        (lambda: mf.MaxPool2D(2, padding=2), "at most half the kernel"),
        (lambda: mf.AvgPool2D(2, stride=(1, 0)), "stride"),
    ],
)
def test_bad_configurations(make: Callable[[], Any], match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        make()
