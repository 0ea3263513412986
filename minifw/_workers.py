"""minifw's worker threads: one shared pool for the inference plan's chunks and the
training step's split operations, a count of the threads busy with them, and the fork gate.

* :func:`pool` gives the shared ``ThreadPoolExecutor`` (grown when more threads are asked
  for); :func:`claim` / :func:`release` share the cores between concurrent runs;
* :func:`split` runs a function on contiguous row ranges, one on the calling thread and
  the others on the pool;
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
    global _executor, _executor_size, _pool_lock, _busy_lock, _busy
    _executor, _executor_size = None, 0
    _pool_lock = threading.Lock()
    _busy_lock, _busy = threading.Lock(), 0
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


def split(n: int, parts: int, fn: Callable[[int, int], None]) -> None:
    """``fn(start, stop)`` for ``parts`` contiguous, near-equal ranges that cover
    ``range(n)``: the first on this thread, the others on the pool, all finished (or the
    first error raised) on return. The ranges depend only on ``n`` and ``parts`` (not on
    what else runs), so the results' bits do too."""
    bounds = [n * i // parts for i in range(parts + 1)]
    if parts <= 1:
        fn(0, n)
        return
    with FORK_GATE:
        futures = [pool(parts - 1).submit(fn, bounds[i], bounds[i + 1]) for i in range(1, parts)]
        try:
            fn(bounds[0], bounds[1])
        finally:
            for f in futures:
                f.result()
