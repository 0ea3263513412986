"""``minifw bench``: minifw beside its peers, inference and training, in one process.

Inference of two float32 MLPs with random weights and inputs (no downloads):

* **S** 784-50-100-10, sigmoid, softmax (the reference network), batches 1, 100, 10000;
* **W** 784-1024-1024-10, ReLU, softmax, batches 1, 256, 8192;

on minifw (``model(x)`` and ``model.predict(x)`` on NumPy, ``predict`` on every other
available backend), the hand-written NumPy function of the reference text, PyTorch CPU
eager under ``torch.inference_mode()``, ONNX Runtime (CPU provider, the same graph built
with the ``onnx`` helper API) and the bare GEMM floor (only the three matmuls, into
preallocated outputs). Training: one Fashion-MNIST epoch of 784-256-128-10 (batch 128,
Adam) against PyTorch CPU, from ``benchmarks/train_epoch.py`` when it is there.

Method: for each configuration every engine is warmed up, then timed in interleaved
rounds (engine A, B, C, ... then again, the order rotated each round). Before each timed
loop the command waits until the previous engine's worker threads have stopped spinning
(at most ``--settle-seconds``) and makes one untimed call; the loop then lasts about
``--loop-seconds`` (at least 3 calls; 1 with ``--quick``). A loop during which other
processes used more than ``--max-foreign`` of the machine's CPU (from ``/proc/stat`` minus
this process) is thrown away and redone after a pause. Reported: median, min and max time
per call, samples/s, ratios of minifw to each peer, peak memory per call (RSS high-water
mark and traced allocations), and the machine (CPU, cores, BLAS and its threads). Results
go to ``--out`` as JSON, a markdown table and a PNG chart.

Peers that are not installed are skipped with a note; ``pip install "minifw[bench]"``
installs them.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import io
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

PROG = "minifw bench"
NETWORKS: dict[str, dict[str, Any]] = {
    "S": {"sizes": (784, 50, 100, 10), "act": "sigmoid", "batches": (1, 100, 10000)},
    "W": {"sizes": (784, 1024, 1024, 10), "act": "relu", "batches": (1, 256, 8192)},
}
GPU_BATCHES = {"S": (10000, 100000), "W": (8192, 65536)}
SMOKE_BATCHES = {"S": (1, 64), "W": (1, 32)}
MINIFW_REF = "minifw numpy model(x)"  # the engine the ratios are taken from
MINIFW_REF_GPU = "minifw cupy model(x)"


# -- machine facts -------------------------------------------------------------------------------


def _busy_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy (``/proc/stat``), or None."""
    try:
        with open("/proc/stat") as f:
            v = [int(t) for t in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cpu_model() -> str:
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
        "cpu": _cpu_model(),
        "cores_usable": _cores(),
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
        info["threadpools"] = 'threadpoolctl not installed (pip install "minifw[bench]")'
    for mod in ("torch", "onnxruntime", "onnx", "cupy"):
        if importlib.util.find_spec(mod) is not None:
            try:
                info[mod] = importlib.import_module(mod).__version__
            except Exception as e:  # a broken install is a fact worth recording
                info[mod] = f"import failed: {type(e).__name__}: {e}"
    env = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "MINIFW_NUM_THREADS")
    info["env"] = {k: os.environ.get(k) for k in env}
    return info


# -- networks and engines ----------------------------------------------------------------------


