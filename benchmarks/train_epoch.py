"""One Fashion-MNIST training epoch: minifw against PyTorch CPU, in one process.

The MLP 784-256-128-10 (ReLU, softmax cross-entropy), batch 128, Adam (lr 1e-3), float32.
Both engines start from the same initial weights and see the same per-epoch shuffles;
epochs alternate between the engines (minifw, torch, minifw, torch, ...) so that both
meet the same machine conditions, and the medians of the per-epoch times are compared
(minima and CPU times too: with ``--threads 1`` the CPU time is what a quiet core gives,
which makes the comparison steady on a busy machine). The CPU time other processes used
during each epoch is recorded (Linux), and ``ratio_quiet_epochs`` compares only the
epochs during which they used less than 10% of a core.

    python benchmarks/train_epoch.py [--epochs 5] [--threads 1] [--data-dir DIR] [--json out.json]

The data is read from ``$MINIFW_DATA_DIR/fashion-mnist`` (or ``--data-dir``); with
``--synthetic`` random data of the same shape is used instead (no files needed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import minifw as mf

BATCH = 128
LR = 1e-3
QUIET = 0.10  # an epoch is "quiet" when other processes used < 10% of a core meanwhile


def _busy_jiffies() -> int | None:
    """CPU time used by every process on the machine so far (Linux), in clock ticks."""
    try:
        with open("/proc/stat") as f:
            v = [int(t) for t in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return v[0] + v[1] + v[2] + v[5] + v[6]  # user nice system irq softirq


def timed(fn: Any, *args: Any) -> tuple[Any, float, float, float | None]:
    """``fn(*args)`` with (result, wall s, this process's CPU s, other processes' CPU s)."""
    b0, c0, t0 = _busy_jiffies(), time.process_time(), time.perf_counter()
    out = fn(*args)
    wall, cpu, b1 = time.perf_counter() - t0, time.process_time() - c0, _busy_jiffies()
    foreign = None
    if b0 is not None and b1 is not None:
        foreign = max(0.0, (b1 - b0) / os.sysconf("SC_CLK_TCK") - cpu)
    return out, wall, cpu, foreign


def load_train(data_dir: Path | None, synthetic: bool) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST training split as (60000, 784) float32 in [0, 1] and int64 labels."""
    if synthetic:
        rng = np.random.default_rng(0)
        return rng.random((60000, 784), dtype=np.float32), rng.integers(0, 10, 60000)
    if data_dir is None:
        raise SystemExit("no data: set MINIFW_DATA_DIR, pass --data-dir, or use --synthetic")
    from minifw.datasets import load_fashion_mnist

    return load_fashion_mnist("train", data_dir=data_dir / "fashion-mnist", download=False)


def build_minifw(seed: int) -> mf.Sequential:
    mf.seed(seed)
    return mf.Sequential(
        mf.Dense(784, 256),
        mf.ReLU(),
        mf.Dense(256, 128),
        mf.ReLU(),
        mf.Dense(128, 10),
        mf.Softmax(),
    )


def build_torch(model: mf.Sequential) -> tuple[Any, Any, Any]:
    """The same network in PyTorch, initialised with the minifw model's weights."""
    import torch

    net = torch.nn.Sequential(
        torch.nn.Linear(784, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 10),
    )
    sd = model.state_dict()
    with torch.no_grad():
        for i in (0, 2, 4):
            net[i].weight.copy_(torch.from_numpy(sd[f"{i}.weight"].T.copy()))
            net[i].bias.copy_(torch.from_numpy(sd[f"{i}.bias"]))
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    return net, opt, torch.nn.CrossEntropyLoss()


def torch_epoch(net: Any, opt: Any, lossf: Any, xt: Any, yt: Any, order: np.ndarray) -> float:
    """One epoch in the usual PyTorch loop; returns the mean training loss."""
    import torch

    idx_all = torch.from_numpy(order)
    n = xt.shape[0]
    total = 0.0
    for s in range(0, n, BATCH):
        idx = idx_all[s : s + BATCH]
        xb, yb = xt.index_select(0, idx), yt.index_select(0, idx)
        opt.zero_grad(set_to_none=True)
        loss = lossf(net(xb), yb)
        loss.backward()
        opt.step()
        total += loss.item() * xb.shape[0]
    return total / n


