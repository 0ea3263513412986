"""The NumPy backend (the default)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._base import Backend

_F32, _F64 = np.dtype("float32"), np.dtype("float64")
# keyed by name and by dtype object: one dict lookup on the hot path, no dtype.name
_FLOATS: dict[Any, np.dtype[Any]] = {"float32": _F32, "float64": _F64, _F32: _F32, _F64: _F64}


class NumpyBackend(Backend):
    name = "numpy"
    fast = True

    def is_native(self, x: Any) -> bool:
        return type(x) is np.ndarray

    def from_numpy(self, a: np.ndarray) -> Any:
        return a

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def asarray(self, x: Any, dtype: str | None = None) -> Any:
        # Hot path for batch-1 inference: one type check, one dtype check.
        if type(x) is np.ndarray:
            if dtype is None:
                if x.dtype in _FLOATS:
                    return x
                dtype = "float32"
            if x.dtype is _FLOATS[dtype]:
                return x
            if x.dtype.kind not in "biuf":
                raise TypeError(f"expected a numeric array, got dtype {x.dtype}")
            return x.astype(dtype)
        a = super().asarray(x, dtype)
        # A foreign array may come back as a view of its memory: copy, so that layers may
        # treat a converted input as their own and the caller's array is never written.
        return a if a.flags.owndata else a.copy()


def load() -> Backend:
    return NumpyBackend(np, np.__version__)
