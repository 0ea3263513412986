"""Activation and output functions, on any backend.

Each function takes an array of any engine (or a list / NumPy array) and returns an
array of the same engine. NumPy and CuPy take a fast path of ufuncs; every other engine
takes the portable Array API path. Integer and boolean inputs are computed in float32.

All are numerically safe for any input and never warn: ``sigmoid`` is
``1 / (1 + exp(-x))``, where ``exp`` may overflow to ``inf`` for very negative ``x``
(below about -88.7 in float32) and ``1 / (1 + inf)`` is the exact limit 0 (the overflow
warning of that one call is silenced on NumPy; the portable path clamps ``x`` at the
dtype's largest finite ``exp`` argument instead, so there it gives a tiny positive value
such as 6e-39 where the exact result underflows); ``softmax`` and ``log_softmax``
subtract the per-row maximum first. NaN in gives NaN out.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import backend as _backend
from .backend import Backend

__all__ = ["log_softmax", "relu", "sigmoid", "softmax", "step", "tanh", "identity"]


def _prep(x: Any) -> tuple[Backend, Any]:
    b = _backend.backend_of(x)
    if b is None:  # list, scalar: the current backend
        b = _backend.current()
    return b, b.asarray(x)


# Each op has an in-place fast form (NumPy/CuPy, on an array the caller owns) and a
# portable form. Layers call these directly with ``inplace`` when they own the array.


def sigmoid_(b: Backend, x: Any, inplace: bool) -> Any:
    # 1 / (1 + exp(-x)): one exp per element, about twice as fast on the CPU as the
    # tanh form 0.5 * tanh(x / 2) + 0.5, and more accurate for negative x (no 1 - 1
    # cancellation). minifw._fast repeats these exact steps, so the two give the same bits.
    xp = b.xp
    if b.fast:
        one = b.consts(x.dtype)[1]
        y = xp.negative(x, out=x if inplace else None)
        with np.errstate(over="ignore"):  # exp(89.) is inf in float32: 1 / (1 + inf) = 0
            xp.exp(y, out=y)
        xp.add(y, one, out=y)
        xp.divide(one, y, out=y)
        return y
    # no overflow at all: clamp at the largest whole argument whose exp is finite
    lo = -88.0 if b.dtype_name(x) == "float32" else -709.0
    return 1 / (1 + xp.exp(-xp.clip(x, min=lo)))


_ZERO_ROWS: dict[tuple[str, int], Any] = {}


def zero_row(b: Backend, x: Any) -> Any:
    """Zeros to compare ``x`` with in ``maximum``: on NumPy, a read-only row as long as the
    last axis when that is 32 or more (NumPy's ``maximum`` with a broadcast 0-d operand
    misses its vector loop: a row is 2-4x faster); else the 0-d zero. Same bits either way.
    """
    return zeros_for_width(b, x.shape[-1] if x.ndim else 0, x.dtype)


def zeros_for_width(b: Backend, n: int, dtype: Any) -> Any:
    """:func:`zero_row` for rows ``n`` wide of ``dtype``."""
    if b.name != "numpy" or n < 32:
        return b.consts(dtype)[2]
    dtype = np.dtype(dtype)
    key = (dtype.str, n)
    z = _ZERO_ROWS.get(key)
    if z is None:
        if len(_ZERO_ROWS) >= 64:  # bounded: many different widths replace the old rows
            _ZERO_ROWS.clear()
        z = np.zeros(n, dtype=dtype)
        z.flags.writeable = False
        _ZERO_ROWS[key] = z
    return z


def tanh_(b: Backend, x: Any, inplace: bool) -> Any:
    if b.fast:
        return b.xp.tanh(x, out=x if inplace else None)
    return b.xp.tanh(x)


def relu_(b: Backend, x: Any, inplace: bool) -> Any:
    if b.fast:
        return b.xp.maximum(x, zero_row(b, x), out=x if inplace else None)  # NaN propagates
    xp = b.xp
    # NaN <= 0 is False: NaN passes; -0.0 becomes +0.0, as NumPy's maximum gives
    return xp.where(x <= 0, xp.zeros_like(x), x)


def step_(b: Backend, x: Any, inplace: bool) -> Any:
    xp = b.xp
    one = xp.ones_like(x)
    zero = xp.zeros_like(x)
    y = xp.where(x > 0, one, zero)
    return xp.where(xp.isnan(x), x, y)


#: Softmax rows at most this wide go through softmax_narrow_ on NumPy.
NARROW_SOFTMAX = 32


def softmax_narrow_(x: Any, out: Any, t: Any, col: Any) -> None:
    """Row softmax of a C-contiguous NumPy ``x`` of shape ``(n, w)``, ``w <= NARROW_SOFTMAX``,
    into ``out`` (may be ``x``), through the transposed scratch ``t`` ``(w, n)`` and the row
    ``col`` ``(1, n)``; for a single row, ``t`` is ``(1, w)`` and ``col`` ``(1, 1)``
    (see :func:`narrow_scratch_shapes`).

    Reducing a 10-wide row along the last axis costs NumPy about 50 ns per row; reduced
    along the first axis of the transposed copy, the max and the sum run as vector loops
    over all rows at once (2-3x faster in all, both copies included). Over the first axis
    of a ``(w, n)`` array with ``n >= 2`` NumPy adds the classes one after another; a single
    row (which NumPy would sum pairwise) takes a running sum, ``add.accumulate``, which adds
    in that same order. So each row gets the same bits in any batch. minifw._fast calls
    this same function.
    """
    n = x.shape[0]
    if n <= 1:
        if n == 1:  # one row: no transposes; the running sum adds in the same order
            max_reduce(x, 1, None, col, True)
            np.subtract(x, col, out)
            np.exp(out, out)
            np.add.accumulate(out, 1, None, t)
            np.divide(out, t[:, -1:], out)
        return
    np.copyto(t, x.T)
    max_reduce(t, 0, None, col, True)
    np.subtract(t, col, t)
    np.exp(t, t)
    add_reduce(t, 0, None, col, True)
    np.divide(t, col, t)
    np.copyto(out, t.T)


def narrow_scratch_shapes(n: int, w: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Shapes of the ``t`` and ``col`` scratch :func:`softmax_narrow_` takes for ``(n, w)``."""
    return ((1, w), (1, 1)) if n == 1 else ((w, n), (1, n))


