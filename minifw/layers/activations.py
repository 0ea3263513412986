"""Activation layers; each forward sits beside its backward twin.

Forward runs in place on an array the layer owns (the fresh output of the Dense before
it) on NumPy/CuPy, and on a new array otherwise. In training mode the layer keeps its
output ``y``, from which every derivative here is computed.
"""

from __future__ import annotations

from typing import Any

from .. import functional as F
from ..errors import ShapeError
from .module import Module


class _Activation(Module):
    """An elementwise function whose derivative is a function of its output ``y``."""

    _fn = staticmethod(F.sigmoid_)

    def __init__(self) -> None:
        super().__init__()
        self._y: Any = None

    def _forward(self, x: Any, owned: bool, train: bool) -> tuple[Any, bool]:
        y = self._fn(self._b, x, owned)
        if train:
            self._y = y
            return y, False
        return y, True

    def _check_grad(self, grad: Any, y: Any) -> None:
        if tuple(grad.shape) != tuple(y.shape):
            raise ShapeError(
                f"{self._where()}: backward expects a gradient of shape {tuple(y.shape)}, "
                f"got {tuple(grad.shape)}"
            )

    def _clear_cache(self) -> None:
        self._y = None


class Sigmoid(_Activation):
    """``1 / (1 + exp(-x))``, computed without overflow. Backward: ``dy * y * (1 - y)``."""

    _fn = staticmethod(F.sigmoid_)

    def _backward(self, grad: Any, need_input_grad: bool) -> Any:
        y = self._need_cache(self._y)
        self._check_grad(grad, y)
        if self.backend.fast:
            dx = 1.0 - y
            dx *= y
            dx *= grad
            return dx
        return grad * y * (1.0 - y)


class Tanh(_Activation):
    """Hyperbolic tangent. Backward: ``dy * (1 - y**2)``."""

    _fn = staticmethod(F.tanh_)

    def _backward(self, grad: Any, need_input_grad: bool) -> Any:
        y = self._need_cache(self._y)
        self._check_grad(grad, y)
        if self.backend.fast:
            dx = y * y
            self.backend.xp.subtract(1.0, dx, out=dx)
            dx *= grad
            return dx
        return grad * (1.0 - y * y)


class ReLU(_Activation):
    """``max(x, 0)`` (NaN passes through). Backward: ``dy`` where ``y > 0``, else 0."""

    _fn = staticmethod(F.relu_)

    def _backward(self, grad: Any, need_input_grad: bool) -> Any:
        y = self._need_cache(self._y)
        self._check_grad(grad, y)
        xp = self.backend.xp
        if self._fast:  # a multiply by the mask: 4-5x faster than where() on NumPy
            return xp.multiply(grad, y > 0)
        return xp.where(y > 0, grad, xp.zeros_like(grad))


class Step(_Activation):
    """Heaviside step: 1 where ``x > 0`` else 0. Its gradient is zero everywhere."""

    _fn = staticmethod(F.step_)

    def _forward(self, x: Any, owned: bool, train: bool) -> tuple[Any, bool]:
        y = self._fn(self._b, x, owned)
        if train:
            self._y = y
        return y, True  # the kept y is never read in place, only its shape

    def _backward(self, grad: Any, need_input_grad: bool) -> Any:
        y = self._need_cache(self._y)
        self._check_grad(grad, y)
        return self.backend.xp.zeros_like(grad)


class Identity(Module):
    """Passes its input through unchanged (its gradient too)."""

    def _forward(self, x: Any, owned: bool, train: bool) -> tuple[Any, bool]:
        return x, owned

    def _backward(self, grad: Any, need_input_grad: bool) -> Any:
        return grad


class Softmax(_Activation):
    """Softmax along ``axis`` (default: the last, so each row of a batch sums to 1).

    Backward is the full Jacobian-vector product ``y * (dy - sum(y * dy, axis))``.
    When a model ending in Softmax is trained with cross-entropy, ``fit`` skips this
    backward and sends ``(p - t) / N`` to the layer below, which is stabler and cheaper.
    """

    def __init__(self, axis: int = -1) -> None:
        super().__init__()
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise TypeError(f"Softmax: axis must be an int, got {axis!r}")
        self.axis = axis

    def _forward(self, x: Any, owned: bool, train: bool) -> tuple[Any, bool]:
        nd = len(x.shape)
        if not -nd <= self.axis < nd:
            raise ShapeError(
                f"{self._where()}: axis {self.axis} is out of range for input {tuple(x.shape)}"
            )
        y = F.softmax_(self._b, x, owned, self.axis)
        if train:
            self._y = y
            return y, False
        return y, True

    def _backward(self, grad: Any, need_input_grad: bool) -> Any:
        y = self._need_cache(self._y)
        self._check_grad(grad, y)
        xp = self.backend.xp
        yg = y * grad
        s = xp.sum(yg, axis=self.axis, keepdims=True)
        if self.backend.fast:
            dx = xp.multiply(y, s)
            xp.subtract(yg, dx, out=dx)
            return dx
        return yg - y * s

    def extra_repr(self) -> str:
        return "" if self.axis == -1 else f"axis={self.axis}"

    def get_config(self) -> dict[str, Any]:
        return {"axis": self.axis}
