"""``Flatten``: ``(N, d1, d2, ...)`` -> ``(N, d1*d2*...)``, keeping the batch axis."""

from __future__ import annotations

import math
from typing import Any

from ..errors import ShapeError
from .module import Module


class Flatten(Module):
    """Flatten every axis after the first (the batch axis), as Keras and PyTorch do, in C
    order (as the book's ``Affine`` does): ``(N, C, H, W)`` -> ``(N, C*H*W)``.

    A 1-D or 2-D input is returned unchanged. Backward reshapes the gradient back.
    """

    _rowwise = True

    def __init__(self) -> None:
        super().__init__()
        self._shape: tuple[int, ...] | None = None

    def _forward(self, x: Any, owned: bool, train: bool) -> tuple[Any, bool]:
        shape = tuple(x.shape)
        if not shape:
            raise ShapeError(f"{self._where()} expects an array with a batch axis, got a scalar")
        if train:
            self._shape = shape
        if len(shape) <= 2:
            return x, owned
        return self.xp.reshape(x, (shape[0], math.prod(shape[1:]))), owned

    def _backward(self, grad: Any, need_input_grad: bool) -> Any:
        shape = self._need_cache(self._shape)
        if int(math.prod(grad.shape)) != math.prod(shape):
            raise ShapeError(
                f"{self._where()}: backward gradient {tuple(grad.shape)} does not match the "
                f"forward input {shape}"
            )
        return self.xp.reshape(grad, shape)

    def _clear_cache(self) -> None:
        self._shape = None

    def output_shape(self, shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        if len(shape) <= 2:
            return shape
        rest = shape[1:]
        return (shape[0], None if None in rest else math.prod(rest))  # type: ignore[arg-type]
