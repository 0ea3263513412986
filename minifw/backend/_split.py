"""A training step's heavy NumPy operations, split over the batch on several threads.

``fit`` runs each step inside :meth:`NumpyBackend.train_section`: BLAS held to one thread
(the process-wide setting of the inference plan's chunks) and :func:`parts` telling the
operations called on that thread how many parts to cut their batch into. An operation
with at least :data:`MIN_SPLIT_ELEMS` elements of work then runs :func:`run`: one range of
samples on this thread, the others on minifw's worker threads (``minifw._workers``), each
part a call of the same operation on its rows. The parts depend only on the batch size
and the thread count, so a step gives the same bits whatever else runs.

Why: OpenBLAS's own threads spin after each call, so elementwise work on a second Python
thread next to a multi-threaded BLAS is slower, not faster; with BLAS on one thread and
every heavy operation split (convolutions, pools, ReLU, BatchNorm, Dense), both cores
work on the whole step.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from .. import _workers

#: operations on fewer elements than this run whole (a split costs about 20-40 µs)
MIN_SPLIT_ELEMS = 1 << 16

_state = threading.local()


def parts(n: int, elems: int) -> int:
    """How many parts an operation over ``n`` samples and ``elems`` elements of work cuts
    its batch into on this thread (1: run whole)."""
    if elems < MIN_SPLIT_ELEMS or n < 2:  # first: the batch-1 inference path stays cheap
        return 1
    p: int = getattr(_state, "parts", 1)
    return min(p, n) if p > 1 else 1


def run(n: int, p: int, fn: Callable[[int, int], None]) -> None:
    """``fn(start, stop)`` over ``p`` ranges of ``range(n)`` (see ``_workers.split``);
    the operations ``fn`` calls run whole (no nested split). ``p`` 1: ``fn(0, n)`` here."""
    old = getattr(_state, "parts", 1)
    _state.parts = 1
    try:
        if p > 1:
            _workers.split(n, p, fn)
        else:
            fn(0, n)
    finally:
        _state.parts = old


def ordered_sum(parts: dict[int, Any]) -> Any:
    """The sum of the ranges' partial results ``parts`` (keyed by each range's start) in the
    order of the ranges: the same bits every run, whatever finished first."""
    order = [parts[a] for a in sorted(parts)]
    return sum(order[1:], order[0])


class TrainSection:
    """The context manager of one training step: ``blas`` (the narrow BLAS section)
    entered, and ``threads`` parts for the operations this thread calls. Reusable, by one
    thread at a time (``fit`` enters it once per step)."""

    def __init__(self, blas: Any, threads: int) -> None:
        self.blas = blas
        self.threads = threads
        self._old: list[int] = []

    def __enter__(self) -> TrainSection:
        self.blas.__enter__()
        self._old.append(getattr(_state, "parts", 1))
        _state.parts = self.threads
        return self

    def __exit__(self, *exc: Any) -> None:
        _state.parts = self._old.pop()
        self.blas.__exit__(*exc)
