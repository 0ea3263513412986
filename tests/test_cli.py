"""The ``minifw`` command: help, exit codes, one-line errors, info/eval/predict/bench."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import minifw as mf
from minifw import cli


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m minifw.cli ARGS`` in a fresh interpreter."""
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "minifw.cli", *args],
        capture_output=True,
        text=True,
        env=e,
        timeout=300,
    )


def test_console_script_is_installed() -> None:
    exe = shutil.which("minifw", path=str(Path(sys.executable).parent)) or shutil.which("minifw")
    if exe is None:
        pytest.skip("the minifw console script is not on PATH (package not installed)")
    r = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == f"minifw {mf.__version__}"


# -- help and usage errors (exit 0 / 2) ----------------------------------------------------------


def test_help_everywhere(capsys: pytest.CaptureFixture[str]) -> None:
    r = run("--help")
    assert r.returncode == 0
    for cmd in ("info", "eval", "predict", "bench"):
        assert cmd in r.stdout
    for cmd, word in (("info", "BLAS"), ("eval", "--dataset"), ("predict", "INPUT")):
        assert cli.main([cmd, "--help"]) == 0, cmd
        out = capsys.readouterr().out
        assert out.startswith(f"usage: minifw {cmd}") and word in out
    r = run("eval", "--help")
    assert r.returncode == 0 and "--dataset" in r.stdout and "--split" in r.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "usage"),
        (["frobnicate"], "invalid choice"),
        (["info", "--no-such-flag"], "unrecognized arguments"),
        (["--no-such-flag"], "unrecognized arguments"),
        (["eval", "m.npz"], "--dataset"),
        (["eval", "m.npz", "--dataset", "cifar"], "invalid choice"),
        (["predict", "m.npz", "x.npy", "--batch-size", "0"], "positive integer"),
    ],
)
def test_usage_errors_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(args) == 2
    assert message in capsys.readouterr().err


def test_usage_error_in_a_subprocess() -> None:
    r = run("frobnicate")
    assert r.returncode == 2
    assert "minifw: error: argument COMMAND: invalid choice" in r.stderr


# -- runtime errors (exit 1, one line) ------------------------------------------------------------


def test_runtime_error_is_one_line(tmp_path: Path) -> None:
    r = run("predict", str(tmp_path / "missing.npz"), str(tmp_path / "x.npy"))
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("minifw: error: ")
    assert "missing.npz" in lines[0]
    assert "Traceback" not in r.stderr


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a model")
    r = run("--debug", "predict", str(bad), str(bad))
    assert r.returncode == 1
    assert "Traceback" in r.stderr and "FormatError" in r.stderr
    r = run("predict", str(bad), str(bad), "--debug")  # after the subcommand too
    assert r.returncode == 1 and "Traceback" in r.stderr


