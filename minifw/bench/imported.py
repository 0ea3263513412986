"""The "PyTorch-trained model served by minifw" case.

A ``torch.nn.Sequential`` MLP (784-256-128-10, ReLU, softmax) and, when minifw has the
convolution layers, a CNN (the book's SimpleConvNet shape), each given 20 Adam steps on
synthetic data (so the weights are PyTorch's own), are exported with ``torch.onnx.export``
and imported with ``mf.load``; then, at batches 1, 64 and 10,000 (the CNN: 1, 64 and
1,000), three ways of serving each are timed:
minifw on NumPy (``model(x)``), ONNX Runtime on the exported file (CPU provider) and the
PyTorch original (eager, ``inference_mode``). Beside the times: what each alternative
costs to install (the sum of the file sizes of the installed distributions, from
``importlib.metadata``, with their required dependencies).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata as md
import io
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from minifw._util import cores

from .timing import Engine, Timer, max_abs_diff, paired_ratio, time_summary

BATCHES = (1, 64, 10000)
SMOKE_BATCHES = (1, 64)
CNN_BATCHES = (1, 64, 1000)  # 10,000 images of SimpleConvNet take seconds per call
MINIFW = "minifw numpy model(x) (imported .onnx)"
ORT = "onnxruntime CPU (the exported .onnx)"
TORCH = "torch eager (the PyTorch original)"
SIZES = {  # alternative -> the distribution whose installation it needs
    "NumPy alone": "numpy",
    "minifw (with NumPy)": "minifw",
    "ONNX Runtime": "onnxruntime",
    "PyTorch CPU": "torch",
}


# -- installed sizes ---------------------------------------------------------------------------


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requires(dist: md.Distribution) -> list[str]:
    """The distribution's required dependencies (not those of extras), markers evaluated."""
    out = []
    for req in dist.requires or []:
        try:
            from packaging.requirements import Requirement

            r = Requirement(req)
            if r.marker is not None and not r.marker.evaluate({"extra": ""}):
                continue
            out.append(r.name)
        except ImportError:  # no packaging: skip what an extra needs, keep the rest
            if "extra ==" not in req:
                out.append(re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0])
        except Exception:  # an unparsable requirement: leave it out
            continue
    return out


def _dist_bytes(dist: md.Distribution) -> int:
    total = 0
    for f in dist.files or []:
        try:
            total += os.stat(Path(str(dist.locate_file(f)))).st_size
        except OSError:
            continue
    return total


def _tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for fn in filenames:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(dirpath, fn)).st_size
    return total


def _package_bytes(name: str) -> int | None:
    """Installed size of one distribution; for minifw, its package folder (an editable or
    source-tree install lists no code files)."""
    if _norm(name) == "minifw":
        import minifw

        return _tree_bytes(Path(minifw.__file__).parent)
    try:
        return _dist_bytes(md.distribution(name))
    except md.PackageNotFoundError:
        return None


def installed_sizes() -> dict[str, Any]:
    """Per alternative: its distributions (itself and its required dependencies, recursively)
    with their sizes and the total. Missing distributions are listed, not counted."""
    out: dict[str, Any] = {}
    for label, top in SIZES.items():
        seen: dict[str, int | None] = {}
        todo = [top]
        while todo:
            name = _norm(todo.pop())
            if name in seen:
                continue
            seen[name] = _package_bytes(name)
            try:
                todo += _requires(md.distribution(name))
            except md.PackageNotFoundError:
                continue
        out[label] = {
            "distributions": seen,
            "total_bytes": sum(v for v in seen.values() if v is not None),
            "missing": sorted(k for k, v in seen.items() if v is None),
        }
    return out


# -- the model ---------------------------------------------------------------------------------


