"""Pooling layers over NCHW images: ``MaxPool2D`` (the book's ``Pooling``), ``AvgPool2D``
and ``GlobalAvgPool2D``; forward beside backward, both backend operations."""

from __future__ import annotations

from typing import Any

from ..errors import ShapeError
from .conv import size_pair, spatial_out
from .module import Module


class _Pool2D(Module):
    """A sliding-window pooling; ``op`` names the backend operation (``<op>`` forward,
    ``<op>_backward``)."""

    op = ""
    _rowwise = True  # eval mode: each sample's output depends on that sample only
    _batch_parallel = True  # windowed passes: worth splitting over the batch in training

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.kernel_size = size_pair(name, "kernel_size", kernel_size)
        self.stride = self.kernel_size if stride is None else size_pair(name, "stride", stride)
        self.padding = size_pair(name, "padding", padding, 0)
        for p, k in zip(self.padding, self.kernel_size, strict=True):
            if p > k // 2:
                raise ValueError(
                    f"{name}: padding {self.padding} must be at most half the kernel "
                    f"{self.kernel_size} (as in PyTorch: a window must not lie in the padding)"
                )
        self._cache: Any = None

    def _check_input(self, shape: tuple[int, ...]) -> None:
        if len(shape) != 4:
            raise ShapeError(
                f"{self._where()} expects input (N, C, H, W) or one sample (C, H, W), "
                f"got {tuple(shape)}"
            )
        spatial_out(self._where(), shape, self.kernel_size, self.stride, self.padding)

    def _forward(self, x: Any, owned: bool, train: bool) -> tuple[Any, bool]:
        one = len(x.shape) == 3
        if one:
            x = self.xp.reshape(x, (1, *tuple(x.shape)))
        self._check_input(tuple(x.shape))
        y, keep = self._pool(x, train)
        if train:
            self._cache = (tuple(int(s) for s in x.shape), keep, one)
        if one:
            y = self.xp.reshape(y, tuple(y.shape[1:]))
        return y, True

    def _backward(self, grad: Any, need_input_grad: bool) -> Any:
        x_shape, keep, one = self._need_cache(self._cache)
        if one and len(grad.shape) == 3:
            grad = self.xp.reshape(grad, (1, *tuple(grad.shape)))
        oh, ow = spatial_out(self._where(), x_shape, self.kernel_size, self.stride, self.padding)
        self._check_grad(grad, (*x_shape[:2], oh, ow))  # type: ignore[arg-type]
        dx = self._unpool(grad, keep, x_shape)
        return self.xp.reshape(dx, x_shape[1:]) if one else dx

    def _pool(self, x: Any, train: bool) -> tuple[Any, Any]:
        """``(y, what the backward needs)``."""
        raise NotImplementedError

    def _unpool(self, grad: Any, keep: Any, x_shape: tuple[int, ...]) -> Any:
        raise NotImplementedError

    def _clear_cache(self) -> None:
        self._cache = None

    def _describe(self) -> str:
        kh, kw = self.kernel_size
        return f"{type(self).__name__} {kh}x{kw}"

    def output_shape(self, shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        if len(shape) != 4:
            shown = tuple(-1 if s is None else s for s in shape)
            raise ShapeError(f"{self._where()} expects input (N, C, H, W), got {shown}")
        oh, ow = spatial_out(self._where(), shape, self.kernel_size, self.stride, self.padding)
        return (shape[0], shape[1], oh, ow)

    def extra_repr(self) -> str:
        s = f"kernel_size={self.kernel_size}"
        if self.stride != self.kernel_size:
            s += f", stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        return s

    def get_config(self) -> dict[str, Any]:
        return {
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
            "padding": list(self.padding),
        }


class MaxPool2D(_Pool2D):
    """Max pooling: each output is the largest input in its window, per channel (the
    book's ``Pooling``; PyTorch's ``nn.MaxPool2d``).

    Args:
        kernel_size: window ``kh`` = ``kw``, or a pair ``(kh, kw)``.
        stride: step between windows, an int or a pair (default: ``kernel_size``).
        padding: ``-inf`` rows/columns added on each side, at most half the kernel
            (default 0).

    Shapes: ``(N, C, H, W)`` (or ``(C, H, W)``) -> ``(N, C, OH, OW)`` with
    ``OH = (H + 2*ph - kh) // sh + 1`` (the padding counts, unlike the book's ``Pooling``,
    whose output size ignores ``pad``). Backward sends each gradient to the first maximum
    of its window (row-major order, like ``np.argmax`` in the book); overlapping windows
    add up.
    """

    def _pool(self, x: Any, train: bool) -> tuple[Any, Any]:
        b, k, s, p = self._b, self.kernel_size, self.stride, self.padding
        if not train:  # no argmax to keep
            return b.maxpool2d_values(x, k, s, p), None
        return b.maxpool2d(x, k, s, p)  # type: ignore[no-any-return]

    #: it takes the maximum of each window (see ReLU._commutes_with_max_pool); a subclass
    #: that changes what the layer computes must set this to False
    _is_max_pool = True

    def _chain_step(self) -> tuple[Any, ...]:
        """This layer as a step of the backend's ``conv_chain`` (inference)."""
        return ("maxpool", self.kernel_size, self.stride, self.padding)

    def _unpool(self, grad: Any, keep: Any, x_shape: tuple[int, ...]) -> Any:
        return self._b.maxpool2d_backward(
            grad, keep, x_shape, self.kernel_size, self.stride, self.padding
        )


class AvgPool2D(_Pool2D):
    """Average pooling: each output is the mean of its window, per channel (PyTorch's
    ``nn.AvgPool2d``).

    Args:
        kernel_size: window ``kh`` = ``kw``, or a pair ``(kh, kw)``.
        stride: step between windows, an int or a pair (default: ``kernel_size``).
        padding: zero rows/columns added on each side, at most half the kernel (default 0).
            The padded zeros count in the mean (the divisor is always ``kh*kw``), as in
            PyTorch's default ``count_include_pad=True``.

    Shapes: ``(N, C, H, W)`` (or ``(C, H, W)``) -> ``(N, C, OH, OW)`` with
    ``OH = (H + 2*ph - kh) // sh + 1``. Backward spreads ``grad / (kh*kw)`` over each window.
    """

    def _pool(self, x: Any, train: bool) -> tuple[Any, Any]:
        return self._b.avgpool2d(x, self.kernel_size, self.stride, self.padding), None

    def _unpool(self, grad: Any, keep: Any, x_shape: tuple[int, ...]) -> Any:
        return self._b.avgpool2d_backward(
            grad, x_shape, self.kernel_size, self.stride, self.padding
        )


class GlobalAvgPool2D(Module):
    """The mean of each channel over the whole image (Keras' ``GlobalAveragePooling2D``;
    PyTorch's ``AdaptiveAvgPool2d(1)`` followed by a flatten).

    Shapes: ``(N, C, H, W)`` -> ``(N, C)``; one sample ``(C, H, W)`` -> ``(C,)``. Backward
    spreads ``grad / (H*W)`` over each channel.
    """

    _rowwise = True

    def __init__(self) -> None:
        super().__init__()
        self._shape: tuple[int, ...] | None = None

    def _forward(self, x: Any, owned: bool, train: bool) -> tuple[Any, bool]:
        nd = len(x.shape)
        if nd not in (3, 4) or any(int(s) == 0 for s in x.shape[-2:]):
            raise ShapeError(
                f"{self._where()} expects input (N, C, H, W) or one sample (C, H, W) with "
                f"H, W > 0, got {tuple(x.shape)}"
            )
        if train:
            self._shape = tuple(int(s) for s in x.shape)
        return self.xp.mean(x, axis=(nd - 2, nd - 1)), True

    def _backward(self, grad: Any, need_input_grad: bool) -> Any:
        shape = self._need_cache(self._shape)
        self._check_grad(grad, shape[:-2])
        xp = self.xp
        g = xp.reshape(grad, (*shape[:-2], 1, 1)) * (1.0 / (shape[-1] * shape[-2]))
        return g + xp.zeros(shape, dtype=grad.dtype, **_device(grad))

    def _clear_cache(self) -> None:
        self._shape = None

    def output_shape(self, shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        if len(shape) != 4:
            shown = tuple(-1 if s is None else s for s in shape)
            raise ShapeError(f"{self._where()} expects input (N, C, H, W), got {shown}")
        return tuple(shape[:2])


def _device(like: Any) -> dict[str, Any]:
    dev = getattr(like, "device", None)
    return {} if dev is None else {"device": dev}
