"""BatchNorm and Dropout: gradients (finite differences, torch autograd), properties,
running statistics as PyTorch, buffers, reproducible masks; and the whole-network
exactness check against PyTorch (conv-BN-ReLU-pool-Dense, SGD+momentum and Adam)."""

from __future__ import annotations

import importlib.util
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_conv_layers import analytic_grads, check_layer, numeric_grads

import minifw as mf

HAS_TORCH = importlib.util.find_spec("torch") is not None
torch_only = pytest.mark.skipif(not HAS_TORCH, reason="needs torch")


# -- BatchNorm ------------------------------------------------------------------------------
def _bn(c: int, seed: int = 0) -> mf.BatchNorm:
    rng = np.random.default_rng(seed)
    bn = mf.BatchNorm(c, dtype="float64")
    bn.weight = rng.uniform(0.5, 1.5, c)
    bn.bias = rng.standard_normal(c)
    return bn


@pytest.mark.parametrize("shape", [(5, 3), (4, 2, 3, 5), (3, 2, 4)])
def test_batchnorm_gradients_by_finite_differences(shape: tuple[int, ...]) -> None:
    check_layer(_bn(shape[1]), shape)


@torch_only
@pytest.mark.parametrize("shape", [(6, 4), (3, 2, 5, 4)])
def test_batchnorm_matches_torch(shape: tuple[int, ...]) -> None:
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(1)
    c = shape[1]
    bn = _bn(c).train()
    bn.running_mean = rng.standard_normal(c)
    bn.running_var = rng.uniform(0.5, 2, c)
    rm = torch.tensor(bn.running_mean.copy())
    rv = torch.tensor(bn.running_var.copy())
    x = rng.standard_normal(shape) * 3 + 1
    y = bn.forward(x)
    g = rng.standard_normal(y.shape)
    dx = bn.backward(g)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, bn.weight, bn.bias))
    ty = F.batch_norm(tx, rm, rv, tw, tb, training=True, momentum=0.1, eps=1e-5)
    ty.backward(torch.tensor(g))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(bn.grads["weight"], tw.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(bn.grads["bias"], tb.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(bn.running_mean, rm.numpy(), rtol=1e-14)
    np.testing.assert_allclose(bn.running_var, rv.numpy(), rtol=1e-14)  # unbiased, as torch
    bn.eval()
    ty = F.batch_norm(torch.tensor(x), rm, rv, tw.detach(), tb.detach(), training=False)
    np.testing.assert_allclose(bn(x), ty.numpy(), rtol=1e-12, atol=1e-12)


@given(
    n=st.integers(2, 6),
    c=st.integers(1, 3),
    hw=st.sampled_from([(), (1, 1), (2, 3)]),
    seed=st.integers(0, 2**16),
)
def test_batchnorm_training_output_is_standardised(
    n: int, c: int, hw: tuple[int, ...], seed: int
) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, *hw)) * rng.uniform(0.5, 10) + rng.uniform(-5, 5)
    bn = mf.BatchNorm(c, dtype="float64").train()
    y = bn.forward(x)
    axes = (0, *range(2, y.ndim))
    np.testing.assert_allclose(y.mean(axis=axes), 0, atol=1e-9)
    var = x.var(axis=axes)
    np.testing.assert_allclose(y.var(axis=axes), var / (var + 1e-5), rtol=1e-9)


def test_batchnorm_buffers_are_state_not_parameters(tmp_path: Any) -> None:
    model = mf.Sequential(mf.Dense(3, 4), mf.BatchNorm(4), mf.Dense(4, 2), mf.Softmax())
    keys = list(model.state_dict())
    assert keys == [
        "0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
        "2.weight", "2.bias",
    ]  # fmt: skip
    assert [k for k, _ in model.named_parameters()] == [
        "0.weight", "0.bias", "1.weight", "1.bias", "2.weight", "2.bias",
    ]  # fmt: skip
    assert model[1].buffer_names == ("running_mean", "running_var")
    assert model.num_parameters() == 3 * 4 + 4 + 8 + 4 * 2 + 2
    # eval-mode forward never moves the statistics; an optimizer never touches them
    x = np.random.default_rng(0).standard_normal((10, 3)).astype(np.float32)
    model.predict(x)
    np.testing.assert_array_equal(model[1].running_mean, 0)
    model.train()
    model.forward(x)
    rm = model[1].running_mean.copy()
    model.backward(np.ones((10, 2), np.float32))
    opt = mf.optim.SGD(lr=0.5)
    opt.step(model)
    np.testing.assert_array_equal(model[1].running_mean, rm)


