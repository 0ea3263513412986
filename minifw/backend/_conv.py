"""Convolution and pooling as backend operations: the portable (Array API) version.

:class:`ConvOps` is a mixin for :class:`~minifw.backend.Backend` classes: its methods use
only ``self.xp`` (the engine's Array API namespace) and the Array API standard (slicing,
``concat``, ``stack``, ``reshape``, ``permute_dims``, ``matmul``, ``tensordot``, ``where``,
``maximum``), never an in-place write, so they run on array_api_strict and on JAX, whose
arrays are immutable. :class:`~minifw.backend._conv_numpy.NumpyConvOps` overrides them with
faster NumPy code.

Conventions (the same for every method and engine):

* arrays are NCHW: ``x`` is ``(N, C, H, W)``; convolution weights are ``(F, C, kh, kw)``
  (the layout of "Deep Learning from Scratch", PyTorch and ONNX), the bias is ``(F,)``;
* ``kernel``, ``stride`` and ``padding`` are an ``int`` or an ``(h, w)`` pair of ints;
  padding is symmetric (``ph`` rows above and below, ``pw`` columns left and right), with
  zeros for convolution and average pooling, with ``-inf`` for max pooling;
* the output size is ``OH = (H + 2*ph - kh) // sh + 1`` (and the same for ``OW``): trailing
  rows/columns that no window reaches get a zero gradient;
* every result keeps the input's float dtype (float32 stays float32) and engine;
* bad shapes raise :class:`minifw.errors.ShapeError` naming the shapes; a non-int size is a
  ``TypeError``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..errors import ShapeError

Size2 = int | tuple[int, int]


def _pair(v: Size2, what: str) -> tuple[int, int]:
    """``v`` as an ``(h, w)`` pair of Python ints (``TypeError`` for anything else)."""
    if type(v) is int:  # the common cases first: this runs many times per inference call
        return v, v
    if type(v) is tuple and len(v) == 2 and type(v[0]) is int and type(v[1]) is int:
        return v[0], v[1]
    if isinstance(v, tuple | list):
        if len(v) != 2:
            raise TypeError(f"{what} must be an int or a pair of ints, got {v!r}")
        h, w = v
    else:
        h = w = v
    for s in (h, w):
        if isinstance(s, bool) or not isinstance(s, int):
            raise TypeError(f"{what} must be an int or a pair of ints, got {v!r}")
    return int(h), int(w)


def _shape(a: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in a.shape)


def out_size(size: int, k: int, s: int, p: int) -> int:
    """Output length of a window of ``k`` at stride ``s`` over ``size`` padded by ``p``."""
    return (size + 2 * p - k) // s + 1


def geometry(
    x_shape: tuple[int, ...], kernel: Size2, stride: Size2, padding: Size2, op: str
) -> tuple[int, int, int, int, int, int, int, int]:
    """Check a sliding-window op's sizes; return ``(kh, kw, sh, sw, ph, pw, OH, OW)``.

    ``x_shape`` must be ``(N, C, H, W)`` with ``C, H, W > 0``; kernel and stride sizes must be
    positive, paddings non-negative, and the kernel must fit in the padded input.
    """
    kh, kw = _pair(kernel, "kernel")
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    if len(x_shape) != 4:
        raise ShapeError(f"{op}: expected an input of shape (N, C, H, W), got {x_shape}")
    n, c, h, w = x_shape
    if c <= 0 or h <= 0 or w <= 0:
        raise ShapeError(f"{op}: input {x_shape} has an empty channel or spatial dimension")
    if kh <= 0 or kw <= 0:
        raise ShapeError(f"{op}: kernel size must be positive, got {(kh, kw)}")
    if sh <= 0 or sw <= 0:
        raise ShapeError(f"{op}: stride must be positive, got {(sh, sw)}")
    if ph < 0 or pw < 0:
        raise ShapeError(f"{op}: padding must be non-negative, got {(ph, pw)}")
    if kh > h + 2 * ph or kw > w + 2 * pw:
        raise ShapeError(
            f"{op}: kernel {(kh, kw)} is larger than the padded input: input {x_shape} "
            f"with padding {(ph, pw)} is {(h + 2 * ph, w + 2 * pw)} (H, W)"
        )
    return kh, kw, sh, sw, ph, pw, out_size(h, kh, sh, ph), out_size(w, kw, sw, pw)


def check_conv(
    x_shape: tuple[int, ...],
    w_shape: tuple[int, ...],
    b_shape: tuple[int, ...] | None,
    stride: Size2,
    padding: Size2,
) -> tuple[int, int, int, int, int, int, int, int]:
    """Check a convolution's shapes; return ``(kh, kw, sh, sw, ph, pw, OH, OW)``."""
    if len(w_shape) != 4:
        raise ShapeError(f"conv2d: expected weights of shape (F, C, kh, kw), got {w_shape}")
    if len(x_shape) == 4 and x_shape[1] != w_shape[1]:
        raise ShapeError(
            f"conv2d: input {x_shape} has {x_shape[1]} channels but weights {w_shape} "
            f"expect {w_shape[1]} (weights are (F, C, kh, kw))"
        )
    if w_shape[0] <= 0:
        raise ShapeError(f"conv2d: weights {w_shape} have no filters")
    if b_shape is not None and b_shape != (w_shape[0],):
        raise ShapeError(
            f"conv2d: bias of shape {b_shape} does not match weights {w_shape}: "
            f"expected ({w_shape[0]},)"
        )
    return geometry(x_shape, (w_shape[2], w_shape[3]), stride, padding, "conv2d")


