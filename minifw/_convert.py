"""``to_numpy``: any backend's array as a NumPy array."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import backend as _backend


def to_numpy(x: Any) -> np.ndarray:
    """Return ``x`` (an array of any backend, a list or a scalar) as a NumPy array.

    Device arrays are copied to the host; NumPy arrays are returned as they are.
    """
    b = _backend.backend_of(x)  # NumPy's to_numpy returns a NumPy array as it is
    if b is None:
        return np.asarray(x)
    return b.to_numpy(x)
