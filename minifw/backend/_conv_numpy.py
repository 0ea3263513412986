"""Convolution and pooling on NumPy: fast overrides of :class:`~minifw.backend._conv.ConvOps`.

* ``conv2d`` runs chunk by chunk: a chunk of images whose im2col matrix has about
  :data:`CHUNK_ELEMS` elements (2 MiB in float32, so it stays in cache from its gather
  to its GEMM) is gathered into a per-thread scratch buffer, multiplied by
  the weights in one GEMM, and its result written into the output with the bias. Nothing
  of the size of a whole batch's im2col matrix is ever allocated.

  - When a window row holds at least :data:`NHWC_MIN_RUN` elements (``C*kw``: in practice
    every layer but an image's first), the padded input is first copied channels-last
    (NHWC); a chunk's im2col matrix is then ``(pixels, kh*kw*C)``, gathered in runs of
    ``kw*C`` contiguous elements, and its GEMM ``(pixels, K) @ (K, F)`` is the shape
    OpenBLAS ran fastest here (1.05-1.35x the ``(F, K) @ (K, pixels)`` form at 16-64
    filters); the ``(pixels, F)`` result is transposed into the NCHW output while still in
    cache.
  - Otherwise (one or two input channels) the matrix is ``(C*kh*kw, pixels)``, gathered in
    runs of ``OW``, with one GEMM ``(F, K) @ (K, OH*OW)`` per image.

  Float32 stays float32 throughout (no float64 detour).
* ``conv2d_backward``: ``dw`` accumulates over the same chunks (one GEMM per image on
  ``grad`` as it is, summed);
  at stride 1, ``dx`` is the convolution of ``grad`` with the flipped, transposed kernel
  (``conv2d`` again, padded by ``kh-1-ph``); at other strides each chunk's
  ``dcols = w^T @ grad`` is added back onto the padded input grid (col2im: ``kh*kw``
  strided additions per chunk, no ``np.add.at``, no loop over images).
* ``conv_chain`` (the inference plan's runs of convolutions and max-pools): channels-last
  from the first GEMM to the end of the run, each max-pool done on its convolution's chunk.
* pooling: ``kh*kw`` strided slices of the padded input (running max / running sum); the
  max-pool's argmax is kept as the window index of each output.
* in a training step split over the batch (:mod:`._split`), ``conv2d``, the ``dw`` of
  ``conv2d_backward`` and the max-pool and its backward run a range of images per thread.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..errors import ShapeError
from . import _native_conv, _split
from ._conv import ConvOps, Size2, _pair, check_conv, check_grad, geometry

#: elements of one chunk's im2col matrix (at least one image per chunk)
CHUNK_ELEMS = 1 << 19
#: the same in ``conv_chain`` (inference: each chunk's GEMM, pool, bias and ReLU in turn;
#: DeepConvNet at batch 100 and 1,000 ran 1.7-4 % faster than at 2^19, 9 % slower at 2^21;
#: a training step 4 % slower)
CHAIN_CHUNK_ELEMS = 1 << 20
#: window rows of at least this many elements (``C*kw``) are gathered channels-last
NHWC_MIN_RUN = 8
#: per-thread scratch buffers up to this many elements are kept between calls
KEEP_ELEMS = 1 << 22


def _padded(x: np.ndarray, ph: int, pw: int, value: float) -> np.ndarray:
    """``x`` with ``ph`` rows / ``pw`` columns of ``value`` on each side (``x`` itself if none)."""
    if not ph and not pw:
        return x
    n, c, h, w = x.shape
    p = np.empty((n, c, h + 2 * ph, w + 2 * pw), dtype=x.dtype)
    if ph:
        p[:, :, :ph] = value
        p[:, :, ph + h :] = value
    if pw:
        p[:, :, ph : ph + h, :pw] = value
        p[:, :, ph : ph + h, pw + w :] = value
    p[:, :, ph : ph + h, pw : pw + w] = x
    return p


def _win(a: np.ndarray, i: int, j: int, sh: int, sw: int, oh: int, ow: int) -> np.ndarray:
    return a[:, :, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw]


def _maxpool_2x2(
    xp_: np.ndarray, sh: int, sw: int, oh: int, ow: int, y: np.ndarray, am: np.ndarray
) -> None:
    """A 2x2 max-pool with its argmax (the first maximum in row-major order) in pairs:
    each row's pair gives its maximum and column (``b > a``: ties keep the first), the
    second row wins only when its maximum is strictly larger. Four passes over strided
    views, the rest on contiguous int8/float32 temporaries; the window index is
    ``i0 + win1 * (2 + i1 - i0)`` in int8 arithmetic (``np.where`` on int8 operands ran
    0.5 ms at (50, 16, 28, 28), the arithmetic 0.03). Writes the maxima into ``y`` and the
    window indices into ``am``."""
    a, b = _win(xp_, 0, 0, sh, sw, oh, ow), _win(xp_, 0, 1, sh, sw, oh, ow)
    c, d = _win(xp_, 1, 0, sh, sw, oh, ow), _win(xp_, 1, 1, sh, sw, oh, ow)
    max4(a, b, c, d, y, am)


def max4(
    a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray, y: np.ndarray, am: np.ndarray
) -> None:
    """The maximum of the window positions ``a`` (0, 0), ``b`` (0, 1), ``c`` (1, 0), ``d``
    (1, 1) into ``y`` and the index of the first one holding it (row-major) into ``am``."""
    m0 = np.maximum(a, b)
    m1 = np.maximum(c, d)
    i0 = np.greater(b, a).view(np.int8)  # 0 or 1: the column of row 0's maximum
    i1 = np.greater(d, c).view(np.int8)
    win1 = np.greater(m1, m0).view(np.int8)  # 1: row 1 holds the window's maximum
    i1 -= i0
    i1 += 2
    i1 *= win1
    i1 += i0  # window index i*2 + j of the maximum
    np.maximum(m0, m1, out=y)
    np.copyto(am, i1)


def _running_max(a: np.ndarray, axis: int, k: int, s: int, o: int) -> np.ndarray:
    """The maximum of the ``k`` slices ``a[..., i : i + s*(o-1) + 1 : s, ...]`` along
    ``axis`` (``i < k``): a new array, one pass per slice."""

    def sl(i: int) -> np.ndarray:
        idx: list[Any] = [slice(None)] * a.ndim
        idx[axis] = slice(i, i + s * (o - 1) + 1, s)
        return a[tuple(idx)]

    out = np.maximum(sl(0), sl(1)) if k > 1 else sl(0).copy()
    for i in range(2, k):
        np.maximum(out, sl(i), out=out)
    return out


def _maxpool_nhwc(
    y: np.ndarray, kh: int, kw: int, sh: int, sw: int, oh: int, ow: int
) -> np.ndarray:
    """Max-pool (no padding) of a channels-last (m, H, W, C) array, separably: rows, then
    columns (runs of ``C``)."""
    return _running_max(_running_max(y, 1, kh, sh, oh), 2, kw, sw, ow)


class _Scratch(threading.local):
    """This thread's scratch buffers, by purpose."""

    def __init__(self) -> None:
        self.bufs: dict[str, np.ndarray] = {}
        #: per buffer key: (geometry, id of the buffer) whose borders are zero
        self.zeroed: dict[str, tuple[Any, int]] = {}


