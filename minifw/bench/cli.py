"""The command line of ``minifw bench``: options, the run, and the files it writes."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from minifw._atomic import atomic_write

from .convnets import CONV_NETWORKS, CONV_SMOKE_BATCHES
from .imported import bench_imported
from .machine import machine_info
from .nets import MINIFW_REF, MINIFW_REF_GPU, NETWORKS, SMOKE_BATCHES
from .report import chart, markdown
from .runner import bench_cnn_training_case, bench_inference, bench_training, log
from .serving import bench_serving
from .timing import Timer

PROG = "minifw bench"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=PROG,
        description="Benchmark minifw against hand-written NumPy, PyTorch eager, jax.jit, "
        "ONNX Runtime and the GEMM floor (inference of S and W; one training epoch).",
    )
    ap.add_argument("--quick", action="store_true", help="fewer rounds: under a minute")
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="tiny batches, one short round, no memory or training (a test of the command)",
    )
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="output dir")
    ap.add_argument(
        "--networks",
        default="S,W",
        help="comma-separated: S, W (MLPs), C1, C2 (the book's CNNs: SimpleConvNet, "
        "DeepConvNet; with them, a CNN training epoch) (default S,W)",
    )
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
    ap.add_argument(
        "--no-serving",
        action="store_true",
        help="skip the serving case (1, 2, 4 client threads calling predict on W)",
    )
    ap.add_argument(
        "--no-imported",
        action="store_true",
        help='skip the "PyTorch-trained model served by minifw" case',
    )
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
    known = {**NETWORKS, **CONV_NETWORKS}
    nets = [n.strip().upper() for n in args.networks.split(",") if n.strip()]
    bad = [n for n in nets if n not in known]
    if bad or not nets:
        ap.error(f"--networks: unknown {bad or args.networks!r}; choose from {list(known)}")
    if args.device == "cuda" and any(n in CONV_NETWORKS for n in nets):
        ap.error("--networks: the CNN cases (C1, C2) run on the CPU only")
    args.networks = nets
    args.batches = {**SMOKE_BATCHES, **CONV_SMOKE_BATCHES} if args.smoke else {}
    for item in (args.batch_sizes or "").split(";"):
        if not item.strip():
            continue
        name, _, sizes = item.partition("=")
        try:
            args.batches[name.strip().upper()] = tuple(int(v) for v in sizes.split(","))
        except ValueError:
            ap.error(f"--batch-sizes: expected e.g. 'S=1,100;W=8192', got {item!r}")
        if name.strip().upper() not in known or min(args.batches[name.strip().upper()]) < 1:
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
        others = [n for n in mf.backend.NAMES if n not in ("numpy", "cupy")]
        notes["minifw other backends"] = (
            f"{', '.join(others)}: not measured with --quick (the full run measures every "
            "available one; or pass --backends; `minifw info` lists which are available)"
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
    if args.no_serving:
        result["serving"] = []
    else:
        log(args, "serving: 1, 2, 4 client threads")
        serve_s = 0.05 if args.smoke else 0.3 if args.quick else 1.0
        result["serving"] = bench_serving(serve_s, 1 if args.smoke else 3 if args.quick else 5)
    if args.no_imported or args.device == "cuda":
        result["imported"] = {"skipped": "--no-imported" if args.no_imported else "CPU only"}
    else:
        try:
            result["imported"] = bench_imported(args, timer, log)
        except Exception as e:  # record, do not lose the other figures
            result["imported"] = {"skipped": f"failed: {type(e).__name__}: {e}"}
    cnn = any(n in CONV_NETWORKS for n in nets)
    if args.no_train:
        result["training"] = {"skipped": "--no-train"}
        if cnn:
            result["training_cnn"] = {"skipped": "--no-train"}
    elif all(n in CONV_NETWORKS for n in nets):
        result["training"] = {"skipped": "no MLP network (S, W) selected"}
    else:
        log(args, "training epoch")
        try:
            result["training"] = bench_training(args)
        except Exception as e:  # record, do not lose the inference figures
            result["training"] = {"skipped": f"failed: {type(e).__name__}: {e}"}
    if cnn and not args.no_train:
        log(args, "CNN training epoch")
        try:
            result["training_cnn"] = bench_cnn_training_case(args)
        except Exception as e:  # record, do not lose the inference figures
            result["training_cnn"] = {"skipped": f"failed: {type(e).__name__}: {e}"}
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
    note = chart(result, out / "bench.png")  # first: a note about it goes into the files
    if note:
        notes["chart"] = note
    text = json.dumps(result, indent=2, default=str)
    md = markdown(result)
    for name, content in (("bench.json", text), ("bench.md", md)):
        with atomic_write(out / name) as f:
            f.write(content.encode("utf-8"))
    if args.json_stdout:
        print(text)
    else:
        print(md)
        print(f"[bench] wrote {out / 'bench.json'}, bench.md, bench.png", file=sys.stderr)
    return 0
