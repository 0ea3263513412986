"""``minifw bench`` runs end to end (``--smoke``: tiny batches, one short loop) and writes its
JSON, markdown and PNG. Nothing here asserts a timing."""

from __future__ import annotations

import calendar
import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import pytest

from minifw import bench, cli


def test_bench_smoke_writes_json_markdown_and_png(tmp_path: Path) -> None:
    out = tmp_path / "res"
    rc = bench.main(["--smoke", "--out", str(out), "--backends", "array_api_strict"])
    assert rc == 0
    res = json.loads((out / "bench.json").read_text())
    assert [(r["network"], r["batch"]) for r in res["inference"]] == [
        ("S", 1),
        ("S", 64),
        ("W", 1),
        ("W", 32),
    ]
    for row in res["inference"]:
        eng = row["engines"]
        assert bench.MINIFW_REF in eng and "minifw array_api_strict predict(x)" in eng
        assert "numpy hand-written (book)" in eng and "GEMM floor (3 matmuls, numpy)" in eng
        for name, v in eng.items():
            assert v["min_s"] <= v["median_s"] <= v["max_s"] and v["min_s"] > 0
            if v["kind"] != "floor":  # every engine computes the same network
                assert v["max_abs_diff_vs_float64"] < 1e-5, name
        assert set(row["ratios_minifw_over_peer"]) == {
            n for n, v in eng.items() if v["kind"] != "minifw"
        }
        assert set(row["paired_ratios_minifw_over_peer"]) == set(eng) - {bench.MINIFW_REF}
        assert all(r > 0 for r in row["paired_ratios_minifw_over_peer"].values())
    peers = {"torch eager", "jax.jit", "onnxruntime CPU"}
    for p in peers:  # either measured or skipped with a note saying so
        assert p in res["inference"][0]["engines"] or "skipped" in res["notes"].get(p, "")
    assert res["machine"]["cores_usable"] >= 1 and res["machine"]["numpy"] == np.__version__
    started = time.strptime(res["machine"]["started_utc"], "%Y-%m-%d %H:%M:%S")
    assert abs(calendar.timegm(started) - time.time()) < 3600  # when the run began, in UTC
    assert res["training"]["skipped"].startswith("--smoke")
    imp = res["imported"]  # the PyTorch-trained model served by minifw
    if "skipped" in imp:
        assert "torch" in imp["skipped"] or "onnxruntime" in imp["skipped"], imp
    else:
        mlp = imp["cases"][0]
        assert mlp["name"] == "MLP" and [r["batch"] for r in mlp["rows"]] == [1, 64]
        assert mlp["imported_as"].startswith("Dense -> ReLU")
        for r in [r for c in imp["cases"] for r in c["rows"]]:
            assert set(r["engines"]) == {
                "minifw numpy model(x) (imported .onnx)",
                "onnxruntime CPU (the exported .onnx)",
                "torch eager (the PyTorch original)",
            }
            for name, v in r["engines"].items():
                assert v["max_abs_diff_vs_torch"] < 1e-5 and v["median_s"] > 0, name
            assert all(x > 0 for x in r["paired_ratios_minifw_over_peer"].values())
        sizes = imp["installed_size"]
        assert sizes["NumPy alone"]["total_bytes"] > 1 << 20
        assert sizes["minifw (with NumPy)"]["total_bytes"] > sizes["NumPy alone"]["total_bytes"]
        assert sizes["PyTorch CPU"]["total_bytes"] > sizes["minifw (with NumPy)"]["total_bytes"]
        assert "## PyTorch-trained model served by minifw" in (out / "bench.md").read_text()
    md = (out / "bench.md").read_text()
    assert "## S (784-50-100-10 sigmoid/softmax), batch 64" in md and "| engine |" in md
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob("*.tmp*"))


def test_bench_smoke_minifw_on_torch_and_jax_beside_their_own_engines(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="torch is not installed: no torch eager peer")
    pytest.importorskip("jax", reason="jax is not installed: no jax.jit peer")
    out = tmp_path / "res"
    rc = bench.main(["--smoke", "--out", str(out), "--backends", "torch,jax"])
    assert rc == 0
    res = json.loads((out / "bench.json").read_text())
    pairs = {
        "minifw torch model(x) / torch eager",
        "minifw jax model(x) / jax.jit",
    }
    for row in res["inference"]:  # S/1, S/64, W/1, W/32
        eng = row["engines"]
        for name in ("torch eager", "jax.jit", "minifw torch model(x)", "minifw jax model(x)"):
            assert name in eng, (name, res["notes"])
            assert eng[name]["max_abs_diff_vs_float64"] < 1e-5, name
        assert eng["torch eager"]["kind"] == eng["jax.jit"]["kind"] == "peer"
        assert set(row["paired_ratios_own_speed"]) == pairs
        assert all(r > 0 for r in row["paired_ratios_own_speed"].values())
        assert {"torch eager", "jax.jit"} <= set(row["paired_ratios_minifw_over_peer"])
    assert res["machine"]["torch"] and res["machine"]["jax"]
    md = (out / "bench.md").read_text()
    assert "## Each engine at its own speed" in md
    assert "| case | minifw torch model(x) ÷ torch eager | minifw jax model(x) ÷ jax.jit |" in md
    assert "| W batch 32 |" in md


