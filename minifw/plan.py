"""The inference plan: how a ``Sequential`` runs in eval mode (``model(x)``, ``predict``).

The plan is a scheduler; it computes nothing itself. It cuts the model into segments:

* a **fused run**: ``Dense`` layers, each followed by at most one elementwise activation
  (``Sigmoid``, ``ReLU``, ``Tanh``, ``Step``, ``Softmax`` over the last axis). Each step
  calls the layer's own inference code, ``Dense._linear(x, out, act)``, which is the
  backend's ``linear`` operation, the same one the layers' forward calls, so the plan and
  the layers give the same bits by construction. Rows are independent, so on engines that
  write in place the plan

  - writes each step into a per-thread buffer (``threading.local``) and allocates only
    the result, which belongs to the caller (later calls never write it);
  - on NumPy at large batches, splits the rows into equal cache-sized chunks that each
    run the whole segment, on every core at once (``Backend.threads``; BLAS is held to
    one thread per call meanwhile, and NumPy releases the GIL);

  and on immutable engines (JAX) the segment is one pure function of the parameters,
  compiled by the backend (``jax.jit``);
* **any other layer** (``Flatten``, a custom layer, a convolution): its own eval-mode
  forward, on the whole batch.

So a model with a layer the plan cannot fuse still runs its fusable stretches fast. The
plan reads the parameters at every call: ``set_param`` and optimizer updates are seen.
"""

from __future__ import annotations

import itertools
import os
import threading
from typing import Any

from .layers.module import SERVICES, Module

#: activations a fused step takes (the backend's ``linear(..., act=)``)
FUSABLE = ("sigmoid", "relu", "tanh", "step", "softmax")
#: Batches whose widest activation has more elements than this (rounded to a power of two
#: of rows between MIN_CHUNK_ROWS and MAX_CHUNK_ROWS) are split into chunks that run on all
#: cores at once.
CHUNK_ELEMS = 1 << 18
#: The largest chunk's widest activation, in elements. Each one-thread GEMM repacks the
#: whole weight matrix, so rows amortise that copy: on the 2-core benchmark machine, W at
#: batch 8192 measured 1.03-1.08x the GEMM floor with 256-row chunks and 1.02-1.045x with
#: 1024 (128: 1.13x; 2048: no better and less balanced).
MAX_CHUNK_ELEMS = 1 << 20
MIN_CHUNK_ROWS = 256
MAX_CHUNK_ROWS = 1024
#: Up to this many rows, a fused run goes straight to one block (the batch-1 hot path).
SMALL_ROWS = 16


def _step_act(m: Module) -> str | None:
    """The fusable activation ``m`` computes, or ``None``."""
    op = getattr(m, "op", None)
    if op not in FUSABLE or type(m)._forward is Module._forward:
        return None
    if op == "softmax" and getattr(m, "axis", -1) != -1:
        return None
    return op  # type: ignore[no-any-return]


