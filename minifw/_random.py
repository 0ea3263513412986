"""The one random generator minifw draws initial weights (and shuffles) from."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

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


# The generator that layers drawing random numbers in training (Dropout's masks) use during
# a ``fit`` call: set by ``fit`` from its seed, for this thread / task only, so that
# ``fit(seed=n)`` is reproducible. Outside ``fit`` they draw from :func:`rng`.
_LAYER_RNG: ContextVar[np.random.Generator | None] = ContextVar("minifw_layer_rng", default=None)


def layer_rng() -> np.random.Generator:
    """The generator for random draws inside layers (e.g. Dropout's masks): this thread's
    running ``fit``'s, else :func:`rng`."""
    g = _LAYER_RNG.get()
    return g if g is not None else _rng


@contextlib.contextmanager
def using_layer_rng(g: np.random.Generator) -> Iterator[None]:
    """Within the ``with`` block (this thread / task), :func:`layer_rng` is ``g``."""
    token = _LAYER_RNG.set(g)
    try:
        yield
    finally:
        _LAYER_RNG.reset(token)
