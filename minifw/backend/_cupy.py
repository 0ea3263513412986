"""The CuPy backend: the in-place operations of :mod:`._ufunc` on an NVIDIA GPU, with
``linear`` as one cuBLAS GEMM plus one fused kernel for bias + activation (a row-softmax
``RawKernel`` for softmax), built on first use and cached. Nothing is copied to the host.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._util import KeyedOnce
from ..errors import BackendError
from ._ufunc import UfuncBackend

#: ElementwiseKernel bodies, per activation: ``x`` is the matmul output, ``b`` the bias
#: (broadcast along rows), ``y`` the result (the same array as ``x``: in place).
ELEMENTWISE: dict[str | None, str] = {
    None: "y = x + b",
    "relu": "T v = x + b; y = (v < (T)0) ? (T)0 : v",  # NaN < 0 is false: NaN passes
    "sigmoid": "y = (T)1 / ((T)1 + exp(-(x + b)))",  # exp overflow gives inf, then 0: exact
    "tanh": "y = tanh(x + b)",
}

#: One thread per row: bias, max, exp and sum, divide, in one pass over the row's memory.
SOFTMAX_SRC = r"""
extern "C" __global__ void minifw_softmax_{T}(
    {T}* __restrict__ y, const {T}* __restrict__ b, const int n, const int w, const int has_bias)
{{
    const long long r = (long long)blockDim.x * blockIdx.x + threadIdx.x;
    if (r >= n) return;
    {T}* row = y + r * w;
    {T} m = row[0] + (has_bias ? b[0] : ({T})0);
    for (int j = 0; j < w; ++j) {{
        {T} v = row[j];
        if (has_bias) {{ v += b[j]; row[j] = v; }}
        if (v > m || v != v) m = v;  /* NaN wins, as in numpy.max */
    }}
    {T} s = 0;
    for (int j = 0; j < w; ++j) {{
        {T} e = {EXP}(row[j] - m);
        row[j] = e;
        s += e;
    }}
    for (int j = 0; j < w; ++j) row[j] = row[j] / s;
}}
"""

_CUDA_TYPES = {"float32": ("float", "expf"), "float64": ("double", "exp")}
_SOFTMAX_THREADS = 256


def softmax_source(dtype_name: str) -> tuple[str, str]:
    """``(CUDA source, kernel name)`` of the fused row softmax for ``dtype_name``."""
    t, exp = _CUDA_TYPES[dtype_name]
    return SOFTMAX_SRC.format(T=t, EXP=exp), f"minifw_softmax_{t}"


def launch_config(n_rows: int) -> tuple[tuple[int], tuple[int]]:
    """``(grid, block)`` for the row softmax: one thread per row."""
    return ((n_rows + _SOFTMAX_THREADS - 1) // _SOFTMAX_THREADS,), (_SOFTMAX_THREADS,)


class CupyBackend(UfuncBackend):
    name = "cupy"

    def __init__(self, xp: Any, version: str) -> None:
        super().__init__(xp, version)
        self._kernels: KeyedOnce[Any] = KeyedOnce()

    def elementwise_kernel(self, act: str | None) -> Any:
        """The compiled bias + ``act`` kernel (built once)."""
        cp = self.xp
        return self._kernels.get(
            ("ew", act),
            lambda: cp.ElementwiseKernel(
                "T x, T b", "T y", ELEMENTWISE[act], f"minifw_bias_{act or 'none'}"
            ),
        )

    def softmax_kernel(self, dtype_name: str) -> Any:
        """The compiled row softmax for ``dtype_name`` (built once)."""
        return self._kernels.get(
            ("softmax", dtype_name), lambda: self.xp.RawKernel(*softmax_source(dtype_name))
        )

    def linear(self, x: Any, w: Any, b: Any = None, out: Any = None, act: str | None = None) -> Any:
        cp = self.xp
        if x.ndim != 2 or act == "step":
            return super().linear(x, w, b, out, act)
        y = cp.matmul(x, w, out=out)
        n = y.shape[0]
        if n == 0:  # nothing to compute (and a launch needs at least one block)
            return y
        if act == "softmax":
            if not y.flags.c_contiguous:
                return super().activate(act, y + b if b is not None else y, True)
            if b is not None and not b.flags.c_contiguous:  # the kernel indexes b[j]
                b = cp.ascontiguousarray(b)
            grid, block = launch_config(n)
            self.softmax_kernel(self.dtype_name(y))(
                grid,
                block,
                (y, b if b is not None else y, np.int32(n), np.int32(y.shape[1]),
                 np.int32(b is not None)),
            )  # fmt: skip
        elif b is not None or act is not None:
            self.elementwise_kernel(act)(y, b if b is not None else self.zero_for(y), y)
        return y

    # -- conversions -------------------------------------------------------------------
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


def load() -> CupyBackend:
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
