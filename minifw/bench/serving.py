"""The serving case: client threads sending ``predict`` requests to one shared model.

W (784-1024-1024-10) on minifw NumPy; 1, 2 and 4 client threads, each calling
``model.predict`` on its own batch of 1 or 256 rows in a loop for about ``seconds``; reported:
requests/s and samples/s over all clients (median of ``rounds`` runs), the speed-up over
one client, and whether every concurrent result equalled the single-threaded one bit for
bit.
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

import numpy as np

from .nets import Net

CLIENTS = (1, 2, 4)
BATCHES = (1, 256)


def bench_serving(
    seconds: float, rounds: int, network: str = "W", clients: tuple[int, ...] = CLIENTS
) -> list[dict[str, Any]]:
    net = Net(network)
    model = net.minifw_model("numpy")
    rng = np.random.default_rng(2)
    rows: list[dict[str, Any]] = []
    for batch in BATCHES:
        xs = [rng.random((batch, net.sizes[0]), dtype=np.float32) for _ in range(max(clients))]
        want = [model.predict(x) for x in xs]
        base = None
        for n in clients:
            rates, same = [], True
            for _ in range(rounds):
                rate, ok = _run(model, xs[:n], want[:n], seconds)
                rates.append(rate)
                same &= ok
            rps = statistics.median(rates)
            base = rps if n == clients[0] else base
            rows.append(
                {
                    "network": network,
                    "clients": n,
                    "batch": batch,
                    "requests_per_s": rps,
                    "samples_per_s": rps * batch,
                    "min_requests_per_s": min(rates),
                    "max_requests_per_s": max(rates),
                    "speedup_over_one_client": rps / base if base else None,
                    "bit_identical": same,
                }
            )
    return rows


def _run(model: Any, xs: list[np.ndarray], want: list[np.ndarray], seconds: float) -> Any:
    """All clients start together and send requests until ``seconds`` have passed (each at
    least one); (requests per second over all clients, every result bit-identical)."""
    counts = [0] * len(xs)
    same = [True] * len(xs)
    start = threading.Barrier(len(xs) + 1)
    t0 = [0.0]
    ends = [0.0] * len(xs)  # each client's last request's end

    def client(i: int) -> None:
        x, w = xs[i], want[i]
        start.wait()
        while True:
            y = model.predict(x)
            counts[i] += 1
            same[i] &= bool(np.array_equal(y, w))
            now = time.perf_counter()
            if now - t0[0] >= seconds:
                ends[i] = now
                return

    ths = [threading.Thread(target=client, args=(i,)) for i in range(len(xs))]
    for th in ths:
        th.start()
    t0[0] = time.perf_counter()
    start.wait()
    for th in ths:
        th.join()
    return sum(counts) / (max(ends) - t0[0]), all(same)


def serving_markdown(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    lines = [
        f"## Serving: client threads x model.predict, {rows[0]['network']}",
        "",
        "| batch | clients | requests/s | samples/s | min-max requests/s | vs 1 client | "
        "bits = 1 client |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        sp = r["speedup_over_one_client"]
        lines.append(
            f"| {r['batch']} | {r['clients']} | {r['requests_per_s']:,.1f} | "
            f"{r['samples_per_s']:,.0f} | {r['min_requests_per_s']:,.1f}-"
            f"{r['max_requests_per_s']:,.1f} | {'' if sp is None else f'{sp:.2f}×'} | "
            f"{'yes' if r['bit_identical'] else 'NO'} |"
        )
    lines.append("")
    return lines
