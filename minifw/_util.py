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
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._active = 0  # threads holding the gate
        self._forking = False
        self._tls = threading.local()

    def __enter__(self) -> None:
        tls = self._tls
        depth = getattr(tls, "depth", 0)
        if not depth:
            lock = self._lock
            lock.acquire()  # the raw lock (not the Condition's with): this is on every call
            try:
                while self._forking:
                    self._cond.wait()
                self._active += 1
            finally:
                lock.release()
        tls.depth = depth + 1

    def __exit__(self, *exc: object) -> None:
        tls = self._tls
        tls.depth -= 1
        if not tls.depth:
            lock = self._lock
            lock.acquire()
            try:
                self._active -= 1
                if self._forking:
                    self._cond.notify_all()
            finally:
                lock.release()

    def before_fork(self) -> None:
        own = 1 if getattr(self._tls, "depth", 0) else 0
        with self._cond:
            self._forking = True
            while self._active > own:
                self._cond.wait()

    def after_fork(self) -> None:
        with self._cond:
            self._forking = False
            self._cond.notify_all()

    def after_fork_in_child(self) -> None:
        """The child has only the forking thread: fresh lock, no other holder."""
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._active = 1 if getattr(self._tls, "depth", 0) else 0
        self._forking = False
