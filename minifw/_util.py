"""Small helpers with no minifw imports: the bottom of the import graph."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


class Once(Generic[T]):
    """A value built by ``build()`` on first use, once, even when many threads ask at once.

    ``reset()`` forgets it (tests, or after a fork)."""

    def __init__(self, build: Callable[[], T]) -> None:
        self._build = build
        self._value: Any = _UNSET
        self._lock = threading.Lock()

    def get(self) -> T:
        v = self._value
        if v is _UNSET:
            with self._lock:
                v = self._value
                if v is _UNSET:
                    v = self._value = self._build()
        return v  # type: ignore[no-any-return]

    def reset(self) -> None:
        with self._lock:
            self._value = _UNSET


class KeyedOnce(Generic[T]):
    """Like :class:`Once`, one value per key: ``get(key, build)``."""

    def __init__(self) -> None:
        self._values: dict[Any, T] = {}
        self._lock = threading.Lock()

    def get(self, key: Any, build: Callable[[], T]) -> T:
        v = self._values.get(key, _UNSET)
        if v is _UNSET:
            with self._lock:
                v = self._values.get(key, _UNSET)
                if v is _UNSET:
                    v = self._values[key] = build()
        return v  # type: ignore[return-value]


_UNSET: Any = object()


class ForkGate:
    """Many threads may hold the gate at once (``with gate:``); :meth:`before_fork` waits
    until no other thread holds it and keeps new holders out until :meth:`after_fork` (in
    the parent; :meth:`after_fork_in_child` in the child).

    The inference plan holds it around its work, so that ``os.fork()`` never copies a
    process in the middle of a BLAS call or a chunk on the worker threads (OpenBLAS then
    hangs, in the parent's fork or in the child's next call). A thread may hold it more than
    once (nested); a thread that forks while holding it does not wait for itself.

    Entering takes no lock (it is on every inference call): a thread publishes its depth in
    a dict under its own key, then looks at ``_forking``; the forking thread sets
    ``_forking``, then waits until no other thread's depth is above 0. Under the GIL one of
    the two sees the other's write, so either the fork waits for the holder or the holder
    steps back and waits for the fork.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._depth: dict[int, int] = {}  # thread ident -> depth; a thread writes its own key
        self._forking = False
        self._forker: int | None = None

    def __enter__(self) -> None:
        ident = threading.get_ident()
        d = self._depth
        depth = d.get(ident, 0)
        d[ident] = depth + 1  # publish first, then look
        if self._forking and not depth and self._forker != ident:
            self._step_back(ident)

    def _step_back(self, ident: int) -> None:
        with self._cond:
            while self._forking:
                self._depth[ident] = 0
                self._cond.notify_all()
                self._cond.wait()
                self._depth[ident] = 1

    def __exit__(self, *exc: object) -> None:
        ident = threading.get_ident()
        d = self._depth
        depth = d[ident] - 1
        if depth:
            d[ident] = depth
            return
        del d[ident]  # no entry per finished thread is kept
        if self._forking:
            with self._cond:
                self._cond.notify_all()

    def concurrent(self) -> bool:
        """Whether another thread holds the gate too (a concurrent inference call)."""
        return len(self._depth) > 1

    def before_fork(self) -> None:
        ident = threading.get_ident()
        with self._cond:
            self._forking = True
            self._forker = ident
            while any(v for k, v in list(self._depth.items()) if k != ident):
                self._cond.wait(0.05)  # holders notify on leaving; the timeout is a backstop

    def after_fork(self) -> None:
        with self._cond:
            self._forking = False
            self._forker = None
            self._cond.notify_all()

    def after_fork_in_child(self) -> None:
        """The child has only the forking thread: a fresh lock, no other holder."""
        ident = threading.get_ident()
        own = self._depth.get(ident, 0)
        self._cond = threading.Condition(threading.Lock())
        self._depth = {ident: own} if own else {}
        self._forking = False
        self._forker = None
