"""Batch inference on dask arrays: lazy, chunk by chunk, on a real multi-process cluster."""

from __future__ import annotations

import importlib.util
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

import minifw as mf

da = pytest.importorskip(
    "dask.array", reason='backend "dask" needs dask (pip install "minifw[dask]")'
)


def make_model(n_in: int = 20) -> mf.Sequential:
    mf.seed(7)
    return mf.Sequential(
        mf.Dense(n_in, 32), mf.Sigmoid(), mf.Dense(32, 16), mf.ReLU(), mf.Dense(16, 5), mf.Softmax()
    )


def data(n: int = 1000, d: int = 20) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((n, d)).astype(np.float32)


def new_keys(y: da.Array, x: da.Array) -> dict:
    g = dict(y.__dask_graph__())
    old = set(dict(x.__dask_graph__()))
    return {k: v for k, v in g.items() if k not in old}


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip(
        "distributed", reason='dask.distributed is needed (pip install "minifw[dask]")'
    )
    saved = dict(os.environ)  # distributed sets MALLOC_TRIM_THRESHOLD_, OMP_NUM_THREADS, ...
    try:
        with (
            distributed.LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
            ) as cluster,
            distributed.Client(cluster) as c,
        ):
            yield c
    finally:  # ... for its workers; later tests' subprocesses must not inherit them
        os.environ.clear()
        os.environ.update(saved)


def test_predict_on_a_two_process_cluster_equals_in_memory(client) -> None:
    model = make_model()
    x = data()
    ref = model.predict(x)
    xd = da.from_array(x, chunks=(128, 20))  # 8 chunks
    y = model.predict(xd)
    assert isinstance(y, da.Array) and y.chunks == ((128,) * 7 + (104,), (5,))
    assert len(client.scheduler_info()["workers"]) == 2
    out = client.compute(y).result()
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-7)
    assert out.dtype == np.float32
    # the chunks ran in the worker processes, which had to import minifw to do so
    ran = client.run(lambda: "minifw" in sys.modules)
    assert any(ran.values())
    # a model on the dask backend, given an in-memory array, does the same
    model.to("dask")
    np.testing.assert_allclose(model.predict(x, batch_size=300).compute(), ref, rtol=1e-6)


def test_weights_are_one_key_of_the_graph_not_one_per_chunk() -> None:
    model = make_model()
    weight_bytes = sum(a.nbytes for a in model.state_dict().values())
    xd = da.from_array(data(), chunks=(100, 20))  # 10 chunks
    y = model.predict(xd)
    sizes = [len(pickle.dumps(v)) for v in new_keys(y, xd).values()]
    assert len(sizes) == 10 + 1  # one task per chunk, plus the model
    assert sum(s >= weight_bytes for s in sizes) == 1
    assert sum(sizes) < 2 * weight_bytes  # the chunk tasks only refer to the model's key


def test_a_numpy_model_given_a_dask_array_is_lazy() -> None:
    model = make_model()
    x = data(300)
    y = model.predict(da.from_array(x, chunks=100))
    assert isinstance(y, da.Array)
    # the result is a snapshot: changing the model afterwards does not change it
    before = model.predict(x)
    model[0].weight = np.zeros((20, 32))
    np.testing.assert_allclose(y.compute(), before, rtol=1e-6)
    assert model.backend.name == "numpy"  # the model itself was not moved


@pytest.mark.parametrize("engine", ["torch", "jax", "array_api_strict"])
def test_any_backend_model_maps_over_dask_chunks(engine: str) -> None:
    pytest.importorskip(engine, reason=f"backend {engine!r} is not installed")
    model = make_model()
    x = data(250)
    ref = model.predict(x)
    model.to(engine)
    y = model.predict(da.from_array(x, chunks=60))
    assert isinstance(y, da.Array)
    np.testing.assert_allclose(y.compute(), ref, rtol=1e-5, atol=1e-6)
    assert model.backend.name == engine


def test_chunked_feature_axes_are_merged_and_rank_changes() -> None:
    mf.seed(3)
    model = mf.Sequential(mf.Flatten(), mf.Dense(12, 4), mf.Tanh())
    x = np.random.default_rng(2).standard_normal((90, 3, 4)).astype(np.float32)
    y = model.predict(da.from_array(x, chunks=(25, 2, 2)), batch_size=7)
    assert y.shape == (90, 4) and y.chunks == ((25, 25, 25, 15), (4,))
    np.testing.assert_allclose(y.compute(), model.predict(x), rtol=1e-6)


