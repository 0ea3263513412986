"""N client threads each calling ``predict`` concurrently vs the same calls one after another.

The hardening issue's case: a 784-1024-1024-10 ReLU/softmax network, 3,000 rows per call,
4 threads. Prints the median (and min) wall time of each over ``--rounds`` interleaved
rounds, and whether every concurrent result equals the serial one bit for bit.

    PYTHONPATH=. python benchmarks/concurrent_predict.py --threads 4 --rounds 9
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import numpy as np

import minifw as mf


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    mf.seed(0)
    m = mf.Sequential(
        mf.Dense(784, 1024), mf.ReLU(), mf.Dense(1024, 1024), mf.ReLU(),
        mf.Dense(1024, 10), mf.Softmax(),
    )  # fmt: skip
    rng = np.random.default_rng(1)
    xs = [rng.random((args.rows, 784), dtype="f4") for _ in range(args.threads)]
    ref = [m.predict(x) for x in xs]

    def serial() -> tuple[float, list[np.ndarray]]:
        t = time.perf_counter()
        out = [m.predict(x) for x in xs]
        return time.perf_counter() - t, out

    def concurrent() -> tuple[float, list[np.ndarray]]:
        out: list[np.ndarray] = [np.empty(0)] * len(xs)
        start = threading.Barrier(len(xs) + 1)

        def run(i: int) -> None:
            start.wait()
            out[i] = m.predict(xs[i])

        ths = [threading.Thread(target=run, args=(i,)) for i in range(len(xs))]
        for th in ths:
            th.start()
        start.wait()
        t = time.perf_counter()
        for th in ths:
            th.join()
        return time.perf_counter() - t, out

    times: dict[str, list[float]] = {"serial": [], "concurrent": []}
    same, maxdiff = True, 0.0
    for r in range(args.rounds):
        order = (serial, concurrent) if r % 2 == 0 else (concurrent, serial)
        for f in order:
            dt, out = f()
            times[f.__name__].append(dt)
            for a, b in zip(out, ref, strict=True):
                same &= bool(np.array_equal(a, b))
                maxdiff = max(maxdiff, float(np.abs(a - b).max()))
    s, c = statistics.median(times["serial"]), statistics.median(times["concurrent"])
    print(
        f"{args.threads} threads x predict({args.rows} rows): serial median {s:.3f} s "
        f"(min {min(times['serial']):.3f}), concurrent median {c:.3f} s "
        f"(min {min(times['concurrent']):.3f}), concurrent/serial {c / s:.2f}; "
        f"bit-identical to serial: {same} (max |diff| {maxdiff:.1e})"
    )


if __name__ == "__main__":
    main()