class Net:
    """Random float32 weights for one network, shared by every engine."""

    def __init__(self, name: str, seed: int = 0) -> None:
        spec = NETWORKS[name]
        self.name = name
        self.sizes: tuple[int, ...] = spec["sizes"]
        self.act: str = spec["act"]
        rng = np.random.default_rng(seed)
        self.W: list[np.ndarray] = []
        self.b: list[np.ndarray] = []
        for i in range(3):
            k, n = self.sizes[i], self.sizes[i + 1]
            self.W.append((rng.standard_normal((k, n)) * np.sqrt(2.0 / k)).astype(np.float32))
            self.b.append((rng.standard_normal(n) * 0.1).astype(np.float32))

    def describe(self) -> str:
        return "-".join(map(str, self.sizes)) + f" {self.act}/softmax"

    def flops(self, batch: int) -> int:
        return 2 * batch * sum(self.sizes[i] * self.sizes[i + 1] for i in range(3))

    def act_bytes(self, batch: int) -> list[int]:
        return [batch * w * 4 for w in self.sizes[1:]]

    def minifw_model(self, backend: str = "numpy") -> Any:
        import minifw as mf

        with mf.backend.use(backend):
            layers: list[Any] = []
            for i in range(3):
                layers.append(mf.Dense(self.sizes[i], self.sizes[i + 1]))
                if i < 2:
                    layers.append(mf.Sigmoid() if self.act == "sigmoid" else mf.ReLU())
            layers.append(mf.Softmax())
            model = mf.Sequential(*layers)
        model.load_state_dict({f"{2 * i}.{k}": v for i in range(3) for k, v in self._kv(i)})
        return model

    def _kv(self, i: int) -> list[tuple[str, np.ndarray]]:
        return [("weight", self.W[i]), ("bias", self.b[i])]


class Engine:
    """A named callable ``fn()`` that runs one inference (its input bound in)."""

    def __init__(
        self,
        name: str,
        fn: Callable[[], Any],
        *,
        kind: str,
        check: Callable[[], np.ndarray] | None = None,
        sync: Callable[[], None] | None = None,
        traced: bool = True,
    ) -> None:
        self.name, self.fn, self.kind = name, fn, kind
        self.check = check
        self.sync = sync
        self.traced = traced  # does tracemalloc see its allocations (NumPy) or not
        self.to_host = False  # results live on a GPU: copy them back for the check

    def __call__(self) -> Any:
        r = self.fn()
        if self.sync is not None:
            self.sync()
        return r


def hand_written(net: Net) -> Callable[[np.ndarray], np.ndarray]:
    """The reference text's style: plain NumPy, a new array for every step."""
    W1, W2, W3 = net.W
    b1, b2, b3 = net.b
    if net.act == "sigmoid":

        def act(a: np.ndarray) -> np.ndarray:
            return 1 / (1 + np.exp(-a))  # type: ignore[no-any-return]
    else:

        def act(a: np.ndarray) -> np.ndarray:
            return np.maximum(0, a)

    def softmax(a: np.ndarray) -> np.ndarray:
        e = np.exp(a - np.max(a, axis=-1, keepdims=True))
        return e / np.sum(e, axis=-1, keepdims=True)  # type: ignore[no-any-return]

    def predict(x: np.ndarray) -> np.ndarray:
        z1 = act(np.dot(x, W1) + b1)
        z2 = act(np.dot(z1, W2) + b2)
        return softmax(np.dot(z2, W3) + b3)

    return predict


def gemm_floor(net: Net, x: np.ndarray) -> Callable[[], Any]:
    """Only the three matmuls, into preallocated outputs: the hardware limit here."""
    W1, W2, W3 = net.W
    n = x.shape[0]
    o1, o2, o3 = (np.empty((n, w), np.float32) for w in net.sizes[1:])

    def run() -> np.ndarray:
        np.matmul(x, W1, out=o1)
        np.matmul(o1, W2, out=o2)
        return np.matmul(o2, W3, out=o3)

    return run


def torch_sequential(net: Net) -> Any:
    """The network as a ``torch.nn.Sequential`` in eval mode, on the CPU, with ``net``'s
    weights (torch stores ``Linear.weight`` as (out, in): the transpose of minifw's)."""
    import torch

    act = torch.nn.Sigmoid if net.act == "sigmoid" else torch.nn.ReLU
    mods: list[Any] = []
    for i in range(3):
        lin = torch.nn.Linear(net.sizes[i], net.sizes[i + 1])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(net.W[i].T)))
            lin.bias.copy_(torch.from_numpy(net.b[i]))
        mods += [lin, act()] if i < 2 else [lin, torch.nn.Softmax(dim=-1)]
    return torch.nn.Sequential(*mods).eval()


