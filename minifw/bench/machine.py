"""Machine facts for the report, and the machine-wide busy time from ``/proc/stat``."""

from __future__ import annotations

import importlib
import importlib.util
import os
import platform
import time
from typing import Any

import numpy as np

from minifw._util import cores

#: peers and engines whose versions the report records (when installed)
VERSIONED = ("torch", "jax", "onnxruntime", "onnx", "cupy")


def busy_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy (``/proc/stat``), or None."""
    try:
        with open("/proc/stat") as f:
            v = [int(t) for t in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """CPU, cores, versions, BLAS and its threads (threadpoolctl), load average."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores_usable": cores(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }
    try:
        info["loadavg_start"] = list(os.getloadavg())
    except OSError:
        pass
    try:
        from threadpoolctl import threadpool_info

        info["threadpools"] = [
            {
                k: d.get(k)
                for k in ("user_api", "internal_api", "version", "num_threads", "architecture")
            }
            for d in threadpool_info()
        ]
    except ImportError:
        info["threadpools"] = (
            "threadpoolctl not installed (pip install threadpoolctl; it is a dependency of minifw)"
        )
    for mod in VERSIONED:
        if importlib.util.find_spec(mod) is not None:
            try:
                info[mod] = importlib.import_module(mod).__version__
            except Exception as e:  # a broken install is a fact worth recording
                info[mod] = f"import failed: {type(e).__name__}: {e}"
    env = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "MINIFW_NUM_THREADS")
    info["env"] = {k: os.environ.get(k) for k in env}
    return info
