"""Gradient checks: every hand-written backward against central finite differences.

float64 throughout; the scalar checked is ``L = sum(r * module(x))`` for a random
upstream gradient ``r``, so ``backward(r)`` must equal dL/dx (and ``grads`` dL/dparams).
Relative error ``|num - ana| / (|num| + |ana|)`` (2-norms, see ``rel_err``) must stay
below 1e-6. Inputs
whose ReLU/Step pre-activations lie too close to the kink are skipped (``assume``).
Each check runs on numpy and on array_api_strict.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from conftest import assert_namespace
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minifw as mf
from minifw import losses

H = 1e-6
TOL = 1e-6


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """``|a - b| / (|a| + |b|)``; the denominator is floored at 1e-2 so that gradients that
    are (nearly) zero are judged by an absolute error of 1e-8, above finite-difference noise."""
    den = max(float(np.linalg.norm(a) + np.linalg.norm(b)), 1e-2)
    return float(np.linalg.norm(a - b) / den)


def num_grad(f: Callable[[np.ndarray], float], x: np.ndarray, relative: bool = False) -> np.ndarray:
    """Central finite differences of the scalar function ``f`` at ``x`` (float64).

    ``relative``: the step is ``H * |x_i|`` (for functions such as ``log`` whose curvature
    grows near 0, where a fixed step would be too coarse).
    """
    g = np.zeros_like(x)
    flat, gf = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        h = H * abs(old) if relative and old != 0 else H
        flat[i] = old + h
        fp = f(x)
        flat[i] = old - h
        fm = f(x)
        flat[i] = old
        gf[i] = (fp - fm) / (2 * h)
    return g


def forward_np(model: mf.Module, x: np.ndarray) -> np.ndarray:
    """The training-mode forward (``check_module`` puts the model in training mode)."""
    assert model.training
    b = model.backend
    return b.to_numpy(model(b.asarray(x.copy(), "float64")))


def check_module(model: mf.Module, x: np.ndarray, backend_name: str, seed: int) -> None:
    """Input and parameter gradients of ``model`` at ``x`` agree with finite differences."""
    b = model.backend
    model.train()
    y = forward_np(model, x)
    r = np.random.default_rng(seed).standard_normal(y.shape)
    rb = b.asarray(r, "float64")
    r_before = b.to_numpy(rb).copy()
    dx = model.backward(rb)
    assert_namespace(dx, backend_name)
    np.testing.assert_array_equal(b.to_numpy(rb), r_before)  # backward never mutates grad
    grads = {k: np.array(b.to_numpy(m.grads[n])) for k, m, n in model.named_parameter_slots()}

    def loss_at(xx: np.ndarray) -> float:
        return float(np.sum(r * forward_np(model, xx)))

    num = num_grad(loss_at, x.copy())
    assert np.asarray(b.to_numpy(dx)).shape == x.shape
    assert rel_err(num, b.to_numpy(dx)) < TOL, (num, b.to_numpy(dx))

    for key, m, n in model.named_parameter_slots():
        p0 = np.array(b.to_numpy(m.get_param(n)), dtype=np.float64)

        def loss_p(pp: np.ndarray, m: mf.Module = m, n: str = n) -> float:
            m.set_param(n, pp)
            return float(np.sum(r * forward_np(model, x)))

        num_p = num_grad(loss_p, p0.copy())
        m.set_param(n, p0)
        assert_namespace(m.grads[n], backend_name)
        assert rel_err(num_p, grads[key]) < TOL, key


def kinks_clear(model: mf.Module, x: np.ndarray, margin: float = 1e-4) -> bool:
    """No ReLU/Step input lies within ``margin`` of 0 (where the derivative jumps)."""
    b = model.backend
    h = b.asarray(x.copy(), "float64")
    for m in model.modules():
        if isinstance(m, mf.Sequential):
            continue
        if isinstance(m, (mf.ReLU, mf.Step)) and np.any(np.abs(b.to_numpy(h)) < margin):
            return False
        h = m.forward(h)
    return True


def randomize(model: mf.Module, seed: int) -> None:
    """Random weights and non-zero biases (so no pre-activation sits exactly on a kink)."""
    rng = np.random.default_rng(seed)
    for _, m, n in model.named_parameter_slots():
        shape = tuple(m.get_param(n).shape)
        m.set_param(n, rng.uniform(-1.0, 1.0, shape))


inputs = hnp.arrays(
    np.float64,
    st.tuples(st.integers(1, 4), st.integers(1, 5)),
    elements=st.floats(-3, 3, allow_nan=False, width=64),
)

ACTIVATIONS: list[Callable[[], mf.Module]] = [
    mf.Sigmoid,
    mf.Tanh,
    mf.ReLU,
    mf.Step,
    mf.Identity,
    mf.Softmax,
    lambda: mf.Softmax(axis=0),
    mf.Flatten,
]


@pytest.mark.parametrize("make", ACTIVATIONS, ids=lambda f: repr(f()))
@given(x=inputs, seed=st.integers(0, 2**32 - 1))
def test_activation_gradients(backend_name: str, make: Callable[[], mf.Module], x, seed) -> None:
    with mf.backend.use(backend_name):
        m = make()
        model = mf.Sequential(m)  # parameter-free: adopts the current backend
    assume(kinks_clear(model, x))
    check_module(m, x, backend_name, seed)


@given(
    x=inputs,
    out=st.integers(1, 4),
    bias=st.booleans(),
    one_d=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_dense_gradients(backend_name: str, x, out: int, bias: bool, one_d: bool, seed) -> None:
    with mf.backend.use(backend_name):
        d = mf.Dense(x.shape[1], out, bias=bias, dtype="float64")
    randomize(d, seed)
    check_module(d, x[0] if one_d else x, backend_name, seed)


@given(
    x=hnp.arrays(
        np.float64,
        st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)),
        elements=st.floats(-3, 3, allow_nan=False, width=64),
    ),
    seed=st.integers(0, 2**32 - 1),
)
def test_flatten_dense_gradients(backend_name: str, x, seed) -> None:
    with mf.backend.use(backend_name):
        model = mf.Sequential(mf.Flatten(), mf.Dense(x.shape[1] * x.shape[2], 3, dtype="float64"))
    randomize(model, seed)
    check_module(model, x, backend_name, seed)


@st.composite
def sequentials(draw: Any) -> tuple[list[int], list[int], bool]:
    depth = draw(st.integers(1, 3))
    widths = [draw(st.integers(1, 5)) for _ in range(depth + 1)]
    acts = [draw(st.integers(0, 5)) for _ in range(depth)]
    return widths, acts, draw(st.booleans())


_ACT_BY_CODE: list[Callable[[], mf.Module] | None] = [
    mf.Sigmoid,
    mf.Tanh,
    mf.ReLU,
    mf.Identity,
    None,  # no activation: Dense follows Dense
    mf.Softmax,
]


@given(spec=sequentials(), n=st.integers(1, 4), seed=st.integers(0, 2**32 - 1))
def test_random_sequential_gradients(backend_name: str, spec, n: int, seed: int) -> None:
    widths, acts, nested = spec
    with mf.backend.use(backend_name):
        layers: list[mf.Module] = []
        for i, code in enumerate(acts):
            layers.append(mf.Dense(widths[i], widths[i + 1], dtype="float64"))
            make = _ACT_BY_CODE[code]
            if make is not None:
                layers.append(make())
        if nested and len(layers) > 1:  # a Sequential inside a Sequential
            layers = [mf.Sequential(*layers[:2]), *layers[2:]]
        model = mf.Sequential(*layers)
    randomize(model, seed)
    x = np.random.default_rng(seed + 1).uniform(-2, 2, (n, widths[0]))
    assume(kinks_clear(model, x))
    check_module(model, x, backend_name, seed)


# -- losses ----------------------------------------------------------------------------------


@st.composite
def logits_and_targets(draw: Any) -> tuple[np.ndarray, np.ndarray, bool]:
    n, c = draw(st.integers(1, 5)), draw(st.integers(2, 6))
    z = draw(hnp.arrays(np.float64, (n, c), elements=st.floats(-5, 5, allow_nan=False, width=64)))
    idx = np.array(draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)))
    one_hot = draw(st.booleans())
    return z, (np.eye(c)[idx] if one_hot else idx), one_hot


def _target(b: Any, t: np.ndarray) -> Any:
    return b.from_numpy(t) if t.dtype.kind == "i" else b.asarray(t, "float64")


@given(zt=logits_and_targets())
def test_fused_softmax_ce_equals_unfused_chain(backend_name: str, zt) -> None:
    z, t, _ = zt
    with mf.backend.use(backend_name) as b:
        sm = mf.Softmax()
        sm.train()
        zb = b.asarray(z, "float64")
        loss_f, g_fused = losses.softmax_cross_entropy(b, zb, _target(b, t))
        assert_namespace(g_fused, backend_name)
        ce = losses.CrossEntropy()
        p = sm.forward(zb)
        loss_u = ce(p, _target(b, t))
        g_unfused = sm.backward(ce.backward())
        np.testing.assert_allclose(float(loss_f), loss_u, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(b.to_numpy(g_fused), b.to_numpy(g_unfused), atol=1e-12)
        # and the fused gradient is (softmax(z) - onehot(t)) / N
        tt = t if t.ndim == 2 else np.eye(z.shape[1])[t]
        e = np.exp(z - z.max(axis=1, keepdims=True))
        expect = (e / e.sum(axis=1, keepdims=True) - tt) / z.shape[0]
        np.testing.assert_allclose(b.to_numpy(g_fused), expect, atol=1e-12)


@given(zt=logits_and_targets())
def test_fused_softmax_ce_finite_differences(backend_name: str, zt) -> None:
    z, t, _ = zt
    with mf.backend.use(backend_name) as b:
        tb = _target(b, t)
        _, g = losses.softmax_cross_entropy(b, b.asarray(z, "float64"), tb)

        def f(zz: np.ndarray) -> float:
            return float(losses.softmax_cross_entropy(b, b.asarray(zz, "float64"), tb)[0])

        assert rel_err(num_grad(f, z.copy()), b.to_numpy(g)) < TOL


@given(
    pred=hnp.arrays(
        np.float64,
        st.tuples(st.integers(1, 4), st.integers(1, 4)),
        elements=st.floats(-3, 3, allow_nan=False, width=64),
    ),
    seed=st.integers(0, 2**32 - 1),
)
def test_mse_finite_differences(backend_name: str, pred, seed: int) -> None:
    t = np.random.default_rng(seed).standard_normal(pred.shape)
    with mf.backend.use(backend_name) as b:
        mse = losses.MSE()
        mse(b.asarray(pred, "float64"), t)
        g = mse.backward()
        assert_namespace(g, backend_name)

        def f(pp: np.ndarray) -> float:
            return losses.MSE()(b.asarray(pp, "float64"), t)

        assert rel_err(num_grad(f, pred.copy()), b.to_numpy(g)) < TOL


@given(zt=logits_and_targets())
def test_cross_entropy_on_probabilities_finite_differences(backend_name: str, zt) -> None:
    z, t, _ = zt
    e = np.exp(z)
    p = e / e.sum(axis=1, keepdims=True)  # probabilities, all > 1e-7 for |z| <= 5
    with mf.backend.use(backend_name) as b:
        ce = losses.CrossEntropy()
        ce(b.asarray(p, "float64"), _target(b, t))
        g = ce.backward()

        def f(pp: np.ndarray) -> float:
            return losses.CrossEntropy()(b.asarray(pp, "float64"), _target(b, t))

        assert rel_err(num_grad(f, p.copy(), relative=True), b.to_numpy(g)) < TOL
