"""The CuPy backend: the NumPy fast path on an NVIDIA GPU."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import BackendError
from ._base import Backend


class CupyBackend(Backend):
    name = "cupy"
    fast = True

    def is_native(self, x: Any) -> bool:
        return isinstance(x, self.xp.ndarray)

    def from_numpy(self, a: np.ndarray) -> Any:
        return self.xp.asarray(a)

    def to_numpy(self, x: Any) -> np.ndarray:
        return self.xp.asnumpy(x)

    def devices(self) -> list[str]:
        rt = self.xp.cuda.runtime
        out = []
        for i in range(rt.getDeviceCount()):
            props = rt.getDeviceProperties(i)
            name = props["name"]
            out.append(f"cuda:{i} {name.decode() if isinstance(name, bytes) else name}")
        return out

    def synchronize(self) -> None:
        self.xp.cuda.get_current_stream().synchronize()


def load() -> Backend:
    import cupy

    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDA driver missing or broken
        raise BackendError(
            f"backend 'cupy' is installed but cannot use a CUDA device ({e}); "
            "check the NVIDIA driver, or choose MINIFW_BACKEND=numpy"
        ) from e
    if n == 0:
        raise BackendError("backend 'cupy' is installed but this machine has no CUDA device")
    return CupyBackend(cupy, cupy.__version__)
