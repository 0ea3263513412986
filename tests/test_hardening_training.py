"""Hardening of training and model construction against faults and hostile input.

* a non-finite input pixel stops ``fit`` with NonFiniteLossError at the step where the loss
  or a gradient goes non-finite, naming epoch, step and what, and keeps the weights from
  before that step (SGD and Adam, NumPy and array_api_strict);
* empty validation data is refused before any step;
* a layer used twice in one Sequential is refused (construction, ``append``, ``[i] =``);
  one layer in two different models is allowed and shared;
* bad ``seed``, an optimizer reused on a model of other shapes, a non-finite ``init`` and
  bad ``MINIFW_NUM_THREADS`` / ``MINIFW_FUSED_GEMM`` values raise clear errors (the
  environment variables at the NumPy backend's first use, whatever the batch size).
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import minifw as mf
from minifw.backend import _numpy
from tests.conftest import assert_namespace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mlp(hidden_act: type[mf.Module] = mf.ReLU, hidden: int = 32) -> mf.Sequential:
    mf.seed(7)
    return mf.Sequential(mf.Dense(784, hidden), hidden_act(), mf.Dense(hidden, 10), mf.Softmax())


def _weights(model: mf.Sequential) -> list[np.ndarray]:
    return [np.array(v, copy=True) for v in model.state_dict().values()]


def _np(b: Any, a: Any) -> np.ndarray:
    return np.asarray(b.to_numpy(a))


# -- 5. a non-finite pixel ------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("act", [mf.ReLU, mf.Tanh], ids=["relu", "tanh"])
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_inf_pixel_stops_fit_with_pre_step_weights(
    on_backend: Any, backend_name: str, optimizer: str, act: type[mf.Module]
) -> None:
    """The issue's case: one inf pixel; with ReLU the loss goes NaN, with Tanh the loss
    stays finite (tanh(inf) = 1) and the first layer's gradient goes non-finite."""
    rng = np.random.default_rng(0)
    x = rng.random((64, 784), dtype="f4")
    x[5, 3] = np.inf
    y = np.arange(64) % 10
    m = _mlp(act)
    before = _weights(m)
    with pytest.raises(mf.NonFiniteLossError) as info:
        m.fit(x, y, batch_size=64, epochs=3, optimizer=optimizer, shuffle=False, progress=False)
    e = info.value
    assert (e.epoch, e.step) == (1, 1)
    msg = str(e)
    assert "epoch 1, step 1 of 1" in msg
    if act is mf.ReLU:
        assert "the loss became nan" in msg
    else:
        assert "the gradient of 0.weight" in msg and "not finite" in msg
    assert e.history.epoch == []
    assert_namespace(m[0].weight, backend_name)
    assert np.isfinite(_np(on_backend, m[0].weight)).all()
    for a, b in zip(before, _weights(m), strict=True):
        assert np.array_equal(a, b)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_inf_pixel_in_a_later_step_keeps_the_previous_steps_weights(
    on_backend: Any, optimizer: str
) -> None:
    """The bad pixel is in the second batch: the model ends with exactly the weights that
    one clean step on the first batch gives."""
    rng = np.random.default_rng(1)
    x = rng.random((128, 784), dtype="f4")
    y = np.arange(128) % 10
    clean = _mlp(mf.Tanh)
    clean.fit(x[:64], y[:64], batch_size=64, epochs=1, optimizer=optimizer, shuffle=False,
              progress=False)  # fmt: skip
    x[70, 3] = -np.inf
    m = _mlp(mf.Tanh)
    with pytest.raises(mf.NonFiniteLossError, match=r"epoch 1, step 2 of 2") as info:
        m.fit(x, y, batch_size=64, epochs=3, optimizer=optimizer, shuffle=False, progress=False)
    assert (info.value.epoch, info.value.step) == (1, 2)
    for a, b in zip(_weights(clean), _weights(m), strict=True):
        assert np.array_equal(a, b)


def test_update_that_overflows_is_undone(on_backend: Any) -> None:
    """Finite gradients, a learning rate so large that the update overflows float32: the
    update is undone and the error names the parameter."""
    rng = np.random.default_rng(2)
    x = rng.random((32, 784), dtype="f4") * 1000
    y = np.arange(32) % 10
    m = _mlp()
    before = _weights(m)
    with (
        np.errstate(over="ignore"),
        pytest.raises(mf.NonFiniteLossError, match=r"the update made .*2\.weight.* non-finite"),
    ):
        m.fit(x, y, batch_size=32, optimizer=mf.optim.SGD(lr=1e36), shuffle=False,
              progress=False)  # fmt: skip
    for a, b in zip(before, _weights(m), strict=True):
        assert np.array_equal(a, b)


# -- 6. empty validation data -------------------------------------------------------------------


def test_empty_validation_data_is_refused_before_any_step(on_backend: Any) -> None:
    rng = np.random.default_rng(3)
    x = rng.random((64, 784), dtype="f4")
    y = np.arange(64) % 10
    m = _mlp()
    before = _weights(m)
    opt = mf.optim.Adam()
    with pytest.raises(ValueError, match="validation_data is empty"):
        m.fit(x, y, validation_data=(x[:0], y[:0]), optimizer=opt, progress=False)
    assert opt.t == 0
    for a, b in zip(before, _weights(m), strict=True):
        assert np.array_equal(a, b)


# -- 7. one layer twice --------------------------------------------------------------------------


