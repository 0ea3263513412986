"""The :class:`Backend` object: one array engine, its namespace and its conversions."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import BackendError
from ._ops import Ops

_FLOAT_DTYPES = ("float32", "float64")


class Backend(Ops):
    """One array engine: its Array API namespace ``xp``, its conversions, and the array
    operations that layers, losses, optimizers and the inference plan call.

    Every operation here is written once on the Array API standard (:class:`~._ops.Ops`),
    so it runs on any engine; an engine's module overrides what it does faster (NumPy's
    in-place ufuncs and fused-bias GEMM, CuPy's kernels, torch's ``addmm``, JAX's ``jit``).
    Subclasses (one small module per engine) also override the conversions.
    """

    name: str = ""
    #: a lazy engine (dask): results are graphs, computed on demand
    lazy: bool = False
    #: the registry (``minifw.backend``), which sets itself here when it is imported: it
    #: finds the engine of a foreign array and unpickles backends by name
    registry: Any = None

    def __init__(self, xp: Any, version: str) -> None:
        self.xp = xp
        self.version = version
        self._dtypes = {n: getattr(xp, n) for n in _FLOAT_DTYPES}

    # -- dtypes ---------------------------------------------------------------
    def dtype(self, name: str) -> Any:
        """This engine's dtype object for ``"float32"`` or ``"float64"``."""
        return self._dtypes[name]

    def dtype_name(self, arr: Any) -> str:
        """``"float32"``, ``"float64"`` or another name for ``arr.dtype``."""
        for n, d in self._dtypes.items():
            if arr.dtype == d:
                return n
        return str(arr.dtype)

    # -- conversions ----------------------------------------------------------
    def is_native(self, x: Any) -> bool:
        """True if ``x`` is already an array of this engine."""
        raise NotImplementedError

    def from_numpy(self, a: np.ndarray) -> Any:
        """A copy (or zero-copy view where safe) of NumPy array ``a`` on this engine."""
        raise NotImplementedError

    def to_numpy(self, x: Any) -> np.ndarray:
        """``x`` (an array of this engine) as a NumPy array."""
        raise NotImplementedError

    def asarray(self, x: Any, dtype: str | None = None) -> Any:
        """Convert ``x`` (list, scalar, NumPy or another engine's array) to this engine.

        ``dtype`` is a float dtype name; ``None`` keeps float inputs' dtype and casts
        integer and boolean inputs to float32. Foreign arrays are converted once, here.
        """
        if not self.is_native(x):
            other = Backend.registry.backend_of(x)
            if other is not None and other is not self:
                x = self._from_foreign(x, other)
                if self.is_native(x):  # came over by DLPack: only the dtype is left to do
                    return self.asarray(x, dtype)
            a = np.asarray(x)
            if a.dtype.kind not in "biuf":
                raise TypeError(f"expected a numeric array, got dtype {a.dtype}")
            if not a.dtype.isnative:  # e.g. big-endian data from a file: engines want native
                a = a.astype(a.dtype.newbyteorder("="))
            want = dtype or (a.dtype.name if a.dtype.name in _FLOAT_DTYPES else "float32")
            if a.dtype.name != want:
                a = a.astype(want)
            return self.from_numpy(a)
        want = dtype or self._default_dtype_for(x)
        if self.dtype_name(x) != want:
            x = self.xp.astype(x, self.dtype(want))
        return x

    #: try DLPack (zero-copy where the devices allow) before going through NumPy
    dlpack: bool = True

    def _from_foreign(self, x: Any, other: Backend) -> Any:
        """``x``, an array of backend ``other``, as this engine's array or as NumPy.

        DLPack first (no host round trip between GPU engines); NumPy otherwise. A
        failure of both is a :class:`minifw.BackendError` naming both engines. NumPy
        arrays go through ``from_numpy``, which decides whether to copy.
        """
        if self.dlpack and other.name != "numpy" and hasattr(x, "__dlpack__"):
            try:
                y = self.xp.from_dlpack(x)
            except Exception:  # another device, needs grad, unsupported dtype: use NumPy
                pass
            else:
                # engines that write in place must never write into the other engine's array
                return self.copy(y) if self.mutable else y
        try:
            return other.to_numpy(x)
        except Exception as e:
            raise BackendError(
                f"cannot convert a {other.name} array ({type(x).__name__}, shape "
                f"{tuple(getattr(x, 'shape', ()))}) to backend {self.name!r}: "
                f"{type(e).__name__}: {e}"
            ) from e

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        # Pickled (and deep-copied) by name: a model sent to a worker process finds the
        # same engine there. Backends are singletons per process.
        return (Backend.registry.get, (self.name,))

    def _default_dtype_for(self, x: Any) -> str:
        name = self.dtype_name(x)
        return name if name in _FLOAT_DTYPES else "float32"

    # -- device facts ---------------------------------------------------------
    def devices(self) -> list[str]:
        """Human-readable names of the devices this engine computes on."""
        return ["cpu"]

    def synchronize(self) -> None:
        """Wait for queued device work to finish (a no-op on the CPU)."""

    def __repr__(self) -> str:
        return f"<minifw backend {self.name!r} ({self.version})>"
