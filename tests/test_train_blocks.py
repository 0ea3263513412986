"""fit's fused convolution blocks (Conv2D, BatchNorm[, MaxPool2D][, ReLU] as one step;
NumPy's in two split phases each way): which runs fuse, and training through them equals
training the same layers one by one (a BatchNorm subclass is never fused) to rounding,
for every pool, sign of gamma, stride, bias, dtype and thread count; a zero gamma takes
the layers' own operations."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minifw as mf
from minifw import _train_blocks
from minifw.backend import _split
from minifw.training import _train_order


class PlainBN(mf.BatchNorm):
    """A BatchNorm that fit does not fuse (only the exact classes fuse)."""


def _net(
    *,
    pool: tuple[Any, ...] | None = (2,),
    relu_first: bool = True,
    relu: bool = True,
    stride: int = 1,
    bias: bool = True,
    gammas: Any = None,
    plain: bool = False,
    dtype: str = "float64",
    seed: int = 0,
    size: int = 11,
) -> mf.Sequential:
    mf.seed(seed)
    bn = (PlainBN if plain else mf.BatchNorm)(4, dtype=dtype)
    if gammas is not None:
        bn.weight = np.asarray(gammas, dtype)
    layers: list[Any] = [mf.Conv2D(2, 4, 3, stride=stride, padding=1, bias=bias, dtype=dtype), bn]
    tail: list[Any] = [mf.MaxPool2D(*pool)] if pool is not None else []
    if relu:
        tail = [mf.ReLU(), *tail] if relu_first else [*tail, mf.ReLU()]
    layers += tail
    shape: tuple[Any, ...] = (None, 2, size, size)
    for m in layers:
        shape = m.output_shape(shape)
    feats = int(np.prod(shape[1:]))
    layers += [mf.Flatten(), mf.Dense(feats, 3, dtype=dtype), mf.Softmax()]
    return mf.Sequential(*layers)


def _train(model: mf.Sequential, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    model.fit(x, y, optimizer=mf.optim.Adam(lr=0.02), epochs=2, batch_size=16, seed=1,
              progress=False)  # fmt: skip
    return {k: np.array(v) for k, v in model.state_dict().items()}


def _data(
    dtype: str = "float64", coarse: bool = False, size: int = 11
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((48, 2, size, size))
    if coarse:  # many exact ties in the pooling windows
        x = np.round(x * 2) / 2
    return x.astype(dtype), rng.integers(0, 3, 48)


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray], rtol: float) -> None:
    """Equal to ``rtol`` (absolutely too), but for the convolution's bias: before a
    BatchNorm its gradient is zero up to rounding, which Adam turns into steps of random
    sign (the BatchNorm takes the bias out again), so it differs by noise either way."""
    assert a.keys() == b.keys()
    for k in a:
        if k != "0.bias":
            np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=rtol, err_msg=k)


@pytest.fixture(params=[1, 3], ids=["whole", "split3"])
def threads(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """fit on one thread, or split over 3 with every operation big enough to split."""
    b = mf.backend.get("numpy")
    monkeypatch.setattr(b, "max_threads", request.param)
    monkeypatch.setattr(_split, "MIN_SPLIT_ELEMS", 1)
    return int(request.param)


# -- which runs fuse ------------------------------------------------------------------------
def _kinds(model: mf.Sequential) -> list[str]:
    body = _train_blocks.fuse(_train_order(list(model)[:-1]))
    return [
        "+".join(type(m).__name__ for m in b.layers)
        if isinstance(b, _train_blocks.ConvBlock)
        else type(b).__name__
        for b in body
    ]


def test_conv_bn_pool_relu_runs_fuse_in_training_order() -> None:
    assert _kinds(_net())[0] == "Conv2D+BatchNorm+MaxPool2D+ReLU"  # ReLU moved after the pool
    assert _kinds(_net(relu_first=False))[0] == "Conv2D+BatchNorm+MaxPool2D+ReLU"
    assert _kinds(_net(pool=None))[0] == "Conv2D+BatchNorm+ReLU"
    assert _kinds(_net(relu=False))[0] == "Conv2D+BatchNorm+MaxPool2D"
    assert _kinds(_net(pool=None, relu=False))[:2] == ["Conv2D+BatchNorm", "Flatten"]
    # a padded max-pool is not part of a block; a subclass of BatchNorm is never fused
    assert _kinds(_net(pool=(3, 2, 1)))[:3] == ["Conv2D+BatchNorm", "MaxPool2D", "ReLU"]
    assert _kinds(_net(plain=True))[:4] == ["Conv2D", "PlainBN", "MaxPool2D", "ReLU"]


# -- fused training equals the layers one by one ---------------------------------------------
CASES = {
    "pool2 relu": {},
    "pool2 relu after": {"relu_first": False},
    "overlapping pool 3/2": {"pool": (3, 2)},
    "no pool": {"pool": None},
    "no relu": {"relu": False},
    "bn only": {"pool": None, "relu": False},
    "stride 2, no bias": {"stride": 2, "bias": False},
    "negative gammas": {"gammas": [1.0, -0.5, 2.0, -1.5]},
}


@pytest.mark.parametrize("size", [11, 12], ids=["odd", "even"])  # even: planes for the pool
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_fused_training_equals_the_layers_one_by_one(case: str, size: int, threads: int) -> None:
    kw = CASES[case]
    x, y = _data(coarse=True, size=size)
    fused = _train(_net(size=size, **kw), x, y)
    plain = _train(_net(plain=True, size=size, **kw), x, y)
    _same(fused, plain, rtol=1e-9)


@pytest.mark.parametrize("size", [11, 12], ids=["odd", "even"])
def test_fused_float32_training_equals_the_layers_one_by_one(size: int, threads: int) -> None:
    x, y = _data("float32", size=size)
    kw: dict[str, Any] = {
        "dtype": "float32", "gammas": [1.0, -0.5, 2.0, 0.7], "bias": False, "size": size
    }  # fmt: skip
    fused = _train(_net(**kw), x, y)  # (no conv bias: in float32 its noise moves running_mean)
    plain = _train(_net(plain=True, **kw), x, y)
    _same(fused, plain, rtol=2e-4)


def test_a_zero_gamma_trains_exactly_as_the_layers(threads: int) -> None:
    """With a zero gamma every value of that channel's windows ties after the BatchNorm;
    the block then runs the layers' own operations: the very same bits."""
    x, y = _data()
    gammas = [1.0, 0.0, 0.5, 1.0]
    model, plain = _net(gammas=gammas), _net(gammas=gammas, plain=True)
    for m in (model, plain):  # keep the zero through training (lr 0 for the BN only)
        m.fit(x, y, optimizer=mf.optim.SGD(lr=0.0), epochs=1, batch_size=16, seed=1,
              progress=False)  # fmt: skip
    a = {k: np.array(v) for k, v in model.state_dict().items()}
    b = {k: np.array(v) for k, v in plain.state_dict().items()}
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_fused_fit_gives_the_same_bits_run_after_run(threads: int) -> None:
    x, y = _data("float32")
    first = _train(_net(dtype="float32"), x, y)
    again = _train(_net(dtype="float32"), x, y)
    for k in first:
        np.testing.assert_array_equal(first[k], again[k], err_msg=k)