def test_batchnorm_eval_uses_running_stats_and_errors() -> None:
    bn = mf.BatchNorm(2, eps=1e-12, dtype="float64")
    bn.running_mean = [1.0, -1.0]
    bn.running_var = [4.0, 0.25]
    x = np.array([[3.0, 0.0]])
    np.testing.assert_allclose(bn(x), [[1.0, 2.0]], rtol=1e-10)
    with pytest.raises(mf.ShapeError, match=r"BatchNorm 2 expects input \(N, 2\)"):
        bn(np.zeros((3, 5)))
    with pytest.raises(mf.ShapeError, match="more than one value per channel"):
        bn.train().forward(np.zeros((1, 2)))
    with pytest.raises(ValueError, match="momentum"):
        mf.BatchNorm(2, momentum=1.5)
    with pytest.raises(ValueError, match="eps"):
        mf.BatchNorm(2, eps=0)
    with pytest.raises(ValueError, match="num_features"):
        mf.BatchNorm(0)
    decl = mf.BatchNorm.declared_parameters(bn.get_config())
    assert decl["running_var"] == ((2,), "float64") and len(decl) == 4


# -- Dropout --------------------------------------------------------------------------------
@given(p=st.floats(0.0, 0.95), seed=st.integers(0, 2**16))
def test_dropout_eval_is_identity(p: float, seed: int) -> None:
    x = np.random.default_rng(seed).standard_normal((4, 3, 2))
    d = mf.Dropout(p)
    assert d(x) is not None
    np.testing.assert_array_equal(d(x), x)
    model = mf.Sequential(mf.Dense(2, 2, dtype="float64"), mf.Dropout(p))
    h = model[0](x)
    np.testing.assert_array_equal(model.predict(x), h)


@given(p=st.sampled_from([0.1, 0.5, 0.8]), seed=st.integers(0, 2**16))
def test_dropout_training_keeps_the_expected_value(p: float, seed: int) -> None:
    """Each output is x/(1-p) with probability 1-p, else 0: mean x, variance x^2 p/(1-p);
    the sample mean of n outputs stays within 6 standard errors."""
    n = 20000
    mf.seed(seed)
    d = mf.Dropout(p).train()
    y = d.forward(np.full(n, 2.0))
    se = 2.0 * math.sqrt(p / (1 - p) / n)
    assert abs(y.mean() - 2.0) < 6 * se
    assert set(np.unique(y)) <= {0.0, 2.0 / (1 - p)}
    frac = (y == 0).mean()
    assert abs(frac - p) < 6 * math.sqrt(p * (1 - p) / n)


def test_dropout_gradient_uses_the_same_mask() -> None:
    layer = mf.Dropout(0.4)

    def same_mask() -> None:
        mf.seed(3)

    x = np.random.default_rng(0).standard_normal((3, 5))
    g = np.random.default_rng(1).standard_normal((3, 5))
    dx, _ = analytic_grads(layer, x, g, same_mask)
    ndx, _ = numeric_grads(layer, x, g, same_mask)
    np.testing.assert_allclose(dx, ndx, rtol=1e-6, atol=1e-8)


def test_dropout_masks_are_reproducible_with_fit_seed_and_equal_across_engines() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 6)).astype(np.float32)
    y = np.arange(32) % 3

    def train(engine: str) -> dict[str, np.ndarray]:
        mf.seed(1)
        with mf.backend.use(engine):
            model = mf.Sequential(
                mf.Dense(6, 8), mf.ReLU(), mf.Dropout(0.5), mf.Dense(8, 3), mf.Softmax()
            )
        model.fit(x, y, epochs=2, batch_size=8, seed=5, progress=False, optimizer="sgd")
        return model.state_dict()

    a, b = train("numpy"), train("numpy")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    c = train("array_api_strict")
    for k in a:
        np.testing.assert_allclose(c[k], a[k], rtol=1e-5, atol=1e-6)
    mf.seed(1)
    m = mf.Sequential(mf.Dense(6, 8), mf.ReLU(), mf.Dropout(0.5), mf.Dense(8, 3), mf.Softmax())
    m.fit(x, y, epochs=2, batch_size=8, seed=6, progress=False, optimizer="sgd")
    assert not np.array_equal(m.state_dict()["0.weight"], a["0.weight"])


