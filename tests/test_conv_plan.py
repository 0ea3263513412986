"""The inference plan's groups: batch-independent layers with a convolution run a large batch
in chunks (on several threads), give the layers' results, and keep memory to one chunk."""

from __future__ import annotations

import threading
import tracemalloc
from typing import Any

import numpy as np
import pytest
from conftest import simple_convnet

import minifw as mf
from minifw import plan


def layer_by_layer(model: mf.Sequential, x: np.ndarray) -> np.ndarray:
    h = x
    for m in model:
        h = m._forward(h, False, False)[0]
    return np.asarray(h)


def test_explain_groups_conv_layers_and_keeps_dense_plans(monkeypatch: pytest.MonkeyPatch) -> None:
    # without the compiled kernel (its labels: tests/test_native_conv.py)
    monkeypatch.setenv("MINIFW_NATIVE", "0")
    assert plan.explain(simple_convnet()) == (
        "numpy: {Conv2D 1→30 5x5 relu | MaxPool2D 2x2 | Flatten | "
        "[Dense 4320→100 relu, Dense 100→10 softmax]}"
    )
    # only ReLU fuses into a convolution; a second activation stays a layer
    other = mf.Sequential(
        mf.Conv2D(1, 2, 3), mf.Sigmoid(), mf.Conv2D(2, 2, 3), mf.ReLU(), mf.ReLU()
    )
    assert plan.explain(other) == ("numpy: {Conv2D 1→2 3x3 | Sigmoid | Conv2D 2→2 3x3 relu | ReLU}")
    dense = mf.Sequential(mf.Dense(784, 50), mf.Sigmoid(), mf.Dense(50, 10), mf.Softmax())
    assert plan.explain(dense) == "numpy: [Dense 784→50 sigmoid, Dense 50→10 softmax]"
    flat = mf.Sequential(mf.Flatten(), mf.Dense(784, 10), mf.Softmax())
    assert plan.explain(flat) == "numpy: Flatten | [Dense 784→10 softmax]"
    # a layer that is not batch-independent ends a group
    sm0 = mf.Sequential(mf.Conv2D(1, 2, 3), mf.Flatten(), mf.Softmax(axis=0))
    assert plan.explain(sm0) == "numpy: {Conv2D 1→2 3x3 | Flatten} | Softmax"


@pytest.mark.parametrize("n", [1, 3, 40])
def test_fused_conv_relu_gives_the_layers_bits(n: int) -> None:
    """Conv2D + ReLU as one plan step (ReLU applied chunk by chunk) gives exactly the
    layers' result, one sample or a batch."""
    model = mf.Sequential(mf.Conv2D(4, 6, 3, padding=1), mf.ReLU(), mf.Conv2D(6, 3, 2), mf.ReLU())
    x = np.random.default_rng(n).standard_normal((n, 4, 9, 7)).astype(np.float32)
    y = model.predict(x)
    assert y.dtype == np.float32 and (y >= 0).all() and (y == 0).any()
    np.testing.assert_array_equal(y, layer_by_layer(model, x))
    np.testing.assert_array_equal(model(x[0]), layer_by_layer(model, x[:1])[0])


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("n", [1, 50, 700])
def test_chunked_predict_equals_the_layers(threads: int, n: int) -> None:
    model = mf.Sequential(
        mf.Conv2D(3, 8, 3, padding=1),
        mf.BatchNorm(8),
        mf.ReLU(),
        mf.MaxPool2D(2),
        mf.Dropout(0.5),
        mf.Conv2D(8, 4, (3, 1), stride=(2, 1)),
        mf.AvgPool2D(2, padding=1),
        mf.Flatten(),
        mf.Dense(4 * 2 * 3, 6),
        mf.Softmax(),
    )
    model[1].running_mean = np.linspace(-1, 1, 8)
    model[1].running_var = np.linspace(0.5, 2, 8)
    b = model.backend
    old = b.max_threads
    b.max_threads = threads
    try:
        x = np.random.default_rng(n).standard_normal((n, 3, 10, 8)).astype(np.float32)
        y = model.predict(x)
        np.testing.assert_allclose(y, layer_by_layer(model, x), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(model.predict(x, batch_size=64), y, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(model(x), y, rtol=1e-5, atol=1e-6)
    finally:
        b.max_threads = old


def test_large_batches_run_on_several_threads(monkeypatch: Any) -> None:
    model = simple_convnet()
    model.backend.max_threads = 2
    seen: set[int] = set()
    b = model.backend
    orig = b.conv_chain  # the Conv2D + ReLU + MaxPool2D of each chunk

    def spy(x: Any, steps: Any) -> Any:
        seen.add(threading.get_ident())
        assert x.shape[0] <= plan.GROUP_MAX_ROWS
        return orig(x, steps)

    monkeypatch.setattr(b, "conv_chain", spy)
    try:
        model.predict(np.zeros((1000, 1, 28, 28), np.float32))
    finally:
        model.backend.max_threads = None
    assert len(seen) == 2


def test_predict_memory_stays_at_a_chunk() -> None:
    """Traced peak of predict at batch 10,000 (SimpleConvNet, fresh model): at most 1.5x
    (input + the two largest activations); the plan keeps it near the input alone."""
    model = simple_convnet()
    x = np.random.default_rng(0).random((10_000, 1, 28, 28), dtype=np.float32)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        y = model.predict(x)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert y.shape == (10_000, 10)
    acts = 10_000 * 4 * (30 * 24 * 24 + 30 * 12 * 12)  # conv output and pooled output
    assert peak + x.nbytes <= 1.5 * (x.nbytes + acts)
    # far below: the input's size plus some chunks' activations and im2col buffers
    assert peak < 0.5 * x.nbytes + 64 * 2**20, peak


def test_torch_and_strict_groups_match_numpy() -> None:
    pytest.importorskip("torch")
    mf.seed(3)
    model = mf.Sequential(
        mf.Conv2D(1, 3, 3), mf.ReLU(), mf.MaxPool2D(2), mf.Flatten(), mf.Dense(12, 4)
    )
    x = np.random.default_rng(0).standard_normal((600, 1, 6, 6)).astype(np.float32)
    ref = model.predict(x)
    for engine in ("torch", "array_api_strict"):
        model.to(engine)
        np.testing.assert_allclose(model.predict(x), ref, rtol=1e-5, atol=1e-6)
    model.to("numpy")


def test_conv_chain_in_the_plan_checks_each_layer() -> None:
    """Conv2D + ReLU + MaxPool2D + Conv2D run as one chain in predict; a bad input still
    gets the ShapeError of the layer that rejects it, and one sample (C, H, W) works."""
    model = mf.Sequential(
        mf.Conv2D(3, 8, 3, padding=1), mf.ReLU(), mf.MaxPool2D(2), mf.Conv2D(8, 4, 3)
    )
    x = np.random.default_rng(0).standard_normal((6, 3, 10, 10)).astype(np.float32)
    ref = layer_by_layer(model, x)
    np.testing.assert_allclose(model.predict(x), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model(x[2]), ref[2], rtol=1e-5, atol=1e-5)
    with pytest.raises(mf.ShapeError, match=r"layer 0 \(Conv2D 3→8 3x3\).*\(2, 5, 10, 10\)"):
        model.predict(np.zeros((2, 5, 10, 10), np.float32))
    with pytest.raises(mf.ShapeError, match=r"layer 3 \(Conv2D 8→4 3x3\).*kernel"):
        model.predict(np.zeros((2, 3, 3, 3), np.float32))
