"""The inference plan (minifw.plan): eval-mode ``model(x)`` and ``predict`` give the layers'
bits, results never alias buffers, thread safety, chunked and threaded batches, steady-state
allocations, layers the plan cannot fuse, and the CuPy glue (checked with a NumPy stand-in
for CuPy, since no GPU is here). No timings are asserted.

The reference for "the layers" is the training-mode forward (``model.train(); model(x)``),
which runs layer by layer and never goes through the plan."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import threading
import tracemalloc
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from conftest import assert_namespace
from hypothesis import given
from hypothesis import strategies as st

import minifw as mf

ACTS = {"sigmoid": mf.Sigmoid, "relu": mf.ReLU, "tanh": mf.Tanh, "none": None}
NUMPY = mf.backend.get("numpy")


def build(widths: list[int], acts: list[str], softmax: bool, bias: bool, dtype: str) -> Any:
    layers: list[Any] = []
    for i, a in enumerate(acts):
        layers.append(mf.Dense(widths[i], widths[i + 1], bias=bias, dtype=dtype))
        act = ACTS[a]
        if act is not None:
            layers.append(act())
    if softmax:
        layers.append(mf.Softmax())
    model = mf.Sequential(*layers)
    assert fused_runs(model) == 1, "build() makes models the plan runs as one fused segment"
    rng = np.random.default_rng(len(widths))
    if bias:
        for m in model:
            if isinstance(m, mf.Dense):
                m.bias = rng.standard_normal(m.out_features)
    return model


def fused_runs(model: Any) -> int:
    """How many segments of ``mf.plan.explain(model)`` are fused runs (in brackets), after
    checking that every segment is one."""
    text = mf.plan.explain(model)
    segments = text.split(": ", 1)[1].split(" | ")
    return sum(s.startswith("[") and s.endswith("]") for s in segments)


def layer_by_layer(model: Any, x: Any) -> Any:
    """The model's output computed layer by layer: the training-mode forward (the plan
    runs in eval mode only)."""
    was = model.training
    model.train()
    try:
        return model(x)
    finally:
        model.train(was)


def naive(model: Any, x: np.ndarray) -> np.ndarray:
    """The same math in float64 NumPy, written out plainly."""
    h = x.astype(np.float64)
    for m in model:
        if isinstance(m, mf.Dense):
            h = h @ mf.to_numpy(m.weight).astype(np.float64)
            if m.bias is not None:
                h = h + mf.to_numpy(m.bias)
        elif isinstance(m, mf.Sigmoid):
            h = 1 / (1 + np.exp(-h))
        elif isinstance(m, mf.ReLU):
            h = np.maximum(h, 0)
        elif isinstance(m, mf.Tanh):
            h = np.tanh(h)
        elif isinstance(m, mf.Softmax):
            e = np.exp(h - h.max(axis=-1, keepdims=True))
            h = e / e.sum(axis=-1, keepdims=True)
    return h


def chunk_rule(model: Any) -> tuple[int, int]:
    """``(rows above which a batch is split, most rows per chunk)`` for a one-segment model,
    by the rule ``minifw.plan`` documents: its constants and the widest activation of the
    fused run that ``mf.plan.explain`` shows, rounded down to a power of two of rows between
    MIN_CHUNK_ROWS and MAX_CHUNK_ROWS."""
    text = mf.plan.explain(model)
    assert " | " not in text, text
    wmax = max(int(w) for w in re.findall(r"Dense \d+→(\d+)", text))
    p = mf.plan

    def rows(elems: int) -> int:
        r = 1 << max(0, (elems // wmax).bit_length() - 1)
        return min(p.MAX_CHUNK_ROWS, max(p.MIN_CHUNK_ROWS, r))

    return rows(p.CHUNK_ELEMS), rows(p.MAX_CHUNK_ELEMS)


class LinearSpy:
    """Records every call of the backend's ``linear`` op: ``(rows, weight shape, thread,
    activation)``,
    which shows how the plan cut a batch into chunks and on how many threads they ran."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, tuple[int, ...], int, str | None]] = []
        self._lock = threading.Lock()

    def rows(self, w_shape: tuple[int, ...]) -> list[int]:
        return [c[0] for c in self.calls if c[1] == w_shape]

    def threads(self, w_shape: tuple[int, ...]) -> set[int]:
        return {c[2] for c in self.calls if c[1] == w_shape}

    def acts(self, w_shape: tuple[int, ...]) -> list[str | None]:
        return [c[3] for c in self.calls if c[1] == w_shape]


@contextlib.contextmanager
def spy_linear(b: Any = NUMPY) -> Iterator[LinearSpy]:
    spy = LinearSpy()
    real = b.linear

    def linear(x: Any, w: Any, bias: Any = None, out: Any = None, act: Any = None) -> Any:
        rows = int(np.prod(x.shape[:-1])) if x.ndim > 1 else 1
        with spy._lock:
            spy.calls.append((rows, tuple(w.shape), threading.get_ident(), act))
        return real(x, w, bias, out, act)

    vars(b)["linear"] = linear  # shadows the method on this instance only
    try:
        yield spy
    finally:
        del vars(b)["linear"]