def test_dropout_config_and_errors() -> None:
    d = mf.Dropout(0.25)
    assert d.get_config() == {"p": 0.25} and repr(d) == "Dropout(p=0.25)"
    for bad in (1.0, -0.1, math.nan, "0.5", True):
        with pytest.raises(ValueError, match="Dropout: p"):
            mf.Dropout(bad)  # type: ignore[arg-type]


# -- exactness of a whole network against PyTorch --------------------------------------------
def _pair_of_nets() -> tuple[mf.Sequential, Any]:
    import torch

    # the convolution has no bias, as usual before a BatchNorm: the normalisation cancels
    # a bias, whose gradient is then rounding noise that Adam would amplify
    mf.seed(0)
    model = mf.Sequential(
        mf.Conv2D(1, 4, 3, padding=1, bias=False, dtype="float64"),
        mf.BatchNorm(4, dtype="float64"),
        mf.ReLU(),
        mf.MaxPool2D(2),
        mf.Flatten(),
        mf.Dense(4 * 4 * 4, 5, dtype="float64"),
        mf.Softmax(),
    )
    tnet = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1, bias=False),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(64, 5),
    ).double()
    with torch.no_grad():
        tnet[0].weight.copy_(torch.tensor(model[0].weight))
        tnet[5].weight.copy_(torch.tensor(model[5].weight.T))
        tnet[5].bias.copy_(torch.tensor(model[5].bias))
    return model, tnet


@torch_only
@pytest.mark.parametrize(
    "opt",
    [
        ("sgd", dict(lr=0.05, momentum=0.9)),
        ("adam", dict(lr=0.01)),
    ],
)
@pytest.mark.parametrize("split", [False, True])
def test_training_matches_pytorch_exactly(
    opt: tuple[str, dict[str, Any]], split: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``split``: every operation of the step split over the batch on 3 threads (NumPy's
    training sections; the sizes here are below the usual threshold)."""
    import torch

    from minifw.backend import _split

    name, kw = opt
    model, tnet = _pair_of_nets()
    if split:
        monkeypatch.setattr(_split, "MIN_SPLIT_ELEMS", 1)
        monkeypatch.setattr(model.backend, "max_threads", 3)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 1, 8, 8))
    y = rng.integers(0, 5, 96)
    batch, epochs = 8, 3  # 36 steps
    mine = mf.optim.SGD(**kw) if name == "sgd" else mf.optim.Adam(**kw)
    model.fit(x, y, optimizer=mine, epochs=epochs, batch_size=batch, shuffle=False, progress=False)
    theirs = (torch.optim.SGD if name == "sgd" else torch.optim.Adam)(tnet.parameters(), **kw)
    tnet.train()
    xt, yt = torch.tensor(x), torch.tensor(y)
    for _ in range(epochs):
        for s in range(0, 96, batch):
            theirs.zero_grad()
            loss = torch.nn.functional.cross_entropy(tnet(xt[s : s + batch]), yt[s : s + batch])
            loss.backward()
            theirs.step()
    sd = model.state_dict()
    tsd = {k: v.detach().numpy() for k, v in tnet.state_dict().items()}
    pairs = {
        "0.weight": "0.weight", "1.weight": "1.weight", "1.bias": "1.bias",
        "1.running_mean": "1.running_mean", "1.running_var": "1.running_var",
        "5.bias": "5.bias",
    }  # fmt: skip
    for mine_k, their_k in pairs.items():
        np.testing.assert_allclose(sd[mine_k], tsd[their_k], rtol=1e-9, atol=1e-12, err_msg=mine_k)
    np.testing.assert_allclose(sd["5.weight"], tsd["5.weight"].T, rtol=1e-9, atol=1e-12)
    assert not np.allclose(sd["1.running_var"], 1.0)  # the statistics did move
    tnet.eval()
    with torch.no_grad():
        tp = torch.softmax(tnet(xt), dim=1).numpy()
    np.testing.assert_allclose(model.predict(x), tp, rtol=1e-9, atol=1e-12)