def torch_cpu(net: Net) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    import torch

    seq = torch_sequential(net)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return seq(torch.from_numpy(x)).numpy()  # type: ignore[no-any-return]

    return run, f"torch {torch.__version__}, {torch.get_num_threads()} threads"


def onnx_model_bytes(net: Net) -> bytes:
    """The same network as an ONNX graph (MatMul, Add, Sigmoid/Relu, Softmax; opset 17)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    cur = "x"
    for i in range(3):
        inits += [
            numpy_helper.from_array(net.W[i], f"W{i}"),
            numpy_helper.from_array(net.b[i], f"b{i}"),
        ]
        nodes.append(helper.make_node("MatMul", [cur, f"W{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]))
        if i < 2:
            op = "Sigmoid" if net.act == "sigmoid" else "Relu"
            nodes.append(helper.make_node(op, [f"a{i}"], [f"h{i}"]))
            cur = f"h{i}"
        else:
            nodes.append(helper.make_node("Softmax", [f"a{i}"], ["y"], axis=-1))
    graph = helper.make_graph(
        nodes,
        f"minifw_bench_{net.name}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, net.sizes[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, net.sizes[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()  # type: ignore[no-any-return]


def onnxruntime_cpu(net: Net) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = _cores()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(onnx_model_bytes(net), so, providers=["CPUExecutionProvider"])

    def run(x: np.ndarray) -> np.ndarray:
        return sess.run(None, {"x": x})[0]  # type: ignore[no-any-return]

    return run, f"onnxruntime {ort.__version__}, CPU EP, {_cores()} intra-op threads"


def _bind(fn: Callable[[np.ndarray], Any], x: np.ndarray) -> Callable[[], Any]:
    return lambda: fn(x)


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
    hand = hand_written(net)
    engines.append(Engine("numpy hand-written (book)", lambda: hand(x), kind="peer"))
    for label, factory in (
        ("torch eager (inference_mode)", torch_cpu),
        ("onnxruntime CPU", onnxruntime_cpu),
    ):
        try:
            fn, ver = factory(net)
        except ImportError as e:
            notes[label] = f'skipped: not installed ({e}); pip install "minifw[bench]"'
            continue
        notes.setdefault(label, ver)
        engines.append(Engine(label, _bind(fn, x), kind="peer", traced=False))
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


# -- timing ----------------------------------------------------------------------------------------


class Timer:
    """Interleaved rounds with the contamination check."""

    def __init__(
        self,
        rounds: int,
        loop_s: float,
        max_foreign: float,
        retries: int,
        pause_s: float,
        settle_s: float = 0.0,
    ) -> None:
        self.rounds, self.loop_s, self.settle_s = rounds, loop_s, settle_s
        self.warmup = 2
        #: Timed calls per loop at least (a single slow call would weigh too much).
        self.min_calls = 3
        self.max_foreign, self.retries, self.pause_s = max_foreign, retries, pause_s
        self.discarded = 0
        self.accepted_anyway = 0
        self.foreign_cpu_s = 0.0
        self.cores = _cores()

    def _settle(self) -> None:
        """Wait (at most ``settle_s``) until this process's own threads are idle: OpenBLAS,
        OpenMP and ONNX Runtime workers spin for up to about 0.1 s after a call, and would
        take a core from the next engine. Idle means under 1 ms of CPU in a 10 ms slice."""
        if not self.settle_s:
            return
        deadline = time.perf_counter() + self.settle_s
        c0 = time.process_time()
        while True:
            time.sleep(0.01)
            c1 = time.process_time()
            if c1 - c0 < 0.001 or time.perf_counter() >= deadline:
                return
            c0 = c1

    def _loop(self, fn: Callable[[], Any], n: int) -> tuple[float, float | None]:
        b0, c0 = _busy_seconds(), time.process_time()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t0
        c1, b1 = time.process_time(), _busy_seconds()
        foreign = None if b0 is None or b1 is None else max(0.0, (b1 - b0) - (c1 - c0))
        return dt, foreign

    def measure(self, engines: list[Engine]) -> dict[str, list[float]]:
        loops: dict[str, int] = {}
        for e in engines:  # warm up, then size each loop to about loop_s
            for _ in range(self.warmup):
                e()
            t0 = time.perf_counter()
            e()
            dt = time.perf_counter() - t0
            loops[e.name] = max(self.min_calls, min(100_000, int(self.loop_s / max(dt, 1e-7))))
        times: dict[str, list[float]] = {e.name: [] for e in engines}
        for r in range(self.rounds):
            # rotate the order each round, and let the previous engine's worker threads
            # (OpenBLAS, OpenMP, ONNX Runtime spin after a call) go idle before the next
            k = r % len(engines)
            for e in engines[k:] + engines[:k]:
                self._settle()
                e()  # one untimed call: the engine's own threads and caches are warm
                n = loops[e.name]
                for attempt in range(self.retries + 1):
                    dt, foreign = self._loop(e, n)
                    if foreign is not None:
                        self.foreign_cpu_s += foreign
                    # /proc/stat counts in clock ticks: allow two of them before judging
                    slack = 2.0 / os.sysconf("SC_CLK_TCK")
                    excess = 0.0 if foreign is None else max(0.0, foreign - slack)
                    share = excess / (max(dt, 1e-3) * self.cores)
                    if share <= self.max_foreign:
                        break
                    if attempt == self.retries:
                        self.accepted_anyway += 1
                        break
                    self.discarded += 1
                    time.sleep(self.pause_s)
                times[e.name].append(dt / n)
        return times


def _rss_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_per_call(e: Engine) -> dict[str, Any]:
    """Steady-state memory of one call (the engine is warm from the timing): RSS high-water
    rise and traced allocations."""
    gc.collect()
    out: dict[str, Any] = {}
    if _reset_peak_rss():
        before = _rss_bytes("VmRSS")
        e()
        hwm = _rss_bytes("VmHWM")
        if before is not None and hwm is not None:
            out["rss_peak_rise_bytes"] = max(0, hwm - before)
    if e.traced:
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            r = e()
            cur, peak = tracemalloc.get_traced_memory()
            out["traced_peak_bytes"] = peak - base
            out["traced_retained_bytes"] = cur - base  # includes the result, still alive
            out["result_bytes"] = int(getattr(r, "nbytes", 0))
            del r
        finally:
            tracemalloc.stop()
    return out


def minifw_cold_memory(net: Net, x: np.ndarray) -> dict[str, Any]:
    """minifw's first predict on a fresh model (its buffers allocated), against the bound
    ``input + the two largest activations``."""
    model = net.minifw_model("numpy")
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        r = model.predict(x)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    acts = sorted(net.act_bytes(x.shape[0]), reverse=True)
    bound = x.nbytes + acts[0] + acts[1]
    used = x.nbytes + peak
    return {
        "cold_traced_peak_bytes": peak,
        "input_bytes": x.nbytes,
        "bound_bytes": bound,
        "peak_over_bound": used / bound,
        "result_bytes": int(r.nbytes),
    }


def _max_abs_diff(a: Any, ref: np.ndarray) -> float | None:
    try:
        return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - ref)))
    except Exception:
        return None


def bench_inference(
    args: argparse.Namespace, timer: Timer, backends: list[str], notes: dict[str, str]
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    rng = np.random.default_rng(1)
    for net_name in args.networks:
        net = Net(net_name)
        gpu = args.device == "cuda"
        default = GPU_BATCHES[net_name] if gpu else NETWORKS[net_name]["batches"]
        batches = args.batches.get(net_name, default)
        ref_name = MINIFW_REF_GPU if gpu else MINIFW_REF
        for batch in batches:
            x = rng.random((batch, net.sizes[0]), dtype=np.float32)
            if gpu:
                engines = build_gpu_engines(net, x, notes)
            else:
                engines = build_engines(net, x, backends, notes)
            ref = hand_written(net)(x.astype(np.float64))  # float64 reference output
            checks = {}
            for e in engines:
                if e.kind != "floor":
                    r = e()
                    if e.to_host:
                        import minifw as mf

                        r = mf.to_numpy(r) if not hasattr(r, "cpu") else r.cpu().numpy()
                    checks[e.name] = _max_abs_diff(r, ref)
            _log(args, f"{net_name} batch {batch}: {len(engines)} engines")
            times = timer.measure(engines)
            mem = {e.name: memory_per_call(e) for e in engines} if not (args.smoke or gpu) else {}
            row: dict[str, Any] = {
                "network": net_name,
                "layers": net.describe(),
                "batch": batch,
                "gflop_per_call": net.flops(batch) / 1e9,
                "engines": {},
            }
            for e in engines:
                t = times[e.name]
                med = statistics.median(t)
                row["engines"][e.name] = {
                    "kind": e.kind,
                    "median_s": med,
                    "min_s": min(t),
                    "max_s": max(t),
                    "samples_per_s": batch / med,
                    "gflops": net.flops(batch) / med / 1e9,
                    "max_abs_diff_vs_float64": checks.get(e.name),
                    "memory": mem.get(e.name, {}),
                }
            ref_t = row["engines"][ref_name]["median_s"]
            row["ratios_minifw_over_peer"] = {
                name: ref_t / v["median_s"]
                for name, v in row["engines"].items()
                if v["kind"] != "minifw"
            }
            # paired: the ratio within each round (both engines timed moments apart), then
            # the median over rounds; steadier than a ratio of medians when the machine's
            # speed drifts during the run
            row["paired_ratios_minifw_over_peer"] = {
                e.name: paired_ratio(times[ref_name], times[e.name])
                for e in engines
                if e.name != ref_name
            }
            if not (args.smoke or gpu):
                row["minifw_cold_memory"] = minifw_cold_memory(net, x)
            rows.append(row)
    return rows


def _calls(n: int) -> str:
    return f"{n} call" if n == 1 else f"{n} calls"


def paired_ratio(ref: list[float], other: list[float]) -> float:
    """Median over rounds of ``ref[i] / other[i]`` (the lists hold one time per round)."""
    return statistics.median(a / b for a, b in zip(ref, other, strict=True))


# -- training ------------------------------------------------------------------------------------


def _train_script() -> Path:
    return Path(__file__).resolve().parent.parent / "benchmarks" / "train_epoch.py"


def bench_training(args: argparse.Namespace) -> dict[str, Any]:
    """One training epoch, minifw vs PyTorch, through benchmarks/train_epoch.py."""
    path = _train_script()
    if not path.is_file():
        return {"skipped": f"{path} not found (a source checkout has it)"}
    spec = importlib.util.spec_from_file_location("minifw_train_epoch", path)
    if spec is None or spec.loader is None:
        return {"skipped": f"cannot load {path}"}
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    data_dir = args.data_dir or (
        Path(os.environ["MINIFW_DATA_DIR"]) if os.environ.get("MINIFW_DATA_DIR") else None
    )
    real = (
        data_dir is not None
        and (data_dir / "fashion-mnist" / "train-images-idx3-ubyte.gz").is_file()
        and not args.quick
        and not args.smoke
    )
    argv = ["--epochs", str(args.train_epochs)]
    if real:
        argv += ["--data-dir", str(data_dir)]
    else:
        argv.append("--synthetic")
    if args.smoke:
        return {"skipped": "--smoke: training not run"}
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        res: dict[str, Any] = mod.main(argv)
    res["data"] = "Fashion-MNIST train split" if real else "random data of the same shape"
    return res


# -- output ----------------------------------------------------------------------------------------


def _fmt_time(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def _fmt_bytes(b: Any) -> str:
    if b is None:
        return "—"
    return f"{b / 2**20:.2f} MiB" if b >= 2**16 else f"{b / 1024:.1f} KiB"


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = ["# minifw bench", ""]
    lines.append(
        f"Machine: {m['cpu']}, {m['cores_usable']} usable cores; Python {m['python']}, "
        f"NumPy {m['numpy']}; {m['platform']}."
        + (f" Started {m['started_utc']} UTC." if "started_utc" in m else "")
    )
    tp = m.get("threadpools")
    if isinstance(tp, list):
        lines.append(
            "Thread pools: "
            + "; ".join(
                f"{d['internal_api']} {d['version']} ({d.get('architecture') or '-'}), "
                f"{d['num_threads']} threads"
                for d in tp
            )
            + "."
        )
    t = result["timing"]
    lines.append(
        f"Method: {t['rounds']} interleaved rounds of ~{t['loop_seconds']} s loops per engine "
        f"(at least {_calls(t.get('min_calls_per_loop', 1))}, after the previous engine's threads "
        f"went idle, at most {t.get('settle_seconds', 0)} s, and one untimed call); "
        f"{t['discarded_loops']} loops discarded (other processes busy), "
        f"{t['accepted_anyway']} accepted anyway; other processes used {t['foreign_cpu_s']:.1f} "
        f"CPU-s meanwhile. Wall {result['wall_s']:.0f} s. Times are per call; the ratio "
        f"column is minifw's median time ({result.get('minifw_ref', MINIFW_REF)}) over the "
        "engine's (below 1: minifw is faster); the paired ratio is the median over rounds of "
        "that ratio within each round (steadier when the machine's speed drifts; on "
        "minifw's own predict(x) row it shows the noise of two identical code paths)."
    )
    lines.append("")
    for row in result["inference"]:
        lines.append(f"## {row['network']} ({row['layers']}), batch {row['batch']}")
        lines.append("")
        lines.append(
            "| engine | median | min | max | samples/s | GFLOP/s | minifw time ÷ engine's | "
            "paired ratio | max abs diff | RSS peak rise | traced peak |"
        )
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        ratios = row["ratios_minifw_over_peer"]
        paired = row.get("paired_ratios_minifw_over_peer", {})
        for name, v in row["engines"].items():
            r = ratios.get(name)
            pr = paired.get(name)
            d = v["max_abs_diff_vs_float64"]
            mem = v.get("memory", {})
            lines.append(
                f"| {name} | {_fmt_time(v['median_s'])} | {_fmt_time(v['min_s'])} | "
                f"{_fmt_time(v['max_s'])} | {v['samples_per_s']:,.0f} | {v['gflops']:.1f} | "
                f"{'' if r is None else f'{r:.2f}×'} | {'' if pr is None else f'{pr:.2f}×'} | "
                f"{'' if d is None else f'{d:.1e}'} | "
                f"{_fmt_bytes(mem.get('rss_peak_rise_bytes'))} | "
                f"{_fmt_bytes(mem.get('traced_peak_bytes'))} |"
            )
        cm = row.get("minifw_cold_memory")
        if cm:
            lines.append("")
            lines.append(
                f"minifw first call (buffers allocated): traced peak "
                f"{_fmt_bytes(cm['cold_traced_peak_bytes'])} + input "
                f"{_fmt_bytes(cm['input_bytes'])} = {cm['peak_over_bound']:.2f}× the bound "
                f"(input + two largest activations = {_fmt_bytes(cm['bound_bytes'])})."
            )
        lines.append("")
    tr = result.get("training")
    lines.append("## Training: one epoch, 784-256-128-10 ReLU, batch 128, Adam")
    lines.append("")
    if not tr or "skipped" in tr:
        lines.append(f"Skipped: {tr.get('skipped') if tr else 'not run'}.")
    else:
        mfm = tr["minifw"]["median_s"]
        line = f"Data: {tr.get('data')}. minifw {mfm:.3f} s/epoch (median of {len(tr['minifw']['seconds'])})"
        if isinstance(tr.get("torch"), dict):
            line += (
                f"; PyTorch {tr['torch']['median_s']:.3f} s/epoch; ratio minifw ÷ PyTorch "
                f"{tr['ratio_minifw_over_torch']:.2f}×."
            )
        else:
            line += f"; PyTorch: {tr.get('torch')}."
        lines.append(line)
    lines.append("")
    if result["notes"]:
        lines.append("## Notes")
        lines.append("")
        for k, v in result["notes"].items():
            lines.append(f"* {k}: {v}")
        lines.append("")
    return "\n".join(lines)


def chart(result: dict[str, Any], path: Path) -> str | None:
    """A PNG: per configuration, each engine's samples/s relative to the GEMM floor."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return 'matplotlib not installed (pip install "minifw[bench]"): no chart'
    rows = result["inference"]
    if not rows:
        return None
    names: list[str] = []
    for row in rows:
        for n in row["engines"]:
            if n not in names:
                names.append(n)
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(rows)), 5))
    width = 0.8 / max(1, len(names))
    for j, n in enumerate(names):
        vals = []
        for row in rows:
            floor = next((v for k, v in row["engines"].items() if v["kind"] == "floor"), None)
            v = row["engines"].get(n)
            vals.append(
                v["samples_per_s"] / floor["samples_per_s"] if v and floor else float("nan")
            )
        ax.bar([i + j * width for i in range(len(rows))], vals, width, label=n)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))])
    ax.set_xticklabels([f"{r['network']} B={r['batch']}" for r in rows])
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_ylabel("samples/s ÷ GEMM floor (higher is better)")
    ax.set_title("minifw bench: inference throughput relative to the GEMM floor")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _log(args: argparse.Namespace, msg: str) -> None:
    if not args.json_stdout:
        print(f"[bench] {msg}", file=sys.stderr, flush=True)


