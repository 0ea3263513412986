"""The ``array_api_strict`` backend: the Array API standard and nothing more.

It exists to prove that minifw's portable code path uses only the standard, so the same
code runs on CuPy, PyTorch or JAX without a GPU here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._base import Backend


class StrictBackend(Backend):
    name = "array_api_strict"

    def is_native(self, x: Any) -> bool:
        return (
            isinstance(x, self.xp.Array)
            if hasattr(self.xp, "Array")
            else (type(x).__module__.startswith("array_api_strict"))
        )

    def from_numpy(self, a: np.ndarray) -> Any:
        return self.xp.asarray(a if a.flags.c_contiguous else np.ascontiguousarray(a))

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.from_dlpack(x).copy()


def load() -> Backend:
    import array_api_strict as xp

    return StrictBackend(xp, xp.__version__)
