"""mf.gradcheck: the library's own finite-difference check of a hand-written backward."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from conftest import PORTABLE

import minifw as mf


class _WrongBackward(mf.Module):
    """y = x * weight with a backward that doubles dL/dx (a bug gradcheck must find)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.add_parameter("weight", np.linspace(0.5, 1.5, n))

    def forward(self, x: Any) -> Any:
        if self.training:
            self.x = x
        return x * self.weight

    def backward(self, grad: Any) -> Any:
        self.grads["weight"] = self.xp.sum(grad * self.x, axis=0)
        return 2 * grad * self.weight


class _NoGrad(_WrongBackward):
    def backward(self, grad: Any) -> Any:
        return grad * self.weight


@pytest.mark.parametrize("name", PORTABLE)
def test_built_in_layers_pass(name: str) -> None:
    rng = np.random.default_rng(0)
    with mf.backend.use(name):
        models = [
            mf.Dense(3, 4),
            mf.Sequential(mf.Dense(5, 4), mf.Sigmoid(), mf.Dense(4, 3), mf.Softmax()),
            mf.Sequential(mf.Dense(5, 4), mf.Tanh(), mf.Dense(4, 2)),
            mf.Sequential(mf.Conv2D(2, 3, 3, padding=1), mf.Flatten(), mf.Dense(3 * 25, 2)),
            mf.Sequential(mf.Dense(5, 4), mf.BatchNorm(4), mf.Dense(4, 2)),
        ]
    inputs = [(6, 3), (6, 5), (6, 5), (2, 2, 5, 5), (6, 5)]
    for model, shape in zip(models, inputs, strict=True):
        worst = mf.gradcheck(model, rng.standard_normal(shape), max_checks=40)
        assert worst and max(worst.values()) <= 1, (model, worst)


def test_a_wrong_backward_is_found_and_named() -> None:
    x = np.random.default_rng(1).standard_normal((4, 3))
    with pytest.raises(mf.GradientCheckError, match=r"d loss / d x\[0, 0\]") as e:
        mf.gradcheck(_WrongBackward(3), x)
    assert e.value.where == "x" and e.value.index == (0, 0)
    model = mf.Sequential(mf.Dense(3, 3), _NoGrad(3))
    with pytest.raises(mf.GradientCheckError, match=r"layer 1 .*set no gradient for 'weight'"):
        mf.gradcheck(model, x)


def test_state_and_modes_are_restored() -> None:
    mf.seed(3)
    model = mf.Sequential(mf.Dense(4, 3), mf.BatchNorm(3), mf.ReLU(), mf.Dense(3, 2))
    model.fit(np.random.default_rng(2).random((20, 4)), np.arange(20) % 2, progress=False)
    model.eval()
    before = model.state_dict()
    mf.gradcheck(model, np.random.default_rng(3).standard_normal((6, 4)), max_checks=10)
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:  # float32 weights and the running statistics, bit for bit
        assert after[k].dtype == np.float32 and np.array_equal(before[k], after[k]), k
    assert not any(m.training for m in model.modules())


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="gradcheck expects a minifw Module"):
        mf.gradcheck(lambda x: x, np.ones(3))  # type: ignore[arg-type]
