"""Properties of the functional ops, on numpy and on array_api_strict."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import assert_namespace
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minifw as mf
from minifw import functional as F

FLOAT_DTYPES = st.sampled_from([np.float32, np.float64])


def finite_arrays(dtype: type, min_dims: int = 1, max_side: int = 6, elements=None):
    info = np.finfo(dtype)
    if elements is None:
        elements = st.floats(
            float(info.min),
            float(info.max),
            allow_nan=False,
            allow_infinity=False,
            width=8 * np.dtype(dtype).itemsize,
        )
    return hnp.arrays(
        dtype, hnp.array_shapes(min_dims=min_dims, max_dims=3, max_side=max_side), elements=elements
    )


@st.composite
def any_finite(draw, min_dims: int = 1):
    dtype = draw(FLOAT_DTYPES)
    return draw(finite_arrays(dtype, min_dims))


def run(backend_name: str, fn, x: np.ndarray, **kw):
    """Apply ``fn`` on ``backend_name`` with warnings as errors; return (native, numpy)."""
    with mf.backend.use(backend_name) as b, warnings.catch_warnings():
        warnings.simplefilter("error")
        y = fn(b.asarray(x), **kw)
    assert_namespace(y, backend_name)
    yn = mf.to_numpy(y)
    assert yn.dtype == x.dtype, f"{fn.__name__} changed dtype {x.dtype} -> {yn.dtype}"
    assert yn.shape == x.shape
    return y, yn


# -- softmax ------------------------------------------------------------------------------


@given(x=any_finite())
def test_softmax_rows_are_distributions(backend_name: str, x: np.ndarray) -> None:
    with np.errstate(over="ignore"):
        span = float(np.ptp(x.astype(np.float64)))
    if span > float(np.finfo(x.dtype).max):
        # x - max(x) overflows to -inf (exp gives the right 0); NumPy may warn about it
        with mf.backend.use(backend_name) as b, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            y = mf.to_numpy(F.softmax(b.asarray(x)))
    else:
        _, y = run(backend_name, F.softmax, x)
    assert np.isfinite(y).all()
    assert (y >= 0).all() and (y <= 1).all()
    np.testing.assert_allclose(y.sum(axis=-1), 1.0, rtol=1e-5 if x.dtype == np.float32 else 1e-12)


@given(
    x=finite_arrays(np.float64, min_dims=2, elements=st.floats(-50, 50)),
    c=st.floats(-100, 100),
)
def test_softmax_shift_invariant_per_row(backend_name: str, x: np.ndarray, c: float) -> None:
    _, y = run(backend_name, F.softmax, x)
    # a different shift for every row: only a per-row softmax is invariant to that
    shifts = c * np.arange(x.shape[0]).reshape((-1,) + (1,) * (x.ndim - 1))
    _, ys = run(backend_name, F.softmax, x + shifts)
    np.testing.assert_allclose(ys, y, rtol=1e-9, atol=1e-12)


@given(x=finite_arrays(np.float64, min_dims=2, elements=st.floats(-1e3, 1e3)))
def test_softmax_preserves_argmax(backend_name: str, x: np.ndarray) -> None:
    _, y = run(backend_name, F.softmax, x)
    top = np.take_along_axis(y, x.argmax(axis=-1)[..., None], axis=-1)
    assert (top[..., 0] >= y.max(axis=-1)).all()


@given(x=finite_arrays(np.float64, min_dims=2, elements=st.floats(-20, 20)), axis=st.integers(0, 1))
def test_softmax_axis(backend_name: str, x: np.ndarray, axis: int) -> None:
    _, y = run(backend_name, F.softmax, x, axis=axis)
    np.testing.assert_allclose(y.sum(axis=axis), 1.0, rtol=1e-12)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    np.testing.assert_allclose(y, e / e.sum(axis=axis, keepdims=True), rtol=1e-12)


def test_softmax_is_per_row_not_per_batch() -> None:
    x = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    y = mf.to_numpy(F.softmax(x))
    np.testing.assert_allclose(y.sum(axis=1), [1.0, 1.0])
    np.testing.assert_allclose(y[0], y[1])


def test_softmax_bad_axis() -> None:
    with pytest.raises(
        mf.ShapeError, match="axis 2 is out of range for an input of shape \\(2, 3\\)"
    ):
        F.softmax(np.zeros((2, 3)), axis=2)


@given(x=finite_arrays(np.float64, min_dims=1, elements=st.floats(-300, 300)))
def test_log_softmax_matches_log_of_softmax(backend_name: str, x: np.ndarray) -> None:
    _, ls = run(backend_name, F.log_softmax, x)
    _, s = run(backend_name, F.softmax, x)
    assert np.isfinite(ls).all()
    with np.errstate(divide="ignore"):
        logs = np.log(s)
    ok = s > 1e-300
    np.testing.assert_allclose(ls[ok], logs[ok], rtol=1e-9, atol=1e-9)


# -- sigmoid ------------------------------------------------------------------------------


@given(x=any_finite())
def test_sigmoid_range_and_symmetry(backend_name: str, x: np.ndarray) -> None:
    _, y = run(backend_name, F.sigmoid, x)
    _, yneg = run(backend_name, F.sigmoid, -x)
    assert ((y >= 0) & (y <= 1)).all()
    eps = np.finfo(x.dtype).eps
    np.testing.assert_allclose(yneg, 1 - y, atol=2 * eps, rtol=0)


@given(x=any_finite())
def test_sigmoid_monotone(backend_name: str, x: np.ndarray) -> None:
    xs = np.sort(x.ravel())
    _, y = run(backend_name, F.sigmoid, xs)
    assert (np.diff(y) >= 0).all()


@given(x=finite_arrays(np.float64, elements=st.floats(-30, 30)))
def test_sigmoid_matches_definition(backend_name: str, x: np.ndarray) -> None:
    _, y = run(backend_name, F.sigmoid, x)
    np.testing.assert_allclose(y, 1 / (1 + np.exp(-x)), rtol=1e-12, atol=1e-15)


@given(x=finite_arrays(np.float32, elements=st.floats(-87, 87, width=32)))
def test_sigmoid_float32_is_accurate_relative_to_its_value(
    backend_name: str, x: np.ndarray
) -> None:
    # the tanh form 0.5 * tanh(x / 2) + 0.5 loses every digit below about -17 (1 - 1
    # cancellation); 1 / (1 + exp(-x)) keeps a few ulps of the value itself
    _, y = run(backend_name, F.sigmoid, x)
    ref = 1 / (1 + np.exp(-x.astype(np.float64)))
    np.testing.assert_allclose(y, ref, rtol=4 * np.finfo(np.float32).eps, atol=0)


def test_sigmoid_of_large_negative_float32_is_not_rounded_to_zero() -> None:
    y = F.sigmoid(np.array([-20.0, -40.0, -80.0], np.float32))
    np.testing.assert_allclose(y, 1 / (1 + np.exp([20.0, 40.0, 80.0])), rtol=1e-6)
    assert (y > 0).all()


@pytest.mark.parametrize("rows", [1, 2000])  # small arrays clamp exp's argument, large ones
def test_sigmoid_extremes_do_not_warn(rows: int) -> None:  # let it overflow (errstate)
    for dt in (np.float32, np.float64):
        big = np.finfo(dt).max
        x = np.tile(np.array([-big, -1000, -89, 0, 89, 1000, big], dtype=dt), (rows, 1))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            y = F.sigmoid(x)
        np.testing.assert_array_equal(
            y[:, [3, 5, 6]], np.tile(np.array([0.5, 1, 1], dt), (rows, 1))
        )
        # the exact limit 0, or (clamped) a subnormal near 1 / (1 + largest float)
        assert (y[:, [0, 1]] <= 1.01 / np.finfo(dt).max).all() and (y >= 0).all()


# -- relu, step, tanh, identity ------------------------------------------------------------------


@given(
    x=FLOAT_DTYPES.flatmap(
        lambda dt: hnp.arrays(
            dt,
            st.tuples(st.integers(1, 3), st.integers(28, 70)),  # rows as wide as the zero row
            elements=st.floats(
                allow_nan=True, allow_infinity=True, width=8 * np.dtype(dt).itemsize
            ),
        )
    )
)
def test_relu_of_wide_rows_matches_maximum_bit_for_bit(backend_name: str, x: np.ndarray) -> None:
    y, yn = run(backend_name, F.relu, x)
    ref = np.maximum(x, 0)  # NaN passes, -0.0 and -inf become +0
    np.testing.assert_array_equal(yn, ref)
    assert not np.signbit(yn[~np.isnan(yn)]).any()
    assert yn.flags.writeable


def test_relu_in_place_leaves_the_shared_zero_row_alone() -> None:
    x = -np.ones((2, 40), np.float32)
    b = mf.backend.get("numpy")
    z = b.zero_for(x)
    assert z.shape == (40,) and not z.flags.writeable
    y = b.relu(x, inplace=True)
    assert y is x and (x == 0).all()
    y += 5
    assert (b.zero_for(x) == 0).all()
    assert (mf.functional.relu(-np.ones((3, 40), np.float32)) == 0).all()


@given(x=any_finite())
def test_relu_nonnegative_and_idempotent(backend_name: str, x: np.ndarray) -> None:
    y, yn = run(backend_name, F.relu, x)
    assert (yn >= 0).all()
    np.testing.assert_array_equal(yn, np.maximum(x, 0))
    _, yy = run(backend_name, F.relu, yn)
    np.testing.assert_array_equal(yy, yn)


@given(x=any_finite())
def test_step_is_zero_or_one(backend_name: str, x: np.ndarray) -> None:
    _, y = run(backend_name, F.step, x)
    assert set(np.unique(y)) <= {0.0, 1.0}
    np.testing.assert_array_equal(y, (x > 0).astype(x.dtype))


@given(x=any_finite())
def test_tanh_odd_and_bounded(backend_name: str, x: np.ndarray) -> None:
    _, y = run(backend_name, F.tanh, x)
    _, yneg = run(backend_name, F.tanh, -x)
    assert (np.abs(y) <= 1).all()
    np.testing.assert_array_equal(yneg, -y)


@pytest.mark.parametrize(
    "fn", [F.sigmoid, F.relu, F.tanh, F.step, F.identity, F.softmax, F.log_softmax]
)
def test_nan_in_nan_out(backend_name: str, fn) -> None:
    x = np.array([[np.nan, 1.0, -1.0]], dtype=np.float32)
    with mf.backend.use(backend_name) as b, warnings.catch_warnings():
        warnings.simplefilter("error")
        y = mf.to_numpy(fn(b.asarray(x)))
    assert np.isnan(y[0, 0])
    if fn not in (F.softmax, F.log_softmax):  # elementwise: the rest is untouched
        assert not np.isnan(y[0, 1:]).any()


@pytest.mark.parametrize("rows", [2, 3, 50])  # the transposed (narrow) softmax path
def test_softmax_nan_or_inf_stays_in_its_own_row(backend_name: str, rows: int) -> None:
    x = np.random.default_rng(0).standard_normal((rows, 10)).astype(np.float32)
    x[0, 3] = np.nan
    x[1, :] = -np.inf  # every logit -inf: NaN, as exp(-inf - -inf)
    x[-1, 2] = np.inf if rows > 2 else x[-1, 2]
    with mf.backend.use(backend_name) as b, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # inf - inf is the point here
        y = mf.to_numpy(F.softmax(b.asarray(x)))
    assert np.isnan(y[0]).all() and np.isnan(y[1]).all()
    middle = y[2:-1] if rows > 2 else y[2:]
    assert np.isfinite(middle).all()
    np.testing.assert_allclose(middle.sum(axis=1), 1, rtol=1e-6)
    if rows > 2:  # +inf dominates its row: NaN there (inf - inf), never elsewhere
        assert np.isnan(y[-1, 2])


def test_integer_and_list_inputs_become_float32() -> None:
    for fn in (F.sigmoid, F.relu, F.step, F.softmax):
        y = fn([1, 2, 3])
        assert y.dtype == np.float32, fn.__name__
        assert fn(np.arange(3)).dtype == np.float32


def test_input_not_modified() -> None:
    x = np.array([[1.0, -2.0, 3.0]], dtype=np.float32)
    before = x.copy()
    for fn in (F.sigmoid, F.relu, F.tanh, F.step, F.softmax, F.log_softmax):
        fn(x)
    np.testing.assert_array_equal(x, before)


def test_non_numeric_input_is_a_clear_type_error() -> None:
    with pytest.raises(TypeError, match="numeric"):
        F.sigmoid(np.array(["a", "b"]))


@given(
    x=FLOAT_DTYPES.flatmap(
        lambda dt: hnp.arrays(
            dt,
            st.tuples(st.integers(1, 9), st.integers(1, 40)),  # both sides of NARROW_SOFTMAX
            elements=st.floats(-50, 50, width=8 * np.dtype(dt).itemsize),
        )
    )
)
def test_softmax_row_bits_do_not_depend_on_the_batch(backend_name: str, x: np.ndarray) -> None:
    _, y = run(backend_name, F.softmax, x)
    for i in range(x.shape[0]):
        _, yi = run(backend_name, F.softmax, x[i : i + 1])
        np.testing.assert_array_equal(yi[0], y[i])
        _, vi = run(backend_name, F.softmax, x[i].copy())  # a 1-D vector: one row
        np.testing.assert_array_equal(vi, y[i])
    _, y3 = run(backend_name, F.softmax, x.reshape(1, *x.shape))  # a batch of batches
    np.testing.assert_array_equal(y3[0], y)
    np.testing.assert_allclose(y.sum(axis=1), 1, rtol=(x.shape[1] + 2) * np.finfo(x.dtype).eps)
