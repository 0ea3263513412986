"""The one random generator minifw draws initial weights (and shuffles) from."""

from __future__ import annotations

import numpy as np

_rng: np.random.Generator = np.random.default_rng()


def seed(n: int) -> None:
    """Seed minifw's generator: the same seed gives the same initial weights on every backend."""
    global _rng
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise TypeError(f"seed must be a non-negative int, got {n!r}")
    _rng = np.random.default_rng(int(n))


def rng() -> np.random.Generator:
    """The current generator (NumPy; arrays are moved to a backend after drawing)."""
    return _rng