def test_one_sample_and_integer_input() -> None:
    model = make_model()
    x = np.arange(20)
    y = model.predict(da.from_array(x, chunks=5))
    assert y.shape == (5,)
    np.testing.assert_allclose(y.compute(), model.predict(x), rtol=1e-6)
    assert y.dtype == np.float32


def test_errors_come_at_the_call_not_at_compute() -> None:
    model = make_model()
    with pytest.raises(mf.ShapeError, match=r"layer 0 \(Dense 20→32\).*\(100, 21\)"):
        model.predict(da.zeros((100, 21), chunks=50))
    with pytest.raises(TypeError, match="numeric"):
        model.predict(da.from_array(np.array([["a"] * 20]), chunks=1))
    with pytest.raises(mf.ShapeError, match="scalar"):
        model.to("dask").predict(da.ones(()))


def test_dask_backend_forward_backward_is_lazy() -> None:
    mf.seed(0)
    with mf.backend.use("dask"):
        model = mf.Sequential(mf.Dense(4, 3), mf.Sigmoid())
    x = np.ones((6, 4), np.float32)
    model.train()
    y = model(x)
    dx = model.backward(np.ones((6, 3), np.float32))
    assert isinstance(y, da.Array) and isinstance(dx, da.Array)
    assert isinstance(model[0].grads["weight"], da.Array)
    ref = mf.Sequential(mf.Dense(4, 3), mf.Sigmoid()).load_state_dict(model.state_dict())
    ref.train()
    np.testing.assert_allclose(mf.to_numpy(y), ref(x), rtol=1e-6)
    np.testing.assert_allclose(mf.to_numpy(dx), ref.backward(np.ones((6, 3), np.float32)))


def test_devices_names_the_scheduler(client) -> None:
    b = mf.backend.get("dask")
    assert b.devices()[0].startswith("distributed ") and "2 workers" in b.devices()[0]


def _example():
    path = Path(__file__).resolve().parent.parent / "examples" / "dask_inference.py"
    spec = importlib.util.spec_from_file_location("minifw_example_dask_inference", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    import cloudpickle

    cloudpickle.register_pickle_by_value(mod)  # the workers cannot import it by name
    return mod


def test_example_on_a_scheduler_address(client, tmp_path: Path) -> None:
    ex = _example()
    env = os.environ.get("MINIFW_DATA_DIR")
    data_dir = Path(env) if env and Path(env).is_dir() else None
    model, have_mnist = ex.build_model(data_dir)
    rows = tmp_path / "rows.npy"
    labels = ex.make_dataset(rows, 2500, data_dir if have_mnist else None, block=1000)
    out = tmp_path / "pred.npy"
    r = ex.run(
        scheduler=client.scheduler.address, data_file=rows, out=out, chunk_rows=600,
        data_dir=data_dir,
    )  # fmt: skip
    assert (r["rows"], r["chunks"], r["workers"]) == (2500, 5, 2)
    expect = model.predict(np.load(rows)).argmax(axis=1)
    np.testing.assert_array_equal(np.load(out), expect)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["rows.npy", "pred.npy"] + (["rows.labels.npy"] if labels else [])
    )  # no temporary file left
    if have_mnist:
        assert r["accuracy"] == pytest.approx(np.mean(expect == np.load(labels)))
        assert r["accuracy"] > 0.9


def test_a_model_in_training_mode_is_copied_for_inference_and_left_alone() -> None:
    model = make_model()
    x = data(120)
    ref = model.predict(x)
    model.train()
    model(x[:10])
    model.backward(np.ones((10, 5), np.float32))
    grads = {k: v.copy() for k, v in model[0].grads.items()}
    y = model.predict(da.from_array(x, chunks=50))
    np.testing.assert_allclose(y.compute(), ref, rtol=1e-6)  # inference mode, same weights
    assert model.training
    for k, v in grads.items():
        np.testing.assert_array_equal(model[0].grads[k], v)
    model.backward(np.ones((10, 5), np.float32))  # the training forward's cache is intact
    for k, v in grads.items():
        np.testing.assert_array_equal(model[0].grads[k], v)
