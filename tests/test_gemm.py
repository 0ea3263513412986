"""``x @ W + b`` as one GEMM with the bias filled in first (minifw.backend._gemm, used by the
NumPy backend's ``linear``): the same values as ``matmul`` + ``add``, the same bits in the
layers and the inference plan, and the fallback to ``matmul`` wherever that BLAS call does
not apply. No timings are asserted.

``addmm``, its self-check and its once-per-process lookup have no public path: these tests
call ``minifw.backend._gemm`` directly, and replace its cached lookup (``_funcs``, a ``Once``)
to run it again or to act as if NumPy had another BLAS."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_plan import layer_by_layer, models, naive

import minifw as mf
from minifw._util import Once
from minifw.backend import _gemm


def _lookup_again(monkeypatch: Any, build: Any = None) -> None:
    """Forget the cached GEMM lookup (restored after the test): the next call runs
    ``build`` (by default the real one, which reads MINIFW_FUSED_GEMM again)."""
    monkeypatch.setattr(_gemm, "_funcs", Once(build or _gemm._build))
    monkeypatch.setattr(_gemm, "wanted", Once(_gemm.wanted._build))  # MINIFW_FUSED_GEMM too


def _numpy_has_openblas() -> bool:
    from threadpoolctl import threadpool_info

    root = np.__file__.rsplit("/", 1)[0]
    return any(
        i.get("internal_api") == "openblas" and i.get("filepath", "").startswith(root)
        for i in threadpool_info()
    )


needs_gemm = pytest.mark.skipif(
    not _gemm.funcs(), reason="NumPy's BLAS here is not its bundled ILP64 OpenBLAS"
)


def test_the_pip_wheels_openblas_is_found() -> None:
    # wherever NumPy ships its own OpenBLAS (Linux and Windows pip wheels, as here) the
    # fused call must load, for both dtypes: otherwise the speed-up silently vanished
    if not _numpy_has_openblas():
        pytest.skip("this NumPy does not bundle OpenBLAS")
    assert set(_gemm.funcs()) == {np.dtype("float32"), np.dtype("float64")}


@needs_gemm
@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(1, 40),
    k=st.integers(1, 40),
    n=st.integers(1, 40),
    pad=st.integers(0, 3),
    alpha=st.sampled_from([1.0, -1.0]),
    dtype=st.sampled_from(["float32", "float64"]),
    seed=st.integers(0, 2**16),
)
def test_addmm_adds_alpha_x_w_to_the_bias(
    m: int, k: int, n: int, pad: int, alpha: float, dtype: str, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, k + pad)).astype(dtype)[:, :k]  # row stride > k when padded
    w = rng.standard_normal((k, n)).astype(dtype)
    b = rng.standard_normal(n).astype(dtype)
    out = np.empty((m, n), dtype)
    np.copyto(out, b)
    assert _gemm.addmm(x, w, out, alpha)
    want = alpha * (x.astype(np.float64) @ w) + b
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(out, want, rtol=tol * k, atol=tol * k)


@needs_gemm
def test_addmm_declines_what_blas_cannot_take() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 5)).astype(np.float32)
    w = rng.standard_normal((5, 4)).astype(np.float32)
    out = np.full((6, 4), 7.0, np.float32)
    for args in (
        (np.asfortranarray(x), w, out),  # column-major input
        (x[:, ::2], w[:3], out),  # a column stride
        (x, np.asfortranarray(w), out),
        (x.astype(np.float64), w, out),  # mixed dtypes
        (x, w[:4], out),  # inner sizes differ
        (x[:5], w, out),  # rows differ
        (x, w, out[:, ::2].copy()[:, :2]),  # wrong output width
        (x.astype(np.int32), w.astype(np.int32), out.astype(np.int32)),
    ):
        before = args[2].copy()
        assert not _gemm.addmm(*args)
        np.testing.assert_array_equal(args[2], before)  # nothing written


def _model(act: Any, dtype: str, widths: tuple[int, ...] = (64, 1100, 90, 10)) -> Any:
    mf.seed(3)
    model = mf.Sequential(
        mf.Dense(widths[0], widths[1], dtype=dtype),
        act(),
        mf.Dense(widths[1], widths[2], dtype=dtype),
        act(),
        mf.Dense(widths[2], widths[3], dtype=dtype),
        mf.Softmax(),
    ).eval()
    rng = np.random.default_rng(4)
    for i in (0, 2, 4):
        model[i].bias = rng.standard_normal(model[i].out_features)
    return model


@needs_gemm
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("act", [mf.ReLU, mf.Sigmoid, mf.Tanh])
def test_fused_layers_and_plan_give_the_same_bits_and_the_right_values(
    act: Any, dtype: str, monkeypatch: Any
) -> None:
    model = _model(act, dtype)
    n = 200  # 200 x 1100 outputs: fused; 200 x 90 and 200 x 10: matmul + add
    assert n * 1100 >= _gemm.MIN_ELEMS > n * 90
    assert n < mf.plan.MIN_CHUNK_ROWS, "one block: the plan's call takes the same rows"
    x = np.random.default_rng(5).random((n, 64)).astype(dtype)
    calls: list[tuple[int, ...]] = []
    real = _gemm.addmm

    def spy(x: Any, w: Any, out: Any, alpha: float = 1.0, fill: Any = None) -> bool:
        calls.append(out.shape)
        return real(x, w, out, alpha, fill)

    monkeypatch.setattr(_gemm, "addmm", spy)
    layers = layer_by_layer(model, x)
    plan = model(x)
    assert calls == [(n, 1100), (n, 1100)]  # only the big layer, once per path
    np.testing.assert_array_equal(plan, layers)
    # the values: against the same network in float64, and against matmul + add
    h = x.astype(np.float64)
    f = {mf.ReLU: lambda z: np.maximum(z, 0), mf.Sigmoid: lambda z: 1 / (1 + np.exp(-z))}
    f[mf.Tanh] = np.tanh
    for i in (0, 2, 4):
        h = h @ model[i].weight.astype(np.float64) + model[i].bias
        h = f[act](h) if i < 4 else np.exp(h - h.max(1, keepdims=True))
    h /= h.sum(1, keepdims=True)
    tol = 2e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(plan, h, rtol=tol, atol=tol)
    _lookup_again(monkeypatch, dict)  # as if NumPy had another BLAS
    plain = layer_by_layer(model, x)
    np.testing.assert_allclose(plain, layers, rtol=tol, atol=tol)
    np.testing.assert_array_equal(model(x), plain)  # plan and layers agree there too
    assert len(calls) == 2


@needs_gemm
@pytest.mark.parametrize("shape", [(1100,), (3, 70, 1100), "fortran", "strided"])
def test_dense_takes_any_input_layout(shape: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(_gemm, "MIN_ELEMS", 1)  # every layer fused where it can be
    layer = mf.Dense(1100, 300)
    layer.bias = np.linspace(-1, 1, 300)
    rng = np.random.default_rng(6)
    if shape == "fortran":
        x = np.asfortranarray(rng.random((50, 1100), dtype=np.float32))
    elif shape == "strided":
        x = rng.random((50, 2200), dtype=np.float32)[:, ::2]
    else:
        x = rng.random(shape, dtype=np.float32)
    y = layer(x)
    assert y.shape == x.shape[:-1] + (300,) and y.dtype == np.float32
    want = x.astype(np.float64) @ layer.weight + layer.bias
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


@needs_gemm
def test_a_float64_input_to_a_float32_layer_is_not_fused(monkeypatch: Any) -> None:
    monkeypatch.setattr(_gemm, "MIN_ELEMS", 1)
    layer = mf.Dense(20, 30)
    x = np.random.default_rng(7).random((40, 20))  # float64, into the layer's own forward
    y = layer.forward(x)  # forward: no conversion to the layer's dtype
    assert y.dtype == np.float64  # NumPy's promotion, as before: no BLAS call on mixed dtypes
    np.testing.assert_array_equal(y, x @ layer.weight + layer.bias)


def test_without_the_fused_call_everything_still_works(monkeypatch: Any) -> None:
    _lookup_again(monkeypatch, dict)
    model = _model(mf.ReLU, "float32")
    x = np.random.default_rng(8).random((300, 64), dtype=np.float32)
    np.testing.assert_allclose(model(x), layer_by_layer(model, x), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(model(x), naive(model, x), rtol=2e-5, atol=1e-6)
    assert not _gemm.addmm(x, model[0].weight, np.zeros((300, 1100), np.float32))


def test_a_library_that_fails_the_self_check_is_not_used(monkeypatch: Any) -> None:
    def wrong(*args: Any) -> None:  # a GEMM that computes nothing
        return None

    assert not _gemm._self_check({np.dtype("float32"): wrong})
    _lookup_again(monkeypatch)
    monkeypatch.setattr(_gemm, "_numpy_openblas", lambda: None)
    assert _gemm.funcs() == {}


@needs_gemm
@given(data=models())
def test_every_layer_fused_still_gives_the_layers_bits(data: tuple[Any, np.ndarray]) -> None:
    """With the size threshold at 1, every biased Dense of random models (1-D and 2-D inputs,
    both dtypes, every activation) goes through the fused GEMM, in the layers and the plan."""
    model, x = data
    calls = []
    real = _gemm.addmm

    def spy(x: Any, w: Any, out: Any, alpha: float = 1.0, fill: Any = None) -> bool:
        calls.append(alpha)
        return real(x, w, out, alpha, fill)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_gemm, "MIN_ELEMS", 1)
        mp.setattr(_gemm, "addmm", spy)
        plain = layer_by_layer(model, x)
        fast = model(x)
    biased = sum(1 for m in model if isinstance(m, mf.Dense) and m.bias is not None)
    assert len(calls) == (2 * biased if x.size else 0)  # per biased layer, on each path
    np.testing.assert_array_equal(fast, plain)
    tol = 1e-5 if x.dtype == np.float32 else 1e-12
    np.testing.assert_allclose(
        fast, naive(model, np.atleast_2d(x)).reshape(fast.shape), rtol=tol, atol=tol
    )


def test_the_env_var_turns_it_off_and_a_bad_value_is_named(monkeypatch: Any) -> None:
    _lookup_again(monkeypatch)
    monkeypatch.setenv("MINIFW_FUSED_GEMM", "0")
    assert _gemm.funcs() == {}
    model = _model(mf.ReLU, "float32")
    x = np.random.default_rng(9).random((200, 64), dtype=np.float32)
    calls: list[Any] = []
    real = _gemm.addmm

    def spy(*args: Any) -> bool:
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(_gemm, "addmm", spy)
    np.testing.assert_allclose(model(x), layer_by_layer(model, x), rtol=1e-5, atol=1e-7)
    assert calls == []  # off: the layers and the plan never ask for it
    _lookup_again(monkeypatch)
    monkeypatch.setenv("MINIFW_FUSED_GEMM", "yes")
    with pytest.raises(mf.BackendError, match="MINIFW_FUSED_GEMM='yes'"):
        mf.Dense(64, 1100)(x)
    _lookup_again(monkeypatch)
    monkeypatch.setenv("MINIFW_FUSED_GEMM", "1")
    if _numpy_has_openblas():  # "1" is the default: on
        assert set(_gemm.funcs()) == {np.dtype("float32"), np.dtype("float64")}
