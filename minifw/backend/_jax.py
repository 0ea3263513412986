"""The JAX backend: ``jax.numpy`` (an Array API namespace) on JAX's default device.

That is the GPU when a CUDA-enabled jaxlib is installed (``pip install "jax[cuda12]"``),
else the CPU. JAX arrays are immutable: layers take the portable path, which never
writes into an array, and optimizers hand new arrays to the layers.

JAX computes in float32 unless 64-bit mode is on (``JAX_ENABLE_X64=1``); asking for a
float64 model without it raises :class:`minifw.BackendError` rather than silently
computing in float32. XLA flushes subnormal floats to zero on the CPU (``step(1e-41)`` is
0 here, 1 on NumPy).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import BackendError
from ._base import Backend


class JaxBackend(Backend):
    name = "jax"

    def __init__(self, xp: Any, version: str, jax: Any) -> None:
        super().__init__(xp, version)
        self._jax = jax
        self._Array = jax.Array

    def _x64(self) -> bool:
        return bool(self._jax.config.jax_enable_x64)

    def is_native(self, x: Any) -> bool:
        return isinstance(x, self._Array)

    # XLA compiles jax.nn's own forms better than the generic ones (at W/8192 under jit the
    # generic where()-ReLU and softmax took 0.105 s against 0.061 s)
    def relu(self, x: Any, inplace: bool = False) -> Any:
        return self._jax.nn.relu(x)

    def sigmoid(self, x: Any, inplace: bool = False) -> Any:
        return self._jax.nn.sigmoid(x)

    def softmax(self, x: Any, inplace: bool = False, axis: int = -1) -> Any:
        return self._jax.nn.softmax(x, axis=axis)

    def log_softmax(self, x: Any, axis: int = -1) -> Any:
        return self._jax.nn.log_softmax(x, axis=axis)

    def compile(self, fn: Any) -> Any:
        """``jax.jit(fn)``: the inference plan's whole forward as one XLA computation
        (retraced once per input shape and dtype)."""
        return self._jax.jit(fn)

    def asarray(self, x: Any, dtype: str | None = None) -> Any:
        if dtype == "float64" and not self._x64():
            raise BackendError(
                "backend 'jax' cannot hold float64 arrays with 64-bit mode off (JAX would "
                "compute in float32); set JAX_ENABLE_X64=1 before starting Python, or use "
                "float32"
            )
        if dtype is None and not self._x64():
            dtype = "float32"  # what JAX itself makes of float64 data without x64
        return super().asarray(x, dtype)

    def from_numpy(self, a: np.ndarray) -> Any:
        return self.xp.asarray(a)  # a copy on the default device (never a view of ``a``)

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(self._jax.device_get(x))

    def devices(self) -> list[str]:
        return [
            f"{d.platform}:{d.id}" + ("" if d.device_kind == d.platform else f" {d.device_kind}")
            for d in self._jax.devices()
        ]

    def synchronize(self) -> None:
        # JAX has no global "wait for the device"; to_numpy and block_until_ready on a
        # result both wait. Effects (callbacks) are flushed here.
        self._jax.effects_barrier()


def load() -> Backend:
    import jax
    import jax.numpy as jnp

    return JaxBackend(jnp, jax.__version__, jax)
