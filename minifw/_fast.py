"""Fast inference on NumPy and CuPy: a model compiled into Dense + activation steps.

``Sequential.predict`` and ``Sequential.__call__`` (in eval mode) run through a
:class:`Plan` when the model is a chain of ``Dense`` layers, each followed by at most one
``Sigmoid``, ``ReLU``, ``Tanh`` or ``Softmax(axis=-1)`` (``Identity`` and ``Flatten`` are
skipped), on a backend with ``fast`` arrays. Anything else takes the layers' own
``_forward``. The plan

* reads the parameters at every call, so ``set_param`` and in-place optimizer updates
  are always seen (nothing derived from the weights is cached);
* computes each Dense as one ``matmul`` into a per-thread buffer (``threading.local``),
  then bias + activation in place on that buffer: a few in-place ufuncs on NumPy (for a
  sigmoid the bias goes in with the negation, ``(-b) - xW``, the same bits as
  ``-(xW + b)``), one compiled kernel on CuPy. On NumPy, outputs of at least
  ``minifw._gemm.MIN_ELEMS`` elements are filled with the bias (``-b`` before a sigmoid)
  and one GEMM adds ``xW`` (``-xW``) to it, as ``Dense`` does too: one pass fewer;
* allocates only its result, which belongs to the caller: later calls never write it;
* on NumPy at large batches, splits the rows into cache-sized chunks that each run the
  whole network, on every core at once: BLAS is held to one thread per call while the
  chunks run (NumPy releases the GIL), so the elementwise passes are parallel too.

Each block applies the same ufuncs in the same order as the layers' own forward
(``minifw.functional``), so on the same rows the fast path gives the same bits.
"""

from __future__ import annotations

import itertools
import os
import threading
from typing import Any

import numpy as np

from . import _gemm
from ._gemm import addmm
from .functional import (
    NARROW_SOFTMAX,
    add_reduce,
    max_reduce,
    narrow_scratch_shapes,
    softmax_narrow_,
    zeros_for_width,
)

NONE, RELU, SIGMOID, TANH, SOFTMAX = range(5)
ACT_NAMES = {NONE: "none", RELU: "relu", SIGMOID: "sigmoid", TANH: "tanh", SOFTMAX: "softmax"}

