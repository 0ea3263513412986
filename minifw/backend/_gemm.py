"""``x @ W + b`` as one BLAS call on NumPy: the output is filled with the bias, then
``GEMM`` adds ``alpha * x @ W`` to it (``beta = 1``).

NumPy's ``matmul`` always calls GEMM with ``beta = 0``, and OpenBLAS then zeroes the output
in a pass of its own before accumulating into it; adding the bias afterwards is one more
pass, reading and writing the whole output. Filling the output with the bias instead of
zeros removes that pass: on the 2-core benchmark machine, W (784-1024-1024-10) at batch
8192 went from 1.04-1.06x to 1.02x the bare three-matmul floor (interleaved runs of 40
rounds).

Only NumPy's own OpenBLAS is called (the library threadpoolctl finds inside NumPy's
package: the ILP64 build pip wheels ship, ``scipy_cblas_sgemm64_`` or ``cblas_sgemm64_``),
so the BLAS thread settings that ``minifw._fast`` applies hold for it too, and one
self-check against ``matmul`` runs before first use. Anywhere else (MKL, Accelerate, a
system BLAS) :func:`addmm` returns ``False`` and the caller takes ``matmul`` + ``add``;
``MINIFW_FUSED_GEMM=0`` does the same anywhere.

A ctypes call costs a few microseconds of pointer lookups, so callers use it only for
outputs of at least :data:`MIN_ELEMS` elements, where the saved pass costs more. The
layers (``Dense``) and the fast plan apply the same rule, so the same rows give the same
bits on both paths.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

import numpy as np

from .._util import Once
from ..errors import BackendError

#: Smallest output (rows x columns) for which :func:`addmm` is worth its call overhead.
MIN_ELEMS = 1 << 16

_ROW_MAJOR, _NO_TRANS = 101, 111


def _numpy_openblas() -> str | None:
    """The path of the OpenBLAS that NumPy itself links, or ``None``."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    roots = [os.path.dirname(np.__file__)]
    roots.append(roots[0] + ".libs")  # the wheel's vendored libraries (Linux, Windows)
    roots = [os.path.realpath(r) for r in roots]
    for info in threadpool_info():
        path = os.path.realpath(info.get("filepath") or "")
        if info.get("internal_api") == "openblas" and any(
            path.startswith(r + os.sep) for r in roots
        ):
            return path
    return None


def _load() -> dict[Any, Any]:
    path = _numpy_openblas()
    if path is None:
        return {}
    try:
        lib = ctypes.CDLL(path)  # already loaded by NumPy: this only looks it up
    except OSError:
        return {}
    i64, c_int, ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
    found: dict[Any, Any] = {}
    for dtype, letter, scalar in (
        (np.float32, "s", ctypes.c_float),
        (np.float64, "d", ctypes.c_double),
    ):
        for name in (f"scipy_cblas_{letter}gemm64_", f"cblas_{letter}gemm64_"):
            f = getattr(lib, name, None)
            if f is not None:
                f.argtypes = [c_int, c_int, c_int, i64, i64, i64, scalar, ptr, i64, ptr, i64]
                f.argtypes += [scalar, ptr, i64]
                f.restype = None
                found[np.dtype(dtype)] = f
                break
    return found if found and _self_check(found) else {}


def _self_check(funcs: dict[Any, Any]) -> bool:
    """One small product per dtype (the input's rows longer than its columns, both signs
    of ``alpha``) against ``matmul``."""
    rng = np.random.default_rng(0)
    for dt, f in funcs.items():
        x = rng.standard_normal((37, 40)).astype(dt)[:, :29]  # rows longer than the columns
        w = rng.standard_normal((29, 23)).astype(dt)
        b = rng.standard_normal(23).astype(dt)
        for alpha in (1.0, -1.0):
            out = np.empty((37, 23), dt)
            np.copyto(out, b)
            _call(f, x, w, out, alpha)
            want = alpha * (x @ w) + b
            if not np.allclose(out, want, rtol=1e-4, atol=1e-4):
                return False
    return True


def _blasable(a: Any, item: int) -> bool:
    s0, s1 = a.strides
    return bool(s1 == item and s0 % item == 0 and s0 >= a.shape[1] * item)


def _call(f: Any, x: Any, w: Any, out: Any, alpha: float) -> None:
    item = out.itemsize
    m, k = x.shape
    f(
        _ROW_MAJOR, _NO_TRANS, _NO_TRANS, m, w.shape[1], k, alpha,
        x.ctypes.data, x.strides[0] // item,
        w.ctypes.data, w.strides[0] // item,
        1.0, out.ctypes.data, out.strides[0] // item,
    )  # fmt: skip


def _wanted() -> bool:
    env = os.environ.get("MINIFW_FUSED_GEMM", "").strip()
    if env in ("", "1"):
        return True
    if env == "0":
        return False
    raise BackendError(f"MINIFW_FUSED_GEMM={env!r}: use 0 (matmul + add) or 1 (the default)")


#: ``MINIFW_FUSED_GEMM`` read and checked once (at the NumPy backend's start, see
#: ``_numpy.load``; ``_numpy.reset_env_for_tests`` forgets it)
wanted: Once[bool] = Once(_wanted)


def _build() -> dict[Any, Any]:
    if not wanted.get():
        return {}
    try:
        return _load()
    except Exception:  # an unexpected library: matmul + add it is
        return {}


_funcs = Once(_build)


def funcs() -> dict[Any, Any]:
    """dtype -> GEMM of NumPy's OpenBLAS, looked up once (``{}``: not available, or turned
    off with ``MINIFW_FUSED_GEMM=0``, read at the first lookup)."""
    return _funcs.get()


def addmm(x: Any, w: Any, out: Any, alpha: float = 1.0, fill: Any = None) -> bool:
    """``out += alpha * (x @ w)`` in one GEMM for 2-D NumPy arrays of one float dtype, ``out``
    holding the bias (broadcast over its rows): ``fill``, when given, is written into ``out``
    first. ``False`` (nothing written) where this BLAS call does not apply: the caller then
    uses ``matmul``."""
    f = _funcs.get().get(out.dtype)
    if f is None or x.dtype != out.dtype or w.dtype != out.dtype:
        return False
    item = out.itemsize
    m, k = x.shape
    if m == 0 or k == 0 or w.shape != (k, out.shape[1]) or out.shape[0] != m:
        return False
    if not (_blasable(x, item) and _blasable(w, item) and _blasable(out, item)):
        return False
    if fill is not None:
        np.copyto(out, fill)
    _call(f, x, w, out, alpha)
    return True
