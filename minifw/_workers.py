"""minifw's worker threads: one shared pool for the inference plan's chunks and the
training step's split operations, a count of the threads busy with them, and the fork gate.

* :func:`pool` gives the shared ``ThreadPoolExecutor`` (grown when more threads are asked
  for); :func:`claim` / :func:`release` share the cores between concurrent runs;
* :func:`split` runs a function on contiguous row ranges, one on the calling thread and
  the others on helper threads (two locks each, cheaper to hand a job than the pool);
* ``FORK_GATE``: ``os.fork()`` waits until no run holds it, and a forked child starts with
  a fresh pool (the parent's threads do not exist there).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from ._util import ForkGate

_pool_lock = threading.Lock()
_executor: Any = None
_executor_size = 0


#: Held by every plan run; ``os.fork()`` waits until no other thread holds it.
FORK_GATE = ForkGate()
_busy_lock = threading.Lock()
_busy = 0  # threads running chunks (callers and workers), all concurrent plan runs together


def claim(want: int) -> int:
    """How many threads (the caller included, at least 1) a chunked run may use now: what
    the concurrent runs leave of ``want``. The others' chunks already keep the cores busy,
    so a caller that gets 1 runs its chunks on its own thread instead of queueing behind
    them on the pool; the chunks are the same, so the bits are too."""
    global _busy
    with _busy_lock:
        got = max(1, min(want, want - _busy))
        _busy += got
        return got


def release(got: int) -> None:
    global _busy
    with _busy_lock:
        _busy -= got


def _after_fork_in_child() -> None:
    """A forked child has none of the parent's threads: start afresh (a stale pool would
    accept work that no thread ever runs)."""
    global _executor, _executor_size, _pool_lock, _busy_lock, _busy, _idle_lock, _idle
    _executor, _executor_size = None, 0
    _pool_lock = threading.Lock()
    _busy_lock, _busy = threading.Lock(), 0
    _idle_lock, _idle = threading.Lock(), []
    FORK_GATE.after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=FORK_GATE.before_fork,
        after_in_parent=FORK_GATE.after_fork,
        after_in_child=_after_fork_in_child,
    )


def pool(size: int) -> Any:
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


class _Helper:
    """A thread for :func:`split`'s parts: one job at a time, handed over and back by two
    locks (a ``ThreadPoolExecutor`` submit and result took 17-45 µs a round trip here,
    these locks 11; a training step splits about 25 operations)."""

    __slots__ = ("go", "done", "job", "error")

    def __init__(self) -> None:
        self.go = threading.Lock()
        self.go.acquire()
        self.done = threading.Lock()
        self.done.acquire()
        self.job: tuple[Callable[[int, int], None], int, int] | None = None
        self.error: BaseException | None = None
        threading.Thread(target=self._loop, name="minifw-split", daemon=True).start()

    def _loop(self) -> None:
        while True:
            self.go.acquire()
            job, self.job = self.job, None
            if job is not None:
                try:
                    job[0](job[1], job[2])
                except BaseException as e:  # handed to the caller of split
                    self.error = e
            self.done.release()


_idle_lock = threading.Lock()
_idle: list[_Helper] = []  # helpers not running a part; a forked child starts with none


def split(n: int, parts: int, fn: Callable[[int, int], None]) -> None:
    """``fn(start, stop)`` for ``parts`` contiguous, near-equal ranges that cover
    ``range(n)``: the first on this thread, the others on helper threads, all finished on
    return (then this thread's error, else the first helper's, is raised). The ranges
    depend only on ``n`` and ``parts`` (not on what else runs), so the results' bits do
    too. Concurrent callers each get their own helpers."""
    bounds = [n * i // parts for i in range(parts + 1)]
    if parts <= 1:
        fn(0, n)
        return
    with FORK_GATE:
        with _idle_lock:
            helpers = [_idle.pop() for _ in range(min(len(_idle), parts - 1))]
        while len(helpers) < parts - 1:
            helpers.append(_Helper())
        for i, h in enumerate(helpers, 1):
            h.job = (fn, bounds[i], bounds[i + 1])
            h.go.release()
        error: BaseException | None = None
        try:
            fn(bounds[0], bounds[1])
        except BaseException as e:
            error = e
        for h in helpers:
            h.done.acquire()
            if error is None:
                error = h.error
            h.error = None
        with _idle_lock:
            _idle.extend(helpers)
        if error is not None:
            raise error