def test_multiline_messages_are_joined(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(args: object) -> int:
        raise mf.FormatError("first line\n  second line")

    monkeypatch.setattr(cli, "_cmd_info", boom)
    assert cli.main(["info"]) == 1
    assert capsys.readouterr().err == "minifw: error: first line second line\n"


# -- info -------------------------------------------------------------------------------------


def test_info_lists_every_backend(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["info", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["minifw"] == mf.__version__
    names = [b["name"] for b in report["backends"]]
    assert names == list(mf.backend.NAMES)
    by_name = {b["name"]: b for b in report["backends"]}
    assert by_name["numpy"]["available"] and by_name["numpy"]["version"] == np.__version__
    assert by_name["numpy"]["devices"] == ["cpu"]
    for b in report["backends"]:
        if b["available"]:
            assert b["version"] and b["devices"]
        else:
            assert b["name"] in b["reason"] and "install" in b["reason"]
    assert {b["name"] for b in report["backends"] if b["available"]} == set(mf.backend.available())
    if "blas" in report:
        assert all(lib["threads"] >= 1 for lib in report["blas"])
    else:
        assert "threadpoolctl" in report["error"]

    assert cli.main(["info"]) == 0
    text = capsys.readouterr().out
    assert "numpy" in text and "BLAS" in text and mf.__version__ in text


# -- eval and predict -----------------------------------------------------------------------------


@pytest.fixture
def tiny_model(tmp_path: Path) -> tuple[Path, mf.Sequential]:
    m = mf.Sequential(mf.Dense(784, 10), mf.Softmax())
    path = tmp_path / "tiny.npz"
    m.save(path)
    return path, m


def test_predict_prints_classes_and_saves_outputs(
    tiny_model: tuple[Path, mf.Sequential], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, m = tiny_model
    x = np.random.default_rng(0).random((7, 784)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    expected = m.predict(x)

    assert cli.main(["predict", str(path), str(tmp_path / "x.npy"), "--batch-size", "3"]) == 0
    printed = [int(s) for s in capsys.readouterr().out.split()]
    assert printed == expected.argmax(axis=1).tolist()

    out = tmp_path / "out.npy"
    assert cli.main(["predict", str(path), str(tmp_path / "x.npy"), "-o", str(out)]) == 0
    np.testing.assert_allclose(np.load(out), expected, rtol=1e-6)
    assert (
        cli.main(["predict", str(path), str(tmp_path / "x.npy"), "-o", str(out), "--classes"]) == 0
    )
    got = np.load(out)
    assert got.dtype == np.int64 and got.tolist() == expected.argmax(axis=1).tolist()
    assert "wrote" in capsys.readouterr().out

    np.savez(tmp_path / "in.npz", x=x, other=np.zeros(3))
    assert cli.main(["predict", str(path), str(tmp_path / "in.npz")]) == 0  # picks "x"
    assert [int(s) for s in capsys.readouterr().out.split()] == printed
    assert cli.main(["predict", str(path), str(tmp_path / "in.npz"), "--key", "nope"]) == 1
    assert "no array 'nope'" in capsys.readouterr().err


def test_predict_runtime_errors(
    tiny_model: tuple[Path, mf.Sequential], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = tiny_model
    np.save(tmp_path / "wrong.npy", np.zeros((2, 5), np.float32))
    assert cli.main(["predict", str(path), str(tmp_path / "wrong.npy")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("minifw: error: layer 0 (Dense 784→10)") and err.count("\n") == 1
    (tmp_path / "junk.npy").write_bytes(b"junk")
    assert cli.main(["predict", str(path), str(tmp_path / "junk.npy")]) == 1
    assert "junk.npy" in capsys.readouterr().err
    np.save(tmp_path / "x.npy", np.zeros((1, 784)))
    assert cli.main(["predict", str(path), str(tmp_path / "x.npy"), "--key", "x"]) == 2
    assert "--key applies to .npz" in capsys.readouterr().err


def test_predict_on_another_backend(
    tiny_model: tuple[Path, mf.Sequential], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, m = tiny_model
    x = np.random.default_rng(1).random((4, 784)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert (
        cli.main(["predict", str(path), str(tmp_path / "x.npy"), "--backend", "array_api_strict"])
        == 0
    )
    assert [int(s) for s in capsys.readouterr().out.split()] == m.predict(x).argmax(1).tolist()
    assert cli.main(["predict", str(path), str(tmp_path / "x.npy"), "--backend", "nope"]) == 1
    assert "unknown backend 'nope'" in capsys.readouterr().err


def test_eval_offline_without_data_is_a_clear_error(
    tiny_model: tuple[Path, mf.Sequential],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("MINIFW_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path, _ = tiny_model
    assert cli.main(["eval", str(path), "--dataset", "mnist", "--no-download"]) == 1
    err = capsys.readouterr().err
    assert (
        err.startswith("minifw: error: MNIST file t10k-images-idx3-ubyte") and err.count("\n") == 1
    )


def test_eval_reference_network(data_dir: Path, tmp_path: Path) -> None:
    weights = data_dir / "weights" / "sample_weight.npz"
    env = {"MINIFW_DATA_DIR": str(data_dir), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    r = run("eval", str(weights), "--dataset", "mnist", "--from-weights", "--no-download", env=env)
    assert r.returncode == 0, r.stderr
    assert "accuracy 0.9352" in r.stdout.splitlines()
    loss = float(next(s for s in r.stdout.splitlines() if s.startswith("loss ")).split()[1])
    assert 0.0 < loss < 1.0
    # The same network saved as a minifw model; without --from-weights a plain file fails.
    mf.from_weights(weights).save(tmp_path / "ref.npz")
    r = run("eval", str(tmp_path / "ref.npz"), "--dataset", "mnist", env=env)
    assert r.returncode == 0 and "accuracy 0.9352" in r.stdout
    r = run("eval", str(weights), "--dataset", "mnist", env=env)
    assert r.returncode == 1 and "--from-weights" in r.stderr


def test_eval_fashion_mnist(
    data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A model without a final Softmax: the loss uses the softmax of its outputs."""
    monkeypatch.setenv("MINIFW_DATA_DIR", str(data_dir))
    m = mf.Sequential(mf.Dense(784, 10, init="zeros"))  # uniform scores: loss = ln 10
    m.save(tmp_path / "z.npz")
    assert cli.main(["eval", str(tmp_path / "z.npz"), "--dataset", "fashion-mnist"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "dataset fashion-mnist (test), 10000 samples"
    assert out[1] == f"loss {np.log(10):.4f}"
    assert out[2] == "accuracy 0.1000"  # argmax of equal scores is class 0: 1000 of 10000


# -- bench ------------------------------------------------------------------------------------


def test_bench_forwards_its_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    fake = types.ModuleType("minifw.bench")

    def main(argv: list[str]) -> int:
        seen.append(argv)
        return 3

    fake.main = main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "minifw.bench", fake)
    assert cli.main(["bench", "--quick", "--help", "x"]) == 3
    assert cli.main(["--debug", "bench"]) == 3
    assert seen == [["--quick", "--help", "x"], []]


def test_bench_unavailable_is_a_runtime_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "minifw.bench", None)  # import fails
    assert cli.main(["bench"]) == 1
    assert capsys.readouterr().err.startswith("minifw: error: the bench command is not available")
