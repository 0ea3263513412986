"""Convolution / pooling backend operations (``ConvOps``, ``NumpyConvOps``) against PyTorch.

Each check runs on three implementations: the NumPy fast path (``NumpyConvOps`` on numpy),
the portable path on numpy and the portable path on array_api_strict; one test runs the
portable path on jax.numpy. References are ``torch.nn.functional`` and torch autograd in
float64, plus central finite differences and a plain-loop max-pool for ties.
"""

from __future__ import annotations

import tracemalloc
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minifw.backend import _conv_numpy
from minifw.backend._conv import ConvOps
from minifw.backend._conv_numpy import NumpyConvOps
from minifw.errors import ShapeError

torch = pytest.importorskip("torch", reason="torch is the reference for the conv/pool checks")
F = torch.nn.functional


class _B(ConvOps):
    def __init__(self, xp: Any) -> None:
        self.xp = xp


class _NB(NumpyConvOps):
    def __init__(self) -> None:
        self.xp = np


def _strict() -> Any:
    return pytest.importorskip("array_api_strict", reason="array_api_strict is not installed")


IMPLS = ["numpy-fast", "numpy-generic", "strict-generic"]


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> tuple[Any, Any]:
    """``(ops, xp)``: an object with the conv methods and the namespace of its arrays."""
    if request.param == "numpy-fast":
        return _NB(), np
    if request.param == "numpy-generic":
        return _B(np), np
    xs = _strict()
    return _B(xs), xs


def _np(a: Any) -> np.ndarray:
    return np.asarray(a)


def _t(a: np.ndarray, grad: bool = False) -> Any:
    return torch.tensor(a, dtype=torch.float64, requires_grad=grad)


# -- random geometries ---------------------------------------------------------------
@st.composite
def conv_cases(draw: Any) -> dict[str, Any]:
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    h = draw(st.integers(max(1, kh - 2 * ph), 9))
    w = draw(st.integers(max(1, kw - 2 * pw), 9))
    n, c, f = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    return dict(
        x=(n, c, h, w),
        w=(f, c, kh, kw),
        stride=(sh, sw),
        padding=(ph, pw),
        seed=draw(st.integers(0, 2**31)),
    )


