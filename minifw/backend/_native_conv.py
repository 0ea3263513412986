"""The optional compiled convolution kernel (``minifw/backend/_native.c``), through ctypes.

:func:`kernel` returns the loaded kernel, or ``None`` where there is none: the extension
was not built (no C compiler at install time), the CPU has neither AVX-512 nor AVX2+FMA,
or the environment variable ``MINIFW_NATIVE`` says ``0`` (read at each call, so it can be
switched in a running process). ``MINIFW_NATIVE=avx2`` uses the AVX2 build on an AVX-512
CPU (for tests and comparisons). Any other value is an error that names the variable.

Only the NumPy backend uses it (``NumpyConvOps.conv2d`` and the conv chains'
``_run_nhwc``), for float32 convolutions with no activation or a ReLU, when padding the filter count up to a multiple
of the vector width (16 floats on AVX-512, 8 on AVX2) adds at most a quarter. Its results are the same sums as im2col + GEMM in another order: they agree to
float32 rounding, not bit for bit.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import threading
from typing import Any

import numpy as np

from ..errors import BackendError

ENV = "MINIFW_NATIVE"
#: the C side's minifw_native_version() this module calls (a library built from another
#: version of _native.c, left by an older install, is not used)
VERSION = 4
#: ISA codes of the C side, and their names
ISA_NAMES = {1: "avx512", 2: "avx2"}

_lock = threading.Lock()
_loaded: list[Any] = []  # [Kernel or None] once tried


class Kernel:
    """The loaded library: ``isa`` (1 AVX-512, 2 AVX2) and :meth:`conv`."""

    def __init__(self, lib: ctypes.CDLL, isa: int) -> None:
        self.lib = lib
        self.best = isa
        fn = lib.minifw_conv_nhwc
        p, i, z = ctypes.c_void_p, ctypes.c_int, ctypes.c_ssize_t
        fn.argtypes = [i, p, z, z, z, z, p, i, i, z, p, i, i, i, i, i, p, p, z, z, z, z, z, z, z]
        fn.restype = i
        self._fn = fn

    def isa(self, value: str) -> int:
        """The ISA to use for the ``MINIFW_NATIVE`` value ``value`` (0: none)."""
        v = value.strip().lower()
        if v in ("", "1", "auto", "on"):
            return self.best
        if v in ("0", "off", "no"):
            return 0
        if v in ISA_NAMES.values():
            want = next(k for k, n in ISA_NAMES.items() if n == v)
            if want < self.best:
                raise BackendError(
                    f"{ENV}={value!r}: this CPU has no {v} (it has {ISA_NAMES[self.best]})"
                )
            return want
        raise BackendError(f"{ENV}={value!r}: expected one of 0, 1, auto, avx512, avx2 (or unset)")

    def width(self, isa: int) -> int:
        """Floats per vector of ``isa``: the kernel computes filters in multiples of it."""
        return 16 if isa == 1 else 8

    def padded(self, isa: int, filters: int) -> int:
        """``filters`` rounded up to a multiple of the vector width."""
        v = self.width(isa)
        return -(-filters // v) * v

    def takes(self, isa: int, filters: int) -> bool:
        """Whether a convolution with this many filters is worth the kernel: the zero
        filters it pads them with add at most a quarter (30 -> 32 yes, 10 -> 16 no)."""
        return filters > 0 and 4 * self.padded(isa, filters) <= 5 * filters

    def weights(
        self, isa: int, w: np.ndarray, b: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``w`` (F, C, KH, KW) and ``b`` (F,) or ``None`` as the kernel's operands: float32
        (KH, KW, C, F') and (F',), F' = :meth:`padded` (the added filters are zeros)."""
        f, c, kh, kw = (int(d) for d in w.shape)
        fp = self.padded(isa, f)
        wk = np.zeros((kh, kw, c, fp), np.float32)
        wk[..., :f] = w.transpose(2, 3, 1, 0)
        bk = np.zeros(fp, np.float32)
        if b is not None:
            bk[:f] = b
        return wk, bk

    def conv(
        self,
        isa: int,
        x: np.ndarray,
        w: np.ndarray,
        b: np.ndarray,
        relu: bool,
        pool: bool,
        dst: np.ndarray,
        scratch: np.ndarray,
        stride: tuple[int, int] = (1, 1),
    ) -> None:
        """``dst`` = the convolution (of ``stride``) of the zero-padded channels-last ``x`` (n,
        Hp, Wp, C) with ``w`` (KH, KW, C, F'), plus ``b`` (F',), [2x2 max-pool of stride 2],
        [ReLU], its first F <= F' channels; ``dst`` (float32, any strides) is (n, OH, OW,
        F), pooled (n, OH//2, OW//2, F), or (n, 2, 2, OH/2, OW/2, F): the pixel (2r+i,
        2c+j) at [:, i, j, r, c] (``conv2d``'s blocked order; even OH, OW). ``x``, ``w``
        and ``b`` are C-contiguous float32 (``w``, ``b`` from :meth:`weights`);
        ``scratch`` holds 2*OW*F' floats."""
        n, hp, wp, c = x.shape
        kh, kw, _, fp = w.shape
        f = dst.shape[-1]
        sh, sw = stride
        if sh < 1 or sw < 1:
            raise BackendError(f"the native convolution kernel got stride {stride}")
        oh, ow = (hp - kh) // sh + 1, (wp - kw) // sw + 1
        blocked = dst.ndim == 6
        if blocked:
            want: tuple[int, ...] = (n, 2, 2, oh // 2, ow // 2, f)
        else:
            want = (n, oh // 2, ow // 2, f) if pool else (n, oh, ow, f)
        ok = all(a.dtype == np.float32 for a in (x, w, b, dst, scratch))
        ok = ok and all(a.flags.c_contiguous for a in (x, w, b, scratch))
        ok = ok and w.shape[2] == c and b.shape == (fp,) and dst.shape == want
        ok = ok and 0 < f <= fp and fp % self.width(isa) == 0
        ok = ok and not (blocked and (pool or oh % 2 or ow % 2))
        if not ok or scratch.size < 2 * ow * fp:
            raise BackendError(
                f"the native convolution kernel got {x.shape} * {w.shape} -> {dst.shape}"
                f" ({x.dtype}, pool={pool}): not what it computes"
            )
        st = [s // dst.itemsize for s in dst.strides]
        si, sj = (st.pop(1), st.pop(1)) if blocked else (0, 0)
        sn, sr, sp, sf = st
        rc = self._fn(
            isa, x.ctypes.data, n, hp, wp, c, w.ctypes.data, kh, kw, fp, b.ctypes.data, sh, sw,
            int(relu), int(pool), int(blocked), scratch.ctypes.data, dst.ctypes.data,
            sn, sr, sp, sf, si, sj, f,
        )  # fmt: skip
        if rc:
            raise BackendError(f"the native convolution kernel refused {x.shape} * {w.shape}")


def _load() -> Kernel | None:
    try:
        mod = importlib.import_module("minifw.backend._native")
        lib = ctypes.CDLL(mod.__file__)
    except (ImportError, OSError):
        return None
    try:
        version = int(lib.minifw_native_version())
    except AttributeError:
        version = 0
    if version != VERSION:  # built from another version of _native.c: not called
        return None
    isa = int(lib.minifw_isa())
    return Kernel(lib, isa) if isa in ISA_NAMES else None


def loaded() -> Kernel | None:
    """The compiled kernel if it was built and this CPU runs it, whatever ``MINIFW_NATIVE``
    says (loaded once)."""
    if not _loaded:
        with _lock:
            if not _loaded:
                _loaded.append(_load())
    return _loaded[0]  # type: ignore[no-any-return]


def kernel() -> tuple[Kernel, int] | None:
    """``(kernel, isa)`` to use now, or ``None`` (see the module's docstring)."""
    value = os.environ.get(ENV, "")
    if value.strip() in ("0", "off", "no"):
        return None
    k = loaded()
    if k is None:
        return None
    isa = k.isa(value)
    return (k, isa) if isa else None


def status() -> str:
    """One line on the kernel for ``minifw info``: in use (which build), turned off, or
    why there is none. Raises ``BackendError`` for a bad ``MINIFW_NATIVE``."""
    k = loaded()
    if k is None:
        try:
            importlib.import_module("minifw.backend._native")
        except ImportError:
            return "none: not built (no C compiler when minifw was installed); im2col + GEMM"
        return (
            "none: this CPU has neither AVX2+FMA nor AVX-512, or the build is stale; im2col + GEMM"
        )
    isa = k.isa(os.environ.get(ENV, ""))
    if not isa:
        return f"off ({ENV}={os.environ.get(ENV)!r}); im2col + GEMM"
    return f"{ISA_NAMES[isa]} (NumPy's float32 convolutions; {ENV}=0 turns it off)"
