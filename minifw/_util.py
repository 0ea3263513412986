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
