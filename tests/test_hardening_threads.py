"""Hardening against threads and fork.

* ``model(x)`` / ``predict`` from another thread during ``fit`` runs in eval mode and
  leaves training bit-identical to an undisturbed fit; two concurrent ``fit`` calls on one
  model raise a RuntimeError naming the model;
* concurrent chunked ``predict`` calls (and a predict from a worker thread) give the same
  bits as serial calls from the main thread (no timing is asserted:
  ``benchmarks/concurrent_predict.py`` measures the speed);
* ``os.fork()`` while another thread is inside a large ``predict`` neither hangs nor gives
  the child wrong results (in a subprocess, with a timeout);
* ``minifw bench``'s serving case (client threads x batch sizes) in smoke mode.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import minifw as mf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _wide() -> mf.Sequential:
    """784-1024-1024-10: batches above 256 rows are cut into chunks."""
    mf.seed(0)
    return mf.Sequential(
        mf.Dense(784, 1024), mf.ReLU(), mf.Dense(1024, 1024), mf.ReLU(),
        mf.Dense(1024, 10), mf.Softmax(),
    )  # fmt: skip


@pytest.fixture
def chunked(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Chunks on several threads even on a one-core machine."""
    monkeypatch.setattr(mf.backend.get("numpy"), "max_threads", 4)
    yield


def _in_threads(fns: list[Callable[[], Any]]) -> list[Any]:
    """Run each function in its own thread, all released at once; their results (an
    exception is re-raised)."""
    out: list[Any] = [None] * len(fns)
    errors: list[BaseException] = []
    start = threading.Barrier(len(fns))

    def run(i: int) -> None:
        start.wait()
        try:
            out[i] = fns[i]()
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(e)

    ths = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for th in ths:
        th.start()
    for th in ths:
        th.join(120)
    if errors:
        raise errors[0]
    return out


# -- 9. fit while other threads call the model ------------------------------------------------


def _small(seed: int = 3) -> mf.Sequential:
    mf.seed(seed)
    return mf.Sequential(mf.Dense(64, 300), mf.Tanh(), mf.Dense(300, 10), mf.Softmax())


def test_fit_with_a_thread_calling_the_model_is_bit_identical_to_an_undisturbed_fit() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((512, 64), dtype="f4")
    y = np.arange(512) % 10
    kw: dict[str, Any] = dict(epochs=3, batch_size=32, seed=11, progress=False)
    quiet = _small()
    quiet.fit(x, y, **kw)

    m = _small()
    stop = threading.Event()
    seen: dict[str, Any] = {"calls": 0, "training": set(), "errors": []}
    big = rng.random((700, 64), dtype="f4")  # more rows than a fit batch: other buffers

    def hammer() -> None:
        try:
            while not stop.is_set():
                for out in (m(x[:5]), m.predict(x[:32]), m.predict(big), m(big[:1])):
                    assert np.isfinite(out).all()
                    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
                seen["training"].add(m.training)
                seen["training"].add(m[0].training)
                seen["calls"] += 1
        except BaseException as e:  # noqa: BLE001 - checked below
            seen["errors"].append(e)

    th = threading.Thread(target=hammer)
    th.start()
    try:
        m.fit(x, y, **kw)
    finally:
        stop.set()
        th.join(60)
    assert not seen["errors"], seen["errors"]
    assert seen["calls"] > 0
    assert seen["training"] == {False}  # eval mode in the other thread, all along
    for (k, a), b in zip(quiet.state_dict().items(), m.state_dict().values(), strict=True):
        assert np.array_equal(a, b), k
    # and after fit, eval-mode results are those of the undisturbed model
    assert np.array_equal(m.predict(big), quiet.predict(big))


def test_two_concurrent_fits_on_one_model_raise_naming_the_model() -> None:
    rng = np.random.default_rng(1)
    x = rng.random((64, 64), dtype="f4")
    y = np.arange(64) % 10
    m = _small()
    started = threading.Event()
    got: list[BaseException] = []
    first = threading.Thread(
        target=lambda: (started.set(), m.fit(x, y, epochs=400, batch_size=8, progress=False))
    )
    first.start()
    started.wait()
    try:
        while first.is_alive():
            try:
                m.fit(x, y, epochs=1, progress=False)
            except RuntimeError as e:
                got.append(e)
                break
    finally:
        first.join(120)
    assert got, "the first fit ended before a second one overlapped it"
    msg = str(got[0])
    assert f"Sequential at 0x{id(m):x} is already being trained" in msg