class _Geo:
    """One convolution's sizes and its chunking (images per chunk)."""

    __slots__ = (
        *("n", "c", "h", "w", "f", "kh", "kw", "sh", "sw", "ph", "pw", "oh", "ow"),
        *("k", "l", "per", "nhwc", "blocked"),
    )

    def __init__(
        self,
        x_shape: tuple[int, ...],
        w_shape: tuple[int, ...],
        dims: tuple[int, ...],
        blocked: bool = False,
        chunk_elems: int | None = None,
    ):
        self.n, self.c, self.h, self.w = (int(s) for s in x_shape)
        self.f = int(w_shape[0])
        self.kh, self.kw, self.sh, self.sw, self.ph, self.pw, self.oh, self.ow = dims
        self.k = self.c * self.kh * self.kw
        self.l = self.oh * self.ow
        elems = CHUNK_ELEMS if chunk_elems is None else chunk_elems
        self.per = max(1, elems // max(1, self.k * self.l))
        self.nhwc = self.c * self.kw >= NHWC_MIN_RUN
        if blocked and (self.oh % 2 or self.ow % 2):
            raise ValueError(f"blocked pixel order needs an even output size, got {dims[6:]}")
        self.blocked = blocked

    def pixels(self, m: int) -> tuple[tuple[int, ...], tuple[tuple[int, int, int], ...]]:
        """The output pixels of ``m`` images as gather axes: ``(shape, (image, row, column)
        multipliers)`` in the order the pixels are stored: ``(m, OH, OW)``, or blocked
        ``(m, 2, 2, OH/2, OW/2)``: the pixel ``(2r + i, 2c + j)`` at ``(i, j, r, c)``, so
        each position of the 2x2 max-pool windows is a contiguous plane."""
        if not self.blocked:
            return (m, self.oh, self.ow), ((1, 0, 0), (0, 1, 0), (0, 0, 1))
        return (m, 2, 2, self.oh // 2, self.ow // 2), (
            (1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 2, 0), (0, 0, 2),
        )  # fmt: skip

    def chunks(self) -> Iterator[tuple[int, int]]:
        """``(first image, images)`` of each chunk."""
        for n0 in range(0, self.n, self.per):
            yield n0, min(self.per, self.n - n0)


class NumpyConvOps(ConvOps):
    """:class:`ConvOps` with NumPy fast paths (``self.xp`` must be ``numpy``)."""

    _conv_tls: _Scratch | None = None

    def _buf(self, key: str, size: int, dtype: np.dtype[Any]) -> np.ndarray:
        """A flat scratch array of ``size`` elements: this thread's ``key`` buffer (grown
        as needed and kept while at most :data:`KEEP_ELEMS`), else a new one."""
        if size > KEEP_ELEMS:
            return np.empty(size, dtype)
        tls = self._conv_tls
        if tls is None:
            tls = self._conv_tls = _Scratch()  # a race makes two; either serves
        buf = tls.bufs.get(key)
        if buf is None or buf.size < size or buf.dtype != dtype:
            buf = tls.bufs[key] = np.empty(size, dtype)
        return buf[:size]

    def _channels_last(
        self, x: np.ndarray, g: _Geo, dt: np.dtype[Any], planes: bool = False
    ) -> np.ndarray:
        """``x`` (N, C, H, W) as a zero-padded channels-last (N, H+2ph, W+2pw, C) copy;
        ``planes``: ``x``'s pixels are in :meth:`conv2d`'s blocked order (put in place by
        the same copy)."""
        h, w, ph, pw = g.h, g.w, g.ph, g.pw
        xh = self._padded_nhwc("in", (g.n, h, w, g.c), ph, pw, dt)
        dst = xh[:, ph : ph + h, pw : pw + w]
        if planes:  # (n, h/2, 2, w/2, 2, C) <- (n, C, 2, 2, h/2, w/2)
            dst = dst.reshape(g.n, h // 2, 2, w // 2, 2, g.c)
            src = x.reshape(g.n, g.c, 2, 2, h // 2, w // 2).transpose(0, 4, 2, 5, 3, 1)
        else:
            src = x.transpose(0, 2, 3, 1)
        np.copyto(dst, src, casting="same_kind")
        return xh

    def _source(self, x: np.ndarray, g: _Geo, dt: np.dtype[Any]) -> np.ndarray:
        """What the chunks gather from: the channels-last copy or the padded input."""
        return self._channels_last(x, g, dt) if g.nhwc else _padded(x, g.ph, g.pw, 0.0)

    def _gather(self, src: np.ndarray, g: _Geo, n0: int, m: int, dt: np.dtype[Any]) -> np.ndarray:
        """Images ``n0 .. n0+m``'s im2col matrix in this thread's scratch: ``(m*OH*OW, K)``
        with columns ``(i, j, c)`` (channels-last), else ``(K, m*OH*OW)`` with rows
        ``(c, i, j)`` (``w.reshape(F, -1)``'s order)."""
        part = src[n0 : n0 + m]
        cols = self._buf("cols", m * g.k * g.l, dt)
        pshape, mult = g.pixels(m)
        if g.nhwc:
            s0, s1, s2, s3 = part.strides
            steps = (s0, s1 * g.sh, s2 * g.sw)
            pix = tuple(sum(a * b for a, b in zip(mu, steps, strict=True)) for mu in mult)
            shape = (*pshape, g.kh, g.kw, g.c)
            view = as_strided(part, shape, (*pix, s1, s2, s3), writeable=False)
            np.copyto(cols.reshape(shape), view, casting="same_kind")
            return cols.reshape(m * g.l, g.k)
        s0, s1, s2, s3 = part.strides
        steps = (s0, s2 * g.sh, s3 * g.sw)
        pix = tuple(sum(a * b for a, b in zip(mu, steps, strict=True)) for mu in mult)
        shape = (g.c, g.kh, g.kw, *pshape)
        view = as_strided(part, shape, (s1, s2, s3, *pix), writeable=False)
        np.copyto(cols.reshape(shape), view, casting="same_kind")
        return cols.reshape(g.k, m * g.l)

    @staticmethod
    def _weights(w: np.ndarray, g: _Geo, dt: np.dtype[Any]) -> np.ndarray:
        """``w`` as the GEMM operand: ``(K, F)`` with rows ``(i, j, c)`` (channels-last),
        else ``(F, K)``."""
        if g.nhwc:
            return np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(g.k, g.f), dtype=dt)
        return np.ascontiguousarray(w.reshape(g.f, g.k), dtype=dt)

    # -- convolution --------------------------------------------------------------
    def conv2d(
        self,
        x: Any,
        w: Any,
        b: Any | None,
        stride: Size2,
        padding: Size2,
        act: str | None = None,
        *,
        out: np.ndarray | None = None,
        blocked: bool = False,
        planes_in: bool = False,
    ) -> Any:
        """As :meth:`ConvOps.conv2d` (``act`` applied to each chunk while it is in cache);
        ``out``: a C-contiguous (N, F, OH, OW) array of the result dtype
        (``np.result_type(x, w)``: float32 for float32 inputs) to write ``y`` into
        (returned). ``blocked`` (even OH and OW): each image's pixels are stored in the
        order ``(i, j, r, c)`` for the pixel ``(2r + i, 2c + j)`` (see ``_Geo.pixels``),
        the layout of the fused training block's 2x2 max-pool; ``planes_in``: ``x``'s pixels
        are in that order (channels-last gathers only)."""
        if act == "softmax":
            raise ValueError("conv2d: act must be an elementwise activation, not softmax")
        dims = check_conv(x.shape, w.shape, None if b is None else tuple(b.shape), stride, padding)
        g = _Geo(x.shape, w.shape, dims, blocked)
        dt = np.result_type(x.dtype, w.dtype)
        if out is None:
            out = np.empty((g.n, g.f, g.oh, g.ow), dtype=dt)
        elif out.shape != (g.n, g.f, g.oh, g.ow) or out.dtype != dt or not out.flags.c_contiguous:
            raise ShapeError(
                f"conv2d: out must be a C-contiguous {dt} array of shape "
                f"{(g.n, g.f, g.oh, g.ow)}, got {out.dtype} {out.shape}"
            )
        p = _split.parts(g.n, g.n * g.k * g.l)
        if p > 1:  # a training step: a range of images per thread
            y = out
            _split.run(
                g.n,
                p,
                lambda a, e: self.conv2d(
                    x[a:e],
                    w,
                    b,
                    stride,
                    padding,
                    act,
                    out=y[a:e],
                    blocked=blocked,
                    planes_in=planes_in,
                ),  # fmt: skip
            )
            return out
        if planes_in and not g.nhwc:
            raise ValueError("conv2d: planes_in needs a channels-last gather (C*kw >= 8)")
        nat = _native_conv.kernel() if dt == np.float32 else None
        if nat is not None and self._kernel_takes(nat, w, act):
            src = self._channels_last(x, g, dt, planes_in)
            wk, bk = nat[0].weights(nat[1], w, b)
            scratch = self._buf("native", 2 * g.ow * int(wk.shape[3]), dt)
            if blocked:  # (n, F, 2, 2, OH/2, OW/2) as (n, 2, 2, OH/2, OW/2, F)
                view = out.reshape(g.n, g.f, 2, 2, g.oh // 2, g.ow // 2)
                view = view.transpose(0, 2, 3, 4, 5, 1)
            else:
                view = out.transpose(0, 2, 3, 1)
            stride2 = dims[2:4]
            nat[0].conv(nat[1], src, wk, bk, act == "relu", False, view, scratch, stride2)
            return out
        src = self._channels_last(x, g, dt, planes_in) if planes_in else self._source(x, g, dt)
        wm = self._weights(w, g, dt)
        bias = None if b is None else b.astype(dt, copy=False).reshape(g.f, 1)
        o3 = out.reshape(g.n, g.f, g.l)
        for n0, m in g.chunks():
            cols = self._gather(src, g, n0, m, dt)
            dst = o3[n0 : n0 + m]
            if g.nhwc:
                t = self._buf("prod", m * g.l * g.f, dt).reshape(m * g.l, g.f)
                np.dot(cols, wm, out=t)
                tv = t.reshape(m, g.l, g.f).transpose(0, 2, 1)  # (m, F, L), in cache
                if bias is None:
                    np.copyto(dst, tv)
                else:
                    np.add(tv, bias, out=dst)
            else:
                # per image: (F, K) @ (K, L); the images' blocks are strided views of cols
                np.matmul(wm, cols.reshape(g.k, m, g.l).transpose(1, 0, 2), out=dst)
                if bias is not None:
                    dst += bias
            if act is not None:
                self.activate(act, dst, True)
        return out

    def conv2d_backward(
        self,
        grad: Any,
        x: Any,
        w: Any,
        stride: Size2,
        padding: Size2,
        need_input_grad: bool = True,
        *,
        blocked: bool = False,
    ) -> tuple[Any | None, Any, Any]:
        """As :meth:`ConvOps.conv2d_backward`, chunk by chunk as :meth:`conv2d`: each
        chunk's im2col matrix is gathered again (in cache) for its share of ``dw``.
        ``blocked``: ``grad``'s pixels are in :meth:`conv2d`'s blocked order."""
        dims = check_conv(x.shape, w.shape, None, stride, padding)
        g = _Geo(x.shape, w.shape, dims, blocked)
        check_grad(tuple(grad.shape), (g.n, g.f, g.oh, g.ow), "conv2d_backward")
        dt = np.result_type(x.dtype, w.dtype, grad.dtype)
        g3 = grad.reshape(g.n, g.f, g.l)
        p = _split.parts(g.n, g.n * g.k * g.l)
        if p > 1:  # a training step: each thread sums dw over its range of images
            partial: dict[int, np.ndarray] = {}

            def one(a: int, e: int) -> None:
                ga = _Geo((e - a, g.c, g.h, g.w), tuple(w.shape), dims, blocked)
                partial[a] = self._dw(self._source(x[a:e], ga, dt), g3[a:e], ga, dt)

            _split.run(g.n, p, one)
            dwm = sum((partial[a] for a in sorted(partial)), np.zeros((g.f, g.k), dt))
        else:
            dwm = self._dw(self._source(x, g, dt), g3, g, dt)
        db = g3.sum(axis=2, dtype=dt).sum(axis=0)
        if g.nhwc:
            dw = np.ascontiguousarray(dwm.reshape(g.f, g.kh, g.kw, g.c).transpose(0, 3, 1, 2))
        else:
            dw = dwm.reshape(w.shape)
        db = db.astype(grad.dtype, copy=False)
        if not need_input_grad:
            return None, dw, db
        qh, qw = g.kh - 1 - g.ph, g.kw - 1 - g.pw
        if blocked and g.sh == g.sw == 1 and qh >= 0 and qw >= 0 and g.f * g.kw >= NHWC_MIN_RUN:
            return self._dx_stride1(grad, w, g, dt, planes=True), dw, db
        if blocked:  # the pixels back in place: (n, F, OH/2, 2, OW/2, 2) <- (n, F, 2, 2, ...)
            spatial = np.empty(grad.shape, grad.dtype)
            np.copyto(
                spatial.reshape(g.n, g.f, g.oh // 2, 2, g.ow // 2, 2),
                grad.reshape(g.n, g.f, 2, 2, g.oh // 2, g.ow // 2).transpose(0, 1, 4, 2, 5, 3),
            )
            grad, g3 = spatial, spatial.reshape(g.n, g.f, g.l)
        if g.sh == 1 and g.sw == 1:
            return self._dx_stride1(grad, w, g, dt), dw, db
        return self._dx_col2im(g3, w, g, dt), dw, db

    def _dw(self, src: np.ndarray, g3: np.ndarray, g: _Geo, dt: np.dtype[Any]) -> np.ndarray:
        """``dw`` as ``(F, K)`` (columns ``(i, j, c)`` channels-last, else ``(c, i, j)``):
        per chunk, one GEMM per image ``(F, L) @ (L, K)`` on ``grad`` as it is (no
        transposed copy), summed."""
        dwm = np.zeros((g.f, g.k), dt)
        for n0, m in g.chunks():
            cols = self._gather(src, g, n0, m, dt)
            if g.nhwc:
                per = cols.reshape(m, g.l, g.k)
            else:
                per = cols.reshape(g.k, m, g.l).transpose(1, 2, 0)
            dwm += np.matmul(g3[n0 : n0 + m], per, dtype=dt).sum(axis=0)
        return dwm

    def _dx_stride1(
        self, grad: np.ndarray, w: np.ndarray, g: _Geo, dt: np.dtype[Any], planes: bool = False
    ) -> Any:
        """``dx`` at stride 1: the full correlation of ``grad`` with the flipped, transposed
        kernel, i.e. :meth:`conv2d` (F in, C out) of ``grad`` padded by ``kh-1-ph`` (cropped
        where that is negative)."""
        wt = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3), dtype=dt)
        qh, qw = g.kh - 1 - g.ph, g.kw - 1 - g.pw
        ch, cw = max(-qh, 0), max(-qw, 0)
        gq = grad[:, :, ch : g.oh - ch, cw : g.ow - cw]
        if planes:  # grad's pixels in blocked order, no cropping (qh, qw >= 0)
            return self.conv2d(grad, wt, None, 1, (qh, qw), planes_in=True)
        return self.conv2d(gq, wt, None, 1, (max(qh, 0), max(qw, 0)))

    def _dx_col2im(self, g3: np.ndarray, w: np.ndarray, g: _Geo, dt: np.dtype[Any]) -> Any:
        """``dx`` at other strides: per chunk ``dcols = w^T @ grad`` (K, m*L), whose
        ``kh*kw`` strided slices are added onto the padded input grid (C, N, Hp, Wp)."""
        w2t = np.ascontiguousarray(w.reshape(g.f, g.k).T, dtype=dt)
        hp, wp = g.h + 2 * g.ph, g.w + 2 * g.pw
        dxp = np.zeros((g.c, g.n, hp, wp), dtype=dt)
        disjoint = g.sh >= g.kh and g.sw >= g.kw
        for n0, m in g.chunks():
            gt = self._buf("grad", g.f * m * g.l, dt).reshape(g.f, m * g.l)
            np.copyto(gt.reshape(g.f, m, g.l), g3[n0 : n0 + m].transpose(1, 0, 2))
            dc = self._buf("cols", g.k * m * g.l, dt).reshape(g.k, m * g.l)
            np.dot(w2t, gt, out=dc)
            d6 = dc.reshape(g.c, g.kh, g.kw, m, g.oh, g.ow)
            grid = dxp[:, n0 : n0 + m]
            for i in range(g.kh):
                for j in range(g.kw):
                    dst = _win(grid, i, j, g.sh, g.sw, g.oh, g.ow)
                    if disjoint:
                        np.copyto(dst, d6[:, i, j])
                    else:
                        np.add(dst, d6[:, i, j], out=dst)
        dx = np.empty((g.n, g.c, g.h, g.w), dtype=dt)
        np.copyto(dx, dxp[:, :, g.ph : g.ph + g.h, g.pw : g.pw + g.w].transpose(1, 0, 2, 3))
        return dx

    # -- a chain of convolutions and max-pools, channels-last -------------------------------
    def conv_chain(self, x: Any, steps: Sequence[tuple[Any, ...]]) -> Any:
        """As :meth:`ConvOps.conv_chain`. A run of steps that starts with a convolution
        gathered channels-last (``C*kw >= NHWC_MIN_RUN``) and goes on with such
        convolutions and with max-pools without padding, each right after a convolution,
        stays channels-last from its first gather to its end: each chunk of a convolution
        (GEMM, bias, activation) goes through the max-pool after it, if any, while in cache,
        straight into the next convolution's zero-padded channels-last input. Only the
        run's result is transposed back to (N, C, H, W). Other steps run as
        :meth:`conv2d` / :meth:`maxpool2d_values`."""
        i = 0
        nat = _native_conv.kernel() if x.dtype == np.float32 else None
        while i < len(steps):
            j = self._nhwc_run(tuple(int(d) for d in x.shape), steps, i, nat)
            if j > i:
                x = self._run_nhwc(x, steps[i:j], nat)
            else:
                j = i + 1
                x = super().conv_chain(x, steps[i:j])
            i = j
        return x

    @staticmethod
    def _kernel_takes(
        nat: tuple[_native_conv.Kernel, int] | None,
        w: Any,
        act: str | None,
    ) -> bool:
        """Whether the compiled kernel ``nat`` computes a convolution of float32 arrays
        with weights ``w``: a filter count it takes (``Kernel.takes``), no activation or a
        ReLU (any stride and padding)."""
        return (
            nat is not None
            and w.dtype == np.float32
            and act in (None, "relu")
            and nat[0].takes(nat[1], int(w.shape[0]))
        )

    @classmethod
    def _native_step(
        cls,
        nat: tuple[_native_conv.Kernel, int] | None,
        steps: Sequence[tuple[Any, ...]],
        i: int,
    ) -> bool:
        """Whether ``steps[i]`` is a convolution that the kernel ``nat`` computes."""
        st = steps[i]
        return st[0] == "conv" and cls._kernel_takes(nat, st[1], st[5])

    @staticmethod
    def _fusable_pool(st: tuple[Any, ...]) -> bool:
        """A max-pool step the kernel does on its convolution's rows: 2x2, stride 2, no
        padding."""
        kernel = _pair(st[1], "kernel_size")
        stride = kernel if st[2] is None else _pair(st[2], "stride")
        return kernel == stride == (2, 2) and _pair(st[3], "padding") == (0, 0)

    def conv_chain_kernels(self, steps: Sequence[tuple[Any, ...]]) -> list[str | None]:
        """As :meth:`ConvOps.conv_chain_kernels`: the compiled kernel's name (e.g.
        ``"avx512 kernel"``) for each convolution it computes in :meth:`conv_chain` of
        float32 arrays (with a 2x2 max-pool after it)."""
        nat = _native_conv.kernel()
        name = None if nat is None else f"{_native_conv.ISA_NAMES[nat[1]]} kernel"
        return [name if self._native_step(nat, steps, i) else None for i in range(len(steps))]

    @classmethod
    def _nhwc_run(
        cls,
        shape: tuple[int, ...],
        steps: Sequence[tuple[Any, ...]],
        i: int,
        nat: tuple[_native_conv.Kernel, int] | None = None,
    ) -> int:
        """The end of the channels-last run that starts at step ``i`` (``i``: none). Its
        first convolution may have short window rows (``C*kw < NHWC_MIN_RUN``, an image's
        first layer) when another convolution follows it in the run (its chunks are
        gathered channels-first and multiplied into channels-last rows), or when the
        compiled kernel ``nat`` computes it. A max-pool after a convolution of the kernel
        that it cannot do on the convolution's rows ends the run (it runs alone)."""
        j, after_conv, convs, head, native = i, False, 0, False, False
        while j < len(steps) and len(shape) == 4:
            st = steps[j]
            if st[0] == "conv":
                w, b = st[1], st[2]
                native = cls._native_step(nat, steps, j)
                if shape[1] * int(w.shape[3]) < NHWC_MIN_RUN and not native:
                    if j > i:
                        break
                    head = True
                bs = None if b is None else tuple(b.shape)
                dims = check_conv(shape, tuple(w.shape), bs, st[3], st[4])
                shape, after_conv = (shape[0], int(w.shape[0]), dims[6], dims[7]), True
                convs += 1
            elif (
                st[0] == "maxpool"
                and after_conv
                and _pair(st[3], "padding") == (0, 0)
                and (cls._fusable_pool(st) or not native)
            ):
                dims = geometry(shape, st[1], st[2], st[3], "maxpool2d")
                shape, after_conv = (*shape[:2], dims[6], dims[7]), False
            else:
                break
            j += 1
        if head and convs < 2:  # a lone short-row convolution: NCHW is faster
            return i
        return j

    def _run_nhwc(
        self,
        x: np.ndarray,
        steps: Sequence[tuple[Any, ...]],
        nat: tuple[_native_conv.Kernel, int] | None = None,
    ) -> np.ndarray:
        """One channels-last run (see :meth:`conv_chain`): ``(conv, max-pool or None)``
        blocks, each writing into the next one's padded input (two per-thread buffers,
        alternating), the last into a new (N, F, OH, OW) array.

        A block that the compiled kernel ``nat`` computes (:meth:`_native_step`) is one
        call on all images: convolution, bias, max-pool, ReLU, written into the next
        block's input. Otherwise:

        Per chunk: the GEMM, then a 2x2 max-pool of stride 2 (on planes: the chunk is
        gathered in blocked pixel order, see ``_Geo.pixels``) or another max-pool, then the
        bias and a ReLU on the pooled values (both commute with the maximum, exactly:
        rounding is monotone), the ReLU writing the result into the next step's input."""
        blocks: list[list[Any]] = []
        for k, st in enumerate(steps):
            if st[0] == "conv":
                blocks.append([st, None, self._native_step(nat, steps, k)])
            else:
                blocks[-1][1] = st
        dt = np.result_type(x.dtype, *(blk[0][1].dtype for blk in blocks))
        shape = tuple(int(d) for d in x.shape)
        n = shape[0]
        src: np.ndarray | None = None
        dst: np.ndarray = x
        if dt != np.float32:
            nat = None
        for bi, (cst, pst, native) in enumerate(blocks):
            _, w, b, stride, padding, act = cst
            dims = check_conv(shape, tuple(w.shape), None, stride, padding)
            oh, ow = dims[6], dims[7]
            pool_first = pst is not None and act in (None, "relu")
            pk = (1, 1, 1, 1)  # the max-pool's kh, kw, sh, sw
            if pst is not None:
                pdims = geometry((n, int(w.shape[0]), oh, ow), pst[1], pst[2], pst[3], "maxpool2d")
                pk, (oh_p, ow_p) = pdims[:4], pdims[6:]
            planes = pool_first and pk == (2, 2, 2, 2) and oh % 2 == 0 and ow % 2 == 0
            g = _Geo(shape, tuple(w.shape), dims, planes, CHAIN_CHUNK_ELEMS)
            native = native and nat is not None
            if src is None:
                if native or g.nhwc:
                    src = self._channels_last(x, g, dt)
                else:
                    src = _padded(x, g.ph, g.pw, 0.0)
            bias = None if b is None else b.astype(dt, copy=False)
            if pst is not None:
                oh, ow = oh_p, ow_p
            last = bi == len(blocks) - 1
            if last:
                dst = np.empty((n, g.f, oh, ow), dt)
                nph = npw = 0
                view = dst.transpose(0, 2, 3, 1)
            else:
                nph, npw = _pair(blocks[bi + 1][0][4], "padding")
                dst = self._padded_nhwc(f"chain{bi % 2}", (n, oh, ow, g.f), nph, npw, dt)
                view = dst[:, nph : nph + oh, npw : npw + ow]
            if native:
                assert nat is not None
                wk, bk = nat[0].weights(nat[1], w, bias)
                scratch = self._buf("native", 2 * g.ow * int(wk.shape[3]), dt)
                pool = pst is not None
                nat[0].conv(nat[1], src, wk, bk, act == "relu", pool, view, scratch, dims[2:4])
                src, shape = dst, (n, g.f, oh, ow)
                continue
            wm = self._weights(w, g, dt)
            if not g.nhwc:
                wm = wm.T  # (K, F): the chunk's rows come out channels-last
            # the bias as one row of a chunk's (rows, W*F) view: NumPy's vector loop (2x
            # faster than broadcasting F=16 values)
            brow = None if bias is None else np.tile(bias, ow if pool_first else g.ow)
            for n0, m in g.chunks():
                cols = self._gather(src, g, n0, m, dt)
                t = self._buf("prod", m * g.l * g.f, dt).reshape(m * g.l, g.f)
                np.dot(cols if g.nhwc else cols.T, wm, out=t)
                if planes:  # (m, 4, OH/2 * OW/2 * F): each window position a plane
                    p4 = t.reshape(m, 4, -1)
                    y4 = np.maximum(p4[:, 0], p4[:, 1])
                    np.maximum(y4, p4[:, 2], out=y4)
                    np.maximum(y4, p4[:, 3], out=y4)
                    y4 = y4.reshape(m, oh, ow, g.f)
                else:
                    y4 = t.reshape(m, g.oh, g.ow, g.f)
                    if pool_first:
                        y4 = _maxpool_nhwc(y4, *pk, oh, ow)
                if brow is not None:
                    y3 = y4.reshape(m, y4.shape[1], -1)
                    np.add(y3, brow, out=y3)
                if act is not None and act != "relu":
                    self.activate(act, y4, True)
                if pst is not None and not pool_first:
                    y4 = _maxpool_nhwc(y4, *pk, oh, ow)
                if last:
                    if act == "relu":
                        self.activate("relu", y4.reshape(m, oh, ow * g.f), True)
                    np.copyto(dst[n0 : n0 + m], y4.transpose(0, 3, 1, 2))
                elif act == "relu":  # rows of OW*C elements: NumPy's vector loop
                    out = dst[n0 : n0 + m, nph : nph + oh, npw : npw + ow]
                    y3 = y4.reshape(m, oh, ow * g.f)
                    zero = self.zero_for(y3)  # type: ignore[attr-defined]
                    np.maximum(y3, zero, out=out.reshape(m, oh, ow * g.f))
                else:
                    np.copyto(dst[n0 : n0 + m, nph : nph + oh, npw : npw + ow], y4)
            src, shape = dst, (n, g.f, oh, ow)
        return dst

    def _padded_nhwc(
        self, key: str, shape: tuple[int, int, int, int], ph: int, pw: int, dt: np.dtype[Any]
    ) -> np.ndarray:
        """This thread's ``key`` buffer as (N, H+2ph, W+2pw, C) with zero borders (its
        interior is for the caller to fill; callers never write the borders, so a buffer
        that got them for this very geometry last time is not zeroed again)."""
        n, h, w, c = shape
        hp, wp = h + 2 * ph, w + 2 * pw
        a = self._buf(key, n * hp * wp * c, dt).reshape(n, hp, wp, c)
        tls = self._conv_tls
        base = None if tls is None else tls.bufs.get(key)
        if tls is not None and base is not None and a.base is base:  # the kept buffer
            mark = ((shape, ph, pw), id(base))
            if tls.zeroed.get(key) == mark:
                return a
            tls.zeroed[key] = mark
        if ph:
            a[:, :ph] = 0
            a[:, ph + h :] = 0
        if pw:
            a[:, ph : ph + h, :pw] = 0
            a[:, ph : ph + h, pw + w :] = 0
        return a

    # -- pooling ------------------------------------------------------------------
    def maxpool2d(self, x: Any, kernel: Size2, stride: Size2, padding: Size2) -> tuple[Any, Any]:
        """As :meth:`ConvOps.maxpool2d` (argmax: int32 window index ``i*kw + j``, first max)."""
        kh, kw, sh, sw, ph, pw, oh, ow = geometry(x.shape, kernel, stride, padding, "maxpool2d")
        n = int(x.shape[0])
        y = np.empty((n, x.shape[1], oh, ow), x.dtype)
        am = np.empty(y.shape, np.int32)
        dims = (kh, kw, sh, sw, ph, pw, oh, ow)
        p = _split.parts(n, x.size)  # > 1: a training step, a range of samples per thread
        _split.run(n, p, lambda a, e: self._maxpool_into(x[a:e], dims, y[a:e], am[a:e]))
        return y, am

    @staticmethod
    def _maxpool_into(x: np.ndarray, dims: tuple[int, ...], y: np.ndarray, am: np.ndarray) -> None:
        """The max-pool of ``x`` with geometry ``dims`` (``kh, kw, sh, sw, ph, pw, oh, ow``)
        into ``y``, its argmax (window index ``i*kw + j``, first maximum) into ``am``."""
        kh, kw, sh, sw, ph, pw, oh, ow = dims
        xp_ = _padded(x, ph, pw, float("-inf"))
        if kh == 2 and kw == 2:
            _maxpool_2x2(xp_, sh, sw, oh, ow, y, am)
            return
        np.copyto(y, _win(xp_, 0, 0, sh, sw, oh, ow))
        am.fill(0)
        mask = np.empty(y.shape, dtype=bool)
        for k in range(1, kh * kw):
            s = _win(xp_, k // kw, k % kw, sh, sw, oh, ow)
            np.greater(s, y, out=mask)
            np.copyto(am, np.int32(k), where=mask)
            np.maximum(y, s, out=y)

    def maxpool2d_values(self, x: Any, kernel: Size2, stride: Size2, padding: Size2) -> Any:
        """As :meth:`ConvOps.maxpool2d_values`, separably: the running maximum of ``kh``
        row-strided slices (contiguous rows), then of ``kw`` column-strided slices of it."""
        kh, kw, sh, sw, ph, pw, oh, ow = geometry(x.shape, kernel, stride, padding, "maxpool2d")
        xp_ = _padded(x, ph, pw, float("-inf"))
        return _running_max(_running_max(xp_, 2, kh, sh, oh), 3, kw, sw, ow)

    def maxpool2d_backward(
        self,
        grad: Any,
        argmax: Any,
        x_shape: tuple[int, ...],
        kernel: Size2,
        stride: Size2,
        padding: Size2,
    ) -> Any:
        x_shape = tuple(int(s) for s in x_shape)
        kh, kw, sh, sw, ph, pw, oh, ow = geometry(x_shape, kernel, stride, padding, "maxpool2d")
        n, c, h, w = x_shape
        check_grad(tuple(grad.shape), (n, c, oh, ow), "maxpool2d_backward")
        check_grad(tuple(argmax.shape), (n, c, oh, ow), "maxpool2d_backward (argmax)")
        disjoint = sh >= kh and sw >= kw
        # windows that tile the padded input exactly write every element once
        tiled = (sh, sw) == (kh, kw) and (oh * sh, ow * sw) == (h + 2 * ph, w + 2 * pw)
        dxp = (np.empty if tiled else np.zeros)((n, c, h + 2 * ph, w + 2 * pw), dtype=grad.dtype)

        def unpool(a: int, e: int) -> None:  # samples a..e into their rows of dxp
            g, am, dst_rows = grad[a:e], argmax[a:e], dxp[a:e]
            mask = np.empty(g.shape, dtype=bool)
            tmp = None if disjoint else np.empty_like(g)
            for k in range(kh * kw):
                dst = _win(dst_rows, k // kw, k % kw, sh, sw, oh, ow)
                np.equal(am, k, out=mask)
                if tmp is None:
                    np.multiply(g, mask, out=dst)
                else:
                    np.multiply(g, mask, out=tmp)
                    np.add(dst, tmp, out=dst)

        p = _split.parts(n, n * c * h * w)
        if p > 1:  # a training step: a range of samples per thread
            _split.run(n, p, unpool)
        else:
            unpool(0, n)
        return dxp if not (ph or pw) else np.ascontiguousarray(dxp[:, :, ph : ph + h, pw : pw + w])

    def avgpool2d(self, x: Any, kernel: Size2, stride: Size2, padding: Size2) -> Any:
        kh, kw, sh, sw, ph, pw, oh, ow = geometry(x.shape, kernel, stride, padding, "avgpool2d")
        xp_ = _padded(x, ph, pw, 0.0)
        y = np.array(_win(xp_, 0, 0, sh, sw, oh, ow), dtype=x.dtype)
        for k in range(1, kh * kw):
            np.add(y, _win(xp_, k // kw, k % kw, sh, sw, oh, ow), out=y)
        y *= np.asarray(1.0 / (kh * kw), dtype=y.dtype)
        return y

    def avgpool2d_backward(
        self, grad: Any, x_shape: tuple[int, ...], kernel: Size2, stride: Size2, padding: Size2
    ) -> Any:
        x_shape = tuple(int(s) for s in x_shape)
        kh, kw, sh, sw, ph, pw, oh, ow = geometry(x_shape, kernel, stride, padding, "avgpool2d")
        n, c, h, w = x_shape
        check_grad(tuple(grad.shape), (n, c, oh, ow), "avgpool2d_backward")
        g = grad * np.asarray(1.0 / (kh * kw), dtype=grad.dtype)
        dxp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=grad.dtype)
        disjoint = sh >= kh and sw >= kw
        for k in range(kh * kw):
            dst = _win(dxp, k // kw, k % kw, sh, sw, oh, ow)
            if disjoint:
                np.copyto(dst, g)
            else:
                np.add(dst, g, out=dst)
        return dxp if not (ph or pw) else np.ascontiguousarray(dxp[:, :, ph : ph + h, pw : pw + w])
