"""The operations in place, for engines with NumPy's ufuncs (``out=``): NumPy and CuPy.

Each override gives the values of the generic version in :mod:`._ops` (within rounding:
``sigmoid`` here lets ``exp`` overflow to ``inf``, for the exact limit 0, where the generic
version clamps) and writes into arrays the caller owns instead of allocating.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._base import Backend
from ._ops import SCRATCH

#: Arrays of at most this many elements take the sigmoid's clamped path (no errstate).
SMALL = 4096


def _rows(a: Any) -> Any:
    """A C-contiguous ``(N, C, ...)`` array (3 or more axes) as ``(N*C, rest)`` rows (a
    view), for per-channel sums along contiguous memory; else ``None``."""
    if len(a.shape) < 3 or not a.flags.c_contiguous:
        return None
    return a.reshape(a.shape[0] * a.shape[1], -1)


class UfuncBackend(Backend):
    """NumPy-like engines: ufuncs with ``out=``, views that write through, array methods."""

    mutable = True

    def __init__(self, xp: Any, version: str) -> None:
        super().__init__(xp, version)
        # ufuncs with a 0-d array of the right dtype run about twice as fast as with a
        # Python float on small arrays, and never change the result's dtype
        # keyed by dtype object and by scalar type: one dict lookup on the hot path
        dts: list[Any] = [np.dtype(np.float32), np.dtype(np.float64)]
        self._ones = {k: xp.asarray(1.0, dtype=d) for d in dts for k in (d, d.type)}
        self._zeros = {k: xp.asarray(0.0, dtype=d) for d in dts for k in (d, d.type)}
        # the largest finite argument of exp: log of the dtype's largest float, rounded down
        self._max_exp = {
            k: xp.asarray(np.nextafter(np.log(np.finfo(d).max), 0, dtype=d), dtype=d)
            for d in dts
            for k in (d, d.type)
        }

    def one(self, dtype: Any) -> Any:
        """1 as a 0-d array of ``dtype``."""
        return self._ones[dtype]

    def zero_for(self, x: Any) -> Any:
        """What :meth:`relu` compares ``x`` with (a 0-d zero; NumPy uses a row)."""
        return self._zeros[x.dtype]

    # -- dense -------------------------------------------------------------------------
    def linear(self, x: Any, w: Any, b: Any = None, out: Any = None, act: str | None = None) -> Any:
        y = self.xp.matmul(x, w, out=out)
        if b is not None:
            y += b
        return self.activate(act, y, True) if act is not None else y

    def linear_backward(
        self, x: Any, w: Any, g: Any, grads: dict[str, Any], bias: bool, need_dx: bool
    ) -> Any:
        xp = self.xp
        n_in, n_out = w.shape
        x2 = x.reshape(-1, n_in)
        g2 = g.reshape(-1, n_out)
        dw = grads.get("weight")
        if dw is None or dw.dtype != x2.dtype or dw.shape != w.shape:
            dw = grads["weight"] = xp.empty_like(w)
        xp.matmul(x2.T, g2, out=dw)
        if bias:
            db = grads.get("bias")
            if db is None or db.dtype != x2.dtype or db.shape != (n_out,):
                db = grads["bias"] = xp.empty(n_out, dtype=w.dtype)
            xp.sum(g2, axis=0, out=db)
        return g @ w.T if need_dx else None

    # -- activations -------------------------------------------------------------------
    def _sigmoid_of_negated(self, y: Any) -> Any:
        """``1 / (1 + exp(y))`` in place: the sigmoid of ``-y``.

        ``exp(89.)`` overflows to ``inf`` in float32, and ``1 / (1 + inf)`` is the exact
        limit 0; NumPy would warn about the overflow. Large arrays silence that warning
        (``errstate``, about 0.7 µs); arrays of at most :data:`SMALL` elements clamp the
        argument at the largest finite one instead (one ufunc call, cheaper at that size),
        which gives a subnormal ``3e-39`` (float32) where the large path gives 0.
        """
        xp = self.xp
        one = self._ones[y.dtype]
        if y.size <= SMALL:  # (out positional where allowed: cheaper than out=)
            xp.minimum(y, self._max_exp[y.dtype], out=y)
            xp.exp(y, y)
        else:
            with np.errstate(over="ignore"):
                xp.exp(y, y)
        xp.add(y, one, y)
        xp.divide(one, y, y)
        return y

    def sigmoid(self, x: Any, inplace: bool = False) -> Any:
        # 1 / (1 + exp(-x)): one exp per element, about twice as fast on the CPU as the
        # tanh form, and more accurate for negative x (no 1 - 1 cancellation)
        return self._sigmoid_of_negated(self.xp.negative(x, out=x if inplace else None))

    def relu(self, x: Any, inplace: bool = False) -> Any:
        return self.xp.maximum(x, self.zero_for(x), out=x if inplace else None)

    def tanh(self, x: Any, inplace: bool = False) -> Any:
        return self.xp.tanh(x, out=x if inplace else None)

    def softmax(self, x: Any, inplace: bool = False, axis: int = -1) -> Any:
        xp = self.xp
        # methods: cheaper than the np.max / np.sum wrappers on small arrays
        y = xp.subtract(x, x.max(axis=axis, keepdims=True), out=x if inplace else None)
        xp.exp(y, out=y)
        y /= y.sum(axis=axis, keepdims=True)
        return y

    def sigmoid_backward(self, y: Any, g: Any) -> Any:
        dx = 1.0 - y
        dx *= y
        dx *= g
        return dx

    def tanh_backward(self, y: Any, g: Any) -> Any:
        dx = y * y
        self.xp.subtract(1.0, dx, out=dx)
        dx *= g
        return dx

    def relu_backward(self, y: Any, g: Any) -> Any:
        return self.xp.multiply(g, y > 0)  # a multiply by the mask: 4-5x faster than where()

    def softmax_backward(self, y: Any, g: Any, axis: int = -1) -> Any:
        xp = self.xp
        yg = y * g
        dx = xp.multiply(y, xp.sum(yg, axis=axis, keepdims=True))
        xp.subtract(yg, dx, out=dx)
        return dx

    # -- losses ------------------------------------------------------------------------
    def is_index(self, target: Any) -> bool:
        return len(target.shape) == 1 and target.dtype.kind in "iu"  # isdtype is slow

    def softmax_cross_entropy(
        self, z: Any, target: Any, owned: bool = False, need_grad: bool = True
    ) -> tuple[Any, Any]:
        xp = self.xp
        n = z.shape[0]
        index = self.is_index(target)
        # shifted logits s = z - max; loss_i = log(sum(exp(s_i))) - s_i[t_i]
        s = xp.subtract(z, z.max(axis=1, keepdims=True), out=z if owned else None)
        if index:
            if s.flags.c_contiguous:  # (row, target) pairs as flat indices: cheaper
                sel: Any = xp.arange(0, n * s.shape[1], s.shape[1]) + target
                s_sel = s.reshape(-1)
            else:
                sel, s_sel = (xp.arange(n), target), s
            picked = s_sel[sel]
        else:
            picked = (s * target).sum(axis=1)  # sum_j t_ij s_ij (rows of t sum to 1)
        xp.exp(s, out=s)  # s now holds exp(shifted logits)
        tot = s.sum(axis=1, keepdims=True)
        loss = (xp.log(tot).sum() - picked.sum()) / n
        if not need_grad:
            return loss, None
        s /= tot  # p
        if index:
            s_sel[sel] -= 1.0
        else:
            s -= target
        s *= 1.0 / n
        return loss, s

    # -- training helpers --------------------------------------------------------------
    def take_rows(self, a: Any, idx: Any, out: Any = None) -> Any:
        return self.xp.take(a, idx, axis=0, out=out)

    def index_array(self, idx: Any) -> Any:
        return self.from_numpy(idx.astype(np.intp))

    def count_equal(self, a: Any, b: Any) -> Any:
        return self.xp.count_nonzero(a == b)

    def all_finite(self, arrays: list[Any]) -> bool:
        xp = self.xp
        return all(bool(xp.isfinite(a).all()) for a in arrays)

    def copy(self, a: Any) -> Any:
        return a.copy()

    def assign(self, dst: Any, src: Any) -> Any:
        dst[...] = src
        return dst

    # -- optimizers (in place; ``st`` buffers kept from step to step) ------------------
    def sgd_update(
        self,
        p: Any,
        g: Any,
        st: dict[str, Any],
        lr: float,
        momentum: float,
        nesterov: bool,
        weight_decay: float,
    ) -> Any:
        xp = self.xp
        tmp = self._scratch(st, p)
        if weight_decay:
            g = self._decayed(p, g, weight_decay, tmp)
        if momentum:
            buf = st.get("momentum_buffer")
            if buf is None:
                buf = st["momentum_buffer"] = g.copy()
            else:
                buf *= momentum
                buf += g
            if nesterov:  # p -= lr * (g + mu * buf), in two passes through tmp
                xp.multiply(g, lr, out=tmp)
                p -= tmp
                xp.multiply(buf, lr * momentum, out=tmp)
                p -= tmp
                return p
            g = buf
        xp.multiply(g, lr, out=tmp)
        p -= tmp
        return p

    def adam_update(
        self,
        p: Any,
        g: Any,
        st: dict[str, Any],
        lr: float,
        betas: tuple[float, float],
        weight_decay: float,
        decoupled: bool,
        step_size: float,
        eps_hat: float,
    ) -> Any:
        xp = self.xp
        b1, b2 = betas
        tmp = self._scratch(st, p)
        if weight_decay:
            if decoupled:
                p *= 1.0 - lr * weight_decay
            else:
                g = self._decayed(p, g, weight_decay, tmp)
        m = st.get("exp_avg")
        if m is None:
            m = st["exp_avg"] = xp.zeros_like(p)
            v = st["exp_avg_sq"] = xp.zeros_like(p)
        else:
            v = st["exp_avg_sq"]
        # m = b1 m + (1 - b1) g  ==  b1 (m - g) + g
        m -= g
        m *= b1
        m += g
        # v = b2 v + (1 - b2) g^2  ==  b2 (v - g^2) + g^2
        xp.multiply(g, g, out=tmp)
        v -= tmp
        v *= b2
        v += tmp
        xp.sqrt(v, out=tmp)
        tmp += eps_hat
        xp.divide(m, tmp, out=tmp)
        tmp *= step_size
        p -= tmp
        return p

    def adagrad_update(
        self,
        p: Any,
        g: Any,
        st: dict[str, Any],
        clr: float,
        weight_decay: float,
        eps: float,
        initial: float,
        first: bool,
    ) -> Any:
        xp = self.xp
        tmp = self._scratch(st, p)
        if weight_decay:
            g = self._decayed(p, g, weight_decay, tmp)
        acc = st.get("sum")
        if acc is None:
            acc = st["sum"] = xp.full_like(p, initial)
        elif first:
            acc[...] = initial
        xp.multiply(g, g, out=tmp)
        acc += tmp
        xp.sqrt(acc, out=tmp)
        tmp += eps
        xp.divide(g, tmp, out=tmp)
        tmp *= clr
        p -= tmp
        return p

    def rmsprop_update(
        self,
        p: Any,
        g: Any,
        st: dict[str, Any],
        lr: float,
        alpha: float,
        eps: float,
        weight_decay: float,
        momentum: float,
        centered: bool,
    ) -> Any:
        xp = self.xp
        tmp = self._scratch(st, p)
        if weight_decay:
            g = self._decayed(p, g, weight_decay, tmp)
        sq = st.get("square_avg")
        if sq is None:
            sq = st["square_avg"] = xp.zeros_like(p)
        # sq = alpha sq + (1 - alpha) g^2
        sq *= alpha
        xp.multiply(g, g, out=tmp)
        tmp *= 1.0 - alpha
        sq += tmp
        if centered:
            ga = st.get("grad_avg")
            if ga is None:
                ga = st["grad_avg"] = xp.zeros_like(p)
            ga *= alpha
            xp.multiply(g, 1.0 - alpha, out=tmp)
            ga += tmp
            xp.multiply(ga, ga, out=tmp)
            xp.subtract(sq, tmp, out=tmp)
            xp.sqrt(tmp, out=tmp)
        else:
            xp.sqrt(sq, out=tmp)
        tmp += eps
        xp.divide(g, tmp, out=tmp)  # g / avg
        if momentum:
            buf = st.get("momentum_buffer")
            if buf is None:
                buf = st["momentum_buffer"] = xp.zeros_like(p)
            buf *= momentum
            buf += tmp
            xp.multiply(buf, lr, out=tmp)
        else:
            tmp *= lr
        p -= tmp
        return p

    # -- batch normalisation and dropout (running statistics in place) ---------------
    def batchnorm_train(
        self,
        x: Any,
        gamma: Any,
        beta: Any,
        running_mean: Any,
        running_var: Any,
        momentum: float,
        eps: float,
    ) -> tuple[Any, Any, Any, Any, Any]:
        xp = self.xp
        axes, shape = self._bn_axes(x)
        m = x.size // x.shape[1]
        rows = _rows(x)
        if rows is not None:  # (N, C, ...) contiguous: per-row sums, no square temporary
            n, c = x.shape[:2]
            mean = (rows.sum(axis=1).reshape(n, c).sum(axis=0) / m).reshape(shape)
            xhat = xp.subtract(x, mean)
            xr = xhat.reshape(rows.shape)
            var = (xp.einsum("ij,ij->i", xr, xr).reshape(n, c).sum(axis=0) / m).reshape(shape)
        else:
            mean = x.mean(axis=axes, keepdims=True)
            xhat = xp.subtract(x, mean)
            var = xp.square(xhat).mean(axis=axes, keepdims=True)
        inv_std = xp.sqrt(var + eps)
        xp.divide(1.0, inv_std, out=inv_std)
        xhat *= inv_std
        y = xp.multiply(xhat, gamma.reshape(shape))
        y += beta.reshape(shape)
        self._bn_running(running_mean, running_var, mean, var, m, momentum)
        return y, xhat, inv_std, running_mean, running_var

    @staticmethod
    def _bn_running(rmean: Any, rvar: Any, mean: Any, var: Any, m: int, momentum: float) -> None:
        """PyTorch's running-statistics update, in place: the batch variance (over ``m``
        values per channel) enters unbiased."""
        rmean *= 1.0 - momentum
        rmean += momentum * mean.reshape(-1)
        rvar *= 1.0 - momentum
        rvar += (momentum * m / (m - 1)) * var.reshape(-1)

    def batchnorm_backward(
        self, g: Any, xhat: Any, inv_std: Any, gamma: Any, need_dx: bool
    ) -> tuple[Any | None, Any, Any]:
        """As :meth:`Ops.batchnorm_backward`, with one temporary written in place:
        ``dx = (inv_std*gamma) * (g - xhat * mean(g*xhat) - mean(g))`` (4 passes over the
        data after the reductions instead of 7, and one new array instead of 6); on a
        contiguous ``(N, C, ...)`` array the reductions run along contiguous rows and
        ``sum(g*xhat)`` is one ``einsum`` (no product array)."""
        xp = self.xp
        axes, shape = self._bn_axes(g)
        rows, xrows = _rows(g), _rows(xhat)
        if rows is not None and xrows is not None:  # (N, C, ...) contiguous: no g*xhat temporary
            n, c = g.shape[:2]
            dgamma = xp.einsum("ij,ij->i", rows, xrows).reshape(n, c).sum(axis=0)
            dbeta = rows.sum(axis=1).reshape(n, c).sum(axis=0)
            if not need_dx:
                return None, dgamma, dbeta
            m = g.size // c
            tmp = xp.multiply(xhat, (dgamma / -m).reshape(shape))
            tmp += g
        else:
            tmp = xp.multiply(g, xhat)
            dgamma = tmp.sum(axis=axes)
            dbeta = g.sum(axis=axes)
            if not need_dx:
                return None, dgamma, dbeta
            m = g.size // g.shape[1]
            xp.multiply(xhat, (dgamma / m).reshape(shape), out=tmp)
            xp.subtract(g, tmp, out=tmp)
        tmp -= (dbeta / m).reshape(shape)
        tmp *= inv_std * gamma.reshape(shape)
        return tmp, dgamma, dbeta

    def dropout_apply(self, x: Any, mask: Any, inplace: bool = False) -> Any:
        return self.xp.multiply(x, mask, out=x if inplace else None)

    def _decayed(self, p: Any, g: Any, weight_decay: float, tmp: Any) -> Any:
        """``g + weight_decay * p`` (PyTorch's coupled L2 term), computed in ``tmp`` and
        returned as a copy, since the update reuses ``tmp`` afterwards."""
        self.xp.multiply(p, weight_decay, out=tmp)
        tmp += g
        return tmp.copy()

    def _scratch(self, st: dict[str, Any], p: Any) -> Any:
        """A temporary of ``p``'s shape kept with the optimizer state (not saved with it)."""
        tmp = st.get(SCRATCH)
        if tmp is None or tmp.shape != p.shape or tmp.dtype != p.dtype:
            tmp = st[SCRATCH] = self.xp.empty_like(p)
        return tmp

    def flat_views(self, shapes: list[tuple[int, ...]], dtype: Any) -> tuple[Any, list[Any]] | None:
        sizes = [int(np.prod(s)) for s in shapes]
        flat = self.xp.zeros(sum(sizes), dtype=dtype)
        views, off = [], 0
        for shape, size in zip(shapes, sizes, strict=True):
            views.append(flat[off : off + size].reshape(shape))
            off += size
        return flat, views
