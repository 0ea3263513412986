"""AdaGrad and RMSprop (the book's ch. 6): the same steps as torch.optim, on every engine."""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import pytest

import minifw as mf
from minifw import optim

HAS_TORCH = importlib.util.find_spec("torch") is not None
torch_only = pytest.mark.skipif(not HAS_TORCH, reason="needs torch")

ADAGRAD = [
    {},
    {"lr": 0.1, "lr_decay": 0.01},
    {"lr": 0.05, "weight_decay": 0.1, "initial_accumulator_value": 0.5, "eps": 1e-6},
]
RMSPROP = [
    {},
    {"lr": 0.02, "alpha": 0.9, "momentum": 0.8},
    {"lr": 0.01, "centered": True, "weight_decay": 0.05},
    {"lr": 0.01, "centered": True, "momentum": 0.5, "eps": 1e-4},
]


def _run_pair(mine: optim.Optimizer, theirs: Any, engine: str, steps: int = 6) -> None:
    import torch

    with mf.backend.use(engine):
        mf.seed(0)
        model = mf.Sequential(mf.Dense(4, 3, dtype="float64"), mf.Dense(3, 2, dtype="float64"))
    params = [torch.tensor(a, requires_grad=True) for a in model.state_dict().values()]
    topt = theirs(params)
    rng = np.random.default_rng(1)
    for _ in range(steps):
        grads = [rng.standard_normal(tuple(p.shape)) for p in params]
        for (_, m, n), g in zip(model.named_parameter_slots(), grads, strict=True):
            m.grads[n] = m.backend.asarray(g)
        mine.step(model)
        for p, g in zip(params, grads, strict=True):
            p.grad = torch.tensor(g)
        topt.step()
    for (key, a), p in zip(model.state_dict().items(), params, strict=True):
        np.testing.assert_allclose(a, p.detach().numpy(), rtol=1e-12, atol=1e-14, err_msg=key)


@torch_only
@pytest.mark.parametrize("engine", ["numpy", "array_api_strict", "torch"])
@pytest.mark.parametrize("kw", ADAGRAD)
def test_adagrad_matches_torch(kw: dict[str, Any], engine: str) -> None:
    import torch

    _run_pair(optim.AdaGrad(**kw), lambda p: torch.optim.Adagrad(p, **kw), engine)


@torch_only
@pytest.mark.parametrize("engine", ["numpy", "array_api_strict", "torch"])
@pytest.mark.parametrize("kw", RMSPROP)
def test_rmsprop_matches_torch(kw: dict[str, Any], engine: str) -> None:
    import torch

    _run_pair(optim.RMSprop(**kw), lambda p: torch.optim.RMSprop(p, **kw), engine)


def test_defaults_names_and_state_dict() -> None:
    a = optim.get("adagrad")
    assert isinstance(a, optim.AdaGrad)
    assert a.hyperparameters() == {
        "lr": 0.01, "lr_decay": 0.0, "weight_decay": 0.0,
        "initial_accumulator_value": 0.0, "eps": 1e-10,
    }  # fmt: skip
    r = optim.get("RMSprop")
    assert isinstance(r, optim.RMSprop)
    assert r.hyperparameters() == {
        "lr": 0.01, "alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0,
        "momentum": 0.0, "centered": False,
    }  # fmt: skip
    assert optim.RMSprop(momentum=0.9, centered=True).state_names == (
        "square_avg", "momentum_buffer", "grad_avg",
    )  # fmt: skip
    # a saved state continues the same trajectory
    x = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)
    y = np.arange(16) % 2
    for make in (lambda: optim.AdaGrad(lr=0.1, initial_accumulator_value=0.1), optim.RMSprop):
        mf.seed(0)
        m1 = mf.Sequential(mf.Dense(4, 2), mf.Softmax())
        m2 = mf.Sequential(mf.Dense(4, 2), mf.Softmax())
        m2.load_state_dict(m1.state_dict())
        o1 = make()
        m1.fit(x, y, optimizer=o1, epochs=2, shuffle=False, batch_size=4, progress=False)
        o2 = make()
        m2.fit(x, y, optimizer=o2, epochs=1, shuffle=False, batch_size=4, progress=False)
        o3 = make().load_state_dict(o2.state_dict())
        m2.fit(x, y, optimizer=o3, epochs=1, shuffle=False, batch_size=4, progress=False)
        for k, v in m1.state_dict().items():
            np.testing.assert_allclose(m2.state_dict()[k], v, rtol=1e-6, err_msg=k)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: optim.AdaGrad(lr=-1), "lr"),
        (lambda: optim.AdaGrad(lr_decay=-0.1), "lr_decay"),
        (lambda: optim.AdaGrad(initial_accumulator_value=-1), "initial_accumulator_value"),
        (lambda: optim.RMSprop(alpha=1.5), "alpha"),
        (lambda: optim.RMSprop(momentum=1.0), "momentum"),
        (lambda: optim.RMSprop(eps=-1), "eps"),
    ],
)
def test_bad_hyperparameters(make: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()