def _train(net: Any, shape: tuple[int, ...]) -> Any:
    """20 Adam steps on synthetic data (seeded), then eval mode with a softmax on top."""
    import torch

    nn = torch.nn
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        x = torch.rand(128, *shape, generator=g)
        y = torch.randint(0, 10, (128,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return nn.Sequential(*net, nn.Softmax(dim=1)).eval()


def torch_trained_mlp() -> Any:
    """784-256-128-10 ReLU/softmax."""
    import torch

    torch.manual_seed(0)
    nn = torch.nn
    net = nn.Sequential(
        nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10)
    )
    return _train(net, (784,))


def torch_trained_cnn() -> Any:
    """The book's SimpleConvNet shape: conv 30x5x5, ReLU, 2x2 max-pool, 100, ReLU, 10."""
    import torch

    torch.manual_seed(0)
    nn = torch.nn
    net = nn.Sequential(
        nn.Conv2d(1, 30, 5),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Flatten(),
        nn.Linear(30 * 12 * 12, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )
    return _train(net, (1, 28, 28))


def export_torch(net: Any, shape: tuple[int, ...], path: Path) -> str:
    import torch

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (torch.zeros(2, *shape),),
            str(path),
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
            dynamo=False,
        )
    return f"torch {torch.__version__} torch.onnx.export (TorchScript-based), dynamic batch"


# -- the run -----------------------------------------------------------------------------------


def _case(
    args: argparse.Namespace,
    timer: Timer,
    log: Any,
    name: str,
    net: Any,
    shape: tuple[int, ...],
    batches: tuple[int, ...],
    tmp: str,
) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    import minifw as mf

    path = Path(tmp) / f"torch_{name}.onnx"
    how = export_torch(net, shape, path)
    model: Any = mf.load(path, backend="numpy")
    so = ort.SessionOptions()
    so.intra_op_num_threads = cores()
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    rows: list[dict[str, Any]] = []
    for batch in batches:
        x = rng.random((batch, *shape), dtype=np.float32)
        xt = torch.from_numpy(x)

        def run_torch(xt: Any = xt) -> Any:
            with torch.inference_mode():
                return net(xt)

        def run_minifw(x: np.ndarray = x) -> Any:
            return model(x)

        def run_ort(x: np.ndarray = x) -> Any:
            return sess.run(None, {"x": x})[0]

        engines = [
            Engine(MINIFW, run_minifw, kind="minifw"),
            Engine(ORT, run_ort, kind="peer", traced=False),
            Engine(TORCH, run_torch, kind="peer", traced=False),
        ]
        ref = run_torch().numpy().astype(np.float64)
        diffs = {e.name: max_abs_diff(np.asarray(e()), ref) for e in engines}
        if log is not None:
            log(args, f"imported {name} batch {batch}: {len(engines)} engines")
        times = timer.measure(engines)
        row: dict[str, Any] = {"batch": batch, "engines": {}}
        for e in engines:
            row["engines"][e.name] = time_summary(e.kind, times[e.name], batch)
            row["engines"][e.name]["max_abs_diff_vs_torch"] = diffs[e.name]
        row["paired_ratios_minifw_over_peer"] = {
            e.name: paired_ratio(times[MINIFW], times[e.name]) for e in engines[1:]
        }
        rows.append(row)
    return {
        "name": name,
        "model": f"torch.nn.Sequential {net[:-1]!r}".replace("\n", " "),
        "exported_with": how,
        "imported_as": " -> ".join(type(m).__name__ for m in model),
        "rows": rows,
    }


def bench_imported(args: argparse.Namespace, timer: Timer, log: Any = None) -> dict[str, Any]:
    """Time the three ways of serving the PyTorch-trained models (see the module docstring)."""
    try:
        import onnxruntime as ort
        import torch
    except ImportError as exc:
        return {"skipped": f'needs torch and onnxruntime ({exc}); pip install "minifw[bench]"'}
    import minifw as mf

    mlp_batches: tuple[int, ...] = SMOKE_BATCHES if args.smoke else BATCHES
    cases: list[tuple[str, Any, tuple[int, ...], tuple[int, ...]]] = [
        ("MLP", torch_trained_mlp, (784,), mlp_batches)
    ]
    notes = {}
    if hasattr(mf, "Conv2D"):
        cnn_batches = SMOKE_BATCHES[:1] if args.smoke else CNN_BATCHES
        cases.append(("CNN", torch_trained_cnn, (1, 28, 28), cnn_batches))
    else:
        notes["CNN"] = "this minifw has no convolution layers"
    with tempfile.TemporaryDirectory() as tmp:
        done = [
            _case(args, timer, log, name, make(), shape, batches, tmp)
            for name, make, shape, batches in cases
        ]
    return {
        "training": "20 Adam steps on synthetic data (seeded): PyTorch's own weights",
        "cases": done,
        "notes": notes,
        "onnxruntime": f"onnxruntime {ort.__version__}, CPU EP, {cores()} intra-op threads",
        "torch": f"torch {torch.__version__}, eager, inference_mode, {torch.get_num_threads()} threads",
        "installed_size": installed_sizes(),
        "python": sys.version.split()[0],
    }


def markdown(res: dict[str, Any], _fmt_time: Any) -> list[str]:
    """The report's section for this case (``_fmt_time``: the report's time format)."""
    lines = ["## PyTorch-trained model served by minifw", ""]
    if "skipped" in res:
        return [*lines, f"Skipped: {res['skipped']}.", ""]
    lines.append(
        f"Trained in PyTorch ({res['training']}), exported with torch.onnx.export, imported by "
        "`mf.load`; served by minifw on NumPy, by ONNX Runtime from the same file, and by the "
        "PyTorch original. Ratio: minifw's time ÷ the engine's, paired per round (below 1: "
        "minifw is faster); max abs diff against the PyTorch original."
    )
    lines.append("")
    for case in res["cases"]:
        lines.append(f"### {case['name']}: imported as {case['imported_as']}")
        lines.append("")
        lines.append("| batch | engine | median | min | samples/s | paired ratio | max abs diff |")
        lines.append("|---:|---|---:|---:|---:|---:|---:|")
        for row in case["rows"]:
            for name, v in row["engines"].items():
                pr = row["paired_ratios_minifw_over_peer"].get(name)
                d = v["max_abs_diff_vs_torch"]
                lines.append(
                    f"| {row['batch']} | {name} | {_fmt_time(v['median_s'])} | "
                    f"{_fmt_time(v['min_s'])} | {v['samples_per_s']:,.0f} | "
                    f"{'' if pr is None else f'{pr:.2f}×'} | {'' if d is None else f'{d:.1e}'} |"
                )
        lines.append("")
    for k, v in res.get("notes", {}).items():
        lines += [f"{k}: {v}.", ""]
    lines.append("Installed size (the distribution and its required dependencies):")
    lines.append("")
    lines.append("| alternative | installed | distributions |")
    lines.append("|---|---:|---|")
    for label, sz in res["installed_size"].items():
        dists = ", ".join(
            f"{k} {v / 2**20:.1f} MiB" if v is not None else f"{k} (not installed)"
            for k, v in sz["distributions"].items()
        )
        lines.append(f"| {label} | {sz['total_bytes'] / 2**20:.1f} MiB | {dists} |")
    lines.append("")
    return lines