max_reduce: Any = np.maximum.reduce  # positional: (array, axis, dtype, out, keepdims)
add_reduce: Any = np.add.reduce


def softmax_(b: Backend, x: Any, inplace: bool, axis: int = -1) -> Any:
    xp = b.xp
    if (
        b.name == "numpy"
        and x.ndim >= 1
        and axis in (-1, x.ndim - 1)
        and 0 < x.shape[-1] <= NARROW_SOFTMAX
        and x.flags.c_contiguous
    ):  # rows of any batch shape (a 1-D vector is one row): each row the same bits
        out = x if inplace else np.empty_like(x)
        x2 = x.reshape(-1, x.shape[-1])
        ts, cs = narrow_scratch_shapes(*x2.shape)
        softmax_narrow_(x2, out.reshape(x2.shape), np.empty(ts, x.dtype), np.empty(cs, x.dtype))
        return out
    if b.fast:  # methods: cheaper than the np.max / np.sum wrappers on small arrays
        y = xp.subtract(x, x.max(axis=axis, keepdims=True), out=x if inplace else None)
        xp.exp(y, out=y)
        y /= y.sum(axis=axis, keepdims=True)
        return y
    e = xp.exp(x - xp.max(x, axis=axis, keepdims=True))
    return e / xp.sum(e, axis=axis, keepdims=True)


def log_softmax_(b: Backend, x: Any, inplace: bool, axis: int = -1) -> Any:
    xp = b.xp
    z = x - xp.max(x, axis=axis, keepdims=True)
    return z - xp.log(xp.sum(xp.exp(z), axis=axis, keepdims=True))


def _check_axis(x: Any, axis: int, fn: str) -> None:
    nd = len(x.shape)
    if not isinstance(axis, int) or not -max(nd, 1) <= axis < max(nd, 1) or nd == 0:
        from .errors import ShapeError

        raise ShapeError(
            f"{fn}: axis {axis!r} is out of range for an input of shape {tuple(x.shape)}"
        )


def sigmoid(x: Any) -> Any:
    """Logistic sigmoid ``1 / (1 + exp(-x))``, in [0, 1], without overflow."""
    b, x = _prep(x)
    return sigmoid_(b, x, False)


def tanh(x: Any) -> Any:
    """Hyperbolic tangent."""
    b, x = _prep(x)
    return tanh_(b, x, False)


def relu(x: Any) -> Any:
    """``max(x, 0)``; NaN stays NaN."""
    b, x = _prep(x)
    return relu_(b, x, False)


def step(x: Any) -> Any:
    """Heaviside step: 1 where ``x > 0``, else 0 (NaN stays NaN), in the input's float dtype."""
    b, x = _prep(x)
    return step_(b, x, False)


def identity(x: Any) -> Any:
    """The input, converted to a float array of its engine."""
    return _prep(x)[1]


def softmax(x: Any, axis: int = -1) -> Any:
    """Softmax along ``axis`` (each row of a batch sums to 1), max-subtracted so ``exp``
    never overflows. Finite for any finite input; where one row spans more than the dtype's
    range, ``x - max`` rounds to ``-inf`` (giving the right 0) and NumPy may warn about it.
    """
    b, x = _prep(x)
    _check_axis(x, axis, "softmax")
    return softmax_(b, x, False, axis)


def log_softmax(x: Any, axis: int = -1) -> Any:
    """``log(softmax(x))`` computed stably by log-sum-exp."""
    b, x = _prep(x)
    _check_axis(x, axis, "log_softmax")
    return log_softmax_(b, x, False, axis)
