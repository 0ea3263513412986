"""The report: a markdown summary of the results and a PNG chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from minifw._atomic import atomic_write

from .nets import MINIFW_REF
from .serving import serving_markdown


def _calls(n: int) -> str:
    return f"{n} call" if n == 1 else f"{n} calls"


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
    lines += _own_speed_table(result["inference"])
    lines += serving_markdown(result.get("serving", []))
    if "imported" in result:
        from .imported import markdown as imported_markdown

        lines += imported_markdown(result["imported"], _fmt_time)
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
    lines += _cnn_training(result.get("training_cnn"))
    if result["notes"]:
        lines.append("## Notes")
        lines.append("")
        for k, v in result["notes"].items():
            lines.append(f"* {k}: {v}")
        lines.append("")
    return "\n".join(lines)


def _cnn_training(tr: dict[str, Any] | None) -> list[str]:
    if tr is None:
        return []
    lines = ["## Training: one epoch, CNN (conv-BN-ReLU-pool x2, Dense), batch 100, Adam", ""]
    if "skipped" in tr:
        return lines + [f"Skipped: {tr['skipped']}.", ""]
    mf_ = tr["minifw"]
    line = (
        f"Data: {tr['data']}. minifw {mf_['median_s']:.2f} s/epoch (median of "
        f"{len(mf_['seconds'])})"
    )
    if isinstance(tr.get("torch"), dict):
        line += (
            f"; PyTorch {tr['torch']['median_s']:.2f} s/epoch; ratio minifw ÷ PyTorch "
            f"{tr['ratio_minifw_over_torch']:.2f}× (paired {tr['paired_ratio_minifw_over_torch']:.2f}×)."
        )
    else:
        line += f"; PyTorch: {tr.get('torch')}."
    return lines + [line, ""]


def _own_speed_table(rows: list[dict[str, Any]]) -> list[str]:
    """Per case, minifw on torch / jax over that engine's own fastest form (paired ratios)."""
    pairs: list[str] = []
    for row in rows:
        for k in row.get("paired_ratios_own_speed", {}):
            if k not in pairs:
                pairs.append(k)
    if not pairs:
        return []
    lines = [
        "## Each engine at its own speed",
        "",
        "minifw's `model(x)` on the torch and jax backends (input already a torch tensor / "
        "jax array) over the same network in that engine's own fastest form: `torch.nn` "
        "modules under `torch.inference_mode()` (torch eager), a `jax.jit`-compiled forward "
        "(jax.jit). Paired ratios of the times (below 1: minifw is faster).",
        "",
        "| case | " + " | ".join(p.replace(" / ", " ÷ ") for p in pairs) + " |",
        "|---|" + "---:|" * len(pairs),
    ]
    for row in rows:
        own = row.get("paired_ratios_own_speed", {})
        cells = [f"{own[p]:.2f}×" if p in own else "—" for p in pairs]
        lines.append(f"| {row['network']} batch {row['batch']} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


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
    try:
        with atomic_write(path) as f:
            fig.savefig(f, format="png", dpi=110)
    finally:
        plt.close(fig)
    return None
