"""Measuring: the engine abstraction, the interleaved timing loop with its contamination
check, paired ratios, and the memory one call uses."""

from __future__ import annotations

import gc
import os
import statistics
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

from minifw._util import cores

from .machine import busy_seconds


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
        self.cores = cores()

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
        b0, c0 = busy_seconds(), time.process_time()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t0
        c1, b1 = time.process_time(), busy_seconds()
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


def paired_ratio(ref: list[float], other: list[float]) -> float:
    """Median over rounds of ``ref[i] / other[i]`` (the lists hold one time per round)."""
    return statistics.median(a / b for a, b in zip(ref, other, strict=True))


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


def minifw_cold_memory(net: Any, x: np.ndarray) -> dict[str, Any]:
    """minifw's first predict on a fresh model (its buffers allocated), against the bound
    ``input + the two largest activations`` (``net``: a :class:`Net` or a
    :class:`~minifw.bench.convnets.ConvNet`)."""
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


def max_abs_diff(a: Any, ref: np.ndarray) -> float | None:
    try:
        return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - ref)))
    except Exception:
        return None


def peer_engines(
    peers: dict[str, Callable[[Any, np.ndarray], tuple[Callable[[], Any], str]]],
    net: Any,
    x: np.ndarray,
    notes: dict[str, str],
) -> list[Engine]:
    """An :class:`Engine` for each peer whose factory starts (``factory(net, x)`` gives the
    call and a version line, recorded in ``notes``); one that is not installed or fails to
    start gets a note instead, and the others are measured."""
    engines = []
    for label, factory in peers.items():
        try:
            run_peer, ver = factory(net, x)
        except ImportError as e:
            notes[label] = f'skipped: not installed ({e}); pip install "minifw[bench]"'
            continue
        except Exception as e:  # installed but broken: record it, measure the rest
            notes[label] = f"skipped: failed to start: {type(e).__name__}: {e}"
            continue
        notes.setdefault(label, ver)
        engines.append(Engine(label, run_peer, kind="peer", traced=False))
    return engines


def time_summary(kind: str, times: list[float], batch: int) -> dict[str, Any]:
    """What each case's JSON says of one engine's timed loops."""
    med = statistics.median(times)
    return {
        "kind": kind,
        "median_s": med,
        "min_s": min(times),
        "max_s": max(times),
        "samples_per_s": batch / med,
    }
