#!/usr/bin/env bash
# GPU check, for a machine with an NVIDIA GPU and CuPy (pip install -e ".[test,bench,cuda12]";
# PyTorch with CUDA is used as a peer when it is installed). Cannot run in CI.
#
#   benchmarks/gpu_check.sh [OUT.json]        (default benchmarks/results/gpu_check.json)
#
# 1. the test suite with MINIFW_BACKEND=cupy (at most 200 s);
# 2. minifw bench --device cuda: minifw on CuPy against PyTorch CUDA and the cuBLAS GEMM
#    floor, S at batches 10000/100000 and W at 8192/65536, timings synchronised (at most 90 s).
# Everything lands in one JSON file: the machine, the test outcome (counts and the tail of
# the log) and the benchmark's full results. Under 5 minutes in all. Exit status: 0 when the
# tests passed and the benchmark ran, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-benchmarks/results/gpu_check.json}"
PY="${PYTHON:-python}"
mkdir -p "$(dirname "$OUT")"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

echo "[gpu_check] tests with MINIFW_BACKEND=cupy" >&2
MINIFW_BACKEND=cupy timeout 200 "$PY" -m pytest -q -p no:cacheprovider \
    --junitxml "$TMP/junit.xml" >"$TMP/pytest.log" 2>&1
RC_TESTS=$?
tail -n 3 "$TMP/pytest.log" >&2

echo "[gpu_check] minifw bench --device cuda" >&2
timeout 90 "$PY" -m minifw.bench --device cuda --no-train --rounds 5 --loop-seconds 0.05 \
    --out "$TMP/bench" >"$TMP/bench.log" 2>&1
RC_BENCH=$?
tail -n 3 "$TMP/bench.log" >&2

"$PY" - "$OUT" "$TMP" "$RC_TESTS" "$RC_BENCH" <<'EOF'
import json, os, sys, xml.etree.ElementTree as ET
from pathlib import Path

out, tmp, rc_tests, rc_bench = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
res = {"tests": {"exit_code": rc_tests, "timed_out": rc_tests == 124}, "bench": {"exit_code": rc_bench}}
junit = tmp / "junit.xml"
if junit.is_file():
    root = ET.parse(junit).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is not None:
        res["tests"].update({k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")})
        res["tests"]["failed"] = [
            f"{c.get('classname')}::{c.get('name')}"
            for c in suite.iter("testcase")
            if c.find("failure") is not None or c.find("error") is not None
        ][:50]
log = (tmp / "pytest.log").read_text(errors="replace").splitlines()
res["tests"]["log_tail"] = log[-40:]
bench = tmp / "bench" / "bench.json"
if bench.is_file():
    res["bench"]["results"] = json.loads(bench.read_text())
else:
    res["bench"]["log_tail"] = (tmp / "bench.log").read_text(errors="replace").splitlines()[-40:]
res["ok"] = rc_tests == 0 and rc_bench == 0
part = out.with_name(out.name + ".tmp")
part.write_text(json.dumps(res, indent=2))
os.replace(part, out)
print(f"[gpu_check] wrote {out} (ok={res['ok']})", file=sys.stderr)
sys.exit(0 if res["ok"] else 1)
EOF
