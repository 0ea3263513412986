"""The NumPy backend (the default): the in-place operations of :mod:`._ufunc`, plus what
NumPy does faster still.

* ``linear``: outputs of at least :data:`._gemm.MIN_ELEMS` elements are filled with the bias
  (``-b`` before a sigmoid) and one GEMM of NumPy's own OpenBLAS adds ``x @ W`` (``-x @ W``)
  to it: one pass fewer than ``matmul`` + ``add`` (see :mod:`._gemm`).
* ``relu`` compares with a read-only zero row (NumPy's ``maximum`` against a broadcast 0-d
  zero misses its vector loop: a row is 2-4x faster at widths of 32 and more).
* ``softmax`` over rows at most :data:`NARROW_SOFTMAX` wide reduces over the first axis of
  a transposed copy (see :meth:`NumpyBackend._softmax_narrow`).
* convolution as im2col + one GEMM, pooling on windowed views (:mod:`._conv_numpy`);
* ``threads``: the inference plan runs chunks of a large batch on every core, with BLAS
  held to one thread per call (``parallel_section``);
* ``train_section(split=True)`` (``fit`` of a model with convolutions, pools or
  BatchNorm): BLAS on one thread, and the step's heavy operations (convolution, pooling,
  BatchNorm, ReLU, Dense, the optimizer's update) split over the batch on every core (see
  :mod:`._split`); ``fit``'s fused Conv2D-BatchNorm-MaxPool2D-ReLU blocks in two phases each
  way (:mod:`._block_numpy`). Every ``train_section`` first moves glibc's malloc thresholds
  up once per process (:func:`_raise_malloc_thresholds`).
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

import numpy as np

from .._util import Once, cores
from ..errors import BackendError
from . import _gemm, _split
from ._block_numpy import NumpyBlockOps
from ._conv_numpy import NumpyConvOps
from ._ops import SCRATCH
from ._ufunc import UfuncBackend, _rows

_F32, _F64 = np.dtype("float32"), np.dtype("float64")
# keyed by name and by dtype object: one dict lookup on the hot path, no dtype.name
_FLOATS: dict[Any, np.dtype[Any]] = {"float32": _F32, "float64": _F64, _F32: _F32, _F64: _F64}

#: Softmax rows at most this wide take the transposed path.
NARROW_SOFTMAX = 32
#: A Dense GEMM of rows x in x out multiply-adds counts as (that / GEMM_WORK) elements of
#: work when a training step decides whether to split it (see :mod:`._split`).
GEMM_WORK = 32
#: The environment variable that caps the inference plan's threads.
THREADS_ENV = "MINIFW_NUM_THREADS"

_max_reduce: Any = np.maximum.reduce  # positional: (array, axis, dtype, out, keepdims)
_add_reduce: Any = np.add.reduce
_accumulate: Any = np.add.accumulate


class NumpyBackend(NumpyBlockOps, NumpyConvOps, UfuncBackend):
    name = "numpy"

    def __init__(self, xp: Any, version: str) -> None:
        super().__init__(xp, version)
        self._zero_rows: dict[tuple[str, int], np.ndarray] = {}
        self._tls = threading.local()  # per-thread softmax scratch
        self._blas = _BlasLimiter()
        #: largest number of threads for the inference plan (None: the env var, else cores)
        self.max_threads: int | None = None
        self._threads: int | None = None  # what threads() found (env var, cores, BLAS)
        self.empty = np.empty  # type: ignore[method-assign]  # (shape, dtype): one C call

    # -- conversions -------------------------------------------------------------------
    def is_native(self, x: Any) -> bool:
        return type(x) is np.ndarray

    def from_numpy(self, a: np.ndarray) -> Any:
        return a

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def asarray(self, x: Any, dtype: str | None = None) -> Any:
        # Hot path for batch-1 inference: one type check, one dtype check.
        if type(x) is np.ndarray:
            if dtype is None:
                if x.dtype in _FLOATS:
                    return x
                dtype = "float32"
            if x.dtype is _FLOATS[dtype]:
                return x
            if x.dtype.kind not in "biuf":
                raise TypeError(f"expected a numeric array, got dtype {x.dtype}")
            return x.astype(dtype)
        a = super().asarray(x, dtype)
        # A foreign array may come back as a view of its memory: copy, so that layers may
        # treat a converted input as their own and the caller's array is never written.
        return a if a.flags.owndata else a.copy()

    # -- dense -------------------------------------------------------------------------
    def linear(self, x: Any, w: Any, b: Any = None, out: Any = None, act: str | None = None) -> Any:
        n_in, n_out = w.shape
        if out is not None and x.ndim == 2 and x.shape[0] * n_out < _gemm.MIN_ELEMS:
            # the small-batch hot path, inline: a few ufuncs into the caller's buffer
            y = np.dot(x, w, out)  # for 2-D arrays the same BLAS call as matmul
            if b is not None:  # a (1, n) row broadcasts faster than the (n,) vector
                np.add(y, b.reshape(1, n_out), y)
            if act is None:
                return y
            if act == "sigmoid":
                return self._sigmoid_of_negated(np.negative(y, y))
            if act == "softmax":
                return self.softmax(y, True)
            return self.activate(act, y, True)
        rows = x.size // n_in if n_in else 0
        p = _split.parts(rows, rows * n_in * n_out // GEMM_WORK)
        if p > 1 and x.ndim == 2:  # a training step: a range of rows per thread
            y = out if out is not None else np.empty((rows, n_out), np.result_type(x, w))
            _split.run(rows, p, lambda a, e: self.linear(x[a:e], w, b, y[a:e], act))
            return y
        if b is not None and rows * n_out >= _gemm.MIN_ELEMS and x.dtype == w.dtype:
            # the bias first, then one GEMM adds x @ W to it (-(b + xW) before a sigmoid:
            # negation is exact, so the same bits as negating afterwards)
            if w.dtype in _gemm.funcs():
                y = out if out is not None else np.empty(x.shape[:-1] + (n_out,), w.dtype)
                neg = act == "sigmoid"
                if _gemm.addmm(
                    x.reshape(rows, n_in), w, y.reshape(rows, n_out), -1.0 if neg else 1.0,
                    np.negative(b) if neg else b,
                ):  # fmt: skip
                    if neg:
                        return self._sigmoid_of_negated(y)
                    return self.activate(act, y, True) if act is not None else y
        return super().linear(x, w, b, out, act)

    # -- activations -------------------------------------------------------------------
    def zero_for(self, x: Any) -> Any:
        n = x.shape[-1] if x.ndim else 0
        if n < 32:
            return super().zero_for(x)
        key = (x.dtype.str, n)
        z = self._zero_rows.get(key)
        if z is None:
            if len(self._zero_rows) >= 64:  # bounded: many widths replace the old rows
                self._zero_rows.clear()
            z = np.zeros(n, dtype=x.dtype)
            z.flags.writeable = False
            self._zero_rows[key] = z
        return z

    def softmax(self, x: Any, inplace: bool = False, axis: int = -1) -> Any:
        if (
            x.ndim >= 1
            and axis in (-1, x.ndim - 1)
            and 0 < x.shape[-1] <= NARROW_SOFTMAX
            and x.flags.c_contiguous
        ):  # rows of any batch shape (a 1-D vector is one row): each row the same bits
            out = x if inplace else np.empty_like(x)
            if x.ndim == 2:
                self._softmax_narrow(x, out)
            else:
                x2 = x.reshape(-1, x.shape[-1])
                self._softmax_narrow(x2, out.reshape(x2.shape))
            return out
        return super().softmax(x, inplace, axis)

    def _softmax_narrow(self, x: Any, out: Any) -> None:
        """Row softmax of a C-contiguous ``x`` ``(n, w)`` into ``out`` (may be ``x``).

        Reducing a 10-wide row along the last axis costs NumPy about 50 ns per row; reduced
        along the first axis of the transposed copy, the max and the sum run as vector loops
        over all rows at once (2-3x faster in all, both copies included). Over the first axis
        of a ``(w, n)`` array with ``n >= 2`` NumPy adds the classes one after another; a
        single row (which NumPy would sum pairwise) takes a running sum, ``add.accumulate``,
        which adds in that same order. So each row gets the same bits in any batch.
        """
        n, w = x.shape
        if n <= 1:
            if n == 1:  # one row: no transposes; the running sum adds in the same order
                rows = getattr(self._tls, "rows", None)
                if rows is None:
                    rows = self._tls.rows = {}
                got = rows.get((x.dtype, w))
                if got is None:  # (1, w) running sums, then 0-d views of their total and
                    t = np.empty((1, w), x.dtype)  # of the row's max (0-d operands take
                    col = np.empty((1, 1), x.dtype)  # NumPy's fast scalar loops)
                    got = rows[(x.dtype, w)] = (t, t[0, -1, ...], col, col[0, 0, ...])
                t, total, col, top = got
                _max_reduce(x, 1, None, col, True)
                np.subtract(x, top, out)
                np.exp(out, out)
                _accumulate(out, 1, None, t)
                np.divide(out, total, out)
            return
        t, col = self._narrow_scratch(n, w, x.dtype)
        np.copyto(t, x.T)
        _max_reduce(t, 0, None, col, True)
        np.subtract(t, col, t)
        np.exp(t, t)
        _add_reduce(t, 0, None, col, True)
        np.divide(t, col, t)
        np.copyto(out, t.T)

    def _narrow_scratch(self, n: int, w: int, dtype: Any) -> tuple[Any, Any]:
        """This thread's ``(w, n)`` and ``(1, n)`` scratch (grown, never shrunk)."""
        tls = self._tls
        key = dtype.str
        got = getattr(tls, "bufs", None)
        if got is None:
            got = tls.bufs = {}
        flat, row = got.get(key, (None, None))
        if flat is None or flat.size < w * n or row.size < n:
            size = max(w * n, NARROW_SOFTMAX * n)
            flat, row = got[key] = (np.empty(size, dtype), np.empty(n, dtype))
        return flat[: w * n].reshape(w, n), row[:n].reshape(1, n)

    # -- the inference plan's threads --------------------------------------------------
    def threads(self) -> int:
        if self.max_threads is not None:
            return max(1, int(self.max_threads))
        t = self._threads
        if t is None:
            n = _env_threads.get()
            want = n if n is not None else cores()
            t = self._threads = want if want > 1 and self._blas.available() else 1
        return t

    def parallel_section(self) -> Any:
        return self._blas.narrow

    def whole_section(self) -> Any:
        return self._blas.wide

    def train_section(self, split: bool = False) -> Any:
        """One training step. With ``split`` and more than one thread: BLAS on one thread,
        the step's heavy operations split over the batch on :meth:`threads` threads (see
        :mod:`._split`); otherwise the :meth:`whole_section` (BLAS as the user set it:
        faster for a model of Dense layers, whose work is all in BLAS)."""
        _malloc_thresholds.get()
        t = self.threads()
        if split and t > 1:
            return _split.TrainSection(self._blas.narrow, t)
        return self._blas.wide

    # -- split over the batch in a training step ----------------------------------------
    def linear_backward(
        self, x: Any, w: Any, g: Any, grads: dict[str, Any], bias: bool, need_dx: bool
    ) -> Any:
        n_in, n_out = w.shape
        rows = x.size // n_in if n_in else 0
        p = _split.parts(rows, rows * n_in * n_out // GEMM_WORK)
        if p == 1:
            return super().linear_backward(x, w, g, grads, bias, need_dx)
        x2, g2 = x.reshape(rows, n_in), g.reshape(rows, n_out)
        dx = np.empty((rows, n_in), np.result_type(g, w)) if need_dx else None
        partial: dict[int, tuple[Any, Any]] = {}

        def one(a: int, e: int) -> None:  # this range's share of dw and db, and its dx rows
            partial[a] = (x2[a:e].T @ g2[a:e], g2[a:e].sum(axis=0) if bias else None)
            if dx is not None:
                np.matmul(g2[a:e], w.T, out=dx[a:e])

        _split.run(rows, p, one)
        order = [partial[a] for a in sorted(partial)]  # a fixed order: the same bits
        dw = grads.get("weight")
        if dw is None or dw.dtype != order[0][0].dtype or dw.shape != w.shape:
            dw = grads["weight"] = np.empty(w.shape, order[0][0].dtype)
        np.copyto(dw, order[0][0])
        for pw, _ in order[1:]:
            dw += pw
        if bias:
            db = grads.get("bias")
            if db is None or db.dtype != order[0][1].dtype or db.shape != (n_out,):
                db = grads["bias"] = np.empty(n_out, order[0][1].dtype)
            np.copyto(db, order[0][1])
            for _, pb in order[1:]:
                db += pb
        return None if dx is None else dx.reshape(*g.shape[:-1], n_in)

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
        n = int(x.shape[0]) if x.ndim else 0
        p = _split.parts(n, x.size)
        rows = _rows(x)
        if p == 1 or rows is None:
            return super().batchnorm_train(x, gamma, beta, running_mean, running_var, momentum, eps)
        # as UfuncBackend's, in three split passes: per-channel sums, x - mean and the
        # squares' sums, then the scale and shift; partial sums added in a fixed order
        _, shape = self._bn_axes(x)
        c = int(x.shape[1])
        m = x.size // c
        sums: dict[int, Any] = {}
        total = _split.ordered_sum

        def channel_sums(a: int, e: int) -> None:
            sums[a] = rows[a * c : e * c].sum(axis=1).reshape(e - a, c).sum(axis=0)

        _split.run(n, p, channel_sums)
        mean = (total(sums) / m).reshape(shape)
        xhat = np.empty_like(x)
        xrows = xhat.reshape(rows.shape)
        squares: dict[int, Any] = {}

        def centre(a: int, e: int) -> None:
            np.subtract(x[a:e], mean, out=xhat[a:e])
            r = xrows[a * c : e * c]
            squares[a] = np.einsum("ij,ij->i", r, r).reshape(e - a, c).sum(axis=0)

        _split.run(n, p, centre)
        var = (total(squares) / m).reshape(shape)
        inv_std = np.sqrt(var + eps)
        np.divide(1.0, inv_std, out=inv_std)
        y = np.empty_like(xhat)
        g_, b_ = gamma.reshape(shape), beta.reshape(shape)

        def scale(a: int, e: int) -> None:
            xhat[a:e] *= inv_std
            np.multiply(xhat[a:e], g_, out=y[a:e])
            y[a:e] += b_

        _split.run(n, p, scale)
        self._bn_running(running_mean, running_var, mean, var, m, momentum)
        return y, xhat, inv_std, running_mean, running_var

    def batchnorm_backward(
        self, g: Any, xhat: Any, inv_std: Any, gamma: Any, need_dx: bool
    ) -> tuple[Any | None, Any, Any]:
        n = int(g.shape[0]) if g.ndim else 0
        p = _split.parts(n, g.size)
        rows, xrows = _rows(g), _rows(xhat)
        if p == 1 or rows is None or xrows is None:
            return super().batchnorm_backward(g, xhat, inv_std, gamma, need_dx)
        _, shape = self._bn_axes(g)
        c = int(g.shape[1])
        sums: dict[int, tuple[Any, Any]] = {}

        def reduce(a: int, e: int) -> None:
            r, xr = rows[a * c : e * c], xrows[a * c : e * c]
            dg = np.einsum("ij,ij->i", r, xr).reshape(e - a, c).sum(axis=0)
            sums[a] = (dg, r.sum(axis=1).reshape(e - a, c).sum(axis=0))

        _split.run(n, p, reduce)
        dgamma = _split.ordered_sum({a: v[0] for a, v in sums.items()})
        dbeta = _split.ordered_sum({a: v[1] for a, v in sums.items()})
        if not need_dx:
            return None, dgamma, dbeta
        m = g.size // c
        k1, k2 = (dgamma / -m).reshape(shape), (dbeta / m).reshape(shape)
        k3 = inv_std * gamma.reshape(shape)
        dx = np.empty(g.shape, np.result_type(xhat, k1))

        def grad_in(a: int, e: int) -> None:
            t = dx[a:e]
            np.multiply(xhat[a:e], k1, out=t)
            t += g[a:e]
            t -= k2
            t *= k3

        _split.run(n, p, grad_in)
        return dx, dgamma, dbeta

    # -- optimizers: the flat buffers' elementwise update split into ranges -------------
    def _split_update(self, update: Any, p: Any, g: Any, st: dict[str, Any], *args: Any) -> Any:
        """``update(p, g, st, *args)``, over ranges of ``p`` on several threads in a split
        training step (elementwise: the same bits). Only once ``st`` holds every state
        array (the update's scratch, made by its first call, says it was called before),
        all of ``p``'s shape: a range's call then creates nothing it would lose."""
        n = int(p.size)
        parts = _split.parts(n, n) if p.ndim == 1 else 1
        tmp = st.get(SCRATCH)
        if (
            parts == 1
            or tmp is None
            or g.shape != p.shape
            or not all(isinstance(v, np.ndarray) and v.shape == p.shape for v in st.values())
        ):
            return update(p, g, st, *args)
        _split.run(
            n, parts, lambda a, e: update(p[a:e], g[a:e], {k: v[a:e] for k, v in st.items()}, *args)
        )
        return p

    def sgd_update(self, p: Any, g: Any, st: dict[str, Any], *args: Any) -> Any:
        return self._split_update(super().sgd_update, p, g, st, *args)

    def adam_update(self, p: Any, g: Any, st: dict[str, Any], *args: Any) -> Any:
        return self._split_update(super().adam_update, p, g, st, *args)

    def adagrad_update(self, p: Any, g: Any, st: dict[str, Any], *args: Any) -> Any:
        return self._split_update(super().adagrad_update, p, g, st, *args)

    def rmsprop_update(self, p: Any, g: Any, st: dict[str, Any], *args: Any) -> Any:
        return self._split_update(super().rmsprop_update, p, g, st, *args)

    def relu(self, x: Any, inplace: bool = False) -> Any:
        n = int(x.shape[0]) if x.ndim > 1 else 1
        p = _split.parts(n, x.size)
        if p == 1:
            return super().relu(x, inplace)
        out = x if inplace else np.empty_like(x)
        zero = self.zero_for(x)
        _split.run(n, p, lambda a, e: np.maximum(x[a:e], zero, out=out[a:e]))
        return out

    def relu_backward(self, y: Any, g: Any) -> Any:
        n = int(g.shape[0]) if g.ndim > 1 else 1
        p = _split.parts(n, g.size)
        if p == 1:
            return super().relu_backward(y, g)
        out = np.empty_like(g)
        _split.run(n, p, lambda a, e: np.multiply(g[a:e], y[a:e] > 0, out=out[a:e]))
        return out


def _raise_malloc_thresholds() -> bool:
    """Move glibc's malloc thresholds to their top values, as freeing one large mapped
    block does in any program; True where that was done (glibc on Linux).

    glibc maps each block above its *mmap threshold* afresh (page faults on first touch)
    and returns free memory above its *trim threshold* at the top of the heap to the
    system. Both start at 128 KiB and rise, up to 32 and 64 MiB, each time a mapped block
    is freed. A training step allocates and frees some tens of MB in arrays of a few MB,
    so with the thresholds a step's own arrays had raised (about 5 and 10 MiB) the heap
    kept shrinking and growing: about 900 page faults and 3-4 ms of system time per step
    of the bench's CNN (12-16 ms). One block of 31 MiB, mapped and freed here without
    being touched, raises them to about 31 and 62 MiB: then no faults. glibc keeps the
    higher values for the process; nothing else changes (no ``mallopt``, which would turn
    the adaptive thresholds off)."""
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    block = np.empty(31 << 20, np.uint8)  # above the threshold: mapped; freed at once
    del block
    return True


_malloc_thresholds: Once[bool] = Once(_raise_malloc_thresholds)


def _read_threads_env() -> int | None:
    env = os.environ.get(THREADS_ENV, "").strip()
    if not env:
        return None
    try:
        n = int(env)
    except ValueError:
        n = 0
    if n < 1:
        raise BackendError(f"{THREADS_ENV}={env!r} is not a positive integer")
    return n


_env_threads: Once[int | None] = Once(_read_threads_env)


class _BlasLimiter:
    """BLAS thread settings for two kinds of work that never overlap:

    * **narrow** (``parallel_section``: a plan's chunks on several threads): BLAS held to
      one thread, process-wide (BLAS libraries have one setting per process), so every
      chunk gives the same bits from any thread, alone or concurrently;
    * **wide** (``whole_section``: a training step, an unchunked inference call): the
      user's setting.

    Many sections of one kind run at once; the two kinds take turns (when both wait, the
    kind that did not run last goes first), so the setting is changed only while no minifw
    BLAS call runs: a training step never runs on a setting that a concurrent predict
    changed, and ``fit`` gives the same bits with or without predicts in other threads.
    A thread inside a section that asks for the other kind (nested) keeps the one it holds.

    OpenBLAS is set through its own ``openblas_set_num_threads``: ``threadpoolctl``'s
    setter obeys only the first thread that used it and silently does nothing in any
    other, so a predict from another thread used to run its chunks on every BLAS thread
    (all cores per chunk, at once: slower, and other bits). Other libraries go through
    ``threadpoolctl``.
    """

    _lock: Any  # threading.Lock
    _cond: threading.Condition
    _active: int  # threads inside sections of kind _mode
    _mode: bool | None  # True: narrow, False: wide, None: no section runs
    _last: bool | None  # the kind of the last turn
    _waiting: dict[bool, int]
    _saved: list[tuple[Any, int]]
    _tls: threading.local

    def __init__(self) -> None:
        self._libs: Once[list[tuple[Any, Any]]] = Once(_blas_libs)
        self._after_fork_in_child()
        self.narrow = _Section(self, True)
        self.wide = _Section(self, False)
        _LIMITERS.add(self)

    def available(self) -> bool:
        return bool(self._libs.get())

    def _may(self, narrow: bool) -> bool:
        if self._active == 0:  # between turns: the other kind first if it waits, after ours
            return not self._waiting[not narrow] or self._last is not narrow
        return self._mode is narrow and not self._waiting[not narrow]

    def _enter(self, narrow: bool) -> None:
        tls = self._tls
        depth = getattr(tls, "depth", 0)
        if depth:  # nested: keep the kind this thread holds
            tls.depth = depth + 1
            return
        lock = self._lock
        lock.acquire()  # the raw lock (not the Condition's with): this is on every call
        try:
            if not self._may(narrow):
                self._waiting[narrow] += 1
                while not self._may(narrow):
                    self._cond.wait()
                self._waiting[narrow] -= 1
            if self._active == 0:
                self._mode = narrow
                if narrow:
                    self._saved = [(set_, get()) for set_, get in self._libs.get()]
                    for set_, _ in self._saved:
                        set_(1)
            self._active += 1
        finally:
            lock.release()
        tls.depth = 1

    def _exit(self) -> None:
        tls = self._tls
        tls.depth -= 1
        if tls.depth:
            return
        lock = self._lock
        lock.acquire()
        try:
            self._active -= 1
            if self._active == 0:
                if self._mode:
                    for set_, n in self._saved:
                        set_(n)
                    self._saved = []
                self._last, self._mode = self._mode, None
                if self._waiting[True] or self._waiting[False]:
                    self._cond.notify_all()
            elif self._waiting[not self._mode]:
                self._cond.notify_all()
        finally:
            lock.release()

    def _after_fork_in_child(self) -> None:
        """A fresh state (also at the start). In a child only the forking thread lives on,
        and the fork gate let no section run across the fork."""
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._active = 0
        self._mode = None
        self._last = None
        self._waiting = {True: 0, False: 0}
        self._saved = []
        self._tls = threading.local()


class _Section:
    def __init__(self, limiter: _BlasLimiter, narrow: bool) -> None:
        self._enter = limiter._enter
        self._exit = limiter._exit
        self._narrow = narrow

    def __enter__(self) -> None:
        self._enter(self._narrow)

    def __exit__(self, *exc: object) -> None:
        self._exit()


_LIMITERS: weakref.WeakSet[_BlasLimiter] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for limiter in list(_LIMITERS):
        limiter._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _blas_libs() -> list[tuple[Any, Any]]:
    """``(set_num_threads, get_num_threads)`` for each BLAS library loaded."""
    try:
        from threadpoolctl import ThreadpoolController

        libs = [lc for lc in ThreadpoolController().lib_controllers if lc.user_api == "blas"]
    except Exception:  # not installed, or an unknown BLAS
        return []
    out = []
    for lc in libs:
        set_ = _openblas_setter(lc) if lc.internal_api == "openblas" else None
        out.append((set_ or lc.set_num_threads, lc.get_num_threads))
    return out


def _openblas_setter(lc: Any) -> Any:
    """OpenBLAS's own ``openblas_set_num_threads`` (under any of its symbol prefixes and
    suffixes), or ``None``."""
    import ctypes

    for prefix in ("", "scipy_"):
        for suffix in ("", "64_"):
            f = getattr(lc.dynlib, f"{prefix}openblas_set_num_threads{suffix}", None)
            if f is not None:
                f.argtypes, f.restype = [ctypes.c_int], None
                return f
    return None


def check_env() -> None:
    """Read and check ``MINIFW_NUM_THREADS`` and ``MINIFW_FUSED_GEMM`` (each once per
    process): a bad value is a :class:`BackendError` naming the variable and the value, at
    the backend's first use, whatever the batch size."""
    _env_threads.get()
    _gemm.wanted.get()


def reset_env_for_tests() -> None:
    """Forget the environment variables read by :func:`check_env` and the GEMM lookup
    (tests only; ``minifw.backend._reset_for_tests`` calls it)."""
    _env_threads.reset()
    _gemm.wanted.reset()
    _gemm._funcs.reset()


def load() -> NumpyBackend:
    check_env()
    return NumpyBackend(np, np.__version__)
