"""NumPy's training step split over the batch (``Backend.train_section(split=True)``): with
BLAS on one thread, each heavy operation runs on ranges of samples on several threads. The
results equal the whole operations' (to rounding: partial sums are added in a fixed order),
a step gives the same bits run after run and next to concurrent predicts, and ``fit``
splits only models with layers whose training work is mostly outside BLAS."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import threading
from typing import Any

import numpy as np
import pytest

import minifw as mf
from minifw import _workers
from minifw.backend import _split


@pytest.fixture
def split3(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The NumPy backend with 3 threads, every operation big enough to split, and a record
    of the splits: ``(samples, parts)``."""
    b = mf.backend.get("numpy")
    monkeypatch.setattr(b, "max_threads", 3)
    monkeypatch.setattr(_split, "MIN_SPLIT_ELEMS", 1)
    seen: list[tuple[int, int]] = []
    orig = _workers.split

    def spy(n: int, parts: int, fn: Any) -> None:
        seen.append((n, parts))
        orig(n, parts, fn)

    monkeypatch.setattr(_workers, "split", spy)
    return b, seen


def _ops(b: Any, dtype: Any, rng: Any) -> dict[str, Any]:
    """Every operation that splits, on 7 samples (3 parts of 2, 2 and 3)."""
    f = lambda *shape: rng.standard_normal(shape).astype(dtype)  # noqa: E731
    out: dict[str, Any] = {}
    x = f(7, 6, 9, 8)
    for name, w, stride, pad in (
        ("nhwc", f(5, 6, 3, 3), 1, 1),  # channels-last gathers
        ("nchw", f(4, 6, 1, 1), 1, 0),  # channels-first gathers (C*kw < 8)
        ("strided", f(4, 6, 3, 2), (2, 1), (1, 0)),  # dx by col2im
    ):
        y = b.conv2d(x, w, f(w.shape[0]), stride, pad, "relu")
        g = f(*y.shape)
        out[f"conv {name}"] = y
        for k, v in zip(("dx", "dw", "db"), b.conv2d_backward(g, x, w, stride, pad), strict=True):
            out[f"conv {name} {k}"] = v
    y, am = b.maxpool2d(x, 2, 2, 0)
    out["maxpool"], out["maxpool argmax"] = y, am
    out["maxpool dx"] = b.maxpool2d_backward(f(*y.shape), am, x.shape, 2, 2, 0)
    y3, am3 = b.maxpool2d(x, 3, 2, 1)  # overlapping windows, padding
    out["maxpool3 dx"] = b.maxpool2d_backward(f(*y3.shape), am3, x.shape, 3, 2, 1)
    out["relu"] = b.relu(x)
    out["relu inplace"] = b.relu(x.copy(), True)
    out["relu dx"] = b.relu_backward(out["relu"], f(*x.shape))
    rm, rv = np.zeros(6, dtype), np.ones(6, dtype)
    y, xhat, inv_std, rm, rv = b.batchnorm_train(x, f(6), f(6), rm, rv, 0.1, 1e-5)
    out.update({"bn y": y, "bn xhat": xhat, "bn inv_std": inv_std, "bn rm": rm, "bn rv": rv})
    for k, v in zip(
        ("dx", "dgamma", "dbeta"),
        b.batchnorm_backward(f(*x.shape), xhat, inv_std, f(6), True),
        strict=True,
    ):
        out[f"bn {k}"] = v
    xd, wd = f(7, 40), f(40, 12)
    out["linear"] = b.linear(xd, wd, f(12), None, "relu")
    grads: dict[str, Any] = {}
    out["linear dx"] = b.linear_backward(xd, wd, f(7, 12), grads, True, True)
    out["linear dw"], out["linear db"] = grads["weight"], grads["bias"]
    return out


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_split_operations_equal_the_whole_ones(split3: Any, dtype: Any) -> None:
    b, seen = split3
    whole = _ops(b, dtype, np.random.default_rng(0))
    assert not seen  # outside a training section nothing splits
    with b.train_section(split=True):
        parts = _ops(b, dtype, np.random.default_rng(0))
    assert seen and all(s == (7, 3) for s in seen), seen
    assert len(seen) >= 17
    tol = 1e-12 if dtype == np.float64 else 2e-5
    for k, ref in whole.items():
        got = parts[k]
        assert got.dtype == ref.dtype, k
        assert got.shape == ref.shape, k
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol, err_msg=k)


def test_without_split_or_threads_nothing_splits(split3: Any) -> None:
    b, seen = split3
    with b.train_section(split=False):
        _ops(b, np.float32, np.random.default_rng(1))
    b.max_threads = 1
    with b.train_section(split=True):
        _ops(b, np.float32, np.random.default_rng(1))
    assert not seen