#: Largest number of threads a NumPy plan uses (``None``: the cores this process may use).
#: ``MINIFW_NUM_THREADS`` sets it; 1 turns the chunk-parallel path off.
max_threads: int | None = None
#: Batches whose widest activation has more elements than this (rounded to a power of two
#: of rows between MIN_CHUNK_ROWS and MAX_CHUNK_ROWS: ``Plan.chunk``) are split into chunks
#: that run on all cores at once.
CHUNK_ELEMS = 1 << 18
#: The largest chunk's widest activation, in elements (likewise in rows: ``Plan.max_chunk``).
#: Each one-thread GEMM repacks the whole weight matrix, so rows amortise that copy: on the
#: 2-core benchmark machine, W at batch 8192 measured 1.03-1.08x the GEMM floor with 256-row
#: chunks and 1.02-1.045x with 1024 (128: 1.13x; 2048: no better and less balanced).
MAX_CHUNK_ELEMS = 1 << 20
MIN_CHUNK_ROWS = 256
MAX_CHUNK_ROWS = 1024
#: Up to this many rows, ``run`` goes straight to one block (the batch-1 hot path).
SMALL_ROWS = 16


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _threads_wanted() -> int:
    if max_threads is not None:
        return max(1, int(max_threads))
    env = os.environ.get("MINIFW_NUM_THREADS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            from .errors import BackendError

            raise BackendError(f"MINIFW_NUM_THREADS={env!r} is not a positive integer") from None
    return _cores()


# -- the plan ----------------------------------------------------------------------------------


def compile_plan(model: Any) -> Plan | None:
    """A :class:`Plan` for ``model`` (a Sequential), or ``None`` if it does not apply."""
    b = model._b
    if not b.fast or b.name not in ("numpy", "cupy"):
        return None
    from .layers.activations import Identity, ReLU, Sigmoid, Softmax, Tanh
    from .layers.dense import Dense
    from .layers.flatten import Flatten

    acts = {Sigmoid: SIGMOID, ReLU: RELU, Tanh: TANH}
    steps: list[list[Any]] = []
    for m in model._modules:
        t = type(m)
        if t is Dense:
            if m._b is not b or (steps and steps[-1][0].out_features != m.in_features):
                return None
            steps.append([m, NONE])
        elif t is Identity or t is Flatten:  # identities on the 1-D / 2-D inputs plans take
            continue
        elif t in acts or (t is Softmax and m.axis == -1):
            if not steps or steps[-1][1] != NONE:
                return None
            steps[-1][1] = SOFTMAX if t is Softmax else acts[t]
        else:
            return None
    if not steps or len({m.dtype for m, _ in steps}) != 1:
        return None
    return Plan(b, [(m, a) for m, a in steps])


class Plan:
    """Inference for one model on one fast backend; safe to call from many threads."""

    def __init__(self, backend: Any, steps: list[tuple[Any, int]]) -> None:
        self.backend = backend
        self.xp = backend.xp
        self.steps = steps
        self.acts = tuple(a for _, a in steps)
        self.has_sigmoid = SIGMOID in self.acts
        self.n_in: int = steps[0][0].in_features
        self.widths = tuple(m.out_features for m, _ in steps)
        self.n_hidden = len(self.widths) - 1
        #: rows of the transposed scratch: the widest softmax taking the narrow path
        self.narrow_w = max(
            (
                w
                for w, a in zip(self.widths, self.acts, strict=True)
                if a == SOFTMAX and w <= NARROW_SOFTMAX
            ),
            default=0,
        )
        self.dtype_name: str = steps[0][0].dtype
        self.dtype = np.dtype(self.dtype_name)  # NumPy and CuPy arrays share NumPy dtypes
        self.cupy = backend.name == "cupy"
        wmax = max(self.widths)

        def rows(elems: int) -> int:
            r = 1 << max(0, (elems // wmax).bit_length() - 1)
            return min(MAX_CHUNK_ROWS, max(MIN_CHUNK_ROWS, r))

        self.chunk = rows(CHUNK_ELEMS)  # batches above this many rows are split
        self.max_chunk = rows(MAX_CHUNK_ELEMS)  # into chunks of at most this many
        self._tls = threading.local()
        _, self._one, self._zero = backend.consts(self.dtype)
        self._max_width = wmax
        # NumPy's BLAS with the bias filled in first (minifw._gemm), where there is one;
        # looked up on the first big batch (threadpoolctl takes milliseconds to look)
        self._gemm: bool | None = False if self.cupy else None
        # per step: what ReLU compares with (a read-only zero row on NumPy, see zero_row)
        self._relu_zero = [zeros_for_width(backend, w, self.dtype) for w in self.widths]

    # -- entry point -------------------------------------------------------------------
    def run(self, x: Any, max_rows: int | None = None) -> Any:
        """The model's output for a native 1-D or 2-D ``x`` of the plan's dtype, as a new
        array; ``None`` when the plan does not apply (the caller takes the generic path,
        which also raises the proper error for a wrong shape)."""
        shape = x.shape
        if x.dtype != self.dtype:
            return None
        if len(shape) == 2:
            if shape[1] != self.n_in:
                return None
            n = shape[0]
            if n <= SMALL_ROWS and not self.cupy:  # the batch-1 hot path: no extra calls
                y = np.empty((n, self.widths[-1]), dtype=self.dtype)
                self._block(x, y)
                return y
            return self._run2(x, max_rows)
        if len(shape) == 1 and shape[0] == self.n_in:
            return self._run2(x.reshape(1, self.n_in), max_rows).reshape(self.widths[-1])
        return None

    def _run2(self, x: Any, max_rows: int | None) -> Any:
        n = x.shape[0]
        y = self.xp.empty((n, self.widths[-1]), dtype=self.dtype)
        if self.cupy:
            _CupyBlock.run(self, x, y)
            return y
        chunk, threads = self.split(n, max_rows)
        if chunk >= n:
            self._block(x, y)
        elif threads > 1:
            self._parallel(x, y, chunk, threads)
        else:
            for s in range(0, n, chunk):
                self._block(x[s : s + chunk], y[s : s + chunk])
        return y

    def split(self, n: int, max_rows: int | None = None) -> tuple[int, int]:
        """``(rows per chunk, threads)`` for a batch of ``n`` rows on NumPy (chunks of at
        most ``max_rows``): one block up to ``chunk`` rows; above that, chunks of equal size,
        as many per thread, each at most ``max_chunk`` rows."""
        small = self.chunk if max_rows is None else max(1, min(self.chunk, max_rows))
        if n <= small:
            return n, 1
        threads = min(_threads_wanted(), -(-n // small))
        if threads <= 1 or not _BLAS.available():
            return small, 1
        big = self.max_chunk if max_rows is None else max(1, min(self.max_chunk, max_rows))
        nchunks = threads * -(-n // (threads * big))
        return -(-n // nchunks), threads

    # -- per-thread buffers ------------------------------------------------------------
    def _buffers(self, n: int) -> list[Any]:
        """This thread's buffers for ``n`` rows: one per hidden activation, then the
        ``(n, 1)`` softmax scratch column, then one bias-sized scratch vector per layer
        (for the negated bias of a sigmoid layer), then the transposed ``(w, n)`` and
        ``(1, n)`` scratch of a narrow softmax (see minifw.functional.softmax_narrow_)."""
        tls = self._tls
        got = getattr(tls, "views", None)
        if got is not None and tls.n == n:
            return got  # type: ignore[no-any-return]
        base = getattr(tls, "base", None)
        xp, dt = self.xp, self.dtype
        if base is None or tls.cap < n:
            cap = max(n, getattr(tls, "cap", 0))
            base = [xp.empty((cap, w), dtype=dt) for w in self.widths[:-1]]
            base.append(xp.empty((cap, 1), dtype=dt))
            tls.base, tls.cap = base, cap
            tls.negb = [xp.empty(w, dtype=dt) for w in self.widths]
            tls.narrow = (xp.empty(max(1, self.narrow_w) * cap, dtype=dt), xp.empty(cap, dtype=dt))
        flat, row = tls.narrow
        ts, cs = narrow_scratch_shapes(n, self.narrow_w)
        t = flat[: ts[0] * ts[1]].reshape(ts)
        views = [a[:n] for a in base] + tls.negb + [t, row[: cs[1]].reshape(cs)]
        tls.views, tls.n = views, n
        return views

    # -- NumPy: one block of rows through the whole network -----------------------------
    def _block(self, x: Any, y: Any) -> None:
        """All steps on one block of rows, ``x`` to ``y``: the same ufuncs in the same order
        as the layers' own forward, so the results are the same bits."""
        if self.has_sigmoid:  # exp(-z) overflows to inf for z < -88.7: 1 / (1 + inf) = 0
            with np.errstate(over="ignore"):  # once per block: it costs about 1 µs
                self._steps(x, y)
        else:
            self._steps(x, y)

    def _steps(self, x: Any, y: Any) -> None:
        n = x.shape[0]
        tls = self._tls
        bufs = getattr(tls, "views", None)
        if bufs is None or tls.n != n:
            bufs = self._buffers(n)
        one = self._one
        nh = self.n_hidden
        dot = np.dot  # for 2-D arrays the same BLAS call as matmul (same bits), less overhead
        # big outputs: bias (or -bias) first, then GEMM adds to it (as Dense does: same bits)
        least = _gemm.MIN_ELEMS
        gemm = n * self._max_width >= least and self._gemm is not False
        if gemm and self._gemm is None:
            self._gemm = self.dtype in _gemm.funcs()
            gemm = self._gemm
        h = x
        i = 0
        for m, act in self.steps:
            out = bufs[i] if i < nh else y
            w, b = m._weight, m._bias
            biased = False
            if gemm and b is not None and out.size >= least:
                if act == SIGMOID:  # -(b + xW): alpha = -1 on -b; negation is exact
                    biased = addmm(h, w, out, -1.0, np.negative(b, bufs[nh + 1 + i]))
                else:
                    biased = addmm(h, w, out, 1.0, b)
            if not biased:
                dot(h, w, out)
            if act == SIGMOID:  # 1 / (1 + exp(-z)), as minifw.functional: same bits
                if b is not None and not biased:  # -(xW + b) in one pass: (-b) - xW
                    np.subtract(np.negative(b, bufs[nh + 1 + i]), out, out)  # (same bits)
                elif b is None:
                    np.negative(out, out)
                # (biased: out already holds -(xW + b))
                np.exp(out, out)  # overflow warnings are off (_block)
                np.add(out, one, out)
                np.divide(one, out, out)
                h = out
                i += 1
                continue
            if b is not None and not biased:
                np.add(out, b, out)
            if act == RELU:  # NaN propagates; the zero row as minifw.functional.relu_
                np.maximum(out, self._relu_zero[i], out=out)
            elif act == SOFTMAX and out.shape[1] <= NARROW_SOFTMAX:
                t = bufs[-2]
                if t.size != out.size:  # a hidden softmax narrower than the widest
                    ts = narrow_scratch_shapes(n, out.shape[1])[0]
                    t = t.reshape(-1)[: out.size].reshape(ts)
                softmax_narrow_(out, out, t, bufs[-1])
            elif act == SOFTMAX:
                col = bufs[nh]
                max_reduce(out, 1, None, col, True)
                np.subtract(out, col, out)
                np.exp(out, out)
                add_reduce(out, 1, None, col, True)
                np.divide(out, col, out)
            elif act == TANH:
                np.tanh(out, out)
            h = out
            i += 1

    def _parallel(self, x: Any, y: Any, chunk: int, threads: int) -> None:
        n = x.shape[0]
        nchunks = -(-n // chunk)
        counter = itertools.count()
        block = self._block
        tls = self._tls

        def work() -> None:
            # size this thread's buffers for a whole chunk even if its first is the short
            # last one: which thread gets which chunk is up to timing, and a later full
            # chunk would otherwise reallocate them
            if getattr(tls, "cap", 0) < chunk:
                self._buffers(chunk)
            while True:
                i = next(counter)  # atomic under the GIL: each chunk is taken once
                if i >= nchunks:
                    return
                s = i * chunk
                block(x[s : s + chunk], y[s : s + chunk])

        with _BLAS.one_thread():
            futures = [_pool(threads - 1).submit(work) for _ in range(threads - 1)]
            try:
                work()
            finally:
                for f in futures:
                    f.result()


# -- BLAS thread control (threadpoolctl, optional) ----------------------------------------------


class _BlasLimiter:
    """Holds BLAS to one thread while any plan's chunks run (reference-counted, so
    concurrent predict calls restore the user's setting only when the last one ends)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._saved: list[tuple[Any, int]] = []
        self._libs: list[Any] | None = None

    def available(self) -> bool:
        if self._libs is None:
            with self._lock:
                if self._libs is None:
                    try:
                        from threadpoolctl import ThreadpoolController

                        ctl = ThreadpoolController()
                        self._libs = [lc for lc in ctl.lib_controllers if lc.user_api == "blas"]
                    except Exception:  # not installed, or an unknown BLAS
                        self._libs = []
        return bool(self._libs)

    def one_thread(self) -> _BlasLimiter:
        return self

    def __enter__(self) -> None:
        with self._lock:
            if self._depth == 0:
                self._saved = [(lc, lc.get_num_threads()) for lc in self._libs or ()]
                for lc, _ in self._saved:
                    lc.set_num_threads(1)
            self._depth += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                for lc, n in self._saved:
                    lc.set_num_threads(n)
                self._saved = []


_BLAS = _BlasLimiter()
_pool_lock = threading.Lock()
_executor: Any = None
_executor_size = 0


def _after_fork_in_child() -> None:
    """A forked child has none of the parent's threads: start afresh (a stale pool would
    accept work that no thread ever runs)."""
    global _executor, _executor_size, _BLAS, _pool_lock
    _executor, _executor_size = None, 0
    _pool_lock = threading.Lock()
    _BLAS = _BlasLimiter()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _pool(size: int) -> Any:
    """A shared pool of worker threads (grown when more are asked for)."""
    global _executor, _executor_size
    if _executor is None or _executor_size < size:
        with _pool_lock:
            if _executor is None or _executor_size < size:
                from concurrent.futures import ThreadPoolExecutor

                old = _executor
                _executor = ThreadPoolExecutor(size, thread_name_prefix="minifw")
                _executor_size = size
                if old is not None:
                    old.shutdown(wait=False)
    return _executor


# -- CuPy: fused kernels -------------------------------------------------------------------------

#: ElementwiseKernel bodies, per activation: ``x`` is the matmul output, ``b`` the bias
#: (broadcast along rows), ``y`` the result (the same array as ``x``: in place).
CUPY_ELEMENTWISE: dict[int, str] = {
    NONE: "y = x + b",
    RELU: "T v = x + b; y = (v < (T)0) ? (T)0 : v",  # NaN < 0 is false: NaN passes
    SIGMOID: "y = (T)1 / ((T)1 + exp(-(x + b)))",  # exp overflow gives inf, then 0: exact
    TANH: "y = tanh(x + b)",
}

#: One thread per row: bias, max, exp and sum, divide, in one pass over the row's memory.
CUPY_SOFTMAX_SRC = r"""
extern "C" __global__ void minifw_softmax_{T}(
    {T}* __restrict__ y, const {T}* __restrict__ b, const int n, const int w, const int has_bias)
{{
    const long long r = (long long)blockDim.x * blockIdx.x + threadIdx.x;
    if (r >= n) return;
    {T}* row = y + r * w;
    {T} m = row[0] + (has_bias ? b[0] : ({T})0);
    for (int j = 0; j < w; ++j) {{
        {T} v = row[j];
        if (has_bias) {{ v += b[j]; row[j] = v; }}
        if (v > m || v != v) m = v;  /* NaN wins, as in numpy.max */
    }}
    {T} s = 0;
    for (int j = 0; j < w; ++j) {{
        {T} e = {EXP}(row[j] - m);
        row[j] = e;
        s += e;
    }}
    for (int j = 0; j < w; ++j) row[j] = row[j] / s;
}}
"""

_CUDA_TYPES = {"float32": ("float", "expf"), "float64": ("double", "exp")}
_SOFTMAX_THREADS = 256


def softmax_source(dtype_name: str) -> tuple[str, str]:
    """``(CUDA source, kernel name)`` of the fused row softmax for ``dtype_name``."""
    t, exp = _CUDA_TYPES[dtype_name]
    return CUPY_SOFTMAX_SRC.format(T=t, EXP=exp), f"minifw_softmax_{t}"


def launch_config(n_rows: int) -> tuple[tuple[int], tuple[int]]:
    """``(grid, block)`` for the row softmax: one thread per row."""
    return ((n_rows + _SOFTMAX_THREADS - 1) // _SOFTMAX_THREADS,), (_SOFTMAX_THREADS,)


class _CupyKernels:
    """The compiled kernels, built on first use (CuPy caches the binaries too)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._built: dict[Any, Any] = {}

    def _get(self, key: Any, build: Any) -> Any:
        k = self._built.get(key)
        if k is None:
            with self._lock:
                k = self._built.get(key)
                if k is None:
                    k = self._built[key] = build()
        return k

    def elementwise(self, cp: Any, act: int) -> Any:
        return self._get(
            ("ew", act),
            lambda: cp.ElementwiseKernel(
                "T x, T b", "T y", CUPY_ELEMENTWISE[act], f"minifw_bias_{ACT_NAMES[act]}"
            ),
        )

    def softmax(self, cp: Any, dtype_name: str) -> Any:
        return self._get(("softmax", dtype_name), lambda: cp.RawKernel(*softmax_source(dtype_name)))


_KERNELS = _CupyKernels()


class _CupyBlock:
    """The CuPy forward: cuBLAS matmuls into per-thread device buffers, one fused kernel
    per bias + activation, no host round trip (the caller synchronises or copies)."""

    @staticmethod
    def run(plan: Plan, x: Any, y: Any) -> None:
        cp = plan.xp
        n = x.shape[0]
        if n == 0:  # nothing to compute (and a launch needs at least one block)
            return
        bufs = plan._buffers(n)
        nh = len(plan.widths) - 1
        dtype_name = plan.dtype_name
        h = x
        for i, (m, act) in enumerate(plan.steps):
            out = bufs[i] if i < nh else y
            cp.matmul(h, m._weight, out=out)
            b = m._bias
            if act == SOFTMAX:
                k = _KERNELS.softmax(cp, dtype_name)
                grid, block = launch_config(n)
                if b is not None and not b.flags.c_contiguous:  # the kernel indexes b[j]
                    b = cp.ascontiguousarray(b)
                bias = b if b is not None else out  # not read when has_bias is 0
                k(
                    grid,
                    block,
                    (out, bias, np.int32(n), np.int32(out.shape[1]), np.int32(b is not None)),
                )
            elif b is not None or act != NONE:
                k = _KERNELS.elementwise(cp, act)
                k(out, b if b is not None else plan._zero, out)
            h = out


def describe(plan: Plan) -> str:
    """A one-line summary, e.g. ``numpy: 784→50 sigmoid, ... (chunks above 1024 rows, of at
    most 1024)``."""
    parts = [f"{m.in_features}→{m.out_features} {ACT_NAMES[a]}" for m, a in plan.steps]
    chunks = f"chunks above {plan.chunk} rows, of at most {plan.max_chunk}"
    return f"{plan.backend.name}: " + ", ".join(parts) + f" ({chunks})"


__all__ = ["Plan", "compile_plan", "describe"]