@st.composite
def models(draw: Any) -> tuple[Any, np.ndarray]:
    depth = draw(st.integers(1, 3))
    widths = draw(st.lists(st.integers(1, 12), min_size=depth + 1, max_size=depth + 1))
    acts = draw(st.lists(st.sampled_from(list(ACTS)), min_size=depth, max_size=depth))
    softmax = draw(st.booleans())
    if softmax:
        acts[-1] = "none"  # Softmax follows the last Dense directly
    bias = draw(st.booleans())
    dtype = draw(st.sampled_from(["float32", "float64"]))
    n = draw(st.sampled_from([0, 1, 2, 5, 17, 70]))
    one_d = draw(st.booleans()) and n == 1
    mf.seed(draw(st.integers(0, 2**16)))  # the weights too come from the example: replayable
    model = build(widths, acts, softmax, bias, dtype)
    x = np.random.default_rng(n).standard_normal((n, widths[0])).astype(dtype) * 3
    return model, (x[0] if one_d else x)


@given(data=models())
def test_plan_equals_layers_bit_for_bit(data: tuple[Any, np.ndarray]) -> None:
    model, x = data
    assert fused_runs(model) == 1, "every Dense/activation chain is one fused run"
    plain = layer_by_layer(model, x)
    fast = model(x)
    pred = model.predict(x)
    assert fast.shape == plain.shape == pred.shape
    assert fast.dtype == plain.dtype == x.dtype
    np.testing.assert_array_equal(fast, plain)
    np.testing.assert_array_equal(pred, plain)
    tol = 1e-5 if x.dtype == np.float32 else 1e-12
    np.testing.assert_allclose(
        fast, naive(model, np.atleast_2d(x)).reshape(fast.shape), rtol=tol, atol=tol
    )


@given(data=models())
def test_plan_matches_array_api_strict(data: tuple[Any, np.ndarray]) -> None:
    model, x = data
    fast = model(x)
    with mf.backend.use("array_api_strict"):
        strict = mf.Sequential(*[type(m)(**m.get_config()) for m in model])
    strict.load_state_dict(model.state_dict())
    ys = strict(x)
    assert_namespace(ys, "array_api_strict")
    # the portable engine is planned too (one pure function per fused run, no buffers)
    assert mf.plan.explain(strict).startswith("array_api_strict: [")
    tol = 1e-5 if x.dtype == np.float32 else 1e-12
    np.testing.assert_allclose(fast, mf.to_numpy(ys), rtol=tol, atol=tol)
    np.testing.assert_allclose(mf.to_numpy(layer_by_layer(strict, x)), fast, rtol=tol, atol=tol)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("net", ["S", "W"])
