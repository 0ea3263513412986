"""``BatchNorm``: batch normalisation (Ioffe & Szegedy; the book's ``BatchNormalization``),
with PyTorch's running statistics."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import ShapeError
from .dense import dtype_name, positive_int
from .module import Module


class BatchNorm(Module):
    """Normalise each feature (``(N, F)`` input) or channel (``(N, C, ...)``, e.g. images
    ``(N, C, H, W)``) to zero mean and unit variance, then scale by ``weight`` and shift by
    ``bias`` (learned, as PyTorch's ``BatchNorm1d`` / ``BatchNorm2d``).

    Args:
        num_features: ``F`` or ``C``, the size of axis 1.
        eps: added to the variance before the square root (default 1e-5).
        momentum: how far the running statistics move towards each batch's (default 0.1):
            ``running = (1 - momentum) * running + momentum * batch_stat``.
        dtype: ``"float32"`` (default) or ``"float64"``.

    In training mode (``fit``, or after ``model.train()``) the batch's mean and biased
    variance per channel normalise the input, and the running statistics are updated with
    the batch mean and the *unbiased* variance (exactly as PyTorch). In eval mode
    (``predict``) the running statistics normalise it, so each sample's output depends on
    that sample only.

    Parameters ``weight`` (starts at 1) and ``bias`` (starts at 0), ``(C,)``; buffers (saved
    with the model, moved by ``.to()``, never touched by optimizers) ``running_mean``
    (starts at 0) and ``running_var`` (starts at 1), ``(C,)``, keyed ``"<i>.running_mean"``
    and ``"<i>.running_var"`` in ``state_dict``.

    Shapes: ``(N, C, ...)`` -> the same shape; training needs more than one value per
    channel (``N * H * W > 1``).
    """

    weight: Any
    bias: Any
    running_mean: Any
    running_var: Any
    _rowwise = True  # in eval mode (the only mode the inference plan runs)
    _batch_parallel = True  # elementwise passes: worth splitting over the batch in training

    def __init__(
        self,
        num_features: int,
        *,
        eps: float = 1e-5,
        momentum: float = 0.1,
        dtype: Any = "float32",
    ) -> None:
        super().__init__()
        self.num_features = positive_int("BatchNorm", "num_features", num_features)
        self.eps = _float("eps", eps, lo=0.0, lo_open=True)
        self.momentum = _float("momentum", momentum, lo=0.0, hi=1.0)
        self._dtype_name = dtype_name(dtype, "BatchNorm")
        c, dt = self.num_features, self._dtype_name
        self.add_parameter("weight", np.ones(c, dt))
        self.add_parameter("bias", np.zeros(c, dt))
        self.add_buffer("running_mean", np.zeros(c, dt))
        self.add_buffer("running_var", np.ones(c, dt))
        self._cache: Any = None  # (xhat, inv_std) of the last training-mode forward

    @property
    def dtype(self) -> str:
        return self._dtype_name

    def _check_input(self, shape: tuple[int, ...]) -> None:
        if len(shape) < 2 or shape[1] != self.num_features:
            raise ShapeError(
                f"{self._where()} expects input (N, {self.num_features}) or "
                f"(N, {self.num_features}, H, W), got {tuple(shape)}"
            )

    def _check_train_input(self, shape: tuple[int, ...]) -> None:
        if math.prod(shape) // shape[1] < 2:
            raise ShapeError(
                f"{self._where()}: training needs more than one value per channel, got "
                f"input {shape}"
            )

    def _forward(self, x: Any, owned: bool, train: bool) -> tuple[Any, bool]:
        shape = tuple(int(s) for s in x.shape)
        self._check_input(shape)
        b = self._b
        if not train:
            y = b.batchnorm_eval(
                x, self.weight, self.bias, self.running_mean, self.running_var, self.eps
            )
            return y, True
        self._check_train_input(shape)
        y, xhat, inv_std, rm, rv = b.batchnorm_train(
            x, self.weight, self.bias, self.running_mean, self.running_var,
            self.momentum, self.eps,
        )  # fmt: skip
        self._assign("running_mean", rm)
        self._assign("running_var", rv)
        self._cache = (xhat, inv_std)
        return y, False

    def _backward(self, grad: Any, need_input_grad: bool) -> Any:
        xhat, inv_std = self._need_cache(self._cache)
        self._check_grad(grad, tuple(xhat.shape))
        dx, dgamma, dbeta = self._b.batchnorm_backward(
            grad, xhat, inv_std, self.weight, need_input_grad
        )
        self.grads["weight"] = dgamma
        self.grads["bias"] = dbeta
        return dx

    def _clear_cache(self) -> None:
        self._cache = None

    # -- description -------------------------------------------------------------------
    def _describe(self) -> str:
        return f"BatchNorm {self.num_features}"

    def output_shape(self, shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        if len(shape) < 2 or shape[1] not in (None, self.num_features):
            shown = tuple(-1 if s is None else s for s in shape)
            raise ShapeError(
                f"{self._where()} expects input (N, {self.num_features}, ...), got {shown}"
            )
        return shape

    def input_shape(self) -> tuple[int | None, ...]:
        return (None, self.num_features)

    @classmethod
    def declared_parameters(cls, config: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
        c = config.get("num_features")
        if isinstance(c, bool) or not isinstance(c, int) or c < 1:
            return {}
        dt = "float64" if config.get("dtype") == "float64" else "float32"
        return {k: ((c,), dt) for k in ("weight", "bias", "running_mean", "running_var")}

    def extra_repr(self) -> str:
        s = f"{self.num_features}"
        if self.eps != 1e-5:
            s += f", eps={self.eps}"
        if self.momentum != 0.1:
            s += f", momentum={self.momentum}"
        if self._dtype_name != "float32":
            s += f", dtype={self._dtype_name}"
        return s

    def get_config(self) -> dict[str, Any]:
        return {
            "num_features": self.num_features,
            "eps": self.eps,
            "momentum": self.momentum,
            "dtype": self._dtype_name,
        }


def _float(name: str, v: Any, lo: float, hi: float = math.inf, lo_open: bool = False) -> float:
    ok = isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)
    f = float(v) if ok else math.nan
    if not ok or not (f > lo if lo_open else f >= lo) or not f <= hi:
        bound = f"{'(' if lo_open else '['}{lo}, {hi}]"
        raise ValueError(f"BatchNorm: {name} must be a number in {bound}, got {v!r}")
    return f