# -- 10. concurrent predicts ------------------------------------------------------------------


def test_concurrent_chunked_predicts_equal_serial_ones_bit_for_bit(chunked: None) -> None:
    m = _wide()
    rng = np.random.default_rng(2)
    xs = [rng.random((3000, 784), dtype="f4") for _ in range(4)]
    xs += [rng.random((257, 784), dtype="f4"), rng.random((1, 784), dtype="f4")]
    serial = [m.predict(x) for x in xs]
    for _ in range(2):
        got = _in_threads([lambda x=x: m.predict(x) for x in xs])
        for a, b in zip(serial, got, strict=True):
            assert np.array_equal(a, b)


def test_concurrent_small_predicts_equal_serial_ones_bit_for_bit(chunked: None) -> None:
    """Small batches called from several threads at once run BLAS on one thread each (so
    concurrent clients share the cores): their results equal the serial ones bit for bit,
    also when some of them overlap a large chunked predict."""
    m = _wide()
    rng = np.random.default_rng(4)
    xs = [rng.random((n, 784), dtype="f4") for n in (1, 1, 3, 16, 16, 1, 2, 9)]
    xs.append(rng.random((3000, 784), dtype="f4"))
    serial = [m.predict(x) for x in xs]
    for _ in range(3):
        got = _in_threads([lambda x=x: [m(x) for _ in range(20)][-1] for x in xs])
        for a, b in zip(serial, got, strict=True):
            assert np.array_equal(a, b)


def test_predict_from_a_worker_thread_equals_the_main_threads(chunked: None) -> None:
    """The BLAS limit holds whichever thread sets it (threadpoolctl's obeyed only the first
    thread that used it: chunks from other threads ran multi-threaded, with other bits)."""
    m = _wide()
    x = np.random.default_rng(3).random((2000, 784), dtype="f4")
    main = m.predict(x)
    (other,) = _in_threads([lambda: m.predict(x)])
    assert np.array_equal(main, other)
    assert np.array_equal(m.predict(x), main)


# -- 11. fork during a predict ------------------------------------------------------------------

_FORK_SCRIPT = r"""
import os, sys, threading, time
import numpy as np
import minifw as mf

mf.backend.get("numpy").max_threads = 2
mf.seed(0)
m = mf.Sequential(mf.Dense(784, 1024), mf.ReLU(), mf.Dense(1024, 1024), mf.ReLU(),
                  mf.Dense(1024, 10), mf.Softmax())
x = np.random.default_rng(1).random((3000, 784), dtype="f4")
want = m.predict(x)
stop = threading.Event()
busy = threading.Event()

def hammer():
    while not stop.is_set():
        busy.set()
        m.predict(x)

t = threading.Thread(target=hammer)
t.start()
busy.wait()
bad = 0
for k in range(4):
    time.sleep(0.003 * k)
    pid = os.fork()
    if pid == 0:
        y = m.predict(x)
        os._exit(0 if np.array_equal(y, want) else 3)
    deadline = time.monotonic() + 30
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            print("child", k, "hung", flush=True)
            status = -1
            break
        time.sleep(0.01)
    bad += status != 0
stop.set()
t.join()
print("bad", bad)
sys.exit(1 if bad else 0)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_while_another_thread_predicts_does_not_hang() -> None:
    env = {**os.environ, "PYTHONPATH": ROOT}
    r = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", _FORK_SCRIPT],
        env=env, capture_output=True, text=True, timeout=100,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "bad 0" in r.stdout


# -- the bench's serving case -----------------------------------------------------------------


def test_bench_serving_case_smoke(tmp_path: Path) -> None:
    from minifw import bench

    out = tmp_path / "bench"
    argv = ["--smoke", "--networks", "S", "--batch-sizes", "S=1", "--no-train"]
    assert bench.main([*argv, "--out", str(out)]) == 0
    data = json.loads((out / "bench.json").read_text())
    rows = data["serving"]
    assert [(r["clients"], r["batch"]) for r in rows] == [
        (c, b) for b in (1, 256) for c in (1, 2, 4)
    ]
    for r in rows:
        assert r["network"] == "W" and r["bit_identical"] is True
        assert r["requests_per_s"] > 0 and r["samples_per_s"] == r["requests_per_s"] * r["batch"]
    md = (out / "bench.md").read_text()
    assert "## Serving: client threads x model.predict, W" in md
    assert "| 256 | 4 |" in md and "requests/s" in md
