"""Every installed engine against NumPy: outputs, gradients, conversions, weight moves.

Engines: array_api_strict, torch, jax, dask and cupy. A test for an engine skips only
when the engine's package is not installed (or, for cupy, when there is no CUDA device).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from conftest import assert_namespace
from hypothesis import given, settings
from hypothesis import strategies as st

import minifw as mf

# name -> (package to import, pip install hint)
ENGINES: dict[str, tuple[str, str]] = {
    "array_api_strict": ("array_api_strict", "pip install array-api-strict"),
    "torch": ("torch", 'pip install "minifw[torch]"'),
    "jax": ("jax", 'pip install "minifw[jax]"'),
    "dask": ("dask.array", 'pip install "minifw[dask]"'),
    "cupy": ("cupy", 'pip install "minifw[cuda12]"'),
}
NAMES = list(ENGINES)
ALL = ["numpy", *NAMES]

RTOL, ATOL = 2e-5, 2e-6  # float32, a few layers deep


def need(name: str) -> mf.backend.Backend:
    """The backend ``name``, or a skip saying which package is missing."""
    if name == "numpy":
        return mf.backend.get("numpy")
    pkg, fix = ENGINES[name]
    pytest.importorskip(pkg, reason=f"backend {name!r} needs {pkg!r} ({fix})")
    try:
        return mf.backend.get(name)
    except mf.BackendError as e:  # cupy installed without a CUDA device
        pytest.skip(f"backend {name!r} is installed but cannot run here: {e}")


def close(a: Any, b: Any) -> None:
    a, b = mf.to_numpy(a), mf.to_numpy(b)
    # float32 sums that cancel keep an error proportional to the largest terms, not to
    # the result (a weight gradient of 2e-6 next to values of 4 may come out as 0.0)
    scale = float(np.abs(b).max()) if b.size else 0.0
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=max(ATOL, RTOL * scale))


# -- random models ------------------------------------------------------------------------

ACTS = {"sigmoid": mf.Sigmoid, "relu": mf.ReLU, "tanh": mf.Tanh, "identity": mf.Identity}


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    """A Sequential of 1-3 Dense layers with activations, an input batch and an upstream
    gradient, all as plain data (the model is built per engine from the same seed)."""
    sizes = draw(st.lists(st.integers(1, 7), min_size=2, max_size=4))
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(("dense", sizes[i], sizes[i + 1], draw(st.booleans())))
        layers.append((draw(st.sampled_from(sorted(ACTS))),))
    if draw(st.booleans()):
        layers[-1] = ("softmax",)
    n = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, sizes[0])) * draw(st.sampled_from([0.5, 2.0]))).astype("float32")
    g = rng.standard_normal((n, sizes[-1])).astype("float32")
    return {"layers": layers, "seed": seed, "x": x, "g": g}


def build(spec: dict[str, Any], name: str) -> mf.Sequential:
    mf.seed(spec["seed"])
    mods: list[mf.Module] = []
    with mf.backend.use(name):
        for layer in spec["layers"]:
            if layer[0] == "dense":
                mods.append(mf.Dense(layer[1], layer[2], bias=layer[3]))
            elif layer[0] == "softmax":
                mods.append(mf.Softmax())
            else:
                mods.append(ACTS[layer[0]]())
        return mf.Sequential(*mods)


def saturated(spec: dict[str, Any]) -> bool:
    """Whether a tanh or sigmoid of the NumPy model is within 1e-3 of its limits, where its
    derivative is computed from a difference of nearly equal float32 numbers."""
    h = spec["x"]
    for m in build(spec, "numpy").eval():
        h = m(h)
        if isinstance(m, mf.Tanh) and (1 - np.abs(h) < 1e-3).any():
            return True
        if isinstance(m, mf.Sigmoid) and (np.minimum(h, 1 - h) < 1e-3).any():
            return True
    return False


def run(model: mf.Sequential, x: Any, g: Any) -> tuple[Any, Any, dict[str, Any]]:
    """Training-mode forward and backward: output, input gradient, parameter gradients."""
    model.train()
    y = model(x)
    dx = model.backward(model.backend.asarray(g))
    grads = {key: m.grads[n] for key, m, n in model.named_parameter_slots()}
    model.eval()
    return y, dx, grads


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=25)
@given(spec=specs())
def test_same_outputs_and_gradients_as_numpy(name: str, spec: dict[str, Any]) -> None:
    need(name)
    ref_y, ref_dx, ref_grads = run(build(spec, "numpy"), spec["x"], spec["g"])
    model = build(spec, name)
    close(model.state_dict()["0.weight"], build(spec, "numpy").state_dict()["0.weight"])
    y, dx, grads = run(model, spec["x"], spec["g"])
    for arr in (y, dx, *grads.values()):
        assert_namespace(arr, name)
    close(y, ref_y)
    assert grads.keys() == ref_grads.keys()
    if not saturated(spec):  # else 1 - y**2 is a rounding error: engines may differ by 100 %
        close(dx, ref_dx)
        for k in grads:
            close(grads[k], ref_grads[k])
    p = model.predict(spec["x"])
    if model.backend.lazy:
        assert_namespace(p, name)
    else:
        assert isinstance(p, np.ndarray)
    close(p, ref_y)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=15)
@given(spec=specs(), data=st.data())
def test_model_moved_there_matches_one_built_there(
    name: str, spec: dict[str, Any], data: st.DataObject
) -> None:
    """``model.to(name)`` from a random other engine equals building it on ``name``."""
    need(name)
    src = data.draw(st.sampled_from(["numpy", "array_api_strict", "torch", "jax"]), label="src")
    need(src)
    moved = build(spec, src).to(name)
    assert moved.backend.name == name
    for _, m, n in moved.named_parameter_slots():
        assert_namespace(m.get_param(n), name)
    close(moved(spec["x"]), build(spec, name)(spec["x"]))


# -- weights and inputs across engines ----------------------------------------------------


@settings(max_examples=15)
@given(route=st.lists(st.sampled_from(ALL), min_size=1, max_size=6), seed=st.integers(0, 99))
def test_weights_move_between_any_two_backends_without_loss(route: list[str], seed: int) -> None:
    for name in route:
        need(name)
    mf.seed(seed)
    model = mf.Sequential(mf.Dense(5, 4), mf.Tanh(), mf.Dense(4, 3, bias=False))
    model[0].bias = np.random.default_rng(seed).standard_normal(4)  # not all zeros
    ref = model.state_dict()
    for name in route:
        model.to(name)
        assert model.backend.name == name
        sd = model.state_dict()
        assert sd.keys() == ref.keys()
        for k in ref:
            assert sd[k].dtype == ref[k].dtype
            np.testing.assert_array_equal(sd[k], ref[k])  # bit for bit


@pytest.mark.parametrize("dst", ALL)
@pytest.mark.parametrize("src", ALL)
def test_foreign_arrays_are_converted_at_the_edge(src: str, dst: str) -> None:
    s, d = need(src), need(dst)
    base = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    x = s.asarray(base)
    y = d.asarray(x)
    assert_namespace(y, dst)
    assert d.dtype_name(y) == "float32"
    np.testing.assert_array_equal(mf.to_numpy(y), base)
    z = d.asarray(s.asarray(np.arange(3)))  # integers become float32
    assert d.dtype_name(z) == "float32"
    np.testing.assert_array_equal(mf.to_numpy(z), [0.0, 1.0, 2.0])
    mf.seed(3)
    with mf.backend.use(dst):
        model = mf.Sequential(mf.Dense(4, 2), mf.Sigmoid())
    out = model(x)  # a model accepts another engine's array
    assert_namespace(out, dst)
    close(out, model.to("numpy")(base))


@pytest.mark.parametrize("name", ALL)
def test_big_endian_input(name: str) -> None:
    b = need(name)
    a = np.arange(6, dtype=">f4").reshape(2, 3)
    y = b.asarray(a)
    assert_namespace(y, name)
    np.testing.assert_array_equal(mf.to_numpy(y), a)
    assert b.dtype_name(y) == "float32"


def test_numpy_target_never_writes_into_a_foreign_array() -> None:
    need("torch")
    import torch

    t = torch.linspace(-1.0, 1.0, 12).reshape(3, 4)
    before = t.clone()
    model = mf.Sequential(mf.Dense(4, 4, init="zeros"), mf.ReLU())  # numpy: in-place path
    model[0].weight = np.eye(4)
    model(t)
    assert torch.equal(t, before)


def test_torch_tensor_that_requires_grad_is_detached_once() -> None:
    need("torch")
    import torch

    t = torch.ones(2, 3, requires_grad=True)
    with mf.backend.use("torch"):
        model = mf.Sequential(mf.Dense(3, 2), mf.Sigmoid())
    y = model(t)
    assert isinstance(y, torch.Tensor) and not y.requires_grad
    np_model = mf.Sequential(mf.Dense(3, 2), mf.Sigmoid())
    assert isinstance(np_model(t), np.ndarray)  # DLPack refuses; the NumPy route works


def test_unconvertible_input_is_a_backend_error() -> None:
    need("jax")
    need("torch")
    import jax

    with mf.backend.use("torch"):
        model = mf.Sequential(mf.Dense(3, 2))

    with pytest.raises(mf.BackendError, match=r"cannot convert a jax array .* to backend 'torch'"):
        jax.jit(lambda a: model(a))(np.ones((2, 3), np.float32))  # a tracer has no data


def test_jax_refuses_float64_without_x64() -> None:
    need("jax")
    import jax

    if jax.config.jax_enable_x64:
        pytest.skip("JAX_ENABLE_X64 is on: float64 is supported")
    with mf.backend.use("jax"), pytest.raises(mf.BackendError, match="JAX_ENABLE_X64"):
        mf.Dense(3, 2, dtype="float64")
    model = mf.Sequential(mf.Dense(3, 2, dtype="float64"))
    with pytest.raises(mf.BackendError, match="JAX_ENABLE_X64"):
        model.to("jax")
    # all or nothing: the model stays whole on numpy and still works
    assert all(m.backend.name == "numpy" for m in model.modules())
    assert model(np.ones(3)).dtype == np.float64


@pytest.mark.parametrize("name", ALL)
def test_model_pickles_with_its_backend(name: str) -> None:
    b = need(name)
    with mf.backend.use(name):
        model = mf.Sequential(mf.Dense(3, 4), mf.ReLU(), mf.Dense(4, 2), mf.Softmax())
    x = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    y = mf.to_numpy(model(x))  # whatever the model caches on its first call must pickle too
    clone = pickle.loads(pickle.dumps(model))
    assert clone.backend is b and clone[1].backend is b
    np.testing.assert_array_equal(mf.to_numpy(clone(x)), y)


@pytest.mark.parametrize("name", ALL)
def test_devices_and_version(name: str) -> None:
    b = need(name)
    devs = b.devices()
    assert devs and all(isinstance(d, str) and d for d in devs)
    assert isinstance(b.version, str) and b.version[0].isdigit()
    assert name in mf.backend.available()
    b.synchronize()


def test_torch_device_is_cuda_when_available() -> None:
    need("torch")
    import torch

    b = mf.backend.get("torch")
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert b.device.type == want  # type: ignore[attr-defined]
    assert b.devices()[0].startswith(want)
    with mf.backend.use("torch"):
        layer = mf.Dense(2, 2)
    assert layer.weight.device.type == want


# -- selection in a fresh process -----------------------------------------------------------


def _py(code: str, env_value: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MINIFW_BACKEND"}
    if env_value is not None:
        env["MINIFW_BACKEND"] = env_value
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180
    )


@pytest.mark.parametrize("name", ["torch", "jax", "dask"])
def test_env_var_selects_the_engine(name: str) -> None:
    need(name)
    code = (
        "import numpy as np, minifw as mf\n"
        "m = mf.Sequential(mf.Dense(3, 2), mf.Sigmoid())\n"
        "y = m(np.ones((4, 3)))\n"
        "print(mf.backend.current().name, m.backend.name, type(y).__module__.split('.')[0],"
        " mf.to_numpy(y).shape)\n"
    )
    r = _py(code, name)
    assert r.returncode == 0, r.stderr
    pkg = "jaxlib" if name == "jax" else name
    words = r.stdout.split()
    assert words[:3] == [name, name, pkg] or (name == "jax" and words[2] == "jax"), r.stdout
    assert r.stdout.strip().endswith("(4, 2)")


def test_import_minifw_imports_no_optional_engine() -> None:
    code = (
        "import sys, minifw\n"
        "bad = [m for m in ('torch', 'jax', 'jaxlib', 'dask', 'distributed', 'cupy',"
        " 'array_api_strict', 'array_api_compat') if m in sys.modules]\n"
        "print(bad)\n"
    )
    r = _py(code, "torch")  # the variable is read lazily: not even this imports torch
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


FUNCS = ["sigmoid", "relu", "tanh", "step", "softmax", "log_softmax", "identity"]


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=10)
@given(
    x=st.lists(
        # XLA (jax) flushes float32 subnormals to zero, so step(1e-41) is 0 there: an
        # engine property, not minifw's; subnormal inputs are left out
        st.lists(st.floats(-1e4, 1e4, width=32, allow_subnormal=False), min_size=3, max_size=3),
        min_size=1,
        max_size=4,
    )
)
def test_functional_ops_match_numpy(name: str, x: list[list[float]]) -> None:
    b = need(name)
    a = np.array(x, dtype=np.float32)
    xb = b.asarray(a)
    for fn in FUNCS:
        f = getattr(mf.functional, fn)
        got = f(xb)
        assert_namespace(got, name)
        np.testing.assert_allclose(
            mf.to_numpy(got), f(a), rtol=1e-5, atol=1e-6, err_msg=f"{fn} on {name}"
        )


def test_jax_float64_with_x64_mode() -> None:
    need("jax")
    code = (
        "import numpy as np, minifw as mf\n"
        "mf.seed(0)\n"
        "m = mf.Sequential(mf.Dense(3, 2, dtype='float64'), mf.Softmax())\n"
        "x = np.linspace(-1, 1, 6).reshape(2, 3)\n"
        "ref = m.predict(x)\n"
        "y = m.to('jax')(x)\n"
        "print(y.dtype, float(np.abs(mf.to_numpy(y) - ref).max()))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MINIFW_BACKEND"}
    env["JAX_ENABLE_X64"] = "1"
    r = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180
    )
    assert r.returncode == 0, r.stderr
    dtype, err = r.stdout.split()
    assert dtype == "float64" and float(err) < 1e-12