def minifw_epoch(model: mf.Sequential, opt: Any, x: np.ndarray, y: np.ndarray, seed: int) -> float:
    """One epoch of ``model.fit``; returns the mean training loss."""
    h = model.fit(x, y, optimizer=opt, epochs=1, batch_size=BATCH, seed=seed, progress=False)
    return h.history["loss"][0]


def _record(r: dict[str, Any], loss: float, wall: float, cpu: float, foreign: Any) -> None:
    r["loss"].append(loss)
    r["seconds"].append(wall)
    r["cpu_seconds"].append(cpu)
    r["foreign_cpu_seconds"].append(foreign)


def _quiet(r: dict[str, Any], i: int) -> bool:
    f = r["foreign_cpu_seconds"][i]
    return f is not None and f < QUIET * r["seconds"][i]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=5, help="epochs per engine (default 5)")
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--synthetic", action="store_true", help="random data, no files needed")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="BLAS/OpenMP threads for both engines (default: each library's own default); "
        "1 gives steadier figures on a busy machine",
    )
    args = ap.parse_args(argv)
    if args.threads is not None:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)  # NumPy's BLAS (and any OpenMP runtime loaded)
        os.environ["MINIFW_NUM_THREADS"] = str(args.threads)  # minifw's own worker threads
    data_dir = args.data_dir or (
        Path(os.environ["MINIFW_DATA_DIR"]) if os.environ.get("MINIFW_DATA_DIR") else None
    )
    x, y = load_train(data_dir, args.synthetic)
    model = build_minifw(0)
    opt = mf.optim.Adam(lr=LR)
    res: dict[str, Any] = {
        "task": "Fashion-MNIST epoch, MLP 784-256-128-10 ReLU, batch 128, Adam lr 1e-3, float32",
        "samples": int(x.shape[0]),
        "threads": args.threads or "library defaults",
        "minifw": {"seconds": [], "cpu_seconds": [], "foreign_cpu_seconds": [], "loss": []},
    }
    try:
        import torch
    except ImportError:
        torch = None  # type: ignore[assignment]
        res["torch"] = "not installed (pip install torch); skipped"
    if torch is not None:
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        net, topt, lossf = build_torch(model)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        res["torch"] = {
            "seconds": [],
            "cpu_seconds": [],
            "foreign_cpu_seconds": [],
            "loss": [],
            "version": torch.__version__,
        }
        res["torch_threads"] = torch.get_num_threads()
    # Both engines draw the same shuffles: the order minifw's fit(seed=s) uses.
    for e in range(args.epochs):
        seed = 1000 + e
        _record(res["minifw"], *timed(minifw_epoch, model, opt, x, y, seed))
        if torch is not None:
            time.sleep(0.2)  # let the other library's BLAS threads stop spinning
            order = np.random.default_rng(seed).permutation(x.shape[0])
            _record(res["torch"], *timed(torch_epoch, net, topt, lossf, xt, yt, order))
            time.sleep(0.2)
        print(
            f"epoch {e + 1}: minifw {res['minifw']['seconds'][-1]:.3f} s (loss "
            f"{res['minifw']['loss'][-1]:.4f})"
            + (
                f", torch {res['torch']['seconds'][-1]:.3f} s (loss {res['torch']['loss'][-1]:.4f})"
                if torch is not None
                else ""
            ),
            file=sys.stderr,
        )
    engines = ["minifw"] + (["torch"] if torch is not None else [])
    for k in engines:
        r = res[k]
        r["median_s"] = statistics.median(r["seconds"])
        r["min_s"] = min(r["seconds"])
        r["median_cpu_s"] = statistics.median(r["cpu_seconds"])
    if torch is not None:
        res["ratio_minifw_over_torch"] = res["minifw"]["median_s"] / res["torch"]["median_s"]
        quiet = [i for i in range(args.epochs) if all(_quiet(res[k], i) for k in engines)]
        res["quiet_epochs"] = quiet
        if quiet:
            med = {k: statistics.median(res[k]["seconds"][i] for i in quiet) for k in engines}
            res["ratio_quiet_epochs"] = med["minifw"] / med["torch"]
        res["ratio_of_minima"] = res["minifw"]["min_s"] / res["torch"]["min_s"]
        # with --threads 1, CPU time is the wall time a quiet core would give
        res["ratio_of_cpu_time"] = res["minifw"]["median_cpu_s"] / res["torch"]["median_cpu_s"]
    print(json.dumps(res, indent=2))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