class _Fused:
    """Consecutive ``(linear layer, activation or None)`` steps over rows."""

    def __init__(self, backend: Any, first: Module) -> None:
        self.backend = backend
        self.steps: list[list[Any]] = [[first, None]]
        self._tls = threading.local()
        self._fn: Any = None

    def close(self) -> _Fused:
        """Fix the widths from the layers' declared shapes (built-in linear layers declare
        their input size) and compile the segment where the engine compiles."""
        shape = self.steps[0][0].input_shape()
        self.n_in = int(shape[-1])
        widths = []
        for m, _ in self.steps:
            shape = m.output_shape((None, shape[-1]))
            widths.append(int(shape[-1]))  # type: ignore[arg-type]
        self.widths = widths
        wmax = max(widths)

        def rows(elems: int) -> int:
            r = 1 << max(0, (elems // wmax).bit_length() - 1)
            return min(MAX_CHUNK_ROWS, max(MIN_CHUNK_ROWS, r))

        self.chunk = rows(CHUNK_ELEMS)  # batches above this many rows are split
        self.max_chunk = rows(MAX_CHUNK_ELEMS)  # into chunks of at most this many
        if not self.backend.mutable:
            steps = [(m, act) for m, act in self.steps]
            b = self.backend

            def forward(params: list[tuple[Any, Any]], x: Any) -> Any:
                for (_, act), (w, bias) in zip(steps, params, strict=True):
                    x = b.linear(x, w, bias, None, act)
                return x

            self._fn = b.compile(forward)
        return self

    def describe(self) -> str:
        parts = [f"{m._describe()}" + (f" {act}" if act else "") for m, act in self.steps]
        return ", ".join(parts)

    # -- running -------------------------------------------------------------------------
    def run(self, x: Any, max_rows: int | None = None) -> Any:
        shape = x.shape
        if len(shape) == 2 and shape[0] <= SMALL_ROWS and shape[1] == self.n_in and not self._fn:
            y = self.backend.empty((shape[0], self.widths[-1]), x.dtype)  # batch-1 hot path
            self._block(x, y)
            return y
        if not shape or shape[-1] != self.n_in:
            return self._layers(x)  # the layers raise the proper error
        if len(shape) != 2:
            rows = 1
            for s in shape[:-1]:
                rows *= s
            y = self.run(self.backend.xp.reshape(x, (rows, self.n_in)), max_rows)
            return self.backend.xp.reshape(y, (*shape[:-1], self.widths[-1]))
        if self._fn is not None:
            params = [(m.weight, m.bias) for m, _ in self.steps]
            return self._fn(params, x)
        n = shape[0]
        b = self.backend
        y = b.empty((n, self.widths[-1]), x.dtype)
        chunk, threads = self.split(n, max_rows)
        if chunk >= n:
            self._block(x, y)
        elif threads > 1:
            self._parallel(x, y, chunk, threads)
        else:
            for s in range(0, n, chunk):
                self._block(x[s : s + chunk], y[s : s + chunk])
        return y

    def _layers(self, x: Any) -> Any:
        for m, _ in self.steps:
            x, _o = m._forward(x, False, False)
        return x

    def split(self, n: int, max_rows: int | None = None) -> tuple[int, int]:
        """``(rows per chunk, threads)`` for a batch of ``n`` rows (chunks of at most
        ``max_rows``): one block up to ``chunk`` rows; above that, on an engine that runs
        chunks on several threads, chunks of equal size, as many per thread, each at most
        ``max_chunk`` rows."""
        threads = self.backend.threads()
        if threads <= 1:
            return (n if max_rows is None else max(1, min(n, max_rows))), 1
        small = self.chunk if max_rows is None else max(1, min(self.chunk, max_rows))
        if n <= small:
            return n, 1
        threads = min(threads, -(-n // small))
        big = self.max_chunk if max_rows is None else max(1, min(self.max_chunk, max_rows))
        nchunks = threads * -(-n // (threads * big))
        return -(-n // nchunks), threads

    def _buffers(self, n: int) -> list[Any]:
        """This thread's buffers for ``n`` rows: one per hidden activation."""
        tls = self._tls
        views = getattr(tls, "views", None)
        if views is not None and tls.n == n:
            return views  # type: ignore[no-any-return]
        base = getattr(tls, "base", None)
        dtype = self.steps[0][0].weight.dtype
        if base is None or tls.cap < n:
            cap = max(n, getattr(tls, "cap", 0))
            base = [self.backend.empty((cap, w), dtype) for w in self.widths[:-1]]
            tls.base, tls.cap = base, cap
        views = [a[:n] for a in base]
        tls.views, tls.n = views, n
        return views

    def _block(self, x: Any, y: Any) -> None:
        """Every step on one block of rows, ``x`` to ``y``."""
        tls = self._tls
        bufs = getattr(tls, "views", None)
        if bufs is None or tls.n != x.shape[0]:
            bufs = self._buffers(x.shape[0])
        last = len(self.steps) - 1
        h = x
        for i, (m, act) in enumerate(self.steps):
            out = bufs[i] if i < last else y
            h = m._linear(h, out, act)
            if h is not out:  # an engine that returned a new array: keep the buffer's
                out[...] = h
                h = out

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

        with self.backend.parallel_section():
            futures = [_pool(threads - 1).submit(work) for _ in range(threads - 1)]
            try:
                work()
            finally:
                for f in futures:
                    f.result()


class _Layer:
    """A layer the plan does not fuse: its own eval-mode forward on the whole batch."""

    def __init__(self, m: Module) -> None:
        self.m = m

    def run(self, x: Any, max_rows: int | None) -> Any:
        return self.m._forward(x, False, False)[0]

    def describe(self) -> str:
        return self.m._describe()


class Plan:
    """Inference for one ``Sequential`` on its backend; safe to call from many threads."""

    def __init__(self, model: Any) -> None:
        self.backend = model.backend
        segments: list[Any] = []
        cur: _Fused | None = None
        for m in model:
            act = _step_act(m)
            if hasattr(m, "_linear") and m.backend is self.backend:
                cur = _Fused(self.backend, m)
                segments.append(cur)
            elif act is not None and cur is not None and cur.steps[-1][1] is None:
                cur.steps[-1][1] = act
            else:
                cur = None
                segments.append(_Layer(m))
        # consecutive fused runs of one width chain are merged (Dense, Dense: one segment)
        merged: list[Any] = []
        for s in segments:
            if isinstance(s, _Fused):
                s.close()
                prev = merged[-1] if merged else None
                if (
                    isinstance(prev, _Fused)
                    and prev.widths[-1] == s.n_in
                    and prev.steps[-1][0].dtype == s.steps[0][0].dtype
                ):
                    prev.steps += s.steps
                    prev.close()
                    continue
            merged.append(s)
        self.segments = merged
        if len(merged) == 1:  # one segment: the plan's run is the segment's (one call less)
            self.run = merged[0].run  # type: ignore[method-assign]

    def run(self, x: Any, max_rows: int | None = None) -> Any:
        """The model's output for a native array ``x`` of the model's dtype: a new array
        (chunks of at most ``max_rows`` rows at a time)."""
        segs = self.segments
        if len(segs) == 1:
            return segs[0].run(x, max_rows)
        n = x.shape[0] if len(x.shape) >= 2 else 1
        if max_rows is None or n <= max_rows or len(x.shape) < 2:
            for s in segs:
                x = s.run(x, None)
            return x
        b = self.backend
        parts = []
        for start in range(0, n, max_rows):
            h = x[start : min(start + max_rows, n), ...]
            for s in segs:
                h = s.run(h, None)
            parts.append(h)
        if not b.mutable:
            return b.xp.concat(parts, axis=0)
        out = b.empty((n, *tuple(parts[0].shape[1:])), parts[0].dtype)
        for start, p in zip(range(0, n, max_rows), parts, strict=True):
            out[start : start + p.shape[0], ...] = p
        return out

    def describe(self) -> str:
        """One line: the backend, then each segment (fused runs in brackets)."""
        parts = [
            f"[{s.describe()}]" if isinstance(s, _Fused) else s.describe() for s in self.segments
        ]
        return f"{self.backend.name}: " + " | ".join(parts)


def explain(model: Any) -> str:
    """How ``model(x)`` runs in eval mode: the plan's segments, e.g.
    ``numpy: [Dense 784→50 sigmoid, Dense 50→10 softmax]`` (a bracket is one fused run)."""
    plan = model._plan
    if plan is None:
        plan = model._plan = Plan(model)
    return plan.describe()


# -- the worker threads ----------------------------------------------------------------------

_pool_lock = threading.Lock()
_executor: Any = None
_executor_size = 0


def _after_fork_in_child() -> None:
    """A forked child has none of the parent's threads: start afresh (a stale pool would
    accept work that no thread ever runs)."""
    global _executor, _executor_size, _pool_lock
    _executor, _executor_size = None, 0
    _pool_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _pool(size: int) -> Any:
    """A shared pool of worker threads (grown when more are asked for)."""
    global _executor, _executor_size
    with _pool_lock:
        if _executor is None or _executor_size < size:
            from concurrent.futures import ThreadPoolExecutor

            old = _executor
            _executor = ThreadPoolExecutor(size, thread_name_prefix="minifw")
            _executor_size = size
            if old is not None:
                old.shutdown(wait=False)
        return _executor


SERVICES["compile_plan"] = Plan

__all__ = ["Plan", "explain"]
