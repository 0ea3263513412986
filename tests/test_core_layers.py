"""Module / Sequential / Dense / activation layers: shapes, properties, errors, predict."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import assert_namespace
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minifw as mf
from minifw import functional as F

ACTS = {
    "Sigmoid": (mf.Sigmoid, lambda x: 1 / (1 + np.exp(-x))),
    "ReLU": (mf.ReLU, lambda x: np.maximum(x, 0)),
    "Tanh": (mf.Tanh, np.tanh),
    "Step": (mf.Step, lambda x: (x > 0).astype(x.dtype)),
    "Identity": (mf.Identity, lambda x: x),
    "Softmax": (
        mf.Softmax,
        lambda x: (
            np.exp(x - x.max(-1, keepdims=True))
            / np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)
        ),
    ),
}


def reference_net() -> mf.Sequential:
    return mf.Sequential(
        mf.Dense(784, 50),
        mf.Sigmoid(),
        mf.Dense(50, 100),
        mf.Sigmoid(),
        mf.Dense(100, 10),
        mf.Softmax(),
    )


@st.composite
def small_models(draw):
    """A random small Sequential (float64) and a matching input batch."""
    sizes = draw(st.lists(st.integers(1, 6), min_size=2, max_size=4))
    layers: list[mf.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(mf.Dense(sizes[i], sizes[i + 1], dtype="float64", bias=draw(st.booleans())))
        layers.append(draw(st.sampled_from([mf.Sigmoid, mf.ReLU, mf.Tanh, mf.Identity]))())
    if draw(st.booleans()):
        layers.append(mf.Softmax())
    n = draw(st.integers(1, 9))
    x = draw(hnp.arrays(np.float64, (n, sizes[0]), elements=st.floats(-5, 5)))
    return layers, x


# -- Dense ----------------------------------------------------------------------------------


@given(data=st.data())
def test_dense_is_affine(backend_name: str, data: st.DataObject) -> None:
    i, o, n = (
        data.draw(st.integers(1, 8)),
        data.draw(st.integers(1, 8)),
        data.draw(st.integers(1, 6)),
    )
    x = data.draw(hnp.arrays(np.float64, (n, i), elements=st.floats(-10, 10)))
    with mf.backend.use(backend_name):
        layer = mf.Dense(i, o, dtype="float64")
        layer.bias = np.arange(o, dtype=np.float64)
        y = layer(x)
    assert_namespace(y, backend_name)
    w, b = mf.to_numpy(layer.weight), mf.to_numpy(layer.bias)
    np.testing.assert_allclose(mf.to_numpy(y), x @ w + b, rtol=1e-12, atol=1e-12)
    # affine: f(x1) - f(x2) == (x1 - x2) @ W
    with mf.backend.use(backend_name):
        d = mf.to_numpy(layer(x)) - mf.to_numpy(layer(np.zeros_like(x)))
    np.testing.assert_allclose(d, x @ w, rtol=1e-9, atol=1e-9)


def test_dense_shapes_1d_and_batch(backend_name: str) -> None:
    with mf.backend.use(backend_name):
        layer = mf.Dense(4, 3)
        assert tuple(layer(np.ones(4)).shape) == (3,)
        assert tuple(layer(np.ones((7, 4))).shape) == (7, 3)
        assert tuple(layer(np.ones((2, 5, 4))).shape) == (2, 5, 3)
    assert tuple(layer.weight.shape) == (4, 3) and tuple(layer.bias.shape) == (3,)


def test_dense_no_bias_and_init() -> None:
    layer = mf.Dense(3, 2, bias=False, init="zeros")
    assert layer.bias is None and layer.param_names == ("weight",)
    np.testing.assert_array_equal(layer([1.0, 2.0, 3.0]), [0.0, 0.0])
    assert set(layer.state_dict()) == {"weight"}
    with pytest.raises(AttributeError, match="bias=False"):
        layer.bias = [1.0, 2.0]
    mf.seed(0)
    w = mf.Dense(1000, 50, init="he").weight
    assert abs(float(w.std()) - np.sqrt(2 / 1000)) < 0.002
    w = mf.Dense(1000, 50, init=0.01).weight
    assert abs(float(w.std()) - 0.01) < 0.0005


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"in_features": 0, "out_features": 3}, "in_features must be a positive int"),
        ({"in_features": 3, "out_features": 2.5}, "out_features must be a positive int"),
        ({"in_features": 3, "out_features": 2, "init": "uniformish"}, "unknown init"),
        ({"in_features": 3, "out_features": 2, "init": -1.0}, "non-negative"),
    ],
)
def test_dense_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        mf.Dense(**kwargs)
    with pytest.raises(TypeError, match="float32 or float64"):
        mf.Dense(3, 2, dtype="int32")


def test_weight_assignment_is_validated_and_converted(backend_name: str) -> None:
    with mf.backend.use(backend_name):
        model = reference_net()
    w = np.arange(784 * 50, dtype=np.float64).reshape(784, 50)
    model[0].weight = w
    assert_namespace(model[0].weight, backend_name)
    assert model.backend.dtype_name(model[0].weight) == "float32"
    w[0, 0] = -1.0  # the model holds its own copy
    assert float(mf.to_numpy(model[0].weight)[0, 0]) == 0.0
    with pytest.raises(
        mf.ShapeError,
        match=r"layer 0 \(Dense 784→50\): weight must have shape \(784, 50\), got \(50, 784\)",
    ):
        model[0].weight = w.T
    with pytest.raises(
        mf.ShapeError, match=r"layer 2 \(Dense 50→100\): bias must have shape \(100,\), got \(10,\)"
    ):
        model[2].bias = np.zeros(10)


# -- shape errors ---------------------------------------------------------------------------


def test_shape_error_names_the_layer() -> None:
    model = reference_net()
    with pytest.raises(mf.ShapeError) as e:
        model(np.zeros((32, 60)))
    assert str(e.value) == "layer 0 (Dense 784→50) expects input (..., 784), got (32, 60)"
    assert isinstance(e.value, ValueError)
    with pytest.raises(
        mf.ShapeError,
        match=r"^layer 2 \(Dense 50→100\) expects input \(\.\.\., 50\), got \(32, 60\)$",
    ):
        model[2](np.zeros((32, 60)))
    with pytest.raises(mf.ShapeError, match=r"^Dense 3→2 expects input \(\.\.\., 3\), got \(\)$"):
        mf.Dense(3, 2)(np.float32(1.0))


def test_shape_error_in_a_nested_model() -> None:
    inner = mf.Sequential(mf.Dense(4, 3), mf.ReLU(), mf.Dense(5, 2))
    model = mf.Sequential(mf.Dense(2, 4), inner)
    with pytest.raises(mf.ShapeError, match=r"^layer 1\.2 \(Dense 5→2\) expects"):
        model(np.zeros((1, 2)))
    assert set(model.state_dict()) == {
        "0.weight",
        "0.bias",
        "1.0.weight",
        "1.0.bias",
        "1.2.weight",
        "1.2.bias",
    }


# -- Sequential -----------------------------------------------------------------------------


def test_state_dict_keys_follow_positions() -> None:
    model = reference_net()
    assert list(model.state_dict()) == [
        "0.weight",
        "0.bias",
        "2.weight",
        "2.bias",
        "4.weight",
        "4.bias",
    ]
    assert model.num_parameters() == 45_360


@given(data=small_models())
def test_sequential_equals_composition(backend_name: str, data) -> None:
    layers, x = data
    with mf.backend.use(backend_name):
        layers = [type(m)(**m.get_config()) if m.param_names else m for m in layers]
        model = mf.Sequential(*layers)
        y = model(x)
        z = model.backend.asarray(x)
        for m in layers:
            z = m(z)
    assert_namespace(y, backend_name)
    np.testing.assert_array_equal(mf.to_numpy(y), mf.to_numpy(z))
    # and the composition matches a NumPy reference of the same math
    ref = x
    for m in layers:
        if isinstance(m, mf.Dense):
            ref = ref @ mf.to_numpy(m.weight) + (mf.to_numpy(m.bias) if m.bias is not None else 0)
        else:
            ref = ACTS[type(m).__name__][1](ref)
    np.testing.assert_allclose(mf.to_numpy(y), ref, rtol=1e-10, atol=1e-12)


@given(data=small_models())
def test_state_dict_round_trip(backend_name: str, data) -> None:
    layers, x = data
    model = mf.Sequential(*layers)
    sd = model.state_dict()
    with mf.backend.use(backend_name):
        clone = mf.Sequential(*[type(m)(**m.get_config()) for m in layers])
    clone.load_state_dict(sd)
    for k, v in clone.state_dict().items():
        assert v.dtype == sd[k].dtype
        np.testing.assert_array_equal(v, sd[k])
    np.testing.assert_allclose(clone.predict(x), model.predict(x), rtol=1e-12, atol=1e-15)


def test_state_dict_is_a_copy() -> None:
    model = reference_net()
    sd = model.state_dict()
    sd["0.weight"][:] = 5.0
    assert float(model[0].weight[0, 0]) != 5.0


def test_load_state_dict_errors() -> None:
    model = reference_net()
    sd = model.state_dict()
    bad = dict(sd)
    del bad["2.bias"]
    bad["3.weight"] = np.zeros(1)
    with pytest.raises(
        mf.FormatError, match=r"missing keys \['2.bias'\]; unexpected keys \['3.weight'\]"
    ):
        model.load_state_dict(bad)
    bad = dict(sd, **{"4.weight": np.zeros((10, 100))})
    with pytest.raises(
        mf.ShapeError,
        match=r"key '4.weight': layer 4 \(Dense 100→10\): weight must have shape \(100, 10\)",
    ):
        model.load_state_dict(bad)
    with pytest.raises(TypeError, match="mapping"):
        model.load_state_dict([1, 2])  # type: ignore[arg-type]


@given(
    n=st.integers(1, 40),
    batch_size=st.integers(1, 50),
    seed=st.integers(0, 2**16),
)
def test_batched_predict_equals_one_call(
    backend_name: str, n: int, batch_size: int, seed: int
) -> None:
    with mf.backend.use(backend_name):
        mf.seed(seed)
        model = mf.Sequential(mf.Dense(6, 5), mf.Sigmoid(), mf.Dense(5, 3), mf.Softmax())
    x = np.random.default_rng(seed).standard_normal((n, 6)).astype(np.float32)
    whole = model.predict(x)
    parts = model.predict(x, batch_size=batch_size)
    assert type(whole) is np.ndarray and type(parts) is np.ndarray
    assert whole.shape == parts.shape == (n, 3) and parts.dtype == np.float32
    np.testing.assert_allclose(parts, whole, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(mf.to_numpy(model(x)), whole, rtol=1e-6, atol=1e-7)


def test_predict_results_are_never_overwritten() -> None:
    model = reference_net()
    rng = np.random.default_rng(1)
    a, b = rng.random((20, 784), np.float32), rng.random((20, 784), np.float32)
    pa = model.predict(a)
    keep = pa.copy()
    model.predict(b)
    model.predict(b, batch_size=7)
    model(b)
    np.testing.assert_array_equal(pa, keep)
    ident = mf.Sequential(mf.Identity())
    out = ident.predict(a)
    out[:] = 0  # the result is the caller's, not a view of the input
    assert a.sum() > 0


def test_predict_from_threads() -> None:
    model = reference_net()
    rng = np.random.default_rng(2)
    xs = [rng.random((64, 784), np.float32) for _ in range(8)]
    expected = [model.predict(x) for x in xs]
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        for _ in range(5):
            results[i] = model.predict(xs[i], batch_size=16 + i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(8):
        np.testing.assert_allclose(results[i], expected[i], rtol=1e-6)


def test_predict_bad_batch_size() -> None:
    model = reference_net()
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="batch_size must be a positive int"):
            model.predict(np.zeros((2, 784)), batch_size=bad)


def test_inputs_are_cast_not_upcast() -> None:
    model = reference_net()
    for x in (
        np.zeros((2, 784), np.float64),
        np.zeros((2, 784), np.int64),
        np.zeros((2, 784), np.uint8),
        [[0] * 784],
    ):
        y = model(x)
        assert y.dtype == np.float32
    x = np.random.default_rng(0).random((3, 784))
    before = x.copy()
    model(x)
    model.predict(x)
    np.testing.assert_array_equal(x, before)  # the caller's array is never written


def test_float32_input_is_not_modified_by_inplace_activations() -> None:
    x = np.array([[-1.0, 0.5, 2.0]], np.float32)
    before = x.copy()
    for act in (
        mf.Sigmoid(),
        mf.ReLU(),
        mf.Tanh(),
        mf.Softmax(),
        mf.Sequential(mf.Identity(), mf.Sigmoid()),
    ):
        act(x)
        act.predict(x) if isinstance(act, mf.Sequential) else None
    np.testing.assert_array_equal(x, before)


def test_nan_passes_through_a_model() -> None:
    model = mf.Sequential(mf.Dense(2, 2, init="zeros"), mf.ReLU(), mf.Dense(2, 2), mf.Sigmoid())
    y = model([[np.nan, 1.0]])
    assert np.isnan(y).all()
    assert np.isnan(mf.ReLU()([np.nan]))[0]


@pytest.mark.parametrize("name", list(ACTS))
def test_activation_layers_match_their_functions(backend_name: str, name: str) -> None:
    cls, ref = ACTS[name]
    x = np.random.default_rng(0).standard_normal((4, 5))
    with mf.backend.use(backend_name):
        y = cls()(x)
    assert_namespace(y, backend_name)
    assert mf.to_numpy(y).dtype == np.float64
    np.testing.assert_allclose(mf.to_numpy(y), ref(x), rtol=1e-12)


def test_flatten() -> None:
    x = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    y = mf.Flatten()(x)
    assert y.shape == (2, 12)
    np.testing.assert_array_equal(y, x.reshape(2, 12))
    model = mf.Sequential(mf.Flatten(), mf.Dense(12, 5))
    assert model(x).shape == (2, 5)
    assert "(None, 12)" in model.summary(input_shape=(3, 4), print_fn=lambda s: None)


def test_softmax_axis_layer() -> None:
    x = np.random.default_rng(0).standard_normal((3, 4))
    np.testing.assert_allclose(mf.Softmax(axis=0)(x).sum(axis=0), 1.0)
    with pytest.raises(mf.ShapeError, match="axis 3 is out of range"):
        mf.Softmax(axis=3)(x)


def test_summary_and_repr() -> None:
    lines: list[str] = []
    text = reference_net().summary(print_fn=lines.append)
    assert lines == [text]
    assert "Total params: 45,360" in text
    for row in (
        "Dense 784→50",
        "(None, 50)",
        "39,250",
        "(None, 100)",
        "5,100",
        "(None, 10)",
        "1,010",
        "Softmax",
    ):
        assert row in text
    r = repr(mf.Sequential(mf.Dense(3, 2, bias=False), mf.ReLU()))
    assert r == "Sequential(\n  (0): Dense(3, 2, bias=False)\n  (1): ReLU()\n)"


def test_sequential_container() -> None:
    model = mf.Sequential(mf.Dense(3, 4))
    model.append(mf.ReLU()).append(mf.Dense(4, 2))
    assert len(model) == 3 and [type(m).__name__ for m in model] == ["Dense", "ReLU", "Dense"]
    assert isinstance(model[-1], mf.Dense)
    with pytest.raises(IndexError, match="index 7 out of range: the model has 3 layers"):
        model[7]
    with pytest.raises(TypeError, match="item 3 must be a minifw Module, got int"):
        model.append(5)  # type: ignore[arg-type]
    model[1] = mf.Tanh()
    with pytest.raises(mf.ShapeError, match=r"layer 2 \(Dense 4→2\)"):
        model[2](np.zeros(3))
    with pytest.raises(ValueError, match="cannot contain itself"):
        model.append(model)


def test_functional_and_layers_agree_on_strict() -> None:
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    with mf.backend.use("array_api_strict") as b:
        y = mf.Sigmoid()(x)
        z = F.sigmoid(b.asarray(x))
    assert_namespace(y, "array_api_strict")
    np.testing.assert_array_equal(mf.to_numpy(y), mf.to_numpy(z))