def test_a_bad_input_names_the_layer_inside_the_block() -> None:
    model = _net()
    x = np.zeros((8, 3, 11, 11))  # 3 channels where Conv2D takes 2
    with pytest.raises(mf.ShapeError, match=r"Conv2D 2→4 3x3"):
        model.fit(x, np.zeros(8, int), epochs=1, progress=False)
    one = np.zeros((1, 2, 1, 1))  # one value per channel: BatchNorm cannot train
    bn_model = mf.Sequential(mf.Conv2D(2, 4, 1, dtype="float64"), mf.BatchNorm(4, dtype="float64"),
                             mf.Flatten(), mf.Dense(4, 2, dtype="float64"), mf.Softmax())  # fmt: skip
    with pytest.raises(mf.ShapeError, match="more than one value per channel"):
        bn_model.fit(one, np.zeros(1, int), epochs=1, progress=False)


@pytest.mark.parametrize("filters", [5, 2], ids=["dx gathers planes", "dx unplanes first"])
@pytest.mark.parametrize("shape", [(3, 10, 8, 6), (3, 1, 8, 6)], ids=["channels-last", "C=1"])
def test_blocked_convolution_is_the_same_convolution_with_its_pixels_planed(
    shape: tuple[int, ...], filters: int, threads: int
) -> None:
    """NumPy's conv2d(blocked=True) stores pixel (2r+i, 2c+j) at plane (i, j), (r, c); its
    backward takes the gradient so and gives the same dx, dw, db (dx's convolution reads
    the planes in its channels-last copy, or, with F*kw < 8, after putting them back)."""
    b = mf.backend.get("numpy")
    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape)
    w = rng.standard_normal((filters, shape[1], 3, 3))
    bias = rng.standard_normal(filters)
    y = b.conv2d(x, w, bias, 1, 1)
    n, f, oh, ow = y.shape
    planes = b.conv2d(x, w, bias, 1, 1, blocked=True).reshape(n, f, 2, 2, oh // 2, ow // 2)
    np.testing.assert_allclose(
        planes, y.reshape(n, f, oh // 2, 2, ow // 2, 2).transpose(0, 1, 3, 5, 2, 4), rtol=1e-12
    )
    g = rng.standard_normal(y.shape)
    gb = np.ascontiguousarray(g.reshape(n, f, oh // 2, 2, ow // 2, 2).transpose(0, 1, 3, 5, 2, 4))
    want = b.conv2d_backward(g, x, w, 1, 1)
    got = b.conv2d_backward(gb.reshape(g.shape), x, w, 1, 1, blocked=True)
    for name, a, e in zip(("dx", "dw", "db"), got, want, strict=True):
        np.testing.assert_allclose(a, e, rtol=1e-10, atol=1e-12, err_msg=name)
    with pytest.raises(ValueError, match="even output size"):
        b.conv2d(x[:, :, :7], w, bias, 1, 1, blocked=True)


def test_a_block_in_eval_mode_is_its_layers_eval_forward() -> None:
    model = _net(size=12)
    x, _ = _data(size=12)
    (block,) = [
        b for b in _train_blocks.fuse(list(model)) if isinstance(b, _train_blocks.ConvBlock)
    ]
    got, _ = block._forward(x, False, False)
    want = x
    for m in block.layers:
        want, _ = m._forward(want, False, False)
    np.testing.assert_array_equal(got, want)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 5),
    c=st.integers(1, 4),
    f=st.integers(1, 5),
    size=st.tuples(st.integers(4, 9), st.integers(4, 9)),
    stride=st.integers(1, 2),
    pool=st.sampled_from([None, (2, 2), (3, 2), (2, 1), ((2, 3), (1, 2))]),
    relu=st.booleans(),
    signs=st.lists(st.sampled_from([-1.0, 1.0]), min_size=5, max_size=5),
    seed=st.integers(0, 2**16),
)
def test_numpy_fused_block_equals_the_generic_composition(
    n: int, c: int, f: int, size: tuple[int, int], stride: int, pool: Any, relu: bool,
    signs: list[float], seed: int,
) -> None:  # fmt: skip
    """NumPy's fused conv_bn_train / conv_bn_backward equal the backend's generic version
    (the layers' operations in turn) in float64: outputs, running statistics, gradients."""
    from minifw.backend._ops import Ops

    b = mf.backend.get("numpy")
    rng = np.random.default_rng(seed)
    x = np.round(rng.standard_normal((n, c, *size)) * 2) / 2  # ties in the windows
    w = rng.standard_normal((f, c, 3, 3))
    conv = (w, rng.standard_normal(f), stride, 1)
    gamma = rng.uniform(0.5, 2.0, f) * np.array(signs[:f])
    oh = (size[0] + 2 - 3) // stride + 1
    ow = (size[1] + 2 - 3) // stride + 1
    if pool is not None and (oh < np.max(pool[0]) or ow < np.max(pool[0])):
        pool = None
    if n * oh * ow < 2:
        return
    outs = []
    for fn in (b.conv_bn_train, lambda *a: Ops.conv_bn_train(b, *a)):
        rm, rv = np.zeros(f), np.ones(f)
        z, cache, rm, rv = fn(
            x, conv, (gamma, np.linspace(-1, 1, f), rm, rv, 0.1, 1e-5), pool, relu
        )
        outs.append((z, cache, rm, rv))
    (z1, c1, rm1, rv1), (z2, c2, rm2, rv2) = outs
    for a, e in ((z1, z2), (rm1, rm2), (rv1, rv2)):
        np.testing.assert_allclose(a, e, rtol=1e-10, atol=1e-10)
    g = rng.standard_normal(z1.shape)
    got = b.conv_bn_backward(g, c1, True)
    want = Ops.conv_bn_backward(b, g, c2, True)
    for name, a, e in zip(("dx", "dw", "db", "dgamma", "dbeta"), got, want, strict=True):
        np.testing.assert_allclose(a, e, rtol=1e-9, atol=1e-9, err_msg=name)