def test_layer_used_twice_is_refused_at_construction() -> None:
    d = mf.Dense(10, 10)
    with pytest.raises(ValueError, match=r"Dense 10→10 at position 2 is the same object as the one at position 0"):  # fmt: skip
        mf.Sequential(d, mf.Tanh(), d)
    act = mf.Tanh()  # a parameter-free layer keeps a forward cache too
    with pytest.raises(ValueError, match="position 3 .* position 1"):
        mf.Sequential(mf.Dense(10, 10), act, mf.Dense(10, 10), act)


def test_layer_used_twice_is_refused_in_append_setitem_and_nesting() -> None:
    d = mf.Dense(10, 10)
    m = mf.Sequential(d, mf.Tanh(), mf.Dense(10, 10))
    with pytest.raises(ValueError, match="position 3 .* position 0"):
        m.append(d)
    with pytest.raises(ValueError, match="position 2 .* position 0"):
        m[2] = d
    with pytest.raises(ValueError, match=r"position 3\.1 .* position 0"):
        m.append(mf.Sequential(mf.Tanh(), d))
    inner = mf.Sequential(mf.Tanh(), mf.Dense(10, 10))
    inner._modules.append(d)  # slipped past the checks: still refused when nested
    with pytest.raises(ValueError, match=r"position 1\.2 .* position 0"):
        mf.Sequential(d, inner)
    assert len(m) == 3 and m[2] is not d  # the refused calls changed nothing
    m[0] = d  # putting a layer back at its own position is fine
    m[0] = mf.Dense(10, 10)
    m[2] = d  # once it has left position 0
    assert m[2] is d
    m.append(copy.deepcopy(d))  # a copy is a separate layer
    assert len(m) == 4


def test_one_layer_in_two_models_is_shared() -> None:
    """Allowed (documented in Sequential): both models read and train the same arrays."""
    d = mf.Dense(4, 3)
    a = mf.Sequential(d, mf.Softmax())
    b = mf.Sequential(mf.Dense(4, 4), mf.Tanh(), d)
    x = np.random.default_rng(4).random((8, 4), dtype="f4")
    before = np.array(d.weight, copy=True)
    a.fit(x, np.arange(8) % 3, epochs=2, batch_size=4, optimizer="sgd", progress=False)
    assert not np.array_equal(before, d.weight)
    assert b[2].weight is d.weight  # the same array: b sees a's training
    b.fit(x, np.arange(8) % 3, loss="cross_entropy", optimizer="sgd", progress=False)
    np.testing.assert_array_equal(a.predict(x), mf.Sequential(copy.deepcopy(d), mf.Softmax())(x))


# -- 8. seeds, optimizers, init, environment variables -------------------------------------------


@pytest.mark.parametrize("seed", ["abc", -1, 1.5, True])
def test_bad_seed_is_refused(seed: Any) -> None:
    m = _mlp()
    x = np.zeros((4, 784), "f4")
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        m.fit(x, np.arange(4), seed=seed, progress=False)


def test_optimizer_reused_on_other_shapes_names_the_parameter(on_backend: Any) -> None:
    """NumPy updates all parameters in one flat buffer, array_api_strict one parameter at
    a time: both name the parameter whose state does not fit."""
    x = np.random.default_rng(5).random((16, 784), dtype="f4")
    y = np.arange(16) % 10
    opt = mf.optim.Adam()
    _mlp(hidden=32).fit(x, y, optimizer=opt, progress=False)
    other = _mlp(hidden=16)
    before = _weights(other)
    with pytest.raises(mf.ShapeError, match=r"parameter '0\.weight' has shape \(784, 32\)") as e:
        other.fit(x, y, optimizer=opt, progress=False)
    assert "the parameter has (784, 16)" in str(e.value) and "another model" in str(e.value)
    for a, b in zip(before, _weights(other), strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("init", [float("inf"), float("-inf"), float("nan"), -1.0])
def test_non_finite_or_negative_init_is_refused(init: float) -> None:
    with pytest.raises(ValueError, match="init must be a name or a non-negative finite float"):
        mf.Dense(3, 4, init=init)


@pytest.fixture
def env_reset(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Environment changes seen by the NumPy engine's readers; forgotten afterwards."""
    mf.backend._reset_for_tests()
    yield monkeypatch
    monkeypatch.undo()
    mf.backend._reset_for_tests()


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("MINIFW_NUM_THREADS", "0"),
        ("MINIFW_NUM_THREADS", "-5"),
        ("MINIFW_NUM_THREADS", "lots"),
        ("MINIFW_FUSED_GEMM", "2"),
        ("MINIFW_FUSED_GEMM", "yes"),
    ],
)
def test_bad_env_var_is_refused_when_the_backend_starts(
    env_reset: pytest.MonkeyPatch, var: str, value: str
) -> None:
    env_reset.setenv(var, value)
    with pytest.raises(mf.BackendError, match=f"{var}={value!r}"):
        _numpy.load()
    env_reset.setenv(var, "1")
    mf.backend._reset_for_tests()
    assert _numpy.load().threads() >= 1


@pytest.mark.parametrize(
    ("var", "value"), [("MINIFW_NUM_THREADS", "-5"), ("MINIFW_FUSED_GEMM", "2")]
)
def test_bad_env_var_is_refused_at_first_use_at_batch_one(var: str, value: str) -> None:
    """A fresh interpreter: a one-row ``model(x)`` (no large batch, no chunks) already
    raises, naming the variable and the value."""
    code = (
        "import numpy as np, minifw as mf\n"
        "m = mf.Sequential(mf.Dense(3, 2), mf.Softmax())\n"
        "print(m(np.ones((1, 3), 'f4')))\n"
    )
    env = {**os.environ, var: value, "PYTHONPATH": ROOT}
    r = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode != 0
    assert f"BackendError: {var}={value!r}" in r.stderr