def test_bench_smoke_without_torch_and_jax_has_no_own_speed_table(tmp_path: Path) -> None:
    rc = bench.main(["--smoke", "--networks", "S", "--out", str(tmp_path), "--backends", ""])
    assert rc == 0
    res = json.loads((tmp_path / "bench.json").read_text())
    assert all(row["paired_ratios_own_speed"] == {} for row in res["inference"])
    assert "own speed" not in (tmp_path / "bench.md").read_text()


def test_bench_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(
        [
            "bench",
            "--smoke",
            "--networks",
            "S",
            "--backends",
            "",
            "--out",
            str(tmp_path),
            "--json-stdout",
        ]
    )
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert [r["batch"] for r in res["inference"]] == [1, 64]


def test_bench_rejects_unknown_networks(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        bench.main(["--networks", "S,X", "--smoke"])
    assert e.value.code == 2
    assert "unknown ['X']" in capsys.readouterr().err


def test_onnx_graph_is_the_same_network() -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    net = bench.Net("S")
    sess = ort.InferenceSession(bench.onnx_model_bytes(net), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((5, 784), dtype=np.float32)
    got = sess.run(None, {"x": x})[0]
    np.testing.assert_allclose(got, bench.hand_written(net)(x), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(net.minifw_model()(x), got, rtol=1e-5, atol=1e-7)


def test_paired_ratio_is_the_median_of_the_per_round_ratios() -> None:
    # the machine is twice as slow in rounds 2 and 3: within each round the ratio is
    # still 0.5 (0.55 in the last), so the median over rounds is 0.5
    ref = [1.0, 2.0, 2.0, 1.0, 1.1]
    other = [2.0, 4.0, 4.0, 2.0, 2.0]
    assert bench.paired_ratio(ref, other) == 0.5
    assert bench.paired_ratio([3.0], [1.0]) == 3.0
    with pytest.raises(ValueError):
        bench.paired_ratio([1.0, 2.0], [1.0])  # one time per round on both sides


def test_bench_smoke_cnn_cases(tmp_path: Path) -> None:
    """C1 (SimpleConvNet) and C2 (DeepConvNet): tiny batches, every engine computes the same
    network, and the CNN training epoch runs (300 random images) against PyTorch."""
    rc = bench.main(["--smoke", "--networks", "C1,c2", "--out", str(tmp_path), "--backends", ""])
    assert rc == 0
    res = json.loads((tmp_path / "bench.json").read_text())
    assert [(r["network"], r["batch"]) for r in res["inference"]] == [
        ("C1", 1),
        ("C1", 8),
        ("C2", 1),
        ("C2", 8),
    ]
    for row in res["inference"]:
        eng = row["engines"]
        assert {bench.MINIFW_REF, "minifw numpy predict(x)"} <= set(eng)
        for name, v in eng.items():
            assert v["min_s"] <= v["median_s"] <= v["max_s"] and v["min_s"] > 0
            assert v["max_abs_diff_vs_float64"] < 1e-5, (row["network"], name)
        for p in ("torch eager", "onnxruntime CPU"):  # measured or skipped with a note
            assert p in eng or "skipped" in res["notes"].get(p, ""), p
        assert row["gflop_per_call"] > 0
    assert res["training"]["skipped"] == "no MLP network (S, W) selected"
    tr = res["training_cnn"]
    assert tr["samples"] == 300 and tr["minifw"]["median_s"] > 0
    assert np.isfinite(tr["minifw"]["loss"][0])
    if isinstance(tr.get("torch"), dict):
        assert tr["ratio_minifw_over_torch"] > 0 and np.isfinite(tr["torch"]["loss"][0])
    md = (tmp_path / "bench.md").read_text()
    assert "## C2 (DeepConvNet: " in md and "batch 8" in md
    assert "## Training: one epoch, CNN" in md


def test_bench_cnn_networks_agree_with_the_reference() -> None:
    """The minifw model, torch.nn modules and the ONNX graph of C1 and C2 compute the plain
    NumPy float64 forward; the memory bound counts the largest activations."""
    from minifw.bench.convnets import ConvNet

    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    for name in ("C1", "C2"):
        net = ConvNet(name)
        ref = net.reference(x)
        assert ref.shape == (3, 10)
        np.testing.assert_allclose(net.minifw_model()(x), ref, atol=1e-6)
        if importlib.util.find_spec("torch") is not None:
            import torch

            with torch.inference_mode():
                got = net.torch_sequential()(torch.from_numpy(x)).numpy()
            np.testing.assert_allclose(got, ref, atol=1e-6)
        if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):
            import onnxruntime as ort

            sess = ort.InferenceSession(net.onnx_model_bytes(), providers=["CPUExecutionProvider"])
            np.testing.assert_allclose(sess.run(None, {"x": x})[0], ref, atol=1e-6)
    deep = ConvNet("C2")
    assert max(deep.act_bytes(10)) == 10 * 16 * 28 * 28 * 4  # conv1's and conv2's outputs
    assert deep.flops(1) > ConvNet("C1").flops(1) > 0


def test_bench_rejects_cnn_cases_on_cuda(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        bench.main(["--networks", "C1", "--device", "cuda", "--smoke"])
    assert e.value.code == 2
    assert "CPU only" in capsys.readouterr().err
