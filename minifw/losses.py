"""Loss functions, each with a hand-written backward pass.

A loss is an object: ``value = loss(pred, target)`` computes the mean loss over the batch
(a Python float) and keeps what its backward needs; ``loss.backward()`` then returns
dL/d(pred), an array of ``pred``'s backend. Targets for cross-entropy are class indices
(shape ``(N,)``, integers) or one-hot / probability rows (shape ``(N, C)``, rows summing
to 1); MSE targets have the prediction's shape.

``softmax_cross_entropy`` is the fused form ``fit`` uses when a model ends in Softmax: the
loss comes from the logits by log-sum-exp, and the gradient ``(p - t) / N`` goes straight
to the layer below the Softmax.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import backend as _backend
from ._convert import to_numpy
from .backend import Backend
from .errors import ShapeError

__all__ = ["CrossEntropy", "Loss", "MSE", "get", "softmax_cross_entropy"]


def _backend_for(x: Any) -> Backend:
    b = _backend.backend_of(x)
    return b if b is not None else _backend.current()


def _check_target(pred: Any, target: Any, b: Backend, what: str) -> bool:
    """Validate a cross-entropy target against ``pred`` (N, C); True for class indices."""
    if len(pred.shape) != 2:
        raise ShapeError(f"{what}: expects predictions of shape (N, C), got {tuple(pred.shape)}")
    if b.is_index(target):
        if target.shape[0] != pred.shape[0]:
            raise ShapeError(
                f"{what}: {target.shape[0]} class indices for {pred.shape[0]} predictions"
            )
        return True
    if tuple(target.shape) != tuple(pred.shape):
        raise ShapeError(
            f"{what}: target must be class indices of shape ({pred.shape[0]},) or one-hot "
            f"rows of shape {tuple(pred.shape)}, got shape {tuple(target.shape)} "
            f"(dtype {target.dtype})"
        )
    return False


def softmax_cross_entropy(
    b: Backend, z: Any, target: Any, owned: bool = False, need_grad: bool = True
) -> tuple[Any, Any]:
    """Mean cross-entropy of ``softmax(z)`` against ``target``, and its gradient wrt ``z``
    (the backend's ``softmax_cross_entropy`` operation).

    ``z``: logits ``(N, C)``; ``target``: class indices ``(N,)`` (integers, on backend
    ``b``) or probability rows ``(N, C)``. Returns ``(loss, grad)``: the loss as a 0-d
    array of the backend (not yet synchronised) and ``(softmax(z) - t) / N`` (``None``
    when ``need_grad`` is false). With ``owned`` the backend may work in ``z``'s memory.
    """
    return b.softmax_cross_entropy(z, target, owned, need_grad)


class Loss:
    """Base class: ``loss(pred, target) -> float``, then ``loss.backward() -> dL/dpred``."""

    name = "loss"

    def __init__(self) -> None:
        self._grad: Any = None

    def __call__(self, pred: Any, target: Any) -> float:
        return self.forward(pred, target)

    def forward(self, pred: Any, target: Any) -> float:
        """Mean loss over the batch; keeps what :meth:`backward` needs."""
        b = _backend_for(pred)
        pred = b.asarray(pred)
        if self._keeps_int(b, target):
            target = _as_index(b, target)
        else:
            target = b.asarray(target, b.dtype_name(pred))
        value, grad = self._compute(b, pred, target)
        self._grad = grad
        return float(value)

    def backward(self) -> Any:
        """dL/d(pred) of the last :meth:`forward` (a new array each call)."""
        if self._grad is None:
            raise RuntimeError(f"{type(self).__name__}.backward() needs a forward() call first")
        return self._grad

    def _keeps_int(self, b: Backend, target: Any) -> bool:
        return False

    def _compute(self, b: Backend, pred: Any, target: Any, check: bool = True) -> tuple[Any, Any]:
        """(loss as a 0-d backend array, dL/dpred); ``check=False`` skips target checks."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _as_index(b: Backend, target: Any) -> Any:
    """Integer class indices on backend ``b`` (kept integral, not cast to float)."""
    if b.is_native(target):
        return target
    return b.from_numpy(np.ascontiguousarray(to_numpy(target)))


def _int_like(target: Any) -> bool:
    shape = getattr(target, "shape", None)
    if shape is None:
        target = np.asarray(target)
        shape = target.shape
    kind = str(getattr(target, "dtype", "")).lower()
    return len(shape) == 1 and ("int" in kind)


class CrossEntropy(Loss):
    """Mean categorical cross-entropy ``-sum(t * log p) / N``.

    ``from_logits=False`` (default): ``pred`` are probabilities (the output of a Softmax);
    they are clipped to ``[eps, 1]`` before the log, and backward returns
    ``-t / (p N)`` (zero where ``p`` was clipped), which a Softmax's own backward turns
    into ``(p - t) / N``. ``from_logits=True``: ``pred`` are logits; the loss is computed
    by log-sum-exp and backward returns ``(softmax(pred) - t) / N`` directly.
    """

    name = "cross_entropy"

    def __init__(self, from_logits: bool = False, eps: float = 1e-7) -> None:
        super().__init__()
        self.from_logits = bool(from_logits)
        self.eps = float(eps)

    def _keeps_int(self, b: Backend, target: Any) -> bool:
        return _int_like(target)

    def _compute(self, b: Backend, pred: Any, target: Any, check: bool = True) -> tuple[Any, Any]:
        index = _check_target(pred, target, b, "CrossEntropy")
        if index and check:
            _check_index_range(b, target, pred.shape[1], "CrossEntropy")
        if self.from_logits:
            return softmax_cross_entropy(b, pred, target)
        xp = b.xp
        n, c = pred.shape
        t = b.one_hot(target, c, pred.dtype) if index else target
        p = xp.clip(pred, self.eps, 1.0)
        loss = -xp.sum(t * xp.log(p)) / n
        inside = xp.astype((pred >= self.eps) & (pred <= 1.0), pred.dtype)  # clip's gradient
        grad = -(t / p) * inside / n
        return loss, grad

    def __repr__(self) -> str:
        return f"CrossEntropy(from_logits={self.from_logits})"


def _check_index_range(b: Backend, target: Any, n_classes: int, what: str) -> None:
    xp = b.xp
    if target.shape[0] == 0:
        return
    lo, hi = int(xp.min(target)), int(xp.max(target))
    if lo < 0 or hi >= n_classes:
        bad = lo if lo < 0 else hi
        raise ValueError(
            f"{what}: class index {bad} is out of range for {n_classes} classes "
            f"(valid: 0..{n_classes - 1})"
        )


class MSE(Loss):
    """Mean squared error over every element: ``mean((pred - t)**2)``.

    Backward: ``2 (pred - t) / pred.size``. The target must have ``pred``'s shape.
    """

    name = "mse"

    def _compute(self, b: Backend, pred: Any, target: Any, check: bool = True) -> tuple[Any, Any]:
        if tuple(target.shape) != tuple(pred.shape):
            raise ShapeError(
                f"MSE: target shape {tuple(target.shape)} does not match the prediction "
                f"shape {tuple(pred.shape)}"
            )
        xp = b.xp
        d = pred - target
        size = math.prod(pred.shape)
        return xp.sum(d * d) / size, d * (2.0 / size)


_NAMES = {
    "cross_entropy": CrossEntropy,
    "categorical_crossentropy": CrossEntropy,
    "sparse_categorical_crossentropy": CrossEntropy,
    "crossentropy": CrossEntropy,
    "mse": MSE,
    "mean_squared_error": MSE,
}


def get(loss: str | Loss) -> Loss:
    """A :class:`Loss` from a name (``"cross_entropy"``, ``"mse"``) or an instance."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str) and loss.lower() in _NAMES:
        return _NAMES[loss.lower()]()
    raise ValueError(f"unknown loss {loss!r}; choose one of {sorted(_NAMES)} or a Loss instance")
