"""``Dropout``: inverted dropout (Srivastava et al.; the book's ``Dropout``, rescaled)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import _random
from .module import Module


class Dropout(Module):
    """Zero each input element with probability ``p`` in training and scale the survivors
    by ``1 / (1 - p)`` ("inverted" dropout, as Keras and PyTorch), so the expected value
    is unchanged; in eval mode (``predict``) it is the identity. The book's ``Dropout``
    instead keeps the survivors unscaled in training and multiplies by ``1 - p`` at test
    time: the same model in expectation, different weights once trained.

    Args:
        p: the probability of dropping an element, ``0 <= p < 1`` (default 0.5).

    The masks are drawn with NumPy from minifw's seeded generator (inside ``fit``, a
    generator seeded from ``fit``'s ``seed``; elsewhere ``mf.seed``'s), then moved to the
    backend, so every engine draws the same masks and ``fit(seed=n)`` is reproducible.

    Shapes: any input shape; the output has the input's shape.
    """

    _rowwise = True  # eval mode: the identity

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        ok = isinstance(p, (int, float, np.floating, np.integer)) and not isinstance(p, bool)
        if not ok or not (0.0 <= float(p) < 1.0) or math.isnan(float(p)):
            raise ValueError(f"Dropout: p must be a number in [0, 1), got {p!r}")
        self.p = float(p)
        self._mask: Any = None

    def _forward(self, x: Any, owned: bool, train: bool) -> tuple[Any, bool]:
        if not train or self.p == 0.0:
            if train:
                self._mask = ()  # backward passes the gradient through
            return x, owned
        b = self._b
        keep = _random.layer_rng().random(tuple(int(s) for s in x.shape)) >= self.p
        dt = b.dtype_name(x)
        mask = b.asarray(keep.astype(dt) * np.asarray(1.0 / (1.0 - self.p), dt), dt)
        self._mask = mask
        return b.dropout_apply(x, mask, owned), True

    def _backward(self, grad: Any, need_input_grad: bool) -> Any:
        mask = self._need_cache(self._mask)
        if isinstance(mask, tuple):
            return grad
        self._check_grad(grad, tuple(mask.shape))
        return self._b.dropout_apply(grad, mask, False)

    def _clear_cache(self) -> None:
        self._mask = None

    def _describe(self) -> str:
        return f"Dropout p={self.p:g}"

    def output_shape(self, shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return shape

    def extra_repr(self) -> str:
        return f"p={self.p:g}"

    def get_config(self) -> dict[str, Any]:
        return {"p": self.p}
