"""``Dense``: the affine layer ``y = x @ W + b``, W stored (in_features, out_features)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import _gemm, _random
from ..errors import ShapeError
from .module import Module

_INITS = ("he", "xavier", "glorot", "lecun", "zeros")


def _dtype_name(dtype: Any) -> str:
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = str(dtype)
    if name not in ("float32", "float64"):
        raise TypeError(f"Dense dtype must be float32 or float64, got {dtype!r}")
    return name


class Dense(Module):
    """Fully connected layer ``y = x @ weight + bias``.

    ``weight`` has shape ``(in_features, out_features)`` as in Keras and the book;
    ``bias`` has shape ``(out_features,)``. A 1-D input of length ``in_features`` gives a
    1-D output; ``(N, in_features)`` gives ``(N, out_features)``.

    ``init``: ``"he"`` (normal, std sqrt(2/in)), ``"xavier"``/``"glorot"``/``"lecun"``
    (normal, std sqrt(1/in)), ``"zeros"``, or a float std. Drawn from minifw's seeded
    NumPy generator (``mf.seed``), so identical on every backend. Biases start at zero.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool = True,
        init: str | float = "he",
        dtype: Any = "float32",
    ) -> None:
        super().__init__()
        for nm, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"Dense: {nm} must be a positive int, got {v!r}")
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.use_bias = bool(bias)
        self.init = init
        self._dtype_name = _dtype_name(dtype)
        self.param_names = ("weight", "bias") if bias else ("weight",)
        if isinstance(init, str):
            if init not in _INITS:
                raise ValueError(
                    f"Dense: unknown init {init!r}; choose one of {_INITS} or a float std"
                )
            std = {"he": math.sqrt(2.0 / in_features), "zeros": 0.0}.get(
                init, math.sqrt(1.0 / in_features)
            )
        elif isinstance(init, (int, float)) and not isinstance(init, bool) and init >= 0:
            std = float(init)
        else:
            raise ValueError(f"Dense: init must be a name or a non-negative float, got {init!r}")
        w = _random.rng().standard_normal((self.in_features, self.out_features)) * std
        b = self.backend
        self._weight: Any = b.asarray(w.astype(self._dtype_name), self._dtype_name)
        self._bias: Any = (
            b.asarray(np.zeros(self.out_features, self._dtype_name), self._dtype_name)
            if bias
            else None
        )
        self._x: Any = None  # the last training-mode input

    # -- parameters ----------------------------------------------------------------
    @property
    def weight(self) -> Any:
        return self._weight

    @weight.setter
    def weight(self, value: Any) -> None:
        self.set_param("weight", value)

    @property
    def bias(self) -> Any:
        return self._bias

    @bias.setter
    def bias(self, value: Any) -> None:
        if not self.use_bias:
            raise AttributeError(f"{self._where()} was built with bias=False")
        self.set_param("bias", value)

    @property
    def dtype(self) -> str:
        return self._dtype_name

    # -- forward / backward ------------------------------------------------------------
    def _forward(self, x: Any, owned: bool, train: bool) -> tuple[Any, bool]:
        shape = x.shape
        if not shape or shape[-1] != self.in_features:
            self._bad_input(shape)
        if train:
            self._x = x
        w, b = self._weight, self._bias
        if self._fast and b is not None:
            n = self.out_features
            rows = x.size // self.in_features if self.in_features else 0
            # big outputs on NumPy: the bias first, then GEMM adds x @ W to it (one pass
            # fewer than matmul + add; the fast plan does the same, so the bits agree)
            if rows * n >= _gemm.MIN_ELEMS and type(x) is np.ndarray and x.dtype == w.dtype:
                if w.dtype in _gemm.funcs():
                    y = np.empty(shape[:-1] + (n,), dtype=w.dtype)
                    x2 = x.reshape(rows, self.in_features)
                    if _gemm.addmm(x2, w, y.reshape(rows, n), 1.0, b):
                        return y, True
            y = x @ w
            y += b
            return y, True
        y = x @ w
        if self._fast:
            return y, True
        return (y + self._bias if self._bias is not None else y), True

    def _bad_input(self, shape: tuple[int, ...]) -> None:
        raise ShapeError(
            f"{self._where()} expects input (..., {self.in_features}), got {tuple(shape)}"
        )

    def _backward(self, grad: Any, need_input_grad: bool) -> Any:
        x = self._need_cache(self._x)
        xp = self.backend.xp
        gshape = tuple(grad.shape)
        if gshape != tuple(x.shape[:-1]) + (self.out_features,):
            raise ShapeError(
                f"{self._where()}: backward expects a gradient of shape "
                f"{tuple(x.shape[:-1]) + (self.out_features,)}, got {gshape}"
            )
        x2 = xp.reshape(x, (-1, self.in_features))
        g2 = xp.reshape(grad, (-1, self.out_features))
        if self.backend.fast:
            dw = self.grads.get("weight")
            if dw is None or dw.dtype != x2.dtype:
                dw = self.grads["weight"] = xp.empty_like(self._weight)
            xp.matmul(x2.T, g2, out=dw)
            if self._bias is not None:
                db = self.grads.get("bias")
                if db is None or db.dtype != x2.dtype:
                    db = self.grads["bias"] = xp.empty_like(self._bias)
                xp.sum(g2, axis=0, out=db)
        else:
            self.grads["weight"] = xp.matrix_transpose(x2) @ g2
            if self._bias is not None:
                self.grads["bias"] = xp.sum(g2, axis=0)
        if not need_input_grad:
            return None
        if self.backend.fast:
            return grad @ self._weight.T
        return grad @ xp.matrix_transpose(self._weight)

    def _clear_cache(self) -> None:
        self._x = None

    # -- description ---------------------------------------------------------------
    def _describe(self) -> str:
        return f"Dense {self.in_features}→{self.out_features}"

    def _out_shape(self, shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        if shape and shape[-1] is not None and shape[-1] != self.in_features:
            self._bad_input(tuple(s if s is not None else -1 for s in shape))
        return tuple(shape[:-1]) + (self.out_features,)

    def extra_repr(self) -> str:
        s = f"{self.in_features}, {self.out_features}"
        if not self.use_bias:
            s += ", bias=False"
        if self._dtype_name != "float32":
            s += f", dtype={self._dtype_name}"
        return s

    def get_config(self) -> dict[str, Any]:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.use_bias,
            "dtype": self._dtype_name,
        }