def test_large_batches_chunked_and_parallel(net: str, threads: int, monkeypatch: Any) -> None:
    """Batches bigger than a chunk (split across threads) agree with one plain pass."""
    sizes = (784, 50, 100, 10) if net == "S" else (784, 256, 256, 10)
    act = mf.Sigmoid if net == "S" else mf.ReLU
    model = mf.Sequential(
        mf.Dense(sizes[0], sizes[1]),
        act(),
        mf.Dense(sizes[1], sizes[2]),
        act(),
        mf.Dense(sizes[2], sizes[3]),
        mf.Softmax(),
    )
    monkeypatch.setattr(NUMPY, "max_threads", threads)
    small, big = chunk_rule(model)
    n = small * 3 + 7  # several chunks and a short one
    x = np.random.default_rng(0).random((n, 784), dtype=np.float32)
    plain = layer_by_layer(model, x)
    with spy_linear() as spy:
        y = model(x)
    np.testing.assert_allclose(y, plain, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(model.predict(x), plain, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(model.predict(x, batch_size=100), plain, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(model(x), naive(model, x), rtol=1e-4, atol=1e-6)
    # how the batch was cut: every step of the fused run sees the same chunks
    rows = spy.rows((784, sizes[1]))
    assert sum(rows) == n and max(rows) <= (big if threads > 1 else n)
    assert len(rows) > 1 if threads > 1 else rows == [n]  # one thread: one block
    assert sorted(rows) == sorted(spy.rows((sizes[2], sizes[3])))
    assert 1 <= len(spy.threads((784, sizes[1]))) <= threads
    # a chunk's rows match the same rows computed alone (BLAS threading may move last bits)
    c = max(rows)
    np.testing.assert_allclose(model(x)[c : 2 * c], model(x[c : 2 * c]), rtol=2e-6, atol=1e-7)


def test_results_are_never_overwritten_by_later_calls() -> None:
    model = build([6, 8, 3], ["sigmoid", "none"], True, True, "float32")
    rng = np.random.default_rng(1)
    for n in (1, 4, 300):
        xs = [rng.standard_normal((n, 6)).astype(np.float32) for _ in range(3)]
        outs = [model.predict(x) for x in xs] + [model(x) for x in xs]
        kept = [o.copy() for o in outs]
        for _ in range(3):
            model.predict(rng.standard_normal((n, 6)).astype(np.float32))
            model(rng.standard_normal((n, 6)).astype(np.float32))
        for o, k in zip(outs, kept, strict=True):
            np.testing.assert_array_equal(o, k)
        for i in range(len(outs)):
            for j in range(i + 1, len(outs)):
                assert not np.shares_memory(outs[i], outs[j])
        for o, x in zip(outs, xs + xs, strict=True):
            assert not np.shares_memory(o, x)
    v = model(np.ones(6, np.float32))
    w = model(np.zeros(6, np.float32))
    assert v.shape == (3,) and not np.shares_memory(v, w)


def test_in_place_weight_updates_are_seen() -> None:
    model = build([5, 4, 2], ["relu", "none"], True, True, "float32")
    x = np.random.default_rng(2).standard_normal((3, 5)).astype(np.float32)
    before = model(x)
    model[0].weight *= 2.0  # in place, as optimizers do on NumPy
    model[2].bias[...] = 5.0
    after = model(x)
    assert not np.array_equal(before, after)
    np.testing.assert_array_equal(after, layer_by_layer(model, x))
    model[0].weight = np.ones((5, 4))  # replaced: seen too
    np.testing.assert_array_equal(model(x), layer_by_layer(model, x))


def test_plan_follows_structure_changes() -> None:
    model = mf.Sequential(mf.Dense(4, 3), mf.ReLU())
    x = np.ones((2, 4), np.float32)
    assert model(x).shape == (2, 3)
    model.append(mf.Dense(3, 5))
    assert model(x).shape == (2, 5)
    assert mf.plan.explain(model) == "numpy: [Dense 4→3 relu, Dense 3→5]"
    model[2] = mf.Dense(3, 2)
    assert model(x).shape == (2, 2)
    assert mf.plan.explain(model) == "numpy: [Dense 4→3 relu, Dense 3→2]"
    np.testing.assert_array_equal(model(x), layer_by_layer(model, x))
    model.to("array_api_strict")
    y = model(x)
    assert_namespace(y, "array_api_strict")
    assert mf.plan.explain(model).startswith("array_api_strict: ")
    model.to("numpy")
    assert isinstance(model(x), np.ndarray)
    assert mf.plan.explain(model).startswith("numpy: ")


@pytest.mark.parametrize(
    ("layers", "explained"),
    [
        ([mf.Dense(4, 3), mf.Step()], "[Dense 4→3 step]"),
        ([mf.Dense(4, 3), mf.ReLU(), mf.ReLU()], "[Dense 4→3 relu] | ReLU"),
        ([mf.ReLU(), mf.Dense(4, 3)], "ReLU | [Dense 4→3]"),
        # softmax over the batch axis depends on the other rows: not a row-wise step
        ([mf.Dense(4, 3), mf.Softmax(axis=0)], "[Dense 4→3] | Softmax"),
    ],
)
def test_layers_the_plan_does_not_fuse_run_whole(layers: list[Any], explained: str) -> None:
    model = mf.Sequential(*layers)
    assert mf.plan.explain(model) == "numpy: " + explained
    x = np.random.default_rng(3).standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_array_equal(model(x), layer_by_layer(model, x))
    if not isinstance(layers[-1], mf.Softmax):  # softmax over the batch axis depends on it
        np.testing.assert_allclose(
            model.predict(x, batch_size=2), layer_by_layer(model, x), rtol=1e-6, atol=1e-6
        )


class Halve(mf.Module):
    """A custom layer (public contract only): the plan cannot fuse it."""

    def forward(self, x: Any) -> Any:
        return x * 0.5

    def backward(self, grad: Any) -> Any:
        return grad * 0.5


@pytest.mark.parametrize("rows", [1, 9, 3000])  # batch-1, one block, chunked
def test_a_custom_layer_between_dense_runs_keeps_them_fused(rows: int, monkeypatch: Any) -> None:
    monkeypatch.setattr(NUMPY, "max_threads", 2)
    mf.seed(6)
    model = mf.Sequential(
        mf.Dense(20, 300), mf.Sigmoid(), mf.Dense(300, 40), Halve(),
        mf.Dense(40, 300), mf.ReLU(), mf.Dense(300, 10), mf.Softmax(),
    )  # fmt: skip
    assert mf.plan.explain(model) == (
        "numpy: [Dense 20→300 sigmoid, Dense 300→40] | Halve | [Dense 40→300 relu, Dense 300→10 softmax]"
    )
    x = np.random.default_rng(6).standard_normal((rows, 20)).astype(np.float32)
    ref = layer_by_layer(model, x)
    with spy_linear() as spy:
        y = model(x)
    if rows <= chunk_rule(mf.Sequential(mf.Dense(20, 300)))[0]:
        np.testing.assert_array_equal(y, ref)  # the same op on the same rows: the same bits
    else:  # BLAS may round a row's last bit differently for another number of rows
        np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-7)
        assert len(spy.rows((20, 300))) > 1, "the fused runs around the custom layer chunk"
    assert sum(spy.rows((40, 300))) == rows
    np.testing.assert_allclose(model.predict(x, batch_size=7), ref, rtol=1e-6, atol=1e-7)
    each = x
    for m in model:  # eval mode, one layer at a time
        each = m(each)
    np.testing.assert_allclose(y, each, rtol=1e-6, atol=1e-7)


def test_wrong_shapes_still_raise_the_layers_errors() -> None:
    model = mf.Sequential(mf.Dense(4, 3), mf.Sigmoid(), mf.Dense(3, 2))
    with pytest.raises(
        mf.ShapeError, match=r"layer 0 \(Dense 4→3\) expects input \(\.\.\., 4\), got \(2, 5\)"
    ):
        model(np.ones((2, 5), np.float32))
    with pytest.raises(mf.ShapeError, match="layer 0"):
        model.predict(np.ones(7, np.float32))


def test_training_mode_forward_is_not_the_plan() -> None:
    model = mf.Sequential(mf.Dense(4, 3), mf.Sigmoid())
    x = np.ones((2, 4), np.float32)
    model.train()
    with spy_linear() as spy:
        y = model(x)
    # the layer's own forward: a linear without the activation fused in, and what backward
    # needs is kept (backward works right after)
    assert spy.acts((4, 3)) == [None]
    model.backward(np.ones((2, 3), np.float32))
    assert set(model[0].grads) == {"weight", "bias"}
    with spy_linear() as spy:
        np.testing.assert_array_equal(y, model.eval()(x))
    assert spy.acts((4, 3)) == ["sigmoid"], "eval mode: the plan fuses the activation"
    with pytest.raises(RuntimeError, match="training mode"):
        model.backward(np.ones((2, 3), np.float32))  # eval mode kept nothing


def test_concurrent_predict_from_many_threads(monkeypatch: Any) -> None:
    monkeypatch.setattr(NUMPY, "max_threads", 2)
    model = build([784, 64, 32, 10], ["sigmoid", "relu", "none"], True, True, "float32")
    chunk = chunk_rule(model)[0]
    rng = np.random.default_rng(4)
    inputs = [rng.random((n, 784), dtype=np.float32) for n in (1, 3, 50, chunk * 2 + 5, 40)]
    expected = [model.predict(x) for x in inputs]
    assert min(np.abs(expected[0][0] - e[0]).max() for e in expected[1:]) > 1e-4  # distinct
    errors: list[str] = []
    barrier = threading.Barrier(6)

    def worker(k: int) -> None:
        barrier.wait()
        for r in range(15):
            i = (k + r) % len(inputs)
            y = model.predict(inputs[i]) if r % 2 else model(inputs[i])
            # BLAS may round the last bit differently when other threads change its thread
            # count; a buffer shared by mistake would be off by far more than this
            d = float(np.abs(y - expected[i]).max())
            if y.shape != expected[i].shape or d > 1e-6:
                errors.append(f"thread {k} round {r} input {i}: max diff {d:.2e}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_blas_threads_restored_after_parallel_predict(monkeypatch: Any) -> None:
    threadpoolctl = pytest.importorskip("threadpoolctl")
    monkeypatch.setattr(NUMPY, "max_threads", 2)
    before = [d["num_threads"] for d in threadpoolctl.threadpool_info() if d["user_api"] == "blas"]
    model = build([64, 32, 4], ["relu", "none"], False, True, "float32")
    x = np.random.default_rng(5).random((chunk_rule(model)[0] * 4, 64), dtype=np.float32)
    ts = [threading.Thread(target=lambda: [model.predict(x) for _ in range(5)]) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    after = [d["num_threads"] for d in threadpoolctl.threadpool_info() if d["user_api"] == "blas"]
    assert after == before


@pytest.mark.parametrize("n", [1, 100, 3000])
def test_steady_state_predict_allocates_only_its_result(n: int, monkeypatch: Any) -> None:
    monkeypatch.setattr(NUMPY, "max_threads", 2)
    model = build([784, 50, 100, 10], ["sigmoid", "sigmoid", "none"], True, True, "float32")
    x = np.random.default_rng(6).random((n, 784), dtype=np.float32)
    # which worker of the shared pool runs a chunk is up to timing (earlier tests may have
    # grown the pool), and a worker sizes its buffers for this plan the first time it runs
    # one: the backend's ``empty`` tells a measured call in which that happened, and the
    # measurement is repeated then
    allocated: list[tuple[tuple[int, ...], int]] = []
    real = NUMPY.empty

    def empty(shape: tuple[int, ...], dtype: Any) -> Any:
        allocated.append((tuple(shape), threading.get_ident()))
        return real(shape, dtype)

    monkeypatch.setitem(vars(NUMPY), "empty", empty)
    for _ in range(3):
        model.predict(x)  # buffers of this thread (and the pool's) allocated
    warmed = {t for s, t in allocated if s != (n, 10)}
    for _ in range(30):
        allocated.clear()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            y = model.predict(x)
            y = model.predict(x)
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
        fresh = {t for s, t in allocated if s != (n, 10)}
        assert not fresh & warmed, "a thread allocated its buffers again"
        if not fresh:
            break
        warmed |= fresh
    else:
        pytest.fail("buffers were still being allocated after 30 rounds")
    assert [s for s, _ in allocated] == [(n, 10)] * 2
    # at most two results alive at once (the old y until reassigned), NumPy's fixed reduction
    # scratch (8192 elements, freed at once) and Python bookkeeping (futures, slices; how much
    # of it is alive at the peak depends on thread timing, 66-72 KiB seen under load): nothing
    # that grows with the batch (the smallest per-batch buffer here, n x 50 floats, is 600 KiB
    # at n=3000)
    assert peak <= 2 * y.nbytes + 128 * 1024, peak
    if n > 1:
        assert peak < 2 * y.nbytes + 100 * 4 * n  # less than one hidden activation more


def test_every_chunk_thread_sizes_its_buffers_for_a_full_chunk(monkeypatch: Any) -> None:
    """Whichever thread takes the short last chunk first must not reallocate on a full one
    later (that would allocate in steady state, depending on thread timing): every buffer
    the plan allocates holds a full chunk, each thread allocates its buffers once, and
    otherwise a call allocates only its result. Seen through the backend's ``empty``."""
    monkeypatch.setattr(NUMPY, "max_threads", 2)
    model = build([16, 1024, 4], ["sigmoid", "none"], True, True, "float32")
    small, _ = chunk_rule(model)
    n = small + 9
    x = np.ones((n, 16), np.float32)
    allocated: list[tuple[tuple[int, ...], int]] = []
    real = NUMPY.empty

    def empty(shape: tuple[int, ...], dtype: Any) -> Any:
        allocated.append((tuple(shape), threading.get_ident()))
        return real(shape, dtype)

    monkeypatch.setitem(vars(NUMPY), "empty", empty)  # shadows the method on this instance
    with spy_linear() as spy:
        for _ in range(6):
            before = len(allocated)
            model.predict(x)
            assert ((n, 4), threading.get_ident()) in allocated[before:]  # the result
    rows = spy.rows((16, 1024))
    assert len(set(rows)) == 2 and sum(rows) == 6 * n, rows  # a short last chunk
    buffers = [(s, t) for s, t in allocated if s[1:] == (1024,)]
    owners = [t for _, t in buffers]
    assert len(owners) == len(set(owners)), "a thread reallocated its buffers"
    assert set(owners) == spy.threads((16, 1024))
    assert min(s[0] for s, _ in buffers) >= max(rows), (buffers, rows)
    assert len(allocated) == 6 + len(buffers), allocated  # nothing else


def test_threads_env_var() -> None:
    """MINIFW_NUM_THREADS (read once, when the plan first asks how many threads it may
    use; so each value runs in a fresh process): a bad value is named; 1 runs the batch as
    one block; 2 cuts it into chunks."""
    import os

    code = (
        "import numpy as np, minifw as mf\n"
        "m = mf.Sequential(mf.Dense(64, 1024), mf.ReLU(), mf.Dense(1024, 2))\n"
        "b = mf.backend.get('numpy'); real = b.linear; rows = []\n"
        "def spy(x, w, *a):\n"
        "    rows.append(x.shape[0]) if w.shape[0] == 64 else None; return real(x, w, *a)\n"
        "b.linear = spy\n"
        "x = np.ones((5000, 64), np.float32)\n"
        "y = m(x)\n"
        "m.train(); ref = m(x)\n"
        "print(len(rows) - 1, bool(np.allclose(y, ref, rtol=1e-5, atol=1e-5)))\n"
    )

    def run(value: str) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, MINIFW_NUM_THREADS=value, PYTHONPATH=os.pathsep.join(sys.path))
        return subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
        )

    bad = run("lots")
    assert bad.returncode != 0, bad.stdout
    assert "BackendError" in bad.stderr and "MINIFW_NUM_THREADS='lots'" in bad.stderr, bad.stderr
    one = run("1")
    assert one.returncode == 0, one.stderr
    assert one.stdout.split() == ["1", "True"]  # one block (and the training forward's call)
    two = run("2")
    assert two.returncode == 0, two.stderr
    chunks = int(two.stdout.split()[0])
    assert two.stdout.split()[1] == "True"
    # chunks of at most 1024 rows on 2 threads when BLAS threads can be held to one (else 1)
    assert chunks == (6 if _blas_limitable() else 1), two.stdout


def _blas_limitable() -> bool:
    """Whether threadpoolctl finds a BLAS here (the plan runs chunks on threads only then)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return False
    return any(i.get("user_api") == "blas" for i in threadpool_info())


# -- CuPy: what can be checked without a GPU --------------------------------------------------
# CupyBackend's glue (argument order, shapes, launches, the kernel cache) has no public path
# without a GPU: these tests use minifw.backend._cupy and the backend registry's internals.


def test_cupy_kernel_sources() -> None:
    from minifw.backend import _cupy

    assert set(_cupy.ELEMENTWISE) == {None, "relu", "sigmoid", "tanh"}
    for body in _cupy.ELEMENTWISE.values():
        assert "x" in body and "b" in body and body.lstrip().startswith(("y =", "T v"))
    for dt, ctype in (("float32", "float"), ("float64", "double")):
        src, name = _cupy.softmax_source(dt)
        assert name == f"minifw_softmax_{ctype}"
        assert f'extern "C" __global__ void {name}(' in src
        assert f"{ctype}* __restrict__ y" in src and "{T}" not in src
        assert src.count("{") == src.count("}")
    for n in (1, 255, 256, 257, 100000):
        (grid,), (block,) = _cupy.launch_config(n)
        assert grid * block >= n > (grid - 1) * block


class _FakeCupy:
    """NumPy standing in for CuPy: kernels are emulated by what their source computes, and
    every call is recorded so the backend's glue (argument order, shapes, launch) is checked."""

    EMULATE = {
        "minifw_bias_none": lambda x, b: x + b,
        "minifw_bias_relu": lambda x, b: np.where(x + b < 0, 0, x + b),
        "minifw_bias_sigmoid": lambda x, b: 1 / (1 + np.exp(-(x + b))),
        "minifw_bias_tanh": lambda x, b: np.tanh(x + b),
    }

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.built: list[str] = []
        fake = self

        class ElementwiseKernel:
            def __init__(self, in_params: str, out_params: str, op: str, name: str) -> None:
                assert (in_params, out_params) == ("T x, T b", "T y")
                self.name, self.op = name, op
                fake.built.append(name)

            def __call__(self, x: Any, b: Any, y: Any) -> Any:
                fake.calls.append((self.name, (x.shape, np.shape(b))))
                assert y is x, "in place on the matmul output"
                y[...] = fake.EMULATE[self.name](x, b)
                return y

        class RawKernel:
            def __init__(self, src: str, name: str) -> None:
                assert name in src
                self.name = name
                fake.built.append(name)

            def __call__(self, grid: Any, block: Any, args: Any) -> None:
                y, b, n, w, has_bias = args
                assert all(isinstance(a, np.int32) for a in (n, w, has_bias))
                assert grid[0] * block[0] >= n and y.shape == (n, w) and y.flags.c_contiguous
                fake.calls.append((self.name, (y.shape, int(has_bias))))
                if has_bias:
                    assert b.flags.c_contiguous and b.shape == (w,)
                    y += b
                e = np.exp(y - y.max(axis=1, keepdims=True))
                y[...] = e / e.sum(axis=1, keepdims=True)

        self.ElementwiseKernel = ElementwiseKernel
        self.RawKernel = RawKernel


def _fake_cupy_module(monkeypatch: Any) -> Any:
    """A module named ``cupy`` made of NumPy and the kernel stand-ins above, installed in
    ``sys.modules`` (and the backend registry's cache restored afterwards)."""
    import importlib.machinery
    import types

    kernels = _FakeCupy()
    mod = types.ModuleType("cupy")
    mod.__version__ = "0-fake"  # type: ignore[attr-defined]
    mod.__spec__ = importlib.machinery.ModuleSpec("cupy", None)
    mod.__getattr__ = lambda name: getattr(np, name)  # type: ignore[method-assign]
    mod.ElementwiseKernel = kernels.ElementwiseKernel  # type: ignore[attr-defined]
    mod.RawKernel = kernels.RawKernel  # type: ignore[attr-defined]
    mod.asnumpy = lambda a: np.array(a, copy=True)  # type: ignore[attr-defined]
    stream = types.SimpleNamespace(synchronize=lambda: None)
    runtime = types.SimpleNamespace(
        getDeviceCount=lambda: 1, getDeviceProperties=lambda i: {"name": b"Fake GPU"}
    )
    mod.cuda = types.SimpleNamespace(  # type: ignore[attr-defined]
        runtime=runtime, get_current_stream=lambda: stream
    )
    mod.kernels = kernels  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cupy", mod)
    monkeypatch.setattr(mf.backend, "_loaded", dict(mf.backend._loaded))  # restored after
    mf.backend._loaded.pop("cupy", None)
    return mod


@pytest.mark.parametrize("bias", [True, False])
def test_cupy_linear_glue_with_a_numpy_stand_in(bias: bool, monkeypatch: Any) -> None:
    from minifw.backend._cupy import CupyBackend

    cp = _fake_cupy_module(monkeypatch)
    b = CupyBackend(cp, "0-fake")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((9, 6)).astype(np.float32)
    w = rng.standard_normal((6, 5)).astype(np.float32)
    bb = rng.standard_normal(5).astype(np.float32) if bias else None
    z = x @ w + (bb if bb is not None else 0)
    want = {
        None: z,
        "relu": np.maximum(z, 0),
        "sigmoid": 1 / (1 + np.exp(-z)),
        "tanh": np.tanh(z),
        "softmax": np.exp(z) / np.exp(z).sum(1, keepdims=True),
    }
    for act, expected in want.items():
        cp.kernels.calls.clear()
        out = np.empty((9, 5), np.float32)
        y = b.linear(x, w, bb, out, act)
        assert y is out
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
        if act == "softmax":
            assert cp.kernels.calls == [("minifw_softmax_float", ((9, 5), int(bias)))]
        elif act is None and not bias:
            assert cp.kernels.calls == []  # a bare matmul: no kernel at all
        else:
            bshape = (5,) if bias else np.shape(b.zero_for(y))  # no bias: a zero is added
            assert cp.kernels.calls == [(f"minifw_bias_{act or 'none'}", ((9, 5), bshape))]
    # a non-contiguous bias is made contiguous for the softmax kernel (it indexes b[j])
    if bb is not None:
        strided = np.repeat(bb, 2)[::2]
        y = b.linear(x, w, strided, None, "softmax")
        np.testing.assert_allclose(y, want["softmax"], rtol=1e-5, atol=1e-6)
    # step, and inputs other than 2-D, take the generic ufunc path (no kernel)
    cp.kernels.calls.clear()
    y3 = b.linear(x.reshape(3, 3, 6), w, bb, None, "relu")
    np.testing.assert_allclose(y3.reshape(9, 5), want["relu"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(b.linear(x, w, bb, None, "step"), (z > 0).astype(np.float32))
    assert cp.kernels.calls == []
    assert b.linear(np.zeros((0, 6), np.float32), w, bb, None, "softmax").shape == (0, 5)
    # kernels are built once and cached
    assert b.elementwise_kernel("relu") is b.elementwise_kernel("relu")
    assert b.softmax_kernel("float32") is b.softmax_kernel("float32")
    assert b.softmax_kernel("float64") is not b.softmax_kernel("float32")
    assert len(cp.kernels.built) == len(set(cp.kernels.built))


def test_cupy_backend_model_and_gpu_bench_with_a_stand_in(monkeypatch: Any, tmp_path: Any) -> None:
    """The CuPy route end to end on a NumPy stand-in: the model runs through the fused
    kernels, and ``minifw bench --device cuda`` builds and times its engines."""
    import json

    from minifw import bench

    cp = _fake_cupy_module(monkeypatch)
    with mf.backend.use("cupy"):
        model = mf.Sequential(mf.Dense(784, 50), mf.Sigmoid(), mf.Dense(50, 10), mf.Softmax())
    assert mf.plan.explain(model) == "cupy: [Dense 784→50 sigmoid, Dense 50→10 softmax]"
    assert model.backend.devices() == ["cuda:0 Fake GPU"]
    x = np.random.default_rng(8).random((33, 784), dtype=np.float32)
    cp.kernels.calls.clear()
    y = model(x)
    assert [c[0] for c in cp.kernels.calls] == ["minifw_bias_sigmoid", "minifw_softmax_float"]
    np.testing.assert_allclose(y, naive(model, x), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(model.predict(x, batch_size=10), y, rtol=1e-6, atol=1e-8)
    assert model(np.zeros((0, 784), np.float32)).shape == (0, 10)
    rc = bench.main(["--device", "cuda", "--smoke", "--networks", "S", "--out", str(tmp_path)])
    assert rc == 0
    res = json.loads((tmp_path / "bench.json").read_text())
    row = res["inference"][1]
    assert row["batch"] == 64
    assert set(row["engines"]) >= {bench.MINIFW_REF_GPU, "GEMM floor (3 matmuls, cuBLAS)"}
    assert row["engines"][bench.MINIFW_REF_GPU]["max_abs_diff_vs_float64"] < 1e-5
    assert "torch CUDA" in res["notes"]


def test_explain_describes_the_segments() -> None:
    model = mf.Sequential(mf.Dense(4, 3), mf.Sigmoid(), mf.Dense(3, 2), mf.Softmax())
    assert mf.plan.explain(model) == "numpy: [Dense 4→3 sigmoid, Dense 3→2 softmax]"
    model = mf.Sequential(mf.Flatten(), mf.Dense(12, 3), mf.Tanh())
    assert mf.plan.explain(model) == "numpy: Flatten | [Dense 12→3 tanh]"


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
# JAX (loaded by other tests in this process) warns on any fork; the child here touches only
# NumPy, and the parent kills it after 60 s, so a hang cannot stall the suite.
@pytest.mark.filterwarnings("ignore:os.fork\\(\\) was called:RuntimeWarning")
def test_parallel_predict_works_in_a_forked_child(monkeypatch: Any) -> None:
    """The worker pool does not survive fork(): the child must start its own, not wait on
    the parent's dead threads."""
    import os

    monkeypatch.setattr(NUMPY, "max_threads", 2)
    model = build([64, 32, 4], ["relu", "none"], False, True, "float32")
    x = np.random.default_rng(9).random((chunk_rule(model)[0] * 3, 64), dtype=np.float32)
    expected = model.predict(x)  # the parent's pool exists now
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report 1 if the parallel predict finishes and agrees
        try:
            ok = np.allclose(model.predict(x), expected, rtol=1e-6, atol=1e-7)
            os.write(w, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(w)
    import select

    ready, _, _ = select.select([r], [], [], 60)
    got = os.read(r, 1) if ready else b""
    os.close(r)
    if not ready:
        os.kill(pid, 9)
    os.waitpid(pid, 0)
    assert got == b"1", "the forked child's predict hung or disagreed"


@pytest.mark.parametrize("rows", [1, 3000])  # the batch-1 block and the chunk-parallel path
def test_sigmoid_plan_saturates_without_warnings(rows: int, monkeypatch: Any) -> None:
    monkeypatch.setattr(NUMPY, "max_threads", 2)
    model = mf.Sequential(mf.Dense(4, 3), mf.Sigmoid(), mf.Dense(3, 2), mf.Softmax())
    model[0].weight = np.full((4, 3), -1000.0, np.float32)  # z = -4000: exp(-z) overflows
    model[0].bias = np.array([0.0, 4000.0, 8000.0], np.float32)  # 0, 0.5 and 1 after sigmoid
    x = np.ones((rows, 4), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = model(x)
        ref = layer_by_layer(model, x)
        hidden = mf.Sequential(model[0], model[1])(x)
    np.testing.assert_array_equal(y, ref)
    # saturated: exactly 0 (large arrays let exp overflow) or, where small arrays clamp
    # exp's argument, the subnormal 1 / (1 + largest float32)
    np.testing.assert_allclose(
        hidden, np.tile(np.array([0.0, 0.5, 1.0], np.float32), (rows, 1)), rtol=0, atol=3e-39
    )


@pytest.mark.parametrize("rows", [1, 7, 3000])  # batch-1 block, one block, chunk-parallel
@pytest.mark.parametrize(
    "widths",
    [
        [6, 3, 20],  # a hidden softmax narrower than the output one (a slice of its scratch)
        [6, 40, 10],  # a wide hidden softmax (the row-reduce path), a narrow output
        [6, 8, 33],  # a wide output softmax
    ],
)
def test_softmax_steps_give_the_layers_bits(rows: int, widths: list[int], monkeypatch: Any) -> None:
    monkeypatch.setattr(NUMPY, "max_threads", 2)
    mf.seed(4)
    model = mf.Sequential(
        mf.Dense(widths[0], widths[1]), mf.Softmax(), mf.Dense(widths[1], widths[2]), mf.Softmax()
    )
    assert fused_runs(model) == 1
    x = np.random.default_rng(5).standard_normal((rows, widths[0])).astype(np.float32) * 3
    y = model(x)
    ref = layer_by_layer(model, x)
    if rows <= chunk_rule(model)[0]:  # the same BLAS call on the same rows: the same bits
        np.testing.assert_array_equal(y, ref)
    else:  # BLAS may round a row's last bit differently for another number of rows
        np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(y.sum(axis=1), 1, rtol=1e-6)


@pytest.mark.parametrize("width", [3, 12, 32])  # narrow softmax rows (at most 32 wide)
def test_narrow_softmax_rows_do_not_depend_on_the_batch(width: int) -> None:
    """A row's softmax has the same bits alone, in a small batch and in a large one."""
    mf.seed(width)
    model = mf.Sequential(mf.Softmax())
    x = np.random.default_rng(width).standard_normal((300, width)).astype(np.float32) * 5
    full = model(x)
    for i in (0, 7, 299):
        np.testing.assert_array_equal(model(x[i]), full[i])
        np.testing.assert_array_equal(model(x[i : i + 1])[0], full[i])
        np.testing.assert_array_equal(model(x[max(0, i - 2) : i + 3])[min(i, 2)], full[i])
    np.testing.assert_array_equal(layer_by_layer(model, x), full)


@pytest.mark.parametrize("width", [3, 12, 40])  # under and over 8 (pairwise sums), over 32
def test_one_dimensional_input_gives_the_layers_bits(width: int) -> None:
    for seed in range(5):
        mf.seed(seed)
        model = mf.Sequential(
            mf.Dense(5, width), mf.Sigmoid(), mf.Dense(width, width), mf.Softmax()
        )
        x = np.random.default_rng(seed).standard_normal(5).astype(np.float32) * 3
        y = model(x)
        assert y.shape == (width,)
        np.testing.assert_array_equal(y, layer_by_layer(model, x))
        np.testing.assert_array_equal(y, model(x[None, :])[0])


@pytest.mark.parametrize("threads", [1, 2, 3, 4])
def test_chunks_are_balanced_and_within_the_limits(threads: int, monkeypatch: Any) -> None:
    """How a batch is cut, seen through the backend's ``linear`` calls: on one thread, one
    block (of at most ``batch_size`` rows); on several, one block up to the split size, and
    above it chunks of equal size (the last short by a few rows at most), at most the
    largest chunk each, and as few as the threads allow."""
    monkeypatch.setattr(NUMPY, "max_threads", threads)
    wide = build([4, 1024, 10], ["relu", "none"], True, True, "float32")
    narrow = build([4, 100, 10], ["relu", "none"], True, True, "float32")
    assert chunk_rule(wide) == (256, 1024)  # 2**18 and 2**20 elements of 1024
    assert chunk_rule(narrow) == (1024, 1024)  # capped at MAX_CHUNK_ROWS
    for model in (wide, narrow):
        small0, big0 = chunk_rule(model)
        first = tuple(model[0].weight.shape)
        for n in (1, small0, small0 + 1, 1000, 3000, 8192):
            x = np.ones((n, 4), np.float32)
            for max_rows in (None, 100, 700):
                with spy_linear() as spy:
                    model.predict(x, batch_size=max_rows)
                rows = spy.rows(first)
                assert sum(rows) == n
                used = len(spy.threads(first))
                assert 1 <= used <= threads
                if threads == 1:  # one call per batch_size rows (the whole batch)
                    m = n if max_rows is None else min(n, max_rows)
                    assert rows == [m] * (n // m) + ([n % m] if n % m else []) and used == 1
                    continue
                small = small0 if max_rows is None else min(small0, max_rows)
                if n <= small:
                    assert rows == [n] and used == 1
                    continue
                chunk = max(rows)
                big = big0 if max_rows is None else min(big0, max_rows)
                want_threads = min(threads, -(-n // small))
                k = len(rows)
                assert chunk <= big
                assert sorted(rows)[1:] == [chunk] * (k - 1)  # equal, the last possibly short
                assert k == want_threads * -(-n // (want_threads * big))  # as few as allowed
                assert k * chunk - n < k + want_threads  # the last short by a few rows at most