def _cnn(seed: int = 0) -> mf.Sequential:
    mf.seed(seed)
    return mf.Sequential(
        # no bias before BatchNorm: its gradient is rounding noise, which Adam amplifies
        mf.Conv2D(1, 6, 3, padding=1, bias=False, dtype="float64"),
        mf.BatchNorm(6, dtype="float64"),
        mf.ReLU(),
        mf.MaxPool2D(2),
        mf.Conv2D(6, 8, 3, dtype="float64"),
        mf.ReLU(),
        mf.Flatten(),
        mf.Dense(8 * 4 * 4, 5, dtype="float64"),
        mf.Softmax(),
    )


def _fit(model: mf.Sequential, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    model.fit(x, y, optimizer=mf.optim.Adam(lr=0.01), epochs=2, batch_size=20, seed=3,
              progress=False)  # fmt: skip
    return {k: np.array(v) for k, v in model.state_dict().items()}


def test_fit_splits_conv_models_reproducibly(split3: Any) -> None:
    b, seen = split3
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((60, 1, 12, 12)), rng.integers(0, 5, 60)
    first = _fit(_cnn(), x, y)
    assert seen  # the step was split
    again = _fit(_cnn(), x, y)
    for k in first:
        np.testing.assert_array_equal(again[k], first[k], err_msg=k)
    b.max_threads = 1  # whole operations, BLAS as the user set it
    seen.clear()
    whole = _fit(_cnn(), x, y)
    assert not seen
    for k in first:
        np.testing.assert_allclose(whole[k], first[k], rtol=1e-9, atol=1e-11, err_msg=k)


def test_fit_does_not_split_dense_models(split3: Any) -> None:
    _, seen = split3
    mf.seed(0)
    model = mf.Sequential(mf.Dense(10, 16), mf.ReLU(), mf.Dense(16, 3), mf.Softmax())
    rng = np.random.default_rng(1)
    model.fit(rng.standard_normal((64, 10)), rng.integers(0, 3, 64), epochs=1, batch_size=32,
              progress=False)  # fmt: skip
    assert not seen


def test_split_fit_gives_its_bits_next_to_concurrent_predicts(split3: Any) -> None:
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((60, 1, 12, 12)), rng.integers(0, 5, 60)
    alone = _fit(_cnn(), x, y)
    other = _cnn(1)
    xs = rng.standard_normal((500, 1, 12, 12))
    stop = threading.Event()
    errors: list[BaseException] = []

    def predicts() -> None:
        try:
            while not stop.is_set():
                other.predict(xs)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    t = threading.Thread(target=predicts)
    t.start()
    try:
        busy = _fit(_cnn(), x, y)
    finally:
        stop.set()
        t.join()
    assert not errors
    for k in alone:
        np.testing.assert_array_equal(busy[k], alone[k], err_msg=k)


@pytest.mark.parametrize("pool", [(2, None, 0), (3, 2, 1)])
def test_relu_before_max_pool_trains_to_the_same_bits_swapped(
    monkeypatch: pytest.MonkeyPatch, pool: tuple[Any, Any, Any]
) -> None:
    """fit runs a ReLU that precedes a MaxPool2D after it (on the pooled array); values and
    gradients are exactly those of the written order, ties included: inputs on a coarse
    grid give equal positive maxima and all-non-positive windows."""
    from minifw.layers.activations import ReLU

    def build() -> mf.Sequential:
        mf.seed(5)
        return mf.Sequential(
            mf.Conv2D(2, 4, 3, padding=1, dtype="float64"),
            mf.ReLU(),
            mf.MaxPool2D(*pool),
            mf.Flatten(),
            mf.Dense(4 * 5 * 5, 3, dtype="float64"),
            mf.Softmax(),
        )

    from minifw.training import _train_order

    order = [type(m).__name__ for m in _train_order(list(build()))]
    assert order[:3] == ["Conv2D", "MaxPool2D", "ReLU"]  # the swap happens
    rng = np.random.default_rng(0)
    x = np.round(rng.standard_normal((40, 2, 10, 10)) * 2) / 2  # many exact ties
    y = rng.integers(0, 3, 40)
    swapped = _fit(build(), x, y)
    monkeypatch.setattr(ReLU, "_commutes_with_max_pool", False)
    assert [type(m).__name__ for m in _train_order(list(build()))][:3] == [
        "Conv2D", "ReLU", "MaxPool2D"
    ]  # fmt: skip
    written = _fit(build(), x, y)
    for k in written:
        np.testing.assert_array_equal(swapped[k], written[k], err_msg=k)


def test_split_raises_a_helpers_error_and_its_helpers_serve_again() -> None:
    """A part that fails on a helper thread fails the call (after every part finished),
    the caller's own error wins, and the helpers run the next split normally."""
    done: list[int] = []

    def fails_on(bad: int) -> Any:
        def fn(a: int, e: int) -> None:
            if a == bad:
                raise ValueError(f"part at {a}")
            done.append(a)

        return fn

    with pytest.raises(ValueError, match="part at 4"):
        _workers.split(8, 2, fails_on(4))  # the helper's part
    assert done == [0]
    with pytest.raises(ValueError, match="part at 0"):
        _workers.split(8, 2, fails_on(0))  # the caller's part; the helper's still ran
    assert sorted(done) == [0, 4]
    out = np.zeros(9)
    _workers.split(9, 3, lambda a, e: out.__setitem__(slice(a, e), np.arange(a, e)))
    assert np.array_equal(out, np.arange(9))


def test_concurrent_splits_each_cover_their_ranges() -> None:
    """Several threads splitting at once each get all of their ranges run, once."""
    results: dict[int, list[tuple[int, int]]] = {t: [] for t in range(4)}
    lock = threading.Lock()

    def caller(t: int) -> None:
        for _ in range(50):
            got: list[tuple[int, int]] = []

            def fn(a: int, e: int, got: list[tuple[int, int]] = got) -> None:
                with lock:
                    got.append((a, e))

            _workers.split(10 + t, 3, fn)
            with lock:
                results[t].append(tuple(sorted(got)))  # type: ignore[arg-type]

    threads = [threading.Thread(target=caller, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for t, runs in results.items():
        n = 10 + t
        want = tuple((n * i // 3, n * (i + 1) // 3) for i in range(3))
        assert runs == [want] * 50


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc's malloc thresholds: Linux with glibc only",
)
def test_fit_steps_do_not_page_fault_in_a_fresh_process() -> None:
    """A fresh process (glibc's thresholds at their start values) training a CNN: after
    the first epoch a step maps no new memory (it did about 900 pages a step)."""
    code = """
import resource, numpy as np, minifw as mf
from minifw.bench.convnets import train_model
rng = np.random.default_rng(0)
x = rng.random((1000, 1, 28, 28), dtype=np.float32); y = rng.integers(0, 10, 1000)
model = train_model(0); opt = mf.optim.Adam()
model.fit(x, y, optimizer=opt, epochs=1, batch_size=100, seed=0, progress=False)
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
model.fit(x, y, optimizer=opt, epochs=2, batch_size=100, seed=1, progress=False)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / 20)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(  # (a MALLOC_TRIM_THRESHOLD_ fixes the threshold: 6,800 faults a step)
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True,
        env=env,
    )  # fmt: skip
    per_step = float(out.stdout.strip().splitlines()[-1])
    assert per_step < 100, f"{per_step} page faults per training step; {out.stderr[-2000:]}"


UPDATES: dict[str, tuple[str, Any]] = {
    "sgd nesterov": ("sgd_update", lambda i: (0.1, 0.9, True, 0.01)),
    "adam": ("adam_update", lambda i: (1e-2, (0.9, 0.999), 0.01, False, 1e-2, 1e-8)),
    "adamw": ("adam_update", lambda i: (1e-2, (0.9, 0.999), 0.01, True, 1e-2, 1e-8)),
    "adagrad": ("adagrad_update", lambda i: (0.01, 0.01, 1e-10, 0.1, i == 0)),
    "rmsprop centered": ("rmsprop_update", lambda i: (0.01, 0.99, 1e-8, 0.01, 0.9, True)),
}


@pytest.mark.parametrize("name", list(UPDATES), ids=list(UPDATES))
def test_split_optimizer_updates_give_the_whole_updates_bits(split3: Any, name: str) -> None:
    """In a split step the optimizers' elementwise update of the flat buffers runs in
    ranges, once their state exists (the first call runs whole and creates it): the same
    bits as whole updates."""
    b, seen = split3
    method, args = UPDATES[name]
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(1000) for _ in range(3)]

    def run(section: Any) -> np.ndarray:
        p, st = np.linspace(-1, 1, 1000), {}
        for i, g in enumerate(grads):
            with section:
                getattr(b, method)(p, g.copy(), st, *args(i))
        return p

    import contextlib

    whole = run(contextlib.nullcontext())
    assert not seen
    parts = run(b.train_section(split=True))
    assert seen == [(1000, 3), (1000, 3)]  # steps 2 and 3
    np.testing.assert_array_equal(parts, whole)
