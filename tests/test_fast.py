"""The fast inference path (minifw._fast): same results as the plain layers, buffers that
never alias results, thread safety, steady-state allocations, and the CuPy glue (checked
with a NumPy stand-in for CuPy, since no GPU is here). No timings are asserted."""

from __future__ import annotations

import threading
import tracemalloc
import warnings
from typing import Any

import numpy as np
import pytest
from conftest import assert_namespace
from hypothesis import given
from hypothesis import strategies as st

import minifw as mf
from minifw import _fast

ACTS = {"sigmoid": mf.Sigmoid, "relu": mf.ReLU, "tanh": mf.Tanh, "none": None}


def build(widths: list[int], acts: list[str], softmax: bool, bias: bool, dtype: str) -> Any:
    layers: list[Any] = []
    for i, a in enumerate(acts):
        layers.append(mf.Dense(widths[i], widths[i + 1], bias=bias, dtype=dtype))
        if ACTS[a] is not None:
            layers.append(ACTS[a]())
    if softmax:
        layers.append(mf.Softmax())
    model = mf.Sequential(*layers)
    assert model._fast_plan(), "build() makes plan-able models"
    rng = np.random.default_rng(len(widths))
    if bias:
        for i in range(0, len(model), 1):
            m = model[i]
            if isinstance(m, mf.Dense):
                m.bias = rng.standard_normal(m.out_features)
    return model


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
def test_fast_path_equals_layers_bit_for_bit(data: tuple[Any, np.ndarray]) -> None:
    model, x = data
    assert model._fast_plan(), "every Dense/activation chain gets a plan"
    plain = model._forward(model.backend.asarray(x), False, False)[0]
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
def test_fast_path_matches_array_api_strict(data: tuple[Any, np.ndarray]) -> None:
    model, x = data
    fast = model(x)
    with mf.backend.use("array_api_strict"):
        strict = mf.Sequential(*[type(m)(**m.get_config()) for m in model])
    strict.load_state_dict(model.state_dict())
    ys = strict(x)
    assert_namespace(ys, "array_api_strict")
    assert not strict._fast_plan(), "the portable path has no fast plan"
    tol = 1e-5 if x.dtype == np.float32 else 1e-12
    np.testing.assert_allclose(fast, mf.to_numpy(ys), rtol=tol, atol=tol)


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
    monkeypatch.setattr(_fast, "max_threads", threads)
    plan = model._fast_plan()
    n = plan.chunk * 3 + 7  # several chunks and a short one
    x = np.random.default_rng(0).random((n, 784), dtype=np.float32)
    plain = model._forward(x, False, False)[0]
    np.testing.assert_allclose(model(x), plain, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(model.predict(x), plain, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(model.predict(x, batch_size=100), plain, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(model(x), naive(model, x), rtol=1e-4, atol=1e-6)
    # a chunk's rows match the same rows computed alone (BLAS threading may move last bits)
    c, used = plan.split(n)
    assert c < n and used == (threads if _fast._BLAS.available() else 1)
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
        bufs = model._plan._buffers(n)
        assert not any(np.shares_memory(o, b) for o in outs for b in bufs)
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
    np.testing.assert_array_equal(after, model._forward(x, False, False)[0])
    model[0].weight = np.ones((5, 4))  # replaced: seen too
    np.testing.assert_array_equal(model(x), model._forward(x, False, False)[0])


def test_plan_follows_structure_changes() -> None:
    model = mf.Sequential(mf.Dense(4, 3), mf.ReLU())
    x = np.ones((2, 4), np.float32)
    assert model(x).shape == (2, 3)
    model.append(mf.Dense(3, 5))
    assert model(x).shape == (2, 5)
    model[2] = mf.Dense(3, 2)
    assert model(x).shape == (2, 2)
    np.testing.assert_array_equal(model(x), model._forward(x, False, False)[0])
    model.to("array_api_strict")
    y = model(x)
    assert_namespace(y, "array_api_strict")
    model.to("numpy")
    assert isinstance(model(x), np.ndarray) and model._plan


@pytest.mark.parametrize(
    "layers",
    [
        [mf.Dense(4, 3), mf.Step()],  # Step: generic path
        [mf.Dense(4, 3), mf.ReLU(), mf.ReLU()],  # two activations in a row
        [mf.ReLU(), mf.Dense(4, 3)],  # an activation first
        [mf.Dense(4, 3), mf.Softmax(axis=0)],  # softmax over the batch axis
    ],
)
def test_models_without_a_plan_use_the_layers(layers: list[Any]) -> None:
    model = mf.Sequential(*layers)
    assert model._fast_plan() is False
    x = np.random.default_rng(3).standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_array_equal(model(x), model._forward(x, False, False)[0])
    if not isinstance(layers[-1], mf.Softmax):  # softmax over the batch axis depends on it
        np.testing.assert_allclose(
            model.predict(x, batch_size=2), model._forward(x, False, False)[0], rtol=1e-6, atol=1e-6
        )


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
    model.train()
    x = np.ones((2, 4), np.float32)
    y = model(x)
    assert model[1]._y is not None, "training-mode forward keeps what backward needs"
    np.testing.assert_array_equal(y, model.eval()(x))


def test_concurrent_predict_from_many_threads(monkeypatch: Any) -> None:
    monkeypatch.setattr(_fast, "max_threads", 2)
    model = build([784, 64, 32, 10], ["sigmoid", "relu", "none"], True, True, "float32")
    chunk = model._fast_plan().chunk
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
    monkeypatch.setattr(_fast, "max_threads", 2)
    before = [d["num_threads"] for d in threadpoolctl.threadpool_info() if d["user_api"] == "blas"]
    model = build([64, 32, 4], ["relu", "none"], False, True, "float32")
    x = np.random.default_rng(5).random((model._fast_plan().chunk * 4, 64), dtype=np.float32)
    ts = [threading.Thread(target=lambda: [model.predict(x) for _ in range(5)]) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    after = [d["num_threads"] for d in threadpoolctl.threadpool_info() if d["user_api"] == "blas"]
    assert after == before


@pytest.mark.parametrize("n", [1, 100, 3000])
def test_steady_state_predict_allocates_only_its_result(n: int, monkeypatch: Any) -> None:
    monkeypatch.setattr(_fast, "max_threads", 2)
    model = build([784, 50, 100, 10], ["sigmoid", "sigmoid", "none"], True, True, "float32")
    x = np.random.default_rng(6).random((n, 784), dtype=np.float32)
    for _ in range(3):
        model.predict(x)  # buffers of this thread (and the pool's) allocated
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        y = model.predict(x)
        y = model.predict(x)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    # at most two results alive at once (the old y until reassigned), NumPy's fixed reduction
    # scratch (8192 elements, freed at once) and Python bookkeeping (futures, slices; how much
    # of it is alive at the peak depends on thread timing, 66-72 KiB seen under load): nothing
    # that grows with the batch (the smallest per-batch buffer here, n x 50 floats, is 600 KiB
    # at n=3000)
    assert peak <= 2 * y.nbytes + 128 * 1024, peak
    if n > 1:
        assert peak < 2 * y.nbytes + 100 * 4 * n  # less than one hidden activation more


def test_threads_env_var(monkeypatch: Any) -> None:
    monkeypatch.setattr(_fast, "max_threads", None)
    monkeypatch.setenv("MINIFW_NUM_THREADS", "lots")
    model = build([64, 8, 2], ["relu", "none"], True, True, "float32")
    x = np.ones((model._fast_plan().chunk * 3, 64), np.float32)
    with pytest.raises(mf.BackendError, match="MINIFW_NUM_THREADS='lots'"):
        model(x)
    monkeypatch.setenv("MINIFW_NUM_THREADS", "1")
    np.testing.assert_allclose(model(x), model._forward(x, False, False)[0], rtol=1e-6)


# -- CuPy: what can be checked without a GPU --------------------------------------------------


def test_cupy_kernel_sources() -> None:
    for act in (_fast.NONE, _fast.RELU, _fast.SIGMOID, _fast.TANH):
        body = _fast.CUPY_ELEMENTWISE[act]
        assert "x" in body and "b" in body and body.lstrip().startswith(("y =", "T v"))
    for dt, ctype in (("float32", "float"), ("float64", "double")):
        src, name = _fast.softmax_source(dt)
        assert name == f"minifw_softmax_{ctype}"
        assert f'extern "C" __global__ void {name}(' in src
        assert f"{ctype}* __restrict__ y" in src and "{T}" not in src
        assert src.count("{") == src.count("}")
    for n in (1, 255, 256, 257, 100000):
        (grid,), (block,) = _fast.launch_config(n)
        assert grid * block >= n > (grid - 1) * block


class _FakeCupy:
    """NumPy standing in for CuPy: kernels are emulated by what their source computes, and
    every call is recorded so the plan's glue (argument order, shapes, launch) is checked."""

    EMULATE = {
        "minifw_bias_none": lambda x, b: x + b,
        "minifw_bias_relu": lambda x, b: np.where(x + b < 0, 0, x + b),
        "minifw_bias_sigmoid": lambda x, b: 1 / (1 + np.exp(-(x + b))),
        "minifw_bias_tanh": lambda x, b: np.tanh(x + b),
    }

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        fake = self

        class ElementwiseKernel:
            def __init__(self, in_params: str, out_params: str, op: str, name: str) -> None:
                assert (in_params, out_params) == ("T x, T b", "T y")
                self.name, self.op = name, op

            def __call__(self, x: Any, b: Any, y: Any) -> Any:
                fake.calls.append((self.name, (x.shape, np.shape(b))))
                assert y is x, "in place on the matmul output"
                y[...] = fake.EMULATE[self.name](x, b)
                return y

        class RawKernel:
            def __init__(self, src: str, name: str) -> None:
                assert name in src
                self.name = name

            def __call__(self, grid: Any, block: Any, args: Any) -> None:
                y, b, n, w, has_bias = args
                assert all(isinstance(a, np.int32) for a in (n, w, has_bias))
                assert grid[0] * block[0] >= n and y.shape == (n, w) and y.flags.c_contiguous
                fake.calls.append((self.name, (y.shape, int(has_bias))))
                if has_bias:
                    y += b
                e = np.exp(y - y.max(axis=1, keepdims=True))
                y[...] = e / e.sum(axis=1, keepdims=True)

        self.ElementwiseKernel = ElementwiseKernel
        self.RawKernel = RawKernel
        self.matmul = np.matmul
        self.empty = np.empty
        self.asarray = np.asarray


def test_cupy_block_glue_with_a_numpy_stand_in(monkeypatch: Any) -> None:
    fake = _FakeCupy()
    monkeypatch.setattr(_fast, "_KERNELS", _fast._CupyKernels())
    for bias in (True, False):
        model = build([6, 5, 4, 4, 3], ["sigmoid", "relu", "tanh", "none"], True, bias, "float32")
        plan = model._fast_plan()
        plan.cupy, plan.xp = True, fake  # route run() to the CuPy block
        x = np.random.default_rng(7).standard_normal((9, 6)).astype(np.float32)
        fake.calls.clear()
        y = plan.run(x)
        names = [c[0] for c in fake.calls]
        assert names == (
            ["minifw_bias_sigmoid", "minifw_bias_relu", "minifw_bias_tanh", "minifw_softmax_float"]
        )
        assert fake.calls[-1][1] == ((9, 3), int(bias))
        np.testing.assert_allclose(y, naive(model, x), rtol=1e-5, atol=1e-6)
    # kernels are built once and cached
    k1 = _fast._KERNELS.elementwise(fake, _fast.RELU)
    assert _fast._KERNELS.elementwise(fake, _fast.RELU) is k1
    assert _fast._KERNELS.softmax(fake, "float32") is _fast._KERNELS.softmax(fake, "float32")


def test_describe_plan() -> None:
    model = mf.Sequential(mf.Dense(4, 3), mf.Sigmoid(), mf.Dense(3, 2), mf.Softmax())
    text = _fast.describe(model._fast_plan())
    assert text.startswith("numpy: 4→3 sigmoid, 3→2 softmax")


def _fake_cupy_module(monkeypatch: Any) -> Any:
    """A module named ``cupy`` made of NumPy and the kernel stand-ins above, installed in
    ``sys.modules`` (and the backend registry cleaned up afterwards)."""
    import importlib.machinery
    import sys
    import types

    kernels = _FakeCupy()
    mod = types.ModuleType("cupy")
    mod.__version__ = "0-fake"
    mod.__spec__ = importlib.machinery.ModuleSpec("cupy", None)
    mod.__getattr__ = lambda name: getattr(np, name)  # type: ignore[method-assign]
    mod.ElementwiseKernel = kernels.ElementwiseKernel
    mod.RawKernel = kernels.RawKernel
    mod.asnumpy = lambda a: np.array(a, copy=True)
    stream = types.SimpleNamespace(synchronize=lambda: None)
    runtime = types.SimpleNamespace(
        getDeviceCount=lambda: 1, getDeviceProperties=lambda i: {"name": b"Fake GPU"}
    )
    mod.cuda = types.SimpleNamespace(runtime=runtime, get_current_stream=lambda: stream)
    mod.kernels = kernels
    monkeypatch.setitem(sys.modules, "cupy", mod)
    monkeypatch.delitem(mf.backend._loaded, "cupy", raising=False)
    monkeypatch.setattr(mf.backend, "_loaded", dict(mf.backend._loaded))  # restored after
    monkeypatch.setattr(_fast, "_KERNELS", _fast._CupyKernels())
    return mod


def test_cupy_backend_model_and_gpu_bench_with_a_stand_in(monkeypatch: Any, tmp_path: Any) -> None:
    """The CuPy route end to end on a NumPy stand-in: the model runs through the fused
    kernels, and ``minifw bench --device cuda`` builds and times its engines."""
    import json

    from minifw import bench

    cp = _fake_cupy_module(monkeypatch)
    with mf.backend.use("cupy"):
        model = mf.Sequential(mf.Dense(784, 50), mf.Sigmoid(), mf.Dense(50, 10), mf.Softmax())
    assert model.backend.name == "cupy" and model._fast_plan().cupy
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


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
# JAX (loaded by other tests in this process) warns on any fork; the child here touches only
# NumPy, and the parent kills it after 60 s, so a hang cannot stall the suite.
@pytest.mark.filterwarnings("ignore:os.fork\\(\\) was called:RuntimeWarning")
def test_parallel_predict_works_in_a_forked_child(monkeypatch: Any) -> None:
    """The worker pool does not survive fork(): the child must start its own, not wait on
    the parent's dead threads."""
    import os

    monkeypatch.setattr(_fast, "max_threads", 2)
    model = build([64, 32, 4], ["relu", "none"], False, True, "float32")
    x = np.random.default_rng(9).random((model._fast_plan().chunk * 3, 64), dtype=np.float32)
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
def test_sigmoid_plan_saturates_without_warnings(rows: int) -> None:
    model = mf.Sequential(mf.Dense(4, 3), mf.Sigmoid(), mf.Dense(3, 2), mf.Softmax())
    model[0].weight = np.full((4, 3), -1000.0, np.float32)  # z = -4000: exp(-z) overflows
    model[0].bias = np.array([0.0, 4000.0, 8000.0], np.float32)  # 0, 0.5 and 1 after sigmoid
    x = np.ones((rows, 4), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = model(x)
        ref = model._forward(x, False, False)[0]
    np.testing.assert_array_equal(y, ref)
    hidden = mf.Sequential(model[0], model[1])(x)
    np.testing.assert_array_equal(hidden, np.tile(np.array([0.0, 0.5, 1.0], np.float32), (rows, 1)))


@pytest.mark.parametrize("rows", [1, 7, 3000])  # batch-1 block, one block, chunk-parallel
@pytest.mark.parametrize(
    "widths",
    [
        [6, 3, 20],  # a hidden softmax narrower than the output one (a slice of its scratch)
        [6, 40, 10],  # a wide hidden softmax (the row-reduce path), a narrow output
        [6, 8, 33],  # a wide output softmax
    ],
)
def test_softmax_steps_give_the_layers_bits(rows: int, widths: list[int]) -> None:
    mf.seed(4)
    model = mf.Sequential(
        mf.Dense(widths[0], widths[1]), mf.Softmax(), mf.Dense(widths[1], widths[2]), mf.Softmax()
    )
    assert model._fast_plan() is not False
    x = np.random.default_rng(5).standard_normal((rows, widths[0])).astype(np.float32) * 3
    y = model(x)
    ref = model._forward(x, False, False)[0]
    if rows <= model._plan.chunk:  # the same BLAS call on the same rows: the same bits
        np.testing.assert_array_equal(y, ref)
    else:  # BLAS may round a row's last bit differently for another number of rows
        np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(y.sum(axis=1), 1, rtol=1e-6)


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
        np.testing.assert_array_equal(y, model._forward(model.backend.asarray(x), False, False)[0])
        np.testing.assert_array_equal(y, model(x[None, :])[0])


def test_every_chunk_thread_sizes_its_buffers_for_a_full_chunk(monkeypatch: Any) -> None:
    # whichever thread takes the short last chunk first must not reallocate on a full one
    # later (that would allocate in steady state, depending on thread timing)
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(_fast, "max_threads", 2)
    with ThreadPoolExecutor(1) as helper:  # one known helper thread to ask afterwards
        monkeypatch.setattr(_fast, "_pool", lambda size: helper)
        model = build([16, 8, 4], ["sigmoid", "none"], True, True, "float32")
        plan = model._fast_plan()
        n = plan.chunk + 9
        chunk, threads = plan.split(n)
        assert threads == 2 and n % chunk != 0  # a short last chunk
        model.predict(np.ones((n, 16), np.float32))
        theirs = helper.submit(lambda: getattr(plan._tls, "cap", 0)).result()
    caps = [getattr(plan._tls, "cap", 0), theirs]
    assert min(caps) >= chunk, caps


@pytest.mark.parametrize("threads", [1, 2, 3, 4])
def test_split_gives_balanced_chunks_within_the_limits(threads: int, monkeypatch: Any) -> None:
    monkeypatch.setattr(_fast, "max_threads", threads)
    wide = build([64, 1024, 10], ["relu", "none"], True, True, "float32")._fast_plan()
    narrow = build([64, 100, 10], ["relu", "none"], True, True, "float32")._fast_plan()
    assert (wide.chunk, wide.max_chunk) == (256, 1024)  # 2**18 and 2**20 elements of 1024
    assert (narrow.chunk, narrow.max_chunk) == (1024, 1024)  # capped at MAX_CHUNK_ROWS
    for plan in (wide, narrow):
        assert plan.split(1) == (1, 1) and plan.split(plan.chunk) == (plan.chunk, 1)
        for n in (plan.chunk + 1, 1000, 3000, 8192, 10000, 50001):
            for max_rows in (None, 100, 700):
                chunk, used = plan.split(n, max_rows)
                small = plan.chunk if max_rows is None else min(plan.chunk, max_rows)
                if n <= small:
                    assert (chunk, used) == (n, 1)
                    continue
                assert 1 <= used <= threads
                if used == 1:  # one thread: chunks of the split size, one after another
                    assert chunk == small
                    continue
                big = min(plan.max_chunk, max_rows or n)
                k = -(-n // chunk)  # chunks, the last one possibly short
                assert chunk <= big
                assert k <= used * -(-n // (used * big))  # as few as the threads allow
                assert k * chunk - n < k + used  # the last one short by a few rows at most
