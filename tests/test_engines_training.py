"""Training on torch and jax (and the other Array API engines) agrees with NumPy.

Losses, backward and ``fit`` run on every installed engine through the portable path
(functional updates: JAX arrays are immutable); gradients and trained weights must match
NumPy's within float32 tolerance.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import pytest
from conftest import assert_namespace
from hypothesis import given, settings
from hypothesis import strategies as st
from test_engines import need

import minifw as mf

TRAINABLE = ["array_api_strict", "torch", "jax"]


def net(seed: int, name: str, sizes: tuple[int, ...] = (6, 5, 3), act: Any = mf.Tanh) -> Any:
    mf.seed(seed)
    mods: list[mf.Module] = []
    with mf.backend.use(name):
        for i in range(len(sizes) - 1):
            mods += [mf.Dense(sizes[i], sizes[i + 1]), act()]
        mods[-1] = mf.Softmax()
        return mf.Sequential(*mods)


def grads_of(model: Any) -> dict[str, Any]:
    return {key: m.grads[n] for key, m, n in model.named_parameter_slots()}


@pytest.mark.parametrize("name", TRAINABLE)
@settings(max_examples=15)
@given(
    seed=st.integers(0, 1000),
    n=st.integers(1, 6),
    loss=st.sampled_from(["cross_entropy", "mse"]),
    act=st.sampled_from([mf.Tanh, mf.Sigmoid, mf.ReLU]),
)
def test_loss_backward_gives_numpy_gradients(
    name: str, seed: int, n: int, loss: str, act: Any
) -> None:
    need(name)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 6)).astype(np.float32)
    labels = rng.integers(0, 3, n)
    target = labels if loss == "cross_entropy" else np.eye(3, dtype=np.float32)[labels]
    out = {}
    for engine in ("numpy", name):
        model = net(seed, engine, act=act).train()
        lf = mf.losses.get(loss)
        value = lf(model(x), target)
        dx = model.backward(lf.backward())
        out[engine] = (value, dx, grads_of(model))
    (v0, dx0, g0), (v1, dx1, g1) = out["numpy"], out[name]
    assert v1 == pytest.approx(v0, rel=1e-5, abs=1e-6)
    assert_namespace(dx1, name)
    np.testing.assert_allclose(mf.to_numpy(dx1), dx0, rtol=1e-4, atol=1e-6)
    for k in g0:
        assert_namespace(g1[k], name)
        np.testing.assert_allclose(mf.to_numpy(g1[k]), g0[k], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", TRAINABLE)
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_fit_gives_numpy_weights(name: str, optimizer: str) -> None:
    need(name)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)
    results = {}
    for engine in ("numpy", name):
        model = net(3, engine)
        opt = mf.optim.SGD(lr=0.1, momentum=0.9) if optimizer == "sgd" else mf.optim.Adam(lr=0.01)
        hist = model.fit(x, y, optimizer=opt, epochs=3, batch_size=16, seed=5, progress=False)
        results[engine] = (model, hist)
    (m0, h0), (m1, h1) = results["numpy"], results[name]
    assert m1.backend.name == name
    for _, m, n in m1.named_parameter_slots():
        assert_namespace(m.get_param(n), name)  # updates stayed on the engine
    np.testing.assert_allclose(h1.history["loss"], h0.history["loss"], rtol=1e-4)
    assert h1.history["loss"][-1] < h1.history["loss"][0]  # it learned something
    sd0, sd1 = m0.state_dict(), m1.state_dict()
    for k in sd0:
        np.testing.assert_allclose(sd1[k], sd0[k], rtol=1e-4, atol=1e-5)
        assert not np.array_equal(sd1[k], net(3, "numpy").state_dict()[k])  # it moved
    np.testing.assert_allclose(m1.predict(x), m0.predict(x), rtol=1e-4, atol=1e-6)


def test_jax_training_never_mutates_an_array() -> None:
    """JAX arrays are immutable; the old weight arrays are still intact after a fit."""
    need("jax")
    model = net(1, "jax")
    before = [np.array(p) for p in model.parameters()]
    old = model.parameters()
    x = np.random.default_rng(1).standard_normal((20, 6)).astype(np.float32)
    model.fit(x, np.arange(20) % 3, optimizer="sgd", epochs=1, batch_size=8, progress=False)
    for a, b in zip(old, before, strict=True):
        np.testing.assert_array_equal(np.asarray(a), b)
    assert all(p is not q for p, q in zip(model.parameters(), old, strict=True))


def test_train_on_torch_then_infer_anywhere() -> None:
    need("torch")
    x = np.random.default_rng(2).standard_normal((30, 6)).astype(np.float32)
    model = net(4, "torch")
    model.fit(x, np.arange(30) % 3, epochs=2, batch_size=10, progress=False)
    ref = model.predict(x)
    for name in ("jax", "dask", "array_api_strict", "numpy"):
        if importlib.util.find_spec(name) is None:
            continue  # that engine is not installed; the others still run
        np.testing.assert_allclose(mf.to_numpy(model.to(name).predict(x)), ref, rtol=1e-5)