@st.composite
def pool_cases(draw: Any) -> dict[str, Any]:
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, min(2, kh // 2))), draw(st.integers(0, min(2, kw // 2)))
    h = draw(st.integers(max(1, kh - 2 * ph), 9))
    w = draw(st.integers(max(1, kw - 2 * pw), 9))
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    return dict(
        x=(n, c, h, w),
        kernel=(kh, kw),
        stride=(sh, sw),
        padding=(ph, pw),
        seed=draw(st.integers(0, 2**31)),
    )


# -- forward and backward against torch ----------------------------------------------------
@given(case=conv_cases(), bias=st.booleans())
def test_conv2d_matches_torch(impl: tuple[Any, Any], case: dict[str, Any], bias: bool) -> None:
    ops, xp = impl
    rng = np.random.default_rng(case["seed"])
    x, w = rng.standard_normal(case["x"]), rng.standard_normal(case["w"])
    b = rng.standard_normal(case["w"][0]) if bias else None
    s, p = case["stride"], case["padding"]
    tx, tw = _t(x, True), _t(w, True)
    tb = None if b is None else _t(b, True)
    ty = F.conv2d(tx, tw, tb, stride=s, padding=p)
    y = ops.conv2d(xp.asarray(x), xp.asarray(w), None if b is None else xp.asarray(b), s, p)
    np.testing.assert_allclose(_np(y), ty.detach().numpy(), rtol=1e-12, atol=1e-12)

    g = rng.standard_normal(tuple(ty.shape))
    ty.backward(_t(g))
    dx, dw, db = ops.conv2d_backward(xp.asarray(g), xp.asarray(x), xp.asarray(w), s, p)
    np.testing.assert_allclose(_np(dx), tx.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(_np(dw), tw.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(_np(db), g.sum(axis=(0, 2, 3)), rtol=1e-12, atol=1e-12)
    none, dw2, _ = ops.conv2d_backward(
        xp.asarray(g), xp.asarray(x), xp.asarray(w), s, p, need_input_grad=False
    )
    assert none is None
    np.testing.assert_allclose(_np(dw2), tw.grad.numpy(), rtol=1e-12, atol=1e-12)


@given(case=pool_cases())
def test_maxpool2d_matches_torch(impl: tuple[Any, Any], case: dict[str, Any]) -> None:
    ops, xp = impl
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal(case["x"])
    k, s, p = case["kernel"], case["stride"], case["padding"]
    tx = _t(x, True)
    ty = F.max_pool2d(tx, k, s, p)
    y, am = ops.maxpool2d(xp.asarray(x), k, s, p)
    np.testing.assert_array_equal(_np(y), ty.detach().numpy())
    g = rng.standard_normal(tuple(ty.shape))
    ty.backward(_t(g))
    dx = ops.maxpool2d_backward(xp.asarray(g), am, x.shape, k, s, p)
    np.testing.assert_allclose(_np(dx), tx.grad.numpy(), rtol=1e-12, atol=1e-12)


@given(case=pool_cases())
def test_avgpool2d_matches_torch(impl: tuple[Any, Any], case: dict[str, Any]) -> None:
    ops, xp = impl
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal(case["x"])
    k, s, p = case["kernel"], case["stride"], case["padding"]
    tx = _t(x, True)
    ty = F.avg_pool2d(tx, k, s, p, count_include_pad=True)
    y = ops.avgpool2d(xp.asarray(x), k, s, p)
    np.testing.assert_allclose(_np(y), ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    g = rng.standard_normal(tuple(ty.shape))
    ty.backward(_t(g))
    dx = ops.avgpool2d_backward(xp.asarray(g), x.shape, k, s, p)
    np.testing.assert_allclose(_np(dx), tx.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_fixed_book_shapes_match_torch(impl: tuple[Any, Any]) -> None:
    """The book's SimpleConvNet geometry (5x5, stride 1, no padding) and a 2x2/2 pool."""
    ops, xp = impl
    rng = np.random.default_rng(7)
    x, w, b = (
        rng.standard_normal((2, 1, 12, 12)),
        rng.standard_normal((3, 1, 5, 5)),
        rng.standard_normal(3),
    )
    y = ops.conv2d(xp.asarray(x), xp.asarray(w), xp.asarray(b), 1, 0)
    np.testing.assert_allclose(_np(y), F.conv2d(_t(x), _t(w), _t(b)).numpy(), atol=1e-12)
    m, _ = ops.maxpool2d(y, 2, 2, 0)
    np.testing.assert_array_equal(_np(m), F.max_pool2d(_t(_np(y)), 2, 2).numpy())


# -- finite differences ----------------------------------------------------------------
def _fd(f: Any, a: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central finite differences of scalar ``f`` with respect to every element of ``a``."""
    out = np.zeros_like(a)
    for idx in np.ndindex(a.shape):
        old = a[idx]
        a[idx] = old + eps
        up = f()
        a[idx] = old - eps
        down = f()
        a[idx] = old
        out[idx] = (up - down) / (2 * eps)
    return out


def test_finite_differences(impl: tuple[Any, Any]) -> None:
    ops, xp = impl
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((2, 2, 5, 4)), rng.standard_normal((3, 2, 3, 2))
    s, p = (2, 1), (1, 1)
    y0 = _np(ops.conv2d(xp.asarray(x), xp.asarray(w), None, s, p))
    g = rng.standard_normal(y0.shape)

    def loss() -> float:
        return float((_np(ops.conv2d(xp.asarray(x), xp.asarray(w), None, s, p)) * g).sum())

    dx, dw, _ = ops.conv2d_backward(xp.asarray(g), xp.asarray(x), xp.asarray(w), s, p)
    np.testing.assert_allclose(_np(dx), _fd(loss, x), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(_np(dw), _fd(loss, w), rtol=1e-6, atol=1e-8)

    k, sp, pp = (3, 2), (1, 2), (1, 1)
    y, am = ops.maxpool2d(xp.asarray(x), k, sp, pp)
    gm = rng.standard_normal(_np(y).shape)

    def mloss() -> float:
        return float((_np(ops.maxpool2d(xp.asarray(x), k, sp, pp)[0]) * gm).sum())

    dxm = ops.maxpool2d_backward(xp.asarray(gm), am, x.shape, k, sp, pp)
    np.testing.assert_allclose(_np(dxm), _fd(mloss, x), rtol=1e-6, atol=1e-8)

    ga = rng.standard_normal(_np(ops.avgpool2d(xp.asarray(x), k, sp, pp)).shape)

    def aloss() -> float:
        return float((_np(ops.avgpool2d(xp.asarray(x), k, sp, pp)) * ga).sum())

    dxa = ops.avgpool2d_backward(xp.asarray(ga), x.shape, k, sp, pp)
    np.testing.assert_allclose(_np(dxa), _fd(aloss, x), rtol=1e-6, atol=1e-8)


# -- max-pool ties -----------------------------------------------------------------------
def _loop_maxpool_backward(x: np.ndarray, g: np.ndarray, k: Any, s: Any, p: Any) -> np.ndarray:
    """The book's rule in plain loops: each window's gradient to its first maximum."""
    (kh, kw), (sh, sw), (ph, pw) = k, s, p
    xp_ = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf)
    dxp = np.zeros_like(xp_)
    n, c, oh, ow = g.shape
    for a in range(n):
        for b in range(c):
            for i in range(oh):
                for j in range(ow):
                    win = xp_[a, b, i * sh : i * sh + kh, j * sw : j * sw + kw]
                    r, q = divmod(int(np.argmax(win)), kw)
                    dxp[a, b, i * sh + r, j * sw + q] += g[a, b, i, j]
    return dxp[:, :, ph : ph + x.shape[2], pw : pw + x.shape[3]]


@pytest.mark.parametrize(
    "k,s,p", [((2, 2), (2, 2), (0, 0)), ((3, 3), (1, 1), (0, 0)), ((3, 2), (2, 1), (1, 1))]
)
def test_maxpool_ties_go_to_the_first_maximum(
    impl: tuple[Any, Any], k: Any, s: Any, p: Any
) -> None:
    ops, xp = impl
    rng = np.random.default_rng(11)
    for x in (np.full((2, 2, 7, 6), 0.5), rng.integers(0, 2, (2, 2, 7, 6)).astype(np.float64)):
        y, am = ops.maxpool2d(xp.asarray(x), k, s, p)
        g = rng.standard_normal(_np(y).shape)
        dx = _np(ops.maxpool2d_backward(xp.asarray(g), am, x.shape, k, s, p))
        np.testing.assert_allclose(
            dx, _loop_maxpool_backward(x, g, k, s, p), rtol=1e-12, atol=1e-12
        )
        np.testing.assert_allclose(dx.sum(), g.sum(), rtol=1e-12)
        # one position per window: with grad all ones, dx counts the windows choosing it
        ones = _np(ops.maxpool2d_backward(xp.asarray(np.ones_like(g)), am, x.shape, k, s, p))
        assert ones.sum() == g.size
    # all equal, no padding: every window picks its top-left corner
    x = np.full((1, 1, 4, 4), 2.0)
    _, am = ops.maxpool2d(xp.asarray(x), 2, 2, 0)
    assert (_np(am) == 0).all()
    dx = _np(ops.maxpool2d_backward(xp.asarray(np.ones((1, 1, 2, 2))), am, x.shape, 2, 2, 0))
    np.testing.assert_array_equal(
        dx[0, 0], [[1, 0, 1, 0], [0, 0, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    )


# -- dtypes and namespaces ------------------------------------------------------------------
def _all_ops(ops: Any, xp: Any, dtype: Any) -> dict[str, Any]:
    rng = np.random.default_rng(5)
    x = xp.asarray(rng.standard_normal((2, 3, 7, 6)), dtype=dtype)
    w = xp.asarray(rng.standard_normal((4, 3, 3, 2)), dtype=dtype)
    b = xp.asarray(rng.standard_normal(4), dtype=dtype)
    y = ops.conv2d(x, w, b, (2, 1), 1)
    g = xp.asarray(rng.standard_normal(tuple(y.shape)), dtype=dtype)
    dx, dw, db = ops.conv2d_backward(g, x, w, (2, 1), 1)
    dx1, _, _ = ops.conv2d_backward(
        xp.asarray(rng.standard_normal((2, 4, 7, 5)), dtype=dtype), x, w, 1, (1, 0)
    )
    m, am = ops.maxpool2d(x, 3, 2, 1)
    dm = ops.maxpool2d_backward(m, am, tuple(x.shape), 3, 2, 1)
    a = ops.avgpool2d(x, (2, 3), 1, (1, 0))
    da = ops.avgpool2d_backward(a, tuple(x.shape), (2, 3), 1, (1, 0))
    return dict(y=y, dx=dx, dw=dw, db=db, dx1=dx1, m=m, dm=dm, a=a, da=da)


def test_float32_stays_float32_and_namespace_kept(impl: tuple[Any, Any]) -> None:
    ops, xp = impl
    for dtype in (xp.float32, xp.float64):
        for name, arr in _all_ops(ops, xp, dtype).items():
            assert arr.dtype == dtype, (name, arr.dtype)
            if xp is np:
                assert type(arr) is np.ndarray, name
            else:
                assert type(arr).__module__.startswith("array_api_strict"), (name, type(arr))


def test_generic_runs_on_jax() -> None:
    jnp = pytest.importorskip("jax.numpy", reason="jax is not installed")
    ref = {k: _np(v) for k, v in _all_ops(_NB(), np, np.float32).items()}
    got = _all_ops(_B(jnp), jnp, jnp.float32)
    for name, arr in got.items():
        assert arr.dtype == jnp.float32, name
        assert type(arr).__module__.startswith("jax"), (name, type(arr))
        np.testing.assert_allclose(np.asarray(arr), ref[name], rtol=1e-5, atol=1e-5, err_msg=name)


# -- NumPy chunks, buffers and memory ----------------------------------------------------
@pytest.mark.parametrize(
    "x_shape,w_shape,stride,pad",
    [
        ((5, 8, 9, 7), (6, 8, 3, 3), 1, 1),  # channels-last gather (C*kw >= 8)
        ((5, 2, 9, 7), (4, 2, 3, 3), 1, 1),  # channels-first gather (C*kw < 8)
        ((4, 6, 11, 10), (5, 6, 3, 2), (2, 3), (1, 0)),  # strided: dx by col2im
        ((3, 9, 6, 6), (7, 9, 5, 5), 1, 3),  # padding > kernel - 1: dx crops grad
    ],
)
@pytest.mark.parametrize("chunk", [1, 2, 1 << 30])  # one image per chunk, ..., one chunk
def test_numpy_chunks_agree_with_torch(
    monkeypatch: pytest.MonkeyPatch, x_shape: Any, w_shape: Any, stride: Any, pad: Any, chunk: int
) -> None:
    """However the batch is cut into chunks (CHUNK_ELEMS: 1 -> one image per chunk, the
    odd batch leaving a short last chunk), forward and all three gradients equal torch's."""
    monkeypatch.setattr(_conv_numpy, "CHUNK_ELEMS", chunk * int(np.prod(w_shape[1:])) * 99)
    rng = np.random.default_rng(7)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[0])
    xt, wt, bt = _t(x, True), _t(w, True), _t(b, True)
    yt = F.conv2d(xt, wt, bt, stride=stride, padding=pad)
    g = rng.standard_normal(tuple(yt.shape))
    yt.backward(_t(g))
    ops = _NB()
    np.testing.assert_allclose(ops.conv2d(x, w, b, stride, pad), yt.detach().numpy(), atol=1e-12)
    dx, dw, db = ops.conv2d_backward(g, x, w, stride, pad)
    for got, ref in ((dx, xt), (dw, wt), (db, bt)):
        np.testing.assert_allclose(got, ref.grad.numpy(), atol=1e-11)
    # float32 stays float32, bits equal to a one-image-at-a-time run
    x32, w32, b32 = x.astype(np.float32), w.astype(np.float32), b.astype(np.float32)
    y32 = ops.conv2d(x32, w32, b32, stride, pad)
    assert y32.dtype == np.float32
    for i in range(x.shape[0]):
        np.testing.assert_allclose(
            y32[i : i + 1], ops.conv2d(x32[i : i + 1], w32, b32, stride, pad), rtol=1e-6, atol=1e-6
        )
    dx32, dw32, db32 = ops.conv2d_backward(g.astype(np.float32), x32, w32, stride, pad)
    assert (dx32.dtype, dw32.dtype, db32.dtype) == (np.float32,) * 3


@pytest.mark.parametrize("name", ["numpy", "array_api_strict", "torch"])
def test_conv2d_act_is_the_activation_of_the_result(name: str) -> None:
    """``conv2d(..., act)`` equals the activation of ``conv2d(...)`` bit for bit, on the
    NumPy override and on the generic version (array_api_strict, torch)."""
    import minifw as mf

    if name == "array_api_strict":
        _strict()
    b = mf.backend.get(name)
    rng = np.random.default_rng(4)
    x = b.from_numpy(rng.standard_normal((3, 8, 7, 6)).astype(np.float32))
    w = b.from_numpy(rng.standard_normal((5, 8, 3, 3)).astype(np.float32))
    bias = b.from_numpy(rng.standard_normal(5).astype(np.float32))
    y = b.to_numpy(b.conv2d(x, w, bias, 1, 1))
    got = b.conv2d(x, w, bias, 1, 1, "relu")
    assert b.is_native(got)
    np.testing.assert_array_equal(b.to_numpy(got), np.maximum(y, 0))
    assert (b.to_numpy(got) == 0).any() and (y < 0).any()
    with pytest.raises(ValueError, match="elementwise"):
        b.conv2d(x, w, bias, 1, 1, "softmax")


def test_numpy_out_buffer() -> None:
    ops = _NB()
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 4, 9, 8)).astype(np.float32)
    w = rng.standard_normal((5, 4, 3, 3)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    ref = ops.conv2d(x, w, b, 1, 1)
    out = np.full_like(ref, np.nan)
    y = ops.conv2d(x, w, b, 1, 1, out=out)
    assert y is out
    np.testing.assert_array_equal(y, ref)
    with pytest.raises(ShapeError, match="out must be"):
        ops.conv2d(x, w, b, 1, 1, out=np.empty((3, 5, 9, 9), np.float32))
    with pytest.raises(ShapeError, match="out must be"):
        ops.conv2d(x, w, b, 1, 1, out=np.empty(ref.shape, np.float64))


@pytest.mark.parametrize(
    "stride,w_shape", [(1, (6, 6, 5, 5)), (2, (6, 6, 7, 7)), (1, (8, 3, 5, 5)), (1, (2, 1, 7, 7))]
)
def test_numpy_never_holds_a_batchs_im2col_matrix(stride: int, w_shape: tuple[int, ...]) -> None:
    """conv2d + conv2d_backward hold one chunk's im2col matrix at a time, never the whole
    batch's: peak traced memory is a few input-sized arrays plus three chunk buffers."""
    ops = _NB()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, w_shape[1], 32, 32))
    pad = w_shape[2] // 2
    w = rng.standard_normal(w_shape)
    y = ops.conv2d(x, w, None, stride, pad)
    g = rng.standard_normal(y.shape)
    im2col_bytes = x.shape[0] * int(np.prod(w_shape[1:])) * y.shape[2] * y.shape[3] * 8
    limit = 4 * (x.nbytes + g.nbytes) + 3 * _conv_numpy.CHUNK_ELEMS * 8
    assert limit < im2col_bytes  # the check means something
    tracemalloc.start()
    try:
        ops.conv2d(x, w, None, stride, pad)
        ops.conv2d_backward(g, x, w, stride, pad)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < limit, (peak, limit, im2col_bytes)


# -- errors ------------------------------------------------------------------------------
def test_shape_errors_name_the_shapes(impl: tuple[Any, Any]) -> None:
    ops, xp = impl
    x = xp.asarray(np.zeros((2, 3, 5, 5)))
    w = xp.asarray(np.zeros((4, 3, 3, 3)))
    with pytest.raises(ShapeError, match=r"\(2, 3, 5, 5\).*\(4, 2, 3, 3\)"):
        ops.conv2d(x, xp.asarray(np.zeros((4, 2, 3, 3))), None, 1, 0)
    with pytest.raises(ShapeError, match=r"kernel \(7, 7\) is larger.*\(2, 3, 5, 5\)"):
        ops.conv2d(x, xp.asarray(np.zeros((4, 3, 7, 7))), None, 1, 0)
    ops.conv2d(x, xp.asarray(np.zeros((4, 3, 7, 7))), None, 1, 1)  # fits once padded
    with pytest.raises(ShapeError, match="stride must be positive"):
        ops.conv2d(x, w, None, 0, 0)
    with pytest.raises(ShapeError, match="padding must be non-negative"):
        ops.conv2d(x, w, None, 1, (0, -1))
    with pytest.raises(ShapeError, match=r"bias of shape \(3,\)"):
        ops.conv2d(x, w, xp.asarray(np.zeros(3)), 1, 0)
    with pytest.raises(ShapeError, match=r"grad has shape \(2, 4, 2, 2\), expected \(2, 4, 3, 3\)"):
        ops.conv2d_backward(xp.asarray(np.zeros((2, 4, 2, 2))), x, w, 1, 0)
    with pytest.raises(
        ShapeError, match=r"expected an input of shape \(N, C, H, W\), got \(3, 5, 5\)"
    ):
        ops.maxpool2d(xp.asarray(np.zeros((3, 5, 5))), 2, 2, 0)
    with pytest.raises(ShapeError, match="kernel size must be positive"):
        ops.avgpool2d(x, (0, 2), 1, 0)
    with pytest.raises(ShapeError, match=r"kernel \(6, 6\) is larger"):
        ops.maxpool2d(x, 6, 1, 0)
    with pytest.raises(ShapeError, match="grad has shape"):
        ops.avgpool2d_backward(xp.asarray(np.zeros((2, 3, 3, 3))), (2, 3, 5, 5), 2, 2, 0)
    with pytest.raises(TypeError, match="stride"):
        ops.conv2d(x, w, None, 1.5, 0)


# -- conv_chain --------------------------------------------------------------------------
CHAIN_STEPS = [
    # (channels in, the steps as (kind, ...) with weights drawn for the running shape)
    (1, [("conv", 8, 3, 1, 1, "relu"), ("conv", 8, 3, 1, 1, "relu"), ("maxpool", 2, 2, 0)]),
    (4, [("conv", 6, 3, 1, 1, None), ("maxpool", 2, 2, 0), ("conv", 5, (3, 2), (2, 1), 0, "relu")]),
    (8, [("maxpool", 2, 2, 0), ("conv", 3, 3, 1, 2, "relu"), ("maxpool", 3, 2, 1)]),
    (6, [("conv", 7, 2, 1, 0, "relu", "nobias"), ("maxpool", (2, 3), (1, 2), 0)]),
    # even sizes: 2x2 pools on the GEMM's planes (blocked pixel order); a short-row head
    # convolution; a sigmoid (pooled after it, not before)
    (1, [("conv", 8, 3, 1, 1, "relu"), ("maxpool", 2, 2, 0), ("conv", 6, 3, 1, 1, "sigmoid"),
         ("maxpool", 2, 2, 0), ("conv", 4, 3, 1, 1, None), ("maxpool", 2, 2, 0)], (12, 12)),
    (3, [("conv", 4, 3, 1, 1, "relu"), ("conv", 6, 3, 1, 1, "relu", "nobias"),
         ("maxpool", 2, 2, 0), ("conv", 5, 3, 1, 0, "tanh")], (16, 12)),
]  # fmt: skip


def _chain(spec: list[Any], c: int, rng: Any, wrap: Any) -> list[tuple[Any, ...]]:
    steps: list[tuple[Any, ...]] = []
    for sp in spec:
        if sp[0] == "conv":
            f, k, stride, pad, act = sp[1:6]
            kh, kw = (k, k) if isinstance(k, int) else k
            w = wrap(rng.standard_normal((f, c, kh, kw)))
            b = None if "nobias" in sp else wrap(rng.standard_normal(f))
            steps.append(("conv", w, b, stride, pad, act))
            c = f
        else:
            steps.append(sp)
    return steps


@pytest.mark.parametrize("case", range(len(CHAIN_STEPS)))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_chain_equals_the_steps_in_turn(case: int, dtype: Any) -> None:
    """NumPy's conv_chain (channels-last runs, pools fused into their convolution's
    chunks, fallbacks for the steps it cannot take) equals conv2d / maxpool2d_values in
    turn; the generic version on array_api_strict and torch too; float32 stays float32."""
    import minifw as mf

    c, spec, *size = CHAIN_STEPS[case]
    rng = np.random.default_rng(case)
    x = rng.standard_normal((5, c, *(size[0] if size else (12, 11)))).astype(dtype)
    b = mf.backend.get("numpy")
    steps = _chain(spec, c, np.random.default_rng(case + 10), lambda a: a.astype(dtype))
    ref = x
    for step in steps:
        kind, *args = step
        ref = b.conv2d(ref, *args) if kind == "conv" else b.maxpool2d_values(ref, *args)
    got = b.conv_chain(x, steps)
    assert got.dtype == dtype and got.shape == ref.shape
    # float32: pre-activations reach ~50 (unit weights), sums in another order
    tol = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol)
    for name in ("array_api_strict", "torch"):
        if name == "array_api_strict":
            _strict()
        e = mf.backend.get(name)
        st_e = [
            ("conv", e.from_numpy(s[1]), None if s[2] is None else e.from_numpy(s[2]), *s[3:])
            if s[0] == "conv"
            else s
            for s in steps
        ]
        y = e.conv_chain(e.from_numpy(x), st_e)
        assert e.is_native(y)
        np.testing.assert_allclose(e.to_numpy(y), ref, rtol=tol, atol=tol)


def test_conv_chain_errors() -> None:
    import minifw as mf

    b = mf.backend.get("numpy")
    x = np.zeros((2, 8, 6, 6), np.float32)
    w = np.zeros((4, 3, 3, 3), np.float32)  # expects 3 channels
    with pytest.raises(ShapeError, match="has 8 channels"):
        b.conv_chain(x, [("conv", w, None, 1, 1, "relu"), ("maxpool", 2, 2, 0)])
    with pytest.raises(ValueError, match="unknown step 'dense'"):
        b.conv_chain(x, [("dense", w)])