def check_grad(grad_shape: tuple[int, ...], expected: tuple[int, ...], op: str) -> None:
    if grad_shape != expected:
        raise ShapeError(f"{op}: grad has shape {grad_shape}, expected {expected}")


class ConvOps:
    """Convolution (im2col + one matmul) and pooling on any Array API namespace ``self.xp``.

    Mix into a :class:`~minifw.backend.Backend` (or any object with an ``xp`` attribute).
    Nothing here writes into an array.
    """

    xp: Any

    activate: Callable[..., Any]  # Ops.activate(name, x, inplace)

    # -- helpers ----------------------------------------------------------------
    def _full(self, shape: tuple[int, ...], value: float, like: Any) -> Any:
        """An array of ``shape`` filled with ``value``, of ``like``'s dtype and device."""
        xp = self.xp
        dev = getattr(like, "device", None)
        if dev is None:  # NumPy < 2 has no device keyword
            return xp.full(shape, value, dtype=like.dtype)
        return xp.full(shape, value, dtype=like.dtype, device=dev)

    def _pad(self, x: Any, top: int, bottom: int, left: int, right: int, value: float) -> Any:
        """``x`` (..., H, W) with rows/columns of ``value`` added around its last two axes."""
        xp = self.xp
        if top or bottom:
            lead, w = _shape(x)[:-2], _shape(x)[-1]
            parts = [x]
            if top:
                parts.insert(0, self._full((*lead, top, w), value, x))
            if bottom:
                parts.append(self._full((*lead, bottom, w), value, x))
            x = xp.concat(parts, axis=-2)
        if left or right:
            lead = _shape(x)[:-1]
            parts = [x]
            if left:
                parts.insert(0, self._full((*lead, left), value, x))
            if right:
                parts.append(self._full((*lead, right), value, x))
            x = xp.concat(parts, axis=-1)
        return x

    @staticmethod
    def _window(xp_: Any, i: int, j: int, sh: int, sw: int, oh: int, ow: int) -> Any:
        """The (N, C, OH, OW) slice of padded ``xp_`` seen by kernel position ``(i, j)``."""
        return xp_[:, :, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw]

    def _col2im(
        self,
        block: Any,
        x_shape: tuple[int, ...],
        kh: int,
        kw: int,
        sh: int,
        sw: int,
        ph: int,
        pw: int,
    ) -> Any:
        """Sum window contributions back onto the input grid, without in-place writes.

        ``block(i, j)`` is the (N, C, OH, OW) gradient that kernel position ``(i, j)`` sends
        to padded rows ``i + sh*oh`` and columns ``j + sw*ow``. Row ``i = sh*q + r`` lands in
        the phase-``r`` sub-grid (rows ``r, r+sh, ...``) at offset ``q``; the positions of one
        phase are summed there (each padded to the sub-grid with ``concat``), then the
        ``sh*sw`` sub-grids are interleaved with ``stack`` + ``reshape`` and the padding is
        cropped. Work: ``kh*kw`` additions of a sub-grid of ``Hp*Wp/(sh*sw)`` per image.
        """
        xp = self.xp
        n, c, h, w = x_shape
        first = block(0, 0)
        oh, ow = _shape(first)[2:]
        hp, wp = h + 2 * ph, w + 2 * pw
        qh = max(oh + (kh - 1) // sh, -(-hp // sh))
        qw = max(ow + (kw - 1) // sw, -(-wp // sw))
        zero = None
        rows = []
        for rh in range(sh):
            cols = []
            for rw in range(sw):
                acc = None
                for i in range(rh, kh, sh):
                    for j in range(rw, kw, sw):
                        b = first if i == 0 and j == 0 else block(i, j)
                        qi, qj = i // sh, j // sw
                        b = self._pad(b, qi, qh - oh - qi, qj, qw - ow - qj, 0.0)
                        acc = b if acc is None else acc + b
                if acc is None:
                    if zero is None:
                        zero = self._full((n, c, qh, qw), 0.0, first)
                    acc = zero
                cols.append(acc)
            # (N, C, qh, qw, sw) -> (N, C, qh, qw*sw): column p*sw + rw
            rows.append(xp.reshape(xp.stack(cols, axis=-1), (n, c, qh, qw * sw)))
        # (N, C, qh, sh, qw*sw) -> (N, C, qh*sh, qw*sw): row q*sh + rh
        full = xp.reshape(xp.stack(rows, axis=3), (n, c, qh * sh, qw * sw))
        return full[:, :, ph : ph + h, pw : pw + w]

    def _im2col(
        self, x: Any, kh: int, kw: int, sh: int, sw: int, ph: int, pw: int, oh: int, ow: int
    ) -> Any:
        """``x`` (N, C, H, W) as its (N, C*kh*kw, OH*OW) im2col matrix (one batch's worth).

        Row ``c*kh*kw + i*kw + j`` matches ``w.reshape(F, C*kh*kw)``'s column order.
        """
        xp = self.xp
        n, c = _shape(x)[:2]
        xp_ = self._pad(x, ph, ph, pw, pw, 0.0)
        wins = [self._window(xp_, i, j, sh, sw, oh, ow) for i in range(kh) for j in range(kw)]
        return xp.reshape(xp.stack(wins, axis=2), (n, c * kh * kw, oh * ow))

    # -- convolution --------------------------------------------------------------
    def conv2d(
        self,
        x: Any,
        w: Any,
        b: Any | None,
        stride: Size2,
        padding: Size2,
        act: str | None = None,
    ) -> Any:
        """2-D cross-correlation (what deep-learning frameworks call convolution).

        ``x`` (N, C, H, W), ``w`` (F, C, kh, kw), ``b`` (F,) or ``None`` ->
        ``y`` (N, F, OH, OW) with ``y[n, f] = sum_c x[n, c] * w[f, c] + b[f]`` (windowed).
        Implemented as im2col (N, C*kh*kw, OH*OW) and one broadcast matmul. ``act``: an
        elementwise activation applied to the result (``"relu"``, ``"sigmoid"``, ``"tanh"``,
        ``"step"``), the same bits as ``activate(act, conv2d(...))``; engines fuse it.
        """
        if act == "softmax":
            raise ValueError("conv2d: act must be an elementwise activation, not softmax")
        xp = self.xp
        kh, kw, sh, sw, ph, pw, oh, ow = check_conv(
            _shape(x), _shape(w), None if b is None else _shape(b), stride, padding
        )
        n, f = _shape(x)[0], _shape(w)[0]
        cols = self._im2col(x, kh, kw, sh, sw, ph, pw, oh, ow)
        y = xp.matmul(xp.reshape(w, (f, -1)), cols)  # (F, K) @ (N, K, L) -> (N, F, L)
        if b is not None:
            y = y + xp.reshape(b, (1, f, 1))
        y = xp.reshape(y, (n, f, oh, ow))
        return y if act is None else self.activate(act, y, True)

    def conv2d_backward(
        self,
        grad: Any,
        x: Any,
        w: Any,
        stride: Size2,
        padding: Size2,
        need_input_grad: bool = True,
    ) -> tuple[Any | None, Any, Any]:
        """Gradients of :meth:`conv2d`: ``(dx or None, dw, db)`` for ``grad = dL/dy``.

        ``grad`` is (N, F, OH, OW); ``dx`` has ``x``'s shape (``None`` when
        ``need_input_grad`` is false, e.g. for a network's first layer), ``dw`` has ``w``'s
        shape and ``db`` is (F,) (always returned; ignore it for a bias-free layer).
        The im2col matrix of ``x`` is recomputed, not kept from the forward pass.
        """
        xp = self.xp
        kh, kw, sh, sw, ph, pw, oh, ow = check_conv(_shape(x), _shape(w), None, stride, padding)
        n, c = _shape(x)[:2]
        f = _shape(w)[0]
        check_grad(_shape(grad), (n, f, oh, ow), "conv2d_backward")
        g = xp.reshape(grad, (n, f, oh * ow))
        db = xp.sum(g, axis=(0, 2))
        cols = self._im2col(x, kh, kw, sh, sw, ph, pw, oh, ow)
        dw = xp.reshape(xp.tensordot(g, cols, axes=([0, 2], [0, 2])), _shape(w))
        del cols
        if not need_input_grad:
            return None, dw, db
        w2t = xp.permute_dims(xp.reshape(w, (f, c * kh * kw)), (1, 0))
        dcols = xp.reshape(xp.matmul(w2t, g), (n, c, kh * kw, oh, ow))  # (N, K, L)
        dx = self._col2im(
            lambda i, j: dcols[:, :, i * kw + j, ...], _shape(x), kh, kw, sh, sw, ph, pw
        )
        return dx, dw, db

    def conv_chain(self, x: Any, steps: Sequence[tuple[Any, ...]]) -> Any:
        """Consecutive convolutions and max-pools on ``x`` (N, C, H, W), for inference.

        ``steps``: ``("conv", w, b, stride, padding, act)`` (as :meth:`conv2d`) or
        ``("maxpool", kernel, stride, padding)`` (as :meth:`maxpool2d_values`). The result
        is that of those calls in turn (here: exactly those calls); engines may keep the
        intermediate results in another layout (NumPy: channels-last, a max-pool done on
        each chunk of its convolution's output while in cache), equal up to rounding.
        """
        for st in steps:
            if st[0] == "conv":
                x = self.conv2d(x, *st[1:])
            elif st[0] == "maxpool":
                x = self.maxpool2d_values(x, *st[1:])
            else:
                raise ValueError(f"conv_chain: unknown step {st[0]!r} (expected conv, maxpool)")
        return x

    def conv_chain_kernels(self, steps: Sequence[tuple[Any, ...]]) -> list[str | None]:
        """For each step of :meth:`conv_chain`, the name of the compiled kernel that an
        engine runs it on (``None``: its array operations); here none."""
        return [None] * len(steps)

    # -- pooling ------------------------------------------------------------------
    def maxpool2d(self, x: Any, kernel: Size2, stride: Size2, padding: Size2) -> tuple[Any, Any]:
        """Max pooling: ``(y, argmax)``, both (N, C, OH, OW).

        Padding is ``-inf`` (it never wins unless a window is all padding, which PyTorch
        forbids by requiring ``padding <= kernel // 2``). ``argmax`` is an integer array
        holding, per output element, the flat index ``i*kw + j`` of the winning position
        inside its window (row ``i``, column ``j``); pass it to :meth:`maxpool2d_backward`.
        Ties go to the first maximum in row-major window order (like ``np.argmax`` in the
        book's ``Pooling`` layer). NaNs are not propagated specially.
        """
        xp = self.xp
        kh, kw, sh, sw, ph, pw, oh, ow = geometry(_shape(x), kernel, stride, padding, "maxpool2d")
        xp_ = self._pad(x, ph, ph, pw, pw, float("-inf"))
        y = self._window(xp_, 0, 0, sh, sw, oh, ow)
        am = xp.zeros(_shape(y), dtype=xp.int32, **_dev(y))
        for k in range(1, kh * kw):
            s = self._window(xp_, k // kw, k % kw, sh, sw, oh, ow)
            am = xp.where(s > y, xp.asarray(k, dtype=xp.int32, **_dev(y)), am)
            y = xp.maximum(y, s)
        return y, am

    def maxpool2d_values(self, x: Any, kernel: Size2, stride: Size2, padding: Size2) -> Any:
        """The ``y`` of :meth:`maxpool2d` without its argmax (for inference)."""
        xp = self.xp
        kh, kw, sh, sw, ph, pw, oh, ow = geometry(_shape(x), kernel, stride, padding, "maxpool2d")
        xp_ = self._pad(x, ph, ph, pw, pw, float("-inf"))
        y = self._window(xp_, 0, 0, sh, sw, oh, ow)
        for k in range(1, kh * kw):
            y = xp.maximum(y, self._window(xp_, k // kw, k % kw, sh, sw, oh, ow))
        return y

    def maxpool2d_backward(
        self,
        grad: Any,
        argmax: Any,
        x_shape: tuple[int, ...],
        kernel: Size2,
        stride: Size2,
        padding: Size2,
    ) -> Any:
        """Gradient of :meth:`maxpool2d`: each ``grad`` element goes to its window's argmax.

        Overlapping windows (stride < kernel) accumulate; positions in the padding are
        dropped. Returns ``dx`` of shape ``x_shape``.
        """
        xp = self.xp
        x_shape = tuple(int(s) for s in x_shape)
        kh, kw, sh, sw, ph, pw, oh, ow = geometry(x_shape, kernel, stride, padding, "maxpool2d")
        expected = (*x_shape[:2], oh, ow)
        check_grad(_shape(grad), expected, "maxpool2d_backward")
        check_grad(_shape(argmax), expected, "maxpool2d_backward (argmax)")
        zero = xp.zeros_like(grad)
        return self._col2im(
            lambda i, j: xp.where(argmax == i * kw + j, grad, zero), x_shape, kh, kw, sh, sw, ph, pw
        )

    def avgpool2d(self, x: Any, kernel: Size2, stride: Size2, padding: Size2) -> Any:
        """Average pooling; padded zeros count in the divisor (``kh*kw`` always), as in
        PyTorch's default ``count_include_pad=True``. Returns (N, C, OH, OW)."""
        kh, kw, sh, sw, ph, pw, oh, ow = geometry(_shape(x), kernel, stride, padding, "avgpool2d")
        xp_ = self._pad(x, ph, ph, pw, pw, 0.0)
        y = self._window(xp_, 0, 0, sh, sw, oh, ow)
        for k in range(1, kh * kw):
            y = y + self._window(xp_, k // kw, k % kw, sh, sw, oh, ow)
        return y * (1.0 / (kh * kw))

    def avgpool2d_backward(
        self, grad: Any, x_shape: tuple[int, ...], kernel: Size2, stride: Size2, padding: Size2
    ) -> Any:
        """Gradient of :meth:`avgpool2d`: ``grad / (kh*kw)`` spread over each window."""
        x_shape = tuple(int(s) for s in x_shape)
        kh, kw, sh, sw, ph, pw, oh, ow = geometry(x_shape, kernel, stride, padding, "avgpool2d")
        check_grad(_shape(grad), (*x_shape[:2], oh, ow), "avgpool2d_backward")
        g = grad * (1.0 / (kh * kw))
        return self._col2im(lambda i, j: g, x_shape, kh, kw, sh, sw, ph, pw)


def _dev(like: Any) -> dict[str, Any]:
    """``{"device": like.device}`` where the array has one (NumPy < 2 has none)."""
    dev = getattr(like, "device", None)
    return {} if dev is None else {"device": dev}
