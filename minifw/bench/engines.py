"""The engines timed for one (network, batch) configuration: minifw on each backend beside
the peers, on the CPU or (``--device cuda``) on the GPU."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .nets import MINIFW_REF, MINIFW_REF_GPU, Net
from .peers import (
    gemm_floor,
    hand_written,
    jax_jit,
    onnxruntime_cpu,
    torch_eager,
    torch_sequential,
)
from .timing import Engine, peer_engines

TORCH_EAGER = "torch eager"
JAX_JIT = "jax.jit"
#: minifw on a backend, its input already that engine's array, against that engine's own
#: fastest form of the same network: the "each engine at its own speed" ratios
OWN_SPEED: dict[str, str] = {
    "minifw torch model(x)": TORCH_EAGER,
    "minifw jax model(x)": JAX_JIT,
}
PEERS: dict[str, Callable[[Net, np.ndarray], tuple[Callable[[], Any], str]]] = {
    TORCH_EAGER: torch_eager,
    JAX_JIT: jax_jit,
    "onnxruntime CPU": onnxruntime_cpu,
}


def _native_model_engine(m: Any, x: np.ndarray) -> Engine:
    """``model(x)`` with ``x`` converted beforehand to the model's backend (a torch tensor,
    a jax array), each call waiting for its result."""
    b = m.backend
    xb = b.asarray(x)

    def run() -> Any:
        out = m(xb)
        wait = getattr(out, "block_until_ready", None)  # JAX dispatches asynchronously
        if wait is not None:
            return wait()
        b.synchronize()  # CUDA
        return out

    return Engine(f"minifw {b.name} model(x)", run, kind="minifw", traced=False)


def build_engines(
    net: Net, x: np.ndarray, backends: list[str], notes: dict[str, str]
) -> list[Engine]:
    """Every engine for one (network, batch) configuration, input bound in."""
    import minifw as mf

    engines: list[Engine] = []
    model = net.minifw_model("numpy")
    engines.append(Engine(MINIFW_REF, lambda: model(x), kind="minifw"))
    engines.append(Engine("minifw numpy predict(x)", lambda: model.predict(x), kind="minifw"))
    for name in backends:
        if name in ("numpy", "cupy"):
            continue
        try:
            m = net.minifw_model(name)
        except mf.BackendError as e:
            notes[f"minifw {name}"] = f"skipped: {e}"
            continue
        b = m.backend

        def run(m: Any = m, b: Any = b) -> np.ndarray:
            out = m.predict(x)
            return out.compute() if getattr(b, "lazy", False) else out  # type: ignore[no-any-return]

        engines.append(Engine(f"minifw {name} predict(x)", run, kind="minifw", traced=False))
        if f"minifw {name} model(x)" in OWN_SPEED:
            engines.append(_native_model_engine(m, x))
    hand = hand_written(net)
    engines.append(Engine("numpy hand-written (book)", lambda: hand(x), kind="peer"))
    engines += peer_engines(PEERS, net, x, notes)
    engines.append(Engine("GEMM floor (3 matmuls, numpy)", gemm_floor(net, x), kind="floor"))
    return engines


def build_gpu_engines(net: Net, x: np.ndarray, notes: dict[str, str]) -> list[Engine]:
    """minifw on CuPy, PyTorch CUDA and the cuBLAS GEMM floor; inputs already on the device,
    every timed call synchronised."""
    import cupy as cp

    sync = cp.cuda.get_current_stream().synchronize
    xg = cp.asarray(x)
    model = net.minifw_model("cupy")
    engines = [Engine(MINIFW_REF_GPU, lambda: model(xg), kind="minifw", sync=sync)]
    Wg = [cp.asarray(w) for w in net.W]
    outs = [cp.empty((x.shape[0], w), dtype=cp.float32) for w in net.sizes[1:]]

    def floor() -> Any:
        cp.matmul(xg, Wg[0], out=outs[0])
        cp.matmul(outs[0], Wg[1], out=outs[1])
        return cp.matmul(outs[1], Wg[2], out=outs[2])

    try:
        import torch

        if not torch.cuda.is_available():
            raise ImportError("torch has no CUDA here")
        seq = torch_sequential(net).cuda()
        xt = torch.from_numpy(x).cuda()

        def run_torch() -> Any:
            with torch.inference_mode():
                return seq(xt)

        engines.append(
            Engine(
                "torch CUDA eager (inference_mode)",
                run_torch,
                kind="peer",
                sync=torch.cuda.synchronize,
                traced=False,
            )
        )
        notes.setdefault("torch CUDA", f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    except ImportError as e:
        notes["torch CUDA"] = f"skipped: {e}"
    engines.append(Engine("GEMM floor (3 matmuls, cuBLAS)", floor, kind="floor", sync=sync))
    for eng in engines:
        eng.traced = False
        eng.to_host = True
    return engines
