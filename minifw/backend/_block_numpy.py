"""NumPy's fused convolution block in training: ``conv_bn_train`` / ``conv_bn_backward``
(Conv2D, BatchNorm, optional max-pool without padding, optional ReLU; see
``minifw/_train_blocks.py``).

Each direction runs in two phases, each one range of images per thread (``_split``):

forward
  1. the convolution of the range, then its per-channel sum and sum of squares about the
     range's own mean while the output is in cache (ranges combined exactly as Chan's
     parallel variance: no ``E[x^2] - E[x]^2`` cancellation);
  2. the max-pool of the convolution's output itself, then ``(p - mean) * gamma/std +
     beta`` and the ReLU on the pooled quarter. A positive per-channel scale keeps each
     window's first maximum where it is; a channel with ``gamma < 0`` is pooled negated
     (its first minimum), so the BatchNorm's output never exists at full size.

backward
  1. the ReLU's mask and the reductions ``dbeta = sum(d)``, ``dgamma = sum(d * xhat)`` on
     the pooled quarter (the BatchNorm's output gradient is zero elsewhere);
  2. the BatchNorm's input gradient ``gamma/std * (d - dbeta/m - xhat * dgamma/m)`` as one
     per-channel affine map of the convolution's output plus the pooled gradient added at
     each window's argmax, in this thread's scratch, and at once the convolution's backward
     of the range (its ``dw``, ``db`` summed over the ranges in a fixed order).

A ``gamma`` with a zero or non-finite entry (a window's maximum would no longer be
defined by the convolution's output alone), other dtypes or array types take the generic
path: the layers' own operations in turn.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _split
from ._conv import check_conv, geometry
from ._conv_numpy import _win, max4

_FLOATS = (np.dtype("float32"), np.dtype("float64"))


class _Fused(tuple):  # type: ignore[type-arg]
    """The fused forward's cache (a generic forward's cache is a plain tuple)."""

    __slots__ = ()


class NumpyBlockOps:
    """The fused block on NumPy, over :class:`NumpyConvOps` and :class:`UfuncBackend`."""

    def conv_bn_train(
        self,
        x: Any,
        conv: tuple[Any, Any, Any, Any],
        bn: tuple[Any, Any, Any, Any, float, float],
        pool: tuple[Any, Any] | None,
        relu: bool,
    ) -> tuple[Any, Any, Any, Any]:
        w, b, stride, padding = conv
        gamma, beta, rmean, rvar, momentum, eps = bn
        arrays = [x, w, gamma, beta, rmean, rvar] + ([] if b is None else [b])
        dt = getattr(x, "dtype", None)
        if (
            dt not in _FLOATS
            or not all(isinstance(a, np.ndarray) and a.dtype == dt for a in arrays)
            or not np.all(np.isfinite(gamma))
            or not np.all(gamma != 0)
        ):
            return super().conv_bn_train(x, conv, bn, pool, relu)  # type: ignore[misc, no-any-return]
        dims = check_conv(x.shape, w.shape, None if b is None else tuple(b.shape), stride, padding)
        n, f = int(x.shape[0]), int(w.shape[0])
        oh, ow = dims[6], dims[7]
        lsz = oh * ow
        k = int(w.shape[1]) * int(w.shape[2]) * int(w.shape[3])
        y = np.empty((n, f, oh, ow), dt)
        # a 2x2 max-pool of stride 2 tiling the output: the convolution stores each window
        # position as a contiguous plane (conv2d's blocked order) and the pool and its
        # backward run on planes instead of strided views (2-5x faster)
        blocked = (
            pool is not None
            and geometry(y.shape, pool[0], pool[1], 0, "maxpool2d")[:4] == (2, 2, 2, 2)
            and oh % 2 == 0
            and ow % 2 == 0
        )
        stats: dict[int, tuple[Any, Any, int, Any]] = {}

        def conv_stats(a: int, e: int) -> None:
            ya = y[a:e]
            self.conv2d(x[a:e], w, b, stride, padding, out=ya, blocked=blocked)  # type: ignore[attr-defined]
            rows = ya.reshape((e - a) * f, lsz)
            s = rows.sum(axis=1).reshape(e - a, f).sum(axis=0)
            mp = (e - a) * lsz
            mean_p = s / mp
            cen = self._buf("bn", rows.size, dt).reshape(e - a, f, lsz)  # type: ignore[attr-defined]
            np.subtract(ya.reshape(e - a, f, lsz), mean_p.reshape(1, f, 1), out=cen)
            cr = cen.reshape(rows.shape)
            stats[a] = (s, np.einsum("ij,ij->i", cr, cr).reshape(e - a, f).sum(axis=0), mp, mean_p)

        _split.run(n, _split.parts(n, n * k * lsz), conv_stats)
        m = n * lsz
        mean = _split.ordered_sum({a: v[0] for a, v in stats.items()}) / m
        m2 = _split.ordered_sum(
            {a: v[1] + v[2] * np.square(v[3] - mean) for a, v in stats.items()}
        )  # Chan et al.: each range's squares about its own mean, moved to the batch mean
        var = m2 / m
        inv_std = np.divide(1.0, np.sqrt(var + eps))
        scale = gamma * inv_std
        self._bn_running(rmean, rvar, mean, var, m, momentum)  # type: ignore[attr-defined]
        shape4 = (1, f, 1, 1)
        mean4, scale4, beta4 = mean.reshape(shape4), scale.reshape(shape4), beta.reshape(shape4)
        sign = None
        pdims: tuple[int, ...] = ()
        if pool is not None:
            kh, kw, sh, sw, _, _, poh, pow_ = geometry(y.shape, pool[0], pool[1], 0, "maxpool2d")
            pdims = (kh, kw, sh, sw, 0, 0, poh, pow_)
            base = np.empty((n, f, poh, pow_), dt)  # the convolution's output at each argmax
            am = np.empty(base.shape, np.int32)
            if np.any(gamma < 0):
                sign = np.where(gamma < 0, -1, 1).astype(dt).reshape(shape4)
        else:
            base, am = y, None
        z = np.empty(base.shape, dt)

        def finish(a: int, e: int) -> None:
            if pool is not None:
                src = y[a:e] if sign is None else y[a:e] * sign
                if blocked:
                    planes = src.reshape(e - a, f, 4, -1)
                    ba, ama = base[a:e].reshape(e - a, f, -1), am[a:e].reshape(e - a, f, -1)  # type: ignore[index]
                    p0, p1, p2, p3 = (planes[:, :, i] for i in range(4))
                    max4(p0, p1, p2, p3, ba, ama)
                else:
                    self._maxpool_into(src, pdims, base[a:e], am[a:e])  # type: ignore[attr-defined, index]
                if sign is not None:
                    base[a:e] *= sign
            za = z[a:e]
            np.subtract(base[a:e], mean4, out=za)
            za *= scale4
            za += beta4
            if relu:
                self.relu(za.reshape(e - a, f, -1), True)  # type: ignore[attr-defined]

        _split.run(n, _split.parts(n, y.size), finish)
        cache = _Fused(
            (x, conv, y, mean, inv_std, scale, pdims, blocked, base, am, z if relu else None)
        )
        return z, cache, rmean, rvar

    def conv_bn_backward(self, g: Any, cache: Any, need_dx: bool) -> tuple[Any, ...]:
        if not isinstance(cache, _Fused):
            return super().conv_bn_backward(g, cache, need_dx)  # type: ignore[misc, no-any-return]
        x, (w, _, stride, padding), y, mean, inv_std, scale, pdims, blocked, base, am, z = cache
        n, f, oh, ow = (int(s) for s in y.shape)
        dt = y.dtype
        g = np.ascontiguousarray(g, dtype=dt)
        shape4 = (1, f, 1, 1)
        mean4 = mean.reshape(shape4)
        d = np.empty_like(g) if z is not None else g  # the BatchNorm's output gradient
        sums: dict[int, tuple[Any, Any]] = {}

        def reduce(a: int, e: int) -> None:
            if z is not None:
                np.multiply(g[a:e], z[a:e] > 0, out=d[a:e])
            rows = d[a:e].reshape((e - a) * f, -1)
            t = self._buf("bn", rows.size, dt).reshape(d[a:e].shape)  # type: ignore[attr-defined]
            np.subtract(base[a:e], mean4, out=t)
            dg = np.einsum("ij,ij->i", rows, t.reshape(rows.shape)).reshape(e - a, f).sum(axis=0)
            sums[a] = (dg, rows.sum(axis=1).reshape(e - a, f).sum(axis=0))

        _split.run(n, _split.parts(n, g.size), reduce)
        dgamma = _split.ordered_sum({a: v[0] for a, v in sums.items()}) * inv_std
        dbeta = _split.ordered_sum({a: v[1] for a, v in sums.items()})
        m = n * oh * ow
        # gamma/std * (d - dbeta/m - xhat * dgamma/m), xhat = (y - mean) * inv_std
        alpha4 = (-(scale * inv_std) * (dgamma / m)).reshape(shape4)
        shift4 = (-scale * (dbeta / m)).reshape(shape4)
        scale4 = scale.reshape(shape4)
        dx = np.empty(x.shape, dt) if need_dx else None
        parts: dict[int, tuple[Any, Any]] = {}
        k = int(w.shape[1]) * int(w.shape[2]) * int(w.shape[3])

        def back(a: int, e: int) -> None:
            gy = self._buf("bn", (e - a) * f * oh * ow, dt).reshape(e - a, f, oh, ow)  # type: ignore[attr-defined]
            np.subtract(y[a:e], mean4, out=gy)
            gy *= alpha4
            gy += shift4
            dd = d[a:e] * scale4
            if am is None:
                gy += dd
            elif blocked:  # the window positions' planes, contiguous
                planes = gy.reshape(e - a, f, 4, -1)
                ama, dd3 = am[a:e].reshape(e - a, f, -1), dd.reshape(e - a, f, -1)
                mask = np.empty(dd3.shape, bool)
                tmp = np.empty_like(dd3)
                for i in range(4):
                    np.equal(ama, i, out=mask)
                    np.multiply(dd3, mask, out=tmp)
                    planes[:, :, i] += tmp
            else:
                kh, kw, sh, sw, _, _, poh, pow_ = pdims
                mask = np.empty(dd.shape, bool)
                tmp = np.empty_like(dd)
                for i in range(kh * kw):
                    dst = _win(gy, i // kw, i % kw, sh, sw, poh, pow_)
                    np.equal(am[a:e], i, out=mask)
                    np.multiply(dd, mask, out=tmp)
                    np.add(dst, tmp, out=dst)
            dxa, dwa, dba = self.conv2d_backward(  # type: ignore[attr-defined]
                gy, x[a:e], w, stride, padding, need_dx, blocked=blocked
            )
            if dx is not None:
                dx[a:e] = dxa
            parts[a] = (dwa, dba)

        _split.run(n, _split.parts(n, n * k * oh * ow), back)
        dw = _split.ordered_sum({a: v[0] for a, v in parts.items()})
        db = _split.ordered_sum({a: v[1] for a, v in parts.items()})
        return dx, dw, db, dgamma, dbeta
