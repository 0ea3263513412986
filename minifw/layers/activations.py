"""Activation layers: each forward sits beside its backward, both operations of the backend.

Forward runs in place on an array the layer owns (the fresh output of the Dense before
it) where the engine can write in place, and on a new array otherwise. In training mode
the layer keeps its output ``y``, from which every derivative here is computed. Shapes:
any input shape; the output has the input's shape.
"""

from __future__ import annotations

from typing import Any

from ..errors import ShapeError
from .module import Module


class _Activation(Module):
    """An elementwise function whose derivative is a function of its output ``y``.

    ``op`` names the backend operation (``backend.<op>`` forward, ``<op>_backward``)."""

    op = ""
    _rowwise = True

    def __init__(self) -> None:
        super().__init__()
        self._y: Any = None

    def _forward(self, x: Any, owned: bool, train: bool) -> tuple[Any, bool]:
        y = self._b.activate(self.op, x, owned)
        if train:
            self._y = y
            return y, False
        return y, True

    def _backward(self, grad: Any, need_input_grad: bool) -> Any:
        y = self._need_cache(self._y)
        self._check_grad(grad, y.shape)
        return getattr(self._b, self.op + "_backward")(y, grad)

    def _clear_cache(self) -> None:
        self._y = None

    def output_shape(self, shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return shape


class Sigmoid(_Activation):
    """``1 / (1 + exp(-x))``, computed without overflow. Backward: ``dy * y * (1 - y)``."""

    op = "sigmoid"


class Tanh(_Activation):
    """Hyperbolic tangent. Backward: ``dy * (1 - y**2)``."""

    op = "tanh"


class ReLU(_Activation):
    """``max(x, 0)`` (NaN passes through). Backward: ``dy`` where ``y > 0``, else 0."""

    op = "relu"
    #: a max-pool right after it gives the same values and gradients when it runs first
    #: (``fit`` then runs the ReLU on the pooled, smaller array); a subclass that changes
    #: what the layer computes must set this to False
    _commutes_with_max_pool = True


class Step(_Activation):
    """Heaviside step: 1 where ``x > 0`` else 0. Its gradient is zero everywhere."""

    op = "step"

    def _forward(self, x: Any, owned: bool, train: bool) -> tuple[Any, bool]:
        y = self._b.step(x, owned)
        if train:
            self._y = y
        return y, True  # the kept y is never read in place, only its shape

    def _backward(self, grad: Any, need_input_grad: bool) -> Any:
        y = self._need_cache(self._y)
        self._check_grad(grad, y.shape)
        return self.xp.zeros_like(grad)


class Identity(Module):
    """Passes its input through unchanged (its gradient too)."""

    _rowwise = True

    def _forward(self, x: Any, owned: bool, train: bool) -> tuple[Any, bool]:
        return x, owned

    def _backward(self, grad: Any, need_input_grad: bool) -> Any:
        return grad

    def output_shape(self, shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return shape


class Softmax(_Activation):
    """Softmax along ``axis`` (default: the last, so each row of a batch sums to 1).

    Backward is the full Jacobian-vector product ``y * (dy - sum(y * dy, axis))``.
    When a model ending in Softmax is trained with cross-entropy, ``fit`` skips this
    backward and sends ``(p - t) / N`` to the layer below, which is stabler and cheaper.
    """

    op = "softmax"

    def __init__(self, axis: int = -1) -> None:
        super().__init__()
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise TypeError(f"Softmax: axis must be an int, got {axis!r}")
        self.axis = axis
        self._rowwise = axis == -1 or axis > 0  # not across the batch axis

    def _forward(self, x: Any, owned: bool, train: bool) -> tuple[Any, bool]:
        nd = len(x.shape)
        if not -nd <= self.axis < nd:
            raise ShapeError(
                f"{self._where()}: axis {self.axis} is out of range for input {tuple(x.shape)}"
            )
        y = self._b.softmax(x, owned, self.axis)
        if train:
            self._y = y
            return y, False
        return y, True

    def _backward(self, grad: Any, need_input_grad: bool) -> Any:
        y = self._need_cache(self._y)
        self._check_grad(grad, y.shape)
        return self._b.softmax_backward(y, grad, self.axis)

    def extra_repr(self) -> str:
        return "" if self.axis == -1 else f"axis={self.axis}"

    def get_config(self) -> dict[str, Any]:
        return {"axis": self.axis}
