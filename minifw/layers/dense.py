"""``Dense``: the affine layer ``y = x @ W + b``, W stored (in_features, out_features)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import _random
from ..errors import ShapeError
from .module import Module

_INITS = ("he", "xavier", "glorot", "lecun", "zeros")


def dtype_name(dtype: Any, layer: str) -> str:
    """``"float32"`` or ``"float64"`` for a dtype given by name or object (else TypeError)."""
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = str(dtype)
    if name not in ("float32", "float64"):
        raise TypeError(f"{layer} dtype must be float32 or float64, got {dtype!r}")
    return name


def init_std(init: Any, fan_in: int, layer: str) -> float:
    """The standard deviation of the normal initial weights for ``init`` (a name or a
    non-negative finite float) and ``fan_in`` inputs per output."""
    if isinstance(init, str):
        if init not in _INITS:
            raise ValueError(
                f"{layer}: unknown init {init!r}; choose one of {_INITS} or a float std"
            )
        return {"he": math.sqrt(2.0 / fan_in), "zeros": 0.0}.get(init, math.sqrt(1.0 / fan_in))
    if (
        isinstance(init, (int, float, np.floating, np.integer))
        and not isinstance(init, bool)
        and math.isfinite(init)
        and init >= 0
    ):
        return float(init)
    raise ValueError(f"{layer}: init must be a name or a non-negative finite float, got {init!r}")


def positive_int(layer: str, name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{layer}: {name} must be a positive int, got {v!r}")
    return int(v)


class Dense(Module):
    """Fully connected layer ``y = x @ weight + bias``.

    Args:
        in_features: size of each input sample's last axis.
        out_features: size of each output sample's last axis.
        bias: learn an additive bias (default ``True``).
        init: ``"he"`` (normal, std sqrt(2/in)), ``"xavier"``/``"glorot"``/``"lecun"``
            (normal, std sqrt(1/in)), ``"zeros"``, or a float std. Drawn from minifw's seeded
            NumPy generator (``mf.seed``), so identical on every backend. Biases start at 0.
        dtype: ``"float32"`` (default) or ``"float64"``.

    Shapes: ``(..., in_features)`` -> ``(..., out_features)``; a 1-D input of length
    ``in_features`` gives a 1-D output. ``weight`` is ``(in_features, out_features)`` as in
    Keras and the book; ``bias`` is ``(out_features,)``.
    """

    weight: Any
    bias: Any  # None when built with bias=False
    _rowwise = True

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
        self.in_features = positive_int("Dense", "in_features", in_features)
        self.out_features = positive_int("Dense", "out_features", out_features)
        self.use_bias = bool(bias)
        self.init = init
        self._dtype_name = dtype_name(dtype, "Dense")
        std = init_std(init, self.in_features, "Dense")
        w = _random.rng().standard_normal((self.in_features, self.out_features)) * std
        self.add_parameter("weight", w.astype(self._dtype_name))
        if bias:
            self.add_parameter("bias", np.zeros(self.out_features, self._dtype_name))
        else:
            self.__dict__["bias"] = None
        self._x: Any = None  # the last training-mode input

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "bias" and not self.__dict__.get("use_bias", True):
            raise AttributeError(f"{self._where()} was built with bias=False")
        super().__setattr__(name, value)

    @property
    def dtype(self) -> str:
        return self._dtype_name

    # -- forward / backward ------------------------------------------------------------
    def _forward(self, x: Any, owned: bool, train: bool) -> tuple[Any, bool]:
        if not x.shape or x.shape[-1] != self.in_features:
            self._bad_input(x.shape)
        if train:
            self._x = x
        return self._b.linear(x, self.weight, self.bias), True

    def _linear(self, x: Any, out: Any, act: str | None) -> Any:
        """The inference plan's step: ``act(x @ W + b)`` into ``out`` (same bits as
        ``_forward`` followed by the activation layer)."""
        return self._b.linear(x, self.weight, self.bias, out, act)

    def _bad_input(self, shape: tuple[int, ...]) -> None:
        raise ShapeError(
            f"{self._where()} expects input (..., {self.in_features}), got {tuple(shape)}"
        )

    def _backward(self, grad: Any, need_input_grad: bool) -> Any:
        x = self._need_cache(self._x)
        self._check_grad(grad, tuple(x.shape[:-1]) + (self.out_features,))
        return self._b.linear_backward(
            x, self.weight, grad, self.grads, self.use_bias, need_input_grad
        )

    def _clear_cache(self) -> None:
        self._x = None

    # -- description -------------------------------------------------------------------
    def _describe(self) -> str:
        return f"Dense {self.in_features}→{self.out_features}"

    def output_shape(self, shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        if not shape or (shape[-1] is not None and shape[-1] != self.in_features):
            self._bad_input(tuple(s if s is not None else -1 for s in shape))
        return tuple(shape[:-1]) + (self.out_features,)

    def input_shape(self) -> tuple[int | None, ...]:
        return (None, self.in_features)

    @classmethod
    def declared_parameters(cls, config: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
        n_in, n_out = config.get("in_features"), config.get("out_features")
        if not (isinstance(n_in, int) and isinstance(n_out, int) and n_in > 0 and n_out > 0):
            return {}
        dt = "float64" if config.get("dtype") == "float64" else "float32"
        out: dict[str, tuple[tuple[int, ...], str]] = {"weight": ((n_in, n_out), dt)}
        if config.get("bias", True):
            out["bias"] = ((n_out,), dt)
        return out

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
