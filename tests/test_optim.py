"""Optimizers against the textbook formulas (float64 NumPy, written out here), PyTorch,
their state dicts, and the in-place (numpy) vs functional (array_api_strict) update paths."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from conftest import assert_namespace
from hypothesis import given
from hypothesis import strategies as st

import minifw as mf
from minifw import optim

STEPS = 6


def small_model(backend_name: str) -> mf.Sequential:
    with mf.backend.use(backend_name):
        return mf.Sequential(mf.Dense(3, 4), mf.Tanh(), mf.Dense(4, 2))


def grad_sequence(model: mf.Sequential, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    return [
        {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
        for _ in range(STEPS)
    ]


def set_grads(model: mf.Sequential, grads: dict[str, np.ndarray]) -> None:
    for key, m, n in model.named_parameter_slots():
        m.grads[n] = m.backend.asarray(grads[key], "float32")


# -- textbook references (float64, one parameter at a time) --------------------------------


def ref_sgd(p: np.ndarray, gs: list[np.ndarray], lr, momentum, nesterov, wd) -> np.ndarray:
    p = p.astype(np.float64)
    buf = None
    for g in gs:
        d = g.astype(np.float64) + wd * p
        if momentum:
            buf = d.copy() if buf is None else momentum * buf + d
            d = d + momentum * buf if nesterov else buf
        p = p - lr * d
    return p


def ref_adam(p: np.ndarray, gs: list[np.ndarray], lr, b1, b2, eps, wd, decoupled) -> np.ndarray:
    """Kingma & Ba, Algorithm 1, with bias-corrected moments; L2 or decoupled decay."""
    p = p.astype(np.float64)
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(gs, start=1):
        g = g.astype(np.float64)
        if decoupled:
            p = p - lr * wd * p
        else:
            g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


def run(opt: optim.Optimizer, backend_name: str, seed: int) -> tuple[Any, Any, Any]:
    model = small_model(backend_name)
    p0 = model.state_dict()
    gseq = grad_sequence(model, seed)
    for g in gseq:
        set_grads(model, g)
        opt.step(model)
    return model, p0, gseq


sgd_settings = st.tuples(
    st.sampled_from([0.1, 0.01]),
    st.sampled_from([0.0, 0.5, 0.9]),
    st.booleans(),
    st.sampled_from([0.0, 1e-2]),
)


@given(cfg=sgd_settings, seed=st.integers(0, 2**31))
def test_sgd_matches_textbook(backend_name: str, cfg, seed: int) -> None:
    lr, mom, nest, wd = cfg
    nest = nest and mom > 0
    model, p0, gseq = run(optim.SGD(lr, mom, nest, wd), backend_name, seed)
    for key, m, n in model.named_parameter_slots():
        assert_namespace(m.get_param(n), backend_name)
        assert m.backend.dtype_name(m.get_param(n)) == "float32"
        expect = ref_sgd(p0[key], [g[key] for g in gseq], lr, mom, nest, wd)
        np.testing.assert_allclose(model.state_dict()[key], expect, rtol=2e-5, atol=5e-6)


adam_settings = st.tuples(
    st.sampled_from([1e-3, 1e-2]),
    st.sampled_from([(0.9, 0.999), (0.5, 0.9)]),
    st.sampled_from([1e-8, 1e-3]),
    st.sampled_from([0.0, 0.1]),
    st.booleans(),
)


@given(cfg=adam_settings, seed=st.integers(0, 2**31))
def test_adam_and_adamw_match_textbook(backend_name: str, cfg, seed: int) -> None:
    lr, betas, eps, wd, decoupled = cfg
    cls = optim.AdamW if decoupled else optim.Adam
    model, p0, gseq = run(cls(lr, betas, eps, wd), backend_name, seed)
    for key, m, n in model.named_parameter_slots():
        assert_namespace(m.get_param(n), backend_name)
        assert m.backend.dtype_name(m.get_param(n)) == "float32"
        expect = ref_adam(p0[key], [g[key] for g in gseq], lr, *betas, eps, wd, decoupled)
        np.testing.assert_allclose(model.state_dict()[key], expect, rtol=1e-5, atol=5e-6)


def test_adamw_default_decay_is_decoupled() -> None:
    assert optim.AdamW().weight_decay == 0.01
    # with a zero gradient Adam's step is 0, so AdamW only shrinks: p * (1 - lr * wd)
    model = small_model("numpy")
    before = model.state_dict()
    zeros = {k: np.zeros_like(v) for k, v in before.items()}
    set_grads(model, zeros)
    optim.AdamW(lr=0.1, weight_decay=0.5).step(model)
    for k, v in model.state_dict().items():
        np.testing.assert_allclose(v, before[k] * (1 - 0.1 * 0.5), rtol=1e-6)


@pytest.mark.parametrize(
    "make",
    [
        lambda: optim.SGD(0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
        lambda: optim.SGD(0.1),
        lambda: optim.Adam(1e-2, weight_decay=0.01),
        lambda: optim.AdamW(1e-2),
    ],
    ids=["sgd-nesterov", "sgd", "adam", "adamw"],
)
def test_matches_torch_optim(make) -> None:
    torch = pytest.importorskip("torch")
    opt = make()
    model = small_model("numpy")
    p0 = model.state_dict()
    gseq = grad_sequence(model, 3)
    params = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in p0.items()}
    h = opt.hyperparameters()
    if isinstance(opt, optim.SGD):
        topt = torch.optim.SGD(list(params.values()), **h)
    else:
        cls = torch.optim.AdamW if isinstance(opt, optim.AdamW) else torch.optim.Adam
        topt = cls(list(params.values()), **{**h, "betas": tuple(h["betas"])})
    for g in gseq:
        set_grads(model, g)
        opt.step(model)
        for k, p in params.items():
            p.grad = torch.from_numpy(g[k].copy())
        topt.step()
    for k, v in model.state_dict().items():
        np.testing.assert_allclose(v, params[k].detach().numpy(), rtol=1e-5, atol=1e-6)


def test_fast_path_updates_in_place_and_generic_path_does_not_mutate() -> None:
    # numpy: after the first step (which gathers the parameters into one buffer) the same
    # parameter and gradient arrays are updated in place
    model = small_model("numpy")
    set_grads(model, grad_sequence(model, 0)[0])
    opt = optim.Adam(0.1)
    opt.step(model)
    params = model.parameters()
    grads = [m.grads[n] for _, m, n in model.named_parameter_slots()]
    before = [p.copy() for p in params]
    opt.step(model)
    assert all(a is b for a, b in zip(model.parameters(), params, strict=True))
    assert all(
        m.grads[n] is g for (_, m, n), g in zip(model.named_parameter_slots(), grads, strict=True)
    )
    assert not np.array_equal(params[0], before[0])
    # array_api_strict: new arrays; the old ones keep their values (nothing is mutated)
    model = small_model("array_api_strict")
    old = model.parameters()
    old_values = [np.array(mf.to_numpy(p)) for p in old]
    grads = grad_sequence(model, 0)[0]
    set_grads(model, grads)
    kept_grads = {k: np.array(mf.to_numpy(m.grads[n])) for k, m, n in model.named_parameter_slots()}
    opt = optim.Adam(0.1, weight_decay=0.1)
    opt.step(model)
    new = model.parameters()
    assert all(a is not b for a, b in zip(old, new, strict=True))
    for p, v in zip(old, old_values, strict=True):
        np.testing.assert_array_equal(mf.to_numpy(p), v)
    for k, m, n in model.named_parameter_slots():
        np.testing.assert_array_equal(mf.to_numpy(m.grads[n]), kept_grads[k])
    assert not np.allclose(mf.to_numpy(new[0]), old_values[0])


@pytest.mark.parametrize(
    "make",
    [lambda: optim.SGD(0.1, momentum=0.9), lambda: optim.Adam(0.01), lambda: optim.AdamW(0.01)],
    ids=["sgd", "adam", "adamw"],
)
def test_state_dict_round_trip(backend_name: str, make) -> None:
    model = small_model(backend_name)
    gseq = grad_sequence(model, 7)
    opt = make()
    for g in gseq[:3]:
        set_grads(model, g)
        opt.step(model)
    sd = opt.state_dict()
    assert sd["step"] == 3 and sd["name"] == type(opt).__name__
    assert all(isinstance(a, np.ndarray) for s in sd["state"].values() for a in s.values())
    twin = small_model(backend_name)
    twin.load_state_dict(model.state_dict())
    opt2 = make().load_state_dict(sd)
    assert opt2.hyperparameters() == opt.hyperparameters()
    for g in gseq[3:]:
        set_grads(model, g)
        opt.step(model)
        set_grads(twin, g)
        opt2.step(twin)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, twin.state_dict()[k])


def test_load_state_dict_errors() -> None:
    sd = optim.Adam().state_dict()
    with pytest.raises(mf.FormatError, match="Adam optimizer"):
        optim.SGD().load_state_dict(sd)
    with pytest.raises(mf.FormatError, match="expected a dict"):
        optim.Adam().load_state_dict({"lr": 1})
    bad = {**sd, "state": {"0.weight": {"exp_avg": np.zeros(3)}}}
    with pytest.raises(mf.FormatError, match="0.weight"):
        optim.Adam().load_state_dict(bad)


def test_step_without_gradients_names_the_layer() -> None:
    model = small_model("numpy")
    with pytest.raises(RuntimeError, match=r"layer 0 \(Dense 3→4\).*'weight'"):
        optim.SGD().step(model)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: optim.SGD(lr=-1), "lr"),
        (lambda: optim.SGD(momentum=1.0), "momentum"),
        (lambda: optim.SGD(nesterov=True), "nesterov"),
        (lambda: optim.Adam(betas=(0.9, 1.0)), r"betas\[1\]"),
        (lambda: optim.Adam(betas=0.9), "betas"),
        (lambda: optim.Adam(eps=math.nan), "eps"),
        (lambda: optim.AdamW(weight_decay=-0.1), "weight_decay"),
        (lambda: optim.get("adadelta"), "unknown optimizer"),
    ],
)
def test_bad_hyperparameters(call, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_get_by_name() -> None:
    assert isinstance(optim.get("adam"), optim.Adam)
    assert isinstance(optim.get("SGD"), optim.SGD)
    o = optim.AdamW()
    assert optim.get(o) is o
    assert "Adam(lr=0.001" in repr(optim.Adam())


def test_parameters_replaced_between_steps_are_picked_up() -> None:
    """set_param / load_state_dict between steps: the optimizer notices and keeps its state."""
    gseq = grad_sequence(small_model("numpy"), 5)
    a, b = small_model("numpy"), small_model("numpy")
    b.load_state_dict(a.state_dict())
    oa, ob = optim.Adam(0.05), optim.Adam(0.05)
    for i, g in enumerate(gseq):
        for model, opt in ((a, oa), (b, ob)):
            set_grads(model, g)
            opt.step(model)
        if i == 2:  # replace b's parameters with equal copies: same trajectory expected
            b.load_state_dict(b.state_dict())
            b[0].weight = b.state_dict()["0.weight"]
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(v, b.state_dict()[k])


@pytest.mark.parametrize(
    "make, ref",
    [
        (
            lambda: optim.SGD(0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
            lambda p, gs: ref_sgd(p, gs, 0.1, 0.9, True, 0.01),
        ),
        (
            lambda: optim.Adam(0.01, weight_decay=0.1),
            lambda p, gs: ref_adam(p, gs, 0.01, 0.9, 0.999, 1e-8, 0.1, False),
        ),
        (
            lambda: optim.AdamW(0.01),
            lambda p, gs: ref_adam(p, gs, 0.01, 0.9, 0.999, 1e-8, 0.01, True),
        ),
    ],
    ids=["sgd", "adam", "adamw"],
)
def test_mixed_dtypes_update_per_parameter(make, ref) -> None:
    """float32 and float64 layers in one model: no shared buffer, one update per parameter."""
    model = mf.Sequential(mf.Dense(3, 4), mf.Tanh(), mf.Dense(4, 2, dtype="float64"))
    p0 = model.state_dict()
    gseq = grad_sequence(model, 4)
    opt = make()
    ids = [id(p) for p in model.parameters()]
    for g in gseq:
        for key, m, n in model.named_parameter_slots():
            m.grads[n] = m.backend.asarray(g[key], m.backend.dtype_name(m.get_param(n)))
        opt.step(model)
        # in place, on the layers' own arrays from the first step on: never gathered into
        # a shared flat buffer (which would replace them with views of it)
        assert [id(p) for p in model.parameters()] == ids
    assert all(p.base is None for p in model.parameters())
    assert model[2].weight.dtype == np.float64 and model[0].weight.dtype == np.float32
    for key, v in model.state_dict().items():
        expect = ref(p0[key], [g[key].astype(v.dtype) for g in gseq])
        tol = 5e-6 if v.dtype == np.float32 else 1e-12
        np.testing.assert_allclose(v, expect, rtol=tol, atol=tol)
