"""``Conv2D``: 2-D convolution (cross-correlation) over NCHW images, the book's ``Convolution``."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _random
from ..errors import ShapeError
from .dense import dtype_name, init_std, positive_int
from .module import Module


def size_pair(layer: str, name: str, v: Any, minimum: int = 1) -> tuple[int, int]:
    """``v`` (an int or a pair of ints, each ``>= minimum``) as an ``(h, w)`` pair."""
    items = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    ok = len(items) == 2 and all(
        not isinstance(s, bool) and isinstance(s, (int, np.integer)) and s >= minimum for s in items
    )
    if not ok:
        what = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"{layer}: {name} must be a {what} int or a pair of them, got {v!r}")
    return int(items[0]), int(items[1])


def spatial_out(
    where: str,
    shape: tuple[int | None, ...],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
) -> tuple[int | None, int | None]:
    """``(OH, OW)`` for an input ``(..., H, W)`` (``None`` stays unknown); a kernel larger
    than the padded input is a ShapeError naming the layer."""
    out: list[int | None] = []
    for size, k, s, p, axis in zip(shape[-2:], kernel, stride, padding, "HW", strict=True):
        if size is None:
            out.append(None)
            continue
        if size < 1 or k > size + 2 * p:
            raise ShapeError(
                f"{where}: kernel {kernel} is larger than the padded input: input "
                f"{axis}={size} with padding {p} is {size + 2 * p}"
            )
        out.append((size + 2 * p - k) // s + 1)
    return out[0], out[1]


class Conv2D(Module):
    """2-D convolution: ``y[n, f] = sum_c x[n, c] ⋆ weight[f, c] + bias[f]`` (what deep-
    learning frameworks call convolution: a cross-correlation), as the book's
    ``Convolution`` layer and PyTorch's ``nn.Conv2d``.

    Args:
        in_channels: channels ``C`` of the input.
        out_channels: filters ``F``, the output's channels.
        kernel_size: ``kh`` = ``kw``, or a pair ``(kh, kw)``.
        stride: step between windows, an int or a pair (default 1).
        padding: zeros added on each side of the height and width, an int or a pair
            (default 0).
        bias: learn an additive per-filter bias (default ``True``).
        init: ``"he"`` (normal, std sqrt(2/fan_in)), ``"xavier"``/``"glorot"``/``"lecun"``
            (std sqrt(1/fan_in)), ``"zeros"`` or a float std; ``fan_in = C*kh*kw``. Drawn
            from minifw's seeded generator (``mf.seed``). Biases start at 0.
        dtype: ``"float32"`` (default) or ``"float64"``.

    Shapes: input ``(N, C, H, W)`` (or one sample ``(C, H, W)``) -> ``(N, F, OH, OW)`` (or
    ``(F, OH, OW)``) with ``OH = (H + 2*ph - kh) // sh + 1`` and likewise ``OW``.
    ``weight`` is ``(F, C, kh, kw)`` (the book's and PyTorch's layout), ``bias`` ``(F,)``.

    On NumPy the convolution runs in chunks of images whose im2col matrix stays in cache
    (see ``minifw.backend._conv_numpy``).
    """

    weight: Any
    bias: Any  # None when built with bias=False
    _rowwise = True  # eval mode: each sample's output depends on that sample only
    #: its training work is mostly outside BLAS (gathers): worth splitting over the batch
    _batch_parallel = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        *,
        bias: bool = True,
        init: str | float = "he",
        dtype: Any = "float32",
    ) -> None:
        super().__init__()
        self.in_channels = positive_int("Conv2D", "in_channels", in_channels)
        self.out_channels = positive_int("Conv2D", "out_channels", out_channels)
        self.kernel_size = size_pair("Conv2D", "kernel_size", kernel_size)
        self.stride = size_pair("Conv2D", "stride", stride)
        self.padding = size_pair("Conv2D", "padding", padding, 0)
        self.use_bias = bool(bias)
        self.init = init
        self._dtype_name = dtype_name(dtype, "Conv2D")
        kh, kw = self.kernel_size
        std = init_std(init, self.in_channels * kh * kw, "Conv2D")
        shape = (self.out_channels, self.in_channels, kh, kw)
        w = _random.rng().standard_normal(shape) * std
        self.add_parameter("weight", w.astype(self._dtype_name))
        if bias:
            self.add_parameter("bias", np.zeros(self.out_channels, self._dtype_name))
        else:
            self.__dict__["bias"] = None
        self._x: Any = None  # the last training-mode input (N, C, H, W)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "bias" and not self.__dict__.get("use_bias", True):
            raise AttributeError(f"{self._where()} was built with bias=False")
        super().__setattr__(name, value)

    @property
    def dtype(self) -> str:
        return self._dtype_name

    # -- forward / backward ------------------------------------------------------------
    def _check_input(self, shape: tuple[int, ...]) -> None:
        if len(shape) != 4 or shape[1] != self.in_channels:
            raise ShapeError(
                f"{self._where()} expects input (N, {self.in_channels}, H, W) or one sample "
                f"({self.in_channels}, H, W), got {tuple(shape)}"
            )
        spatial_out(self._where(), shape, self.kernel_size, self.stride, self.padding)

    def _forward(self, x: Any, owned: bool, train: bool) -> tuple[Any, bool]:
        if train:
            self._x = x if len(x.shape) != 3 else self.xp.reshape(x, (1, *tuple(x.shape)))
        return self._conv(x), True

    def _conv(self, x: Any, act: str | None = None) -> Any:
        """``act(conv(x))`` (``act`` an elementwise activation or ``None``), one sample or a
        batch: the forward pass, and the inference plan's fused Conv2D + activation step
        (the same backend ``conv2d``, which applies ``act`` while each chunk is in cache)."""
        one = len(x.shape) == 3
        if one:
            x = self.xp.reshape(x, (1, *tuple(x.shape)))
        self._check_input(tuple(x.shape))
        y = self._b.conv2d(x, self.weight, self.bias, self.stride, self.padding, act)
        if one:
            y = self.xp.reshape(y, tuple(y.shape[1:]))
        return y

    def _chain_step(self, act: str | None = None) -> tuple[Any, ...]:
        """This layer with ``act`` after it as a step of the backend's ``conv_chain``."""
        return ("conv", self.weight, self.bias, self.stride, self.padding, act)

    def _backward(self, grad: Any, need_input_grad: bool) -> Any:
        x = self._need_cache(self._x)
        oh, ow = spatial_out(self._where(), x.shape, self.kernel_size, self.stride, self.padding)
        expect = (int(x.shape[0]), self.out_channels, oh, ow)
        one = len(grad.shape) == 3 and int(x.shape[0]) == 1
        if one:
            grad = self.xp.reshape(grad, (1, *tuple(grad.shape)))
        self._check_grad(grad, expect)  # type: ignore[arg-type]
        dx, dw, db = self._b.conv2d_backward(
            grad, x, self.weight, self.stride, self.padding, need_input_grad
        )
        self.grads["weight"] = dw
        if self.use_bias:
            self.grads["bias"] = db
        if dx is not None and one:
            dx = self.xp.reshape(dx, tuple(dx.shape[1:]))
        return dx

    def _clear_cache(self) -> None:
        self._x = None

    # -- description -------------------------------------------------------------------
    def _describe(self) -> str:
        kh, kw = self.kernel_size
        return f"Conv2D {self.in_channels}→{self.out_channels} {kh}x{kw}"

    def output_shape(self, shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        if len(shape) != 4 or shape[1] not in (None, self.in_channels):
            shown = tuple(-1 if s is None else s for s in shape)
            raise ShapeError(
                f"{self._where()} expects input (N, {self.in_channels}, H, W), got {shown}"
            )
        oh, ow = spatial_out(self._where(), shape, self.kernel_size, self.stride, self.padding)
        return (shape[0], self.out_channels, oh, ow)

    def input_shape(self) -> tuple[int | None, ...]:
        return (None, self.in_channels, None, None)

    @classmethod
    def declared_parameters(cls, config: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
        try:
            c = positive_int("Conv2D", "in_channels", config.get("in_channels"))
            f = positive_int("Conv2D", "out_channels", config.get("out_channels"))
            kh, kw = size_pair("Conv2D", "kernel_size", config.get("kernel_size"))
        except ValueError:
            return {}
        dt = "float64" if config.get("dtype") == "float64" else "float32"
        out: dict[str, tuple[tuple[int, ...], str]] = {"weight": ((f, c, kh, kw), dt)}
        if config.get("bias", True):
            out["bias"] = ((f,), dt)
        return out

    def extra_repr(self) -> str:
        kh, kw = self.kernel_size
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={(kh, kw)}"
        if self.stride != (1, 1):
            s += f", stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if not self.use_bias:
            s += ", bias=False"
        if self._dtype_name != "float32":
            s += f", dtype={self._dtype_name}"
        return s

    def get_config(self) -> dict[str, Any]:
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
            "padding": list(self.padding),
            "bias": self.use_bias,
            "dtype": self._dtype_name,
        }