# -- command line ------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=PROG,
        description="Benchmark minifw against hand-written NumPy, PyTorch, ONNX Runtime and "
        "the GEMM floor (inference of S and W; one training epoch).",
    )
    ap.add_argument("--quick", action="store_true", help="fewer rounds: under a minute")
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="tiny batches, one short round, no memory or training (a test of the command)",
    )
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="output dir")
    ap.add_argument("--networks", default="S,W", help="comma-separated: S, W (default both)")
    ap.add_argument(
        "--batch-sizes",
        default=None,
        help="batch sizes per network, e.g. 'S=10000;W=8192' (default: S 1,100,10000; "
        "W 1,256,8192)",
    )
    ap.add_argument(
        "--rounds", type=int, default=None, help="interleaved rounds (default 9; 3 quick)"
    )
    ap.add_argument("--loop-seconds", type=float, default=None, help="length of one timed loop")
    ap.add_argument(
        "--max-foreign",
        type=float,
        default=0.05,
        help="discard a loop when other processes used more than this share of the CPUs",
    )
    ap.add_argument("--retries", type=int, default=None, help="redo a disturbed loop this often")
    ap.add_argument(
        "--settle-seconds",
        type=float,
        default=None,
        help="before each timed loop, wait at most this long for the previous engine's "
        "spinning worker threads to go idle (default 0.5; 0.3 quick)",
    )
    ap.add_argument("--no-train", action="store_true", help="skip the training epoch")
    ap.add_argument("--train-epochs", type=int, default=None, help="epochs per engine")
    ap.add_argument("--data-dir", type=Path, default=None, help="for the Fashion-MNIST epoch")
    ap.add_argument(
        "--backends",
        default=None,
        help="minifw backends besides numpy (comma-separated; default: every available one)",
    )
    ap.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cuda: minifw on CuPy against PyTorch CUDA and the cuBLAS GEMM floor, batches "
        "S 10000/100000 and W 8192/65536 (needs CuPy and an NVIDIA GPU)",
    )
    ap.add_argument("--json-stdout", action="store_true", help="print the JSON, no progress")
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit code (0 ok, 2 usage error)."""
    ap = parser()
    args = ap.parse_args(argv)
    nets = [n.strip().upper() for n in args.networks.split(",") if n.strip()]
    bad = [n for n in nets if n not in NETWORKS]
    if bad or not nets:
        ap.error(f"--networks: unknown {bad or args.networks!r}; choose from {list(NETWORKS)}")
    args.networks = nets
    args.batches = dict(SMOKE_BATCHES) if args.smoke else {}
    for item in (args.batch_sizes or "").split(";"):
        if not item.strip():
            continue
        name, _, sizes = item.partition("=")
        try:
            args.batches[name.strip().upper()] = tuple(int(v) for v in sizes.split(","))
        except ValueError:
            ap.error(f"--batch-sizes: expected e.g. 'S=1,100;W=8192', got {item!r}")
        if name.strip().upper() not in NETWORKS or min(args.batches[name.strip().upper()]) < 1:
            ap.error(f"--batch-sizes: bad entry {item!r}")
    quick = args.quick or args.smoke
    rounds = args.rounds or (1 if args.smoke else 3 if args.quick else 9)
    loop_s = args.loop_seconds or (0.002 if args.smoke else 0.02 if args.quick else 0.1)
    retries = args.retries if args.retries is not None else (0 if quick else 6)
    if rounds < 1 or loop_s <= 0 or (args.retries is not None and args.retries < 0):
        ap.error("--rounds, --loop-seconds and --retries must be positive")
    args.train_epochs = args.train_epochs or (1 if quick else 3)
    t_start = time.perf_counter()

    import minifw as mf

    notes: dict[str, str] = {}
    if args.backends is None and quick:  # no engine imports: they take seconds
        others = [
            n
            for n in mf.backend.NAMES
            if n not in ("numpy", "cupy")
            and importlib.util.find_spec(mf.backend._REGISTRY[n][1]) is not None
        ]
        notes["minifw other backends"] = (
            f"{', '.join(others) or 'none installed'}: measured in the full run "
            "(or pass --backends)"
        )
        backends = []
    else:
        if args.backends is None:
            backends = [b for b in mf.backend.available() if b not in ("numpy", "cupy")]
        else:
            backends = [b.strip() for b in args.backends.split(",") if b.strip()]
        for name, why in mf.backend.unavailable().items():
            if args.backends is None or name in backends:
                notes[f"minifw {name}"] = f"not available: {why}"
    if args.device == "cuda":
        mf.backend.get("cupy", source="minifw bench --device cuda")  # a clear error if absent
        backends = []
    settle = args.settle_seconds
    if settle is None:
        settle = 0.0 if args.smoke else 0.3 if args.quick else 0.5
    timer = Timer(rounds, loop_s, args.max_foreign, retries, pause_s=0.2, settle_s=settle)
    if quick:
        timer.warmup = 1
        timer.min_calls = 1
    result: dict[str, Any] = {"command": [PROG, *(argv if argv is not None else sys.argv[1:])]}
    result["machine"] = machine_info()
    with np.errstate(over="ignore"):  # the book's sigmoid overflows in exp for large -x
        result["inference"] = bench_inference(args, timer, backends, notes)
    if args.no_train:
        result["training"] = {"skipped": "--no-train"}
    else:
        _log(args, "training epoch")
        try:
            result["training"] = bench_training(args)
        except Exception as e:  # record, do not lose the inference figures
            result["training"] = {"skipped": f"failed: {type(e).__name__}: {e}"}
    result["timing"] = {
        "rounds": rounds,
        "loop_seconds": loop_s,
        "settle_seconds": settle,
        "min_calls_per_loop": timer.min_calls,
        "max_foreign_share": args.max_foreign,
        "discarded_loops": timer.discarded,
        "accepted_anyway": timer.accepted_anyway,
        "foreign_cpu_s": timer.foreign_cpu_s,
    }
    result["notes"] = notes
    result["minifw_ref"] = MINIFW_REF_GPU if args.device == "cuda" else MINIFW_REF
    result["wall_s"] = time.perf_counter() - t_start
    with contextlib.suppress(OSError):
        result["machine"]["loadavg_end"] = list(os.getloadavg())
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2, default=str)
    _write_atomic(out / "bench.json", text)
    _write_atomic(out / "bench.md", markdown(result))
    note = chart(result, out / "bench.png")
    if note:
        notes["chart"] = note
    if args.json_stdout:
        print(text)
    else:
        print(markdown(result))
        print(f"[bench] wrote {out / 'bench.json'}, bench.md, bench.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
