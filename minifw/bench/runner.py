"""Running the benchmark: every inference configuration (engines built, checked against a
float64 reference, timed, memory measured, ratios taken) and the training epoch."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .convnets import CONV_NETWORKS, ConvNet, build_conv_engines
from .engines import OWN_SPEED, build_engines, build_gpu_engines
from .nets import GPU_BATCHES, MINIFW_REF, MINIFW_REF_GPU, NETWORKS, Net
from .peers import hand_written
from .timing import (
    Timer,
    max_abs_diff,
    memory_per_call,
    minifw_cold_memory,
    paired_ratio,
    time_summary,
)


def log(args: argparse.Namespace, msg: str) -> None:
    if not args.json_stdout:
        print(f"[bench] {msg}", file=sys.stderr, flush=True)


def bench_inference(
    args: argparse.Namespace, timer: Timer, backends: list[str], notes: dict[str, str]
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    rng = np.random.default_rng(1)
    for net_name in args.networks:
        conv = net_name in CONV_NETWORKS  # a CNN case (C1, C2): minifw.bench.convnets
        net: Any = ConvNet(net_name) if conv else Net(net_name)
        gpu = args.device == "cuda"
        spec = CONV_NETWORKS[net_name] if conv else NETWORKS[net_name]
        default = GPU_BATCHES[net_name] if gpu else spec["batches"]
        batches = args.batches.get(net_name, default)
        ref_name = MINIFW_REF_GPU if gpu else MINIFW_REF
        for batch in batches:
            shape = net.input_shape if conv else (net.sizes[0],)
            x = rng.random((batch, *shape), dtype=np.float32)
            if conv:
                engines = build_conv_engines(net, x, notes)
            elif gpu:
                engines = build_gpu_engines(net, x, notes)
            else:
                engines = build_engines(net, x, backends, notes)
            # float64 reference output (the CNNs': of the first rows)
            ref = net.reference(x) if conv else hand_written(net)(x.astype(np.float64))
            checks = {}
            for e in engines:
                if e.kind != "floor":
                    r = e()
                    if e.to_host:
                        import minifw as mf

                        r = mf.to_numpy(r) if not hasattr(r, "cpu") else r.cpu().numpy()
                    checks[e.name] = max_abs_diff(r[: len(ref)] if conv else r, ref)
            log(args, f"{net_name} batch {batch}: {len(engines)} engines")
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
                summary = time_summary(e.kind, times[e.name], batch)
                row["engines"][e.name] = {
                    **summary,
                    "gflops": net.flops(batch) / summary["median_s"] / 1e9,
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
                label: paired_ratio(times[ref_name], times[label])
                for label in (e.name for e in engines)
                if label != ref_name
            }
            # minifw on torch / jax against that engine's own fastest form of the network
            row["paired_ratios_own_speed"] = {
                f"{mine} / {peer}": paired_ratio(times[mine], times[peer])
                for mine, peer in OWN_SPEED.items()
                if mine in times and peer in times
            }
            if not (args.smoke or gpu):
                row["minifw_cold_memory"] = minifw_cold_memory(net, x)
            rows.append(row)
    return rows


# -- training ------------------------------------------------------------------------------------


def _train_script() -> Path:
    return Path(__file__).resolve().parents[2] / "benchmarks" / "train_epoch.py"


def bench_cnn_training_case(args: argparse.Namespace) -> dict[str, Any]:
    """The CNN training epoch (``minifw.bench.convnets``): Fashion-MNIST when the data is
    there (the first 10,000 images with ``--quick``), 300 random images with ``--smoke``."""
    from .convnets import bench_cnn_training

    data_dir = args.data_dir or (
        Path(os.environ["MINIFW_DATA_DIR"]) if os.environ.get("MINIFW_DATA_DIR") else None
    )
    if args.smoke:
        return bench_cnn_training(None, 1, 300)
    return bench_cnn_training(data_dir, args.train_epochs, 10000 if args.quick else None)


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
