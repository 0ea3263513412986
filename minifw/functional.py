"""Activation and output functions, on any backend.

Each function takes an array of any engine (or a list / NumPy array) and returns an
array of the same engine, computed by that engine's backend operation (the same one the
layers call). Integer and boolean inputs are computed in float32.

All are numerically safe for any input and never warn: ``sigmoid`` is
``1 / (1 + exp(-x))``, where ``exp`` may overflow to ``inf`` for very negative ``x``
(below about -88.7 in float32) and ``1 / (1 + inf)`` is the exact limit 0 on NumPy and
CuPy (the generic Array API version clamps ``x`` at the dtype's largest finite ``exp``
argument instead, so there it gives a tiny positive value such as 6e-39 where the exact
result underflows); ``softmax`` and ``log_softmax`` subtract the per-row maximum first.
NaN in gives NaN out.
"""

from __future__ import annotations

from typing import Any

from . import backend as _backend
from .backend import Backend
from .errors import ShapeError

__all__ = ["identity", "log_softmax", "relu", "sigmoid", "softmax", "step", "tanh"]


def _prep(x: Any) -> tuple[Backend, Any]:
    b = _backend.backend_of(x)
    if b is None:  # list, scalar: the current backend
        b = _backend.current()
    return b, b.asarray(x)


def _check_axis(x: Any, axis: int, fn: str) -> None:
    nd = len(x.shape)
    if not isinstance(axis, int) or not -max(nd, 1) <= axis < max(nd, 1) or nd == 0:
        raise ShapeError(
            f"{fn}: axis {axis!r} is out of range for an input of shape {tuple(x.shape)}"
        )


def sigmoid(x: Any) -> Any:
    """Logistic sigmoid ``1 / (1 + exp(-x))``, in [0, 1], without overflow."""
    b, x = _prep(x)
    return b.sigmoid(x)


def tanh(x: Any) -> Any:
    """Hyperbolic tangent."""
    b, x = _prep(x)
    return b.tanh(x)


def relu(x: Any) -> Any:
    """``max(x, 0)``; NaN stays NaN."""
    b, x = _prep(x)
    return b.relu(x)


def step(x: Any) -> Any:
    """Heaviside step: 1 where ``x > 0``, else 0 (NaN stays NaN), in the input's float dtype."""
    b, x = _prep(x)
    return b.step(x)


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
    return b.softmax(x, False, axis)


def log_softmax(x: Any, axis: int = -1) -> Any:
    """``log(softmax(x))`` computed stably by log-sum-exp."""
    b, x = _prep(x)
    _check_axis(x, axis, "log_softmax")
    return b.log_softmax(x, axis)
