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
* a **group**: consecutive batch-independent layers (each declares ``_rowwise = True``:
  ``Conv2D``, the poolings, ``BatchNorm`` and ``Dropout`` in eval mode, ``Flatten``,
  activations, fused Dense runs) holding at least one layer worth chunking for (not only
  Dense runs, reshapes and activations). A large batch runs through it in chunks of
  samples, each chunk through every layer of the group, on every core at once
  (``Backend.threads``, the same scheduler as the fused runs), so a convolution's im2col
  matrix and the activations exist for one chunk per thread at a time; only the group's
  output is allocated for the whole batch. ``explain`` shows a group in braces;
* **any other layer** (a custom layer, a ``Sequential``): its own eval-mode forward, on
  the whole batch.

So a model with a layer the plan cannot fuse still runs its fusable stretches fast. The
plan reads the parameters at every call: ``set_param`` and optimizer updates are seen.
"""

from __future__ import annotations

import itertools
import math
import threading
from typing import Any

from ._workers import FORK_GATE, claim, pool, release
from .errors import ShapeError
from .layers.activations import Identity, _Activation
from .layers.flatten import Flatten
from .layers.module import SERVICES, Module

#: layers too cheap to chunk a batch for on their own
_LIGHT = (_Activation, Identity, Flatten)

#: activations a fused step takes (the backend's ``linear(..., act=)``)
FUSABLE = ("sigmoid", "relu", "tanh", "step", "softmax")
#: activations fused into a preceding convolution (applied chunk by chunk; ReLU gives the
#: same bits on any chunk, while NumPy's sigmoid rounds saturated values by array size)
CONV_FUSABLE = ("relu",)
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
#: A group of batch-independent layers (see :class:`_Group`) runs a batch in chunks of
#: about this many elements of its widest per-sample activation, between GROUP_MIN_ROWS
#: and GROUP_MAX_ROWS samples (GROUP_MAX_ROWS <= MIN_CHUNK_ROWS: a fused Dense run inside
#: a chunk is one block, never split again). Measured on DeepConvNet at batch 2,000 (2
#: cores): 2 MB of activation per chunk 176 ms, 1 MB 180 ms, 8 MB 210 ms, 512 KB 206 ms;
#: after the conv chains' planes and larger chunks (paired, against 2 MB): 4 MB DeepConvNet
#: 0.935 at batch 100, 1.005 at 1,000; SimpleConvNet 0.89 at 100, 0.91 at 3,000; 8 MB
#: 1.04 (DeepConvNet, 1,000).
GROUP_CHUNK_ELEMS = 1 << 20
GROUP_MIN_ROWS = 8
GROUP_MAX_ROWS = 256


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
            # a single row while other inference calls run at the same time: BLAS on one
            # thread, so concurrent clients share the cores instead of each fanning out over
            # all of them (4 clients at batch 1 on W: 0.17x one client's requests/s before,
            # 0.86-0.93x after). One row gives the same bits on one BLAS thread or several
            # (each output is one thread's dot product); from 4 rows on OpenBLAS's threaded
            # GEMM rounds differently, so those stay on the user's setting
            if shape[0] != 1:
                with self.backend.whole_section():  # as every multi-row block
                    self._block(x, y)
            elif FORK_GATE.concurrent():
                with self.backend.parallel_section():
                    self._block(x, y)
            else:
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
        if chunk < n and threads > 1:
            self._parallel(x, y, chunk, threads)
            return y
        with b.whole_section():  # never while another thread's chunks hold BLAS narrow
            if chunk >= n:
                self._block(x, y)
            else:
                for s in range(0, n, chunk):
                    self._block(x[s : s + chunk], y[s : s + chunk])
        return y

    def inner(self, x: Any) -> Any:
        """``run`` for a chunk inside a group, whose caller already holds the BLAS section:
        one block on this thread, no section of its own."""
        shape = x.shape
        if len(shape) != 2 or shape[1] != self.n_in or self._fn is not None or not shape[0]:
            return self.run(x)  # other shapes (no BLAS section is entered on those paths)
        y = self.backend.empty((shape[0], self.widths[-1]), x.dtype)
        self._block(x, y)
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
        block = self._block
        tls = self._tls

        def prepare() -> None:
            # size this thread's buffers for a whole chunk even if its first is the short
            # last one: which thread gets which chunk is up to timing, and a later full
            # chunk would otherwise reallocate them
            if getattr(tls, "cap", 0) < chunk:
                self._buffers(chunk)

        def one(i: int) -> None:
            s = i * chunk
            block(x[s : s + chunk], y[s : s + chunk])

        _run_chunks(self.backend, -(-n // chunk), threads, one, prepare)


def _run_chunks(backend: Any, nchunks: int, threads: int, one: Any, prepare: Any = None) -> None:
    """``one(i)`` for every chunk ``i < nchunks`` on up to ``threads`` threads (this one and
    the pool's, as many as concurrent runs leave free), each thread taking the next chunk
    when done, inside the backend's ``parallel_section``; ``prepare()`` runs first on each
    thread."""
    counter = itertools.count()

    def work() -> None:
        if prepare is not None:
            prepare()
        while True:
            i = next(counter)  # atomic under the GIL: each chunk is taken once
            if i >= nchunks:
                return
            one(i)

    with backend.parallel_section():
        got = claim(threads)
        try:
            futures = [pool(threads - 1).submit(work) for _ in range(got - 1)]
            try:
                work()
            finally:
                for f in futures:
                    f.result()
        finally:
            release(got)


class _Layer:
    """A layer the plan does not fuse: its own eval-mode forward on the whole batch."""

    def __init__(self, m: Module) -> None:
        self.m = m

    def run(self, x: Any, max_rows: int | None = None) -> Any:
        if hasattr(self.m, "_infer"):  # a nested model: its own plan takes its sections
            return self.m._forward(x, False, False)[0]
        with self.m.backend.whole_section():
            return self.m._forward(x, False, False)[0]

    def inner(self, x: Any) -> Any:
        """``run`` inside a group's chunk (the caller holds the BLAS section)."""
        return self.m._forward(x, False, False)[0]

    def describe(self) -> str:
        return self.m._describe()


class _Conv(_Layer):
    """A convolution (a layer with ``_conv(x, act)``, e.g. ``Conv2D``) and the elementwise
    activation after it, if any (:data:`CONV_FUSABLE`): one backend ``conv2d`` call."""

    def __init__(self, m: Module) -> None:
        super().__init__(m)
        self.act: str | None = None
        self.act_module: Module | None = None

    def run(self, x: Any, max_rows: int | None = None) -> Any:
        with self.m.backend.whole_section():
            return self.inner(x)

    def inner(self, x: Any) -> Any:
        return self.m._conv(x, self.act)  # type: ignore[attr-defined]

    def describe(self) -> str:
        """The layer and its activation; followed by the name of the compiled kernel that
        computes it, if any (the NumPy engine's, when it was built), e.g. ``(avx512
        kernel)``."""
        d = self.m._describe()
        d = d if self.act is None else f"{d} {self.act}"
        step = getattr(self.m, "_chain_step", None)
        kernel = None if step is None else self.m.backend.conv_chain_kernels([step(self.act)])[0]
        return d if kernel is None else f"{d} ({kernel})"


class _ConvChain:
    """Consecutive convolutions (with their fused activations) and max-pools: one backend
    ``conv_chain`` call (NumPy keeps the intermediate results channels-last, in cache)."""

    def __init__(self, segs: list[_Layer]) -> None:
        self.segs = segs
        self.m = segs[0].m  # for _rowwise: every member is batch-independent
        self._checked: set[tuple[int, ...]] = set()

    def _steps(self) -> list[tuple[Any, ...]]:
        return [
            s.m._chain_step(s.act) if isinstance(s, _Conv) else s.m._chain_step()  # type: ignore[attr-defined]
            for s in self.segs
        ]

    def _fits(self, shape: tuple[int, ...]) -> bool:
        """Every layer accepts samples of this shape (their ``output_shape``), once per shape."""
        if shape in self._checked:
            return True
        cur: tuple[Any, ...] = (None, *shape[1:]) if len(shape) == 4 else (None, *shape)
        try:
            for s in self.segs:
                for m in _modules(s):
                    cur = m.output_shape(cur)
        except ShapeError:
            return False
        if len(self._checked) < 64:
            self._checked.add(shape)
        return True

    def run(self, x: Any, max_rows: int | None = None) -> Any:
        with self.m.backend.whole_section():
            return self.inner(x)

    def inner(self, x: Any) -> Any:
        shape = tuple(int(d) for d in x.shape)
        if len(shape) not in (3, 4) or not self._fits(shape):
            for s in self.segs:  # the layer that rejects x raises its ShapeError
                x = s.inner(x)
            return x
        b = self.m.backend
        if len(shape) == 3:
            y = b.conv_chain(b.xp.reshape(x, (1, *shape)), self._steps())
            return b.xp.reshape(y, tuple(y.shape[1:]))
        return b.conv_chain(x, self._steps())

    def describe(self) -> str:
        return " | ".join(s.describe() for s in self.segs)


def _runs(segs: list[Any], member: Any, wrap: Any) -> list[Any]:
    """``segs`` with each maximal run of consecutive segments for which ``member(s)`` holds
    replaced by the segments ``wrap(run)`` gives."""
    out: list[Any] = []
    run: list[Any] = []
    for s in [*segs, None]:
        if s is not None and member(s):
            run.append(s)
            continue
        if run:
            out.extend(wrap(run))
            run = []
        if s is not None:
            out.append(s)
    return out


def _chained(backend: Any, segs: list[Any]) -> list[Any]:
    """Runs of at least two consecutive convolution / max-pool segments (layers with a
    ``_chain_step``, on the plan's backend) become one :class:`_ConvChain`."""
    return _runs(
        segs,
        lambda s: isinstance(s, _Layer) and hasattr(s.m, "_chain_step") and s.m.backend is backend,
        lambda run: [_ConvChain(run)] if len(run) >= 2 else run,
    )


def _rowwise(seg: Any) -> bool:
    """The segment's output for a sample depends on that sample only (in eval mode)."""
    if isinstance(seg, _Fused):
        return True
    return bool(getattr(seg.m, "_rowwise", False))


def _heavy(seg: Any) -> bool:
    """A layer worth chunking for: not a fused run, a reshape or an elementwise function."""
    return isinstance(seg, _ConvChain) or (
        isinstance(seg, _Layer) and not isinstance(seg.m, _LIGHT)
    )


def _modules(seg: Any) -> list[Module]:
    if isinstance(seg, _ConvChain):
        return [m for s in seg.segs for m in _modules(s)]
    if isinstance(seg, _Fused):
        return [m for m, _ in seg.steps]
    if isinstance(seg, _Conv) and seg.act_module is not None:
        return [seg.m, seg.act_module]
    return [seg.m]


class _Group:
    """Consecutive batch-independent segments (``_rowwise`` layers, e.g. ``Conv2D``,
    pooling, ``BatchNorm`` and ``Dropout`` in eval mode, ``Flatten``, activations, fused
    ``Dense`` runs) that a large batch runs through chunk by chunk: each chunk of samples
    (:data:`GROUP_CHUNK_ELEMS` elements of the widest per-sample activation, between
    :data:`GROUP_MIN_ROWS` and :data:`GROUP_MAX_ROWS` samples) runs the whole group, on
    ``Backend.threads()`` threads at once, and only the group's output is allocated for
    the whole batch."""

    def __init__(self, backend: Any, segs: list[Any]) -> None:
        self.backend = backend
        self.segs = segs
        self._shapes: dict[tuple[int, ...], tuple[tuple[int, ...], int] | None] = {}

    def describe(self) -> str:
        parts = [f"[{s.describe()}]" if isinstance(s, _Fused) else s.describe() for s in self.segs]
        return "{" + " | ".join(parts) + "}"

    def _whole(self, x: Any) -> Any:
        """Every segment on ``x``, inside the section the caller holds."""
        for s in self.segs:
            x = s.inner(x)
        return x

    def _alone(self, x: Any) -> Any:
        """Every segment on ``x`` as one block, on this thread: BLAS as the user set it."""
        with self.backend.whole_section():
            return self._whole(x)

    def _geometry(self, sample: tuple[int, ...]) -> tuple[tuple[int, ...], int] | None:
        """(output shape of one sample, widest per-sample activation) for samples of shape
        ``sample``, or ``None`` where a layer rejects it (the layers then raise)."""
        if sample in self._shapes:
            return self._shapes[sample]
        shape: tuple[Any, ...] = (None, *sample)
        widest = math.prod(sample)
        got: tuple[tuple[int, ...], int] | None = None
        try:
            for seg in self.segs:
                for m in _modules(seg):
                    shape = m.output_shape(shape)
                    dims = [d for d in shape[1:] if d is not None]
                    if len(dims) != len(shape) - 1:
                        raise ShapeError("unknown size")
                    widest = max(widest, math.prod(dims))
            got = (tuple(int(d) for d in shape[1:]), int(widest))
        except ShapeError:
            got = None
        if len(self._shapes) < 64:
            self._shapes[sample] = got
        return got

    def run(self, x: Any, max_rows: int | None = None) -> Any:
        b = self.backend
        if len(x.shape) < 2 or b.lazy:
            return self._alone(x)
        geo = self._geometry(tuple(int(d) for d in x.shape[1:]))
        if geo is None:
            return self._alone(x)
        out_sample, widest = geo
        n = int(x.shape[0])
        rows = min(GROUP_MAX_ROWS, max(GROUP_MIN_ROWS, GROUP_CHUNK_ELEMS // max(widest, 1)))
        threads = b.threads() if b.mutable else 1
        if threads > 1:  # a smaller batch still fills every core, GROUP_MIN_ROWS each
            rows = min(rows, max(GROUP_MIN_ROWS, -(-n // threads)))
        if max_rows is not None:
            rows = max(1, min(rows, max_rows))
        if n <= rows:
            return self._alone(x)
        whole = self._whole
        if not b.mutable:
            with b.whole_section():
                parts = [whole(x[s : min(s + rows, n), ...]) for s in range(0, n, rows)]
            return b.xp.concat(parts, axis=0)
        threads = min(threads, -(-n // rows))
        nchunks = -(-n // rows)
        if threads > 1:
            nchunks = threads * -(-nchunks // threads)  # as many chunks per thread
        chunk = -(-n // nchunks)
        nchunks = -(-n // chunk)
        y = b.empty((n, *out_sample), x.dtype)

        def one(i: int) -> None:
            s, e = i * chunk, min(n, (i + 1) * chunk)  # in bounds: the Array API asks it
            y[s:e, ...] = whole(x[s:e, ...])

        if threads > 1:
            _run_chunks(b, nchunks, threads, one)
        else:
            with b.whole_section():
                for i in range(nchunks):
                    one(i)
        return y


class Plan:
    """Inference for one ``Sequential`` on its backend; safe to call from many threads."""

    def __init__(self, model: Any) -> None:
        self.backend = model.backend
        segments: list[Any] = []
        for m in model:
            act = _step_act(m)
            last = segments[-1] if segments else None
            if hasattr(m, "_linear") and m.backend is self.backend:
                segments.append(_Fused(self.backend, m))
            elif hasattr(m, "_conv") and m.backend is self.backend:
                segments.append(_Conv(m))
            elif act is not None and isinstance(last, _Fused) and last.steps[-1][1] is None:
                last.steps[-1][1] = act
            elif act in CONV_FUSABLE and isinstance(last, _Conv) and last.act is None:
                last.act, last.act_module = act, m
            else:
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
        self.segments = _grouped(self.backend, _chained(self.backend, merged))
        self._single = self.segments[0].run if len(self.segments) == 1 else None

    def run(self, x: Any, max_rows: int | None = None) -> Any:
        """The model's output for a native array ``x`` of the model's dtype: a new array
        (chunks of at most ``max_rows`` rows at a time)."""
        with FORK_GATE:  # os.fork() waits for this call (see _util.ForkGate)
            single = self._single
            return single(x, max_rows) if single is not None else self._run(x, max_rows)

    def _run(self, x: Any, max_rows: int | None) -> Any:
        segs = self.segments
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


def _grouped(backend: Any, segs: list[Any]) -> list[Any]:
    """Maximal runs of batch-independent segments that hold a layer worth chunking (a
    convolution, a pooling, ...) become one :class:`_Group`; the rest stay as they are (so
    a model of Dense layers and activations keeps its plan)."""
    return _runs(
        segs, _rowwise, lambda run: [_Group(backend, run)] if any(map(_heavy, run)) else run
    )


def explain(model: Any) -> str:
    """How ``model(x)`` runs in eval mode: the plan's segments, e.g.
    ``numpy: [Dense 784→50 sigmoid, Dense 50→10 softmax]`` (a bracket is one fused run)."""
    plan = model._plan
    if plan is None:
        plan = model._plan = Plan(model)
    return plan.describe()


SERVICES["compile_plan"] = Plan

__all__ = ["Plan", "explain"]
