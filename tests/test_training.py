"""fit / evaluate / History, losses' validation, train/eval modes, reproducibility,
non-finite losses and the fused softmax cross-entropy path."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import assert_namespace
from hypothesis import given
from hypothesis import strategies as st

import minifw as mf
from minifw import losses, optim


def blobs(n: int = 300, d: int = 6, c: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A separable classification problem: labels from a random linear map."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    y = (x @ rng.standard_normal((d, c))).argmax(axis=1)
    return x, y


def mlp(d: int = 6, c: int = 3, softmax: bool = True, seed: int = 1) -> mf.Sequential:
    mf.seed(seed)
    layers: list[mf.Module] = [mf.Dense(d, 16), mf.ReLU(), mf.Dense(16, c)]
    if softmax:
        layers.append(mf.Softmax())
    return mf.Sequential(*layers)


def test_fit_learns_and_history_follows_keras(backend_name: str) -> None:
    x, y = blobs()
    with mf.backend.use(backend_name):
        model = mlp()
        hist = model.fit(
            x,
            y,
            optimizer=optim.Adam(0.01),
            epochs=4,
            batch_size=32,
            seed=0,
            validation_data=(x[:100], y[:100]),
            progress=False,
        )
    assert isinstance(hist, mf.History)
    assert set(hist.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 4 for v in hist.history.values())
    assert hist.epoch == [0, 1, 2, 3]
    assert hist.params["steps"] == math.ceil(300 / 32)
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    assert hist.history["accuracy"][-1] > 0.8
    for p in model.parameters():
        assert_namespace(p, backend_name)
    res = model.evaluate(x, y)
    assert set(res) == {"loss", "accuracy"}
    assert res["accuracy"] > 0.8


def test_numpy_and_strict_train_alike() -> None:
    x, y = blobs()
    out = {}
    for name in ("numpy", "array_api_strict"):
        with mf.backend.use(name):
            model = mlp()
            h = model.fit(x, y, epochs=2, batch_size=50, seed=3, progress=False)
        out[name] = (h.history, model.state_dict())
    for k in out["numpy"][0]:
        np.testing.assert_allclose(out["numpy"][0][k], out["array_api_strict"][0][k], rtol=1e-4)
    for k, v in out["numpy"][1].items():
        np.testing.assert_allclose(v, out["array_api_strict"][1][k], rtol=1e-4, atol=1e-5)


def test_history_without_validation_has_only_training_metrics() -> None:
    x, y = blobs(64)
    h = mlp().fit(x, y, epochs=2, progress=False)
    assert set(h.history) == {"loss", "accuracy"}
    assert "History(epochs=2" in repr(h)
    assert mlp().fit(x, y, epochs=0, progress=False).history == {}


def test_evaluate_matches_manual_cross_entropy(backend_name: str) -> None:
    x, y = blobs(257)
    with mf.backend.use(backend_name):
        model = mlp()
        res = model.evaluate(x, y, batch_size=64)
        res_one = model.evaluate(x, y)
    p = model.predict(x).astype(np.float64)
    loss = -np.mean(np.log(p[np.arange(len(y)), y]))
    assert res["loss"] == pytest.approx(loss, rel=1e-5)
    assert res["accuracy"] == np.mean(p.argmax(axis=1) == y)
    assert res_one["loss"] == pytest.approx(res["loss"], rel=1e-5)
    assert res_one["accuracy"] == res["accuracy"]


@pytest.mark.parametrize("backend", ["numpy", "array_api_strict"])
def test_reproducible_bit_identical(backend: str) -> None:
    x, y = blobs()
    runs = []
    for _ in range(2):
        with mf.backend.use(backend):
            mf.seed(42)
            model = mf.Sequential(mf.Dense(6, 8), mf.Sigmoid(), mf.Dense(8, 3), mf.Softmax())
            h = model.fit(x, y, epochs=2, batch_size=16, seed=42, progress=False)
        runs.append((h.history, model.state_dict()))
    assert runs[0][0] == runs[1][0]
    for k, v in runs[0][1].items():
        np.testing.assert_array_equal(v, runs[1][1][k])
    # a different shuffle seed gives different weights
    with mf.backend.use(backend):
        mf.seed(42)
        model = mf.Sequential(mf.Dense(6, 8), mf.Sigmoid(), mf.Dense(8, 3), mf.Softmax())
        model.fit(x, y, epochs=2, batch_size=16, seed=43, progress=False)
    assert not np.array_equal(model.state_dict()["0.weight"], runs[0][1]["0.weight"])


def test_fit_without_seed_follows_mf_seed() -> None:
    x, y = blobs()
    sds = []
    for _ in range(2):
        model = mlp(seed=5)  # mf.seed(5) inside, then fit draws its shuffle seed from it
        model.fit(x, y, epochs=1, batch_size=16, progress=False)
        sds.append(model.state_dict())
    np.testing.assert_array_equal(sds[0]["0.weight"], sds[1]["0.weight"])


def test_softmax_is_skipped_with_cross_entropy() -> None:
    """Model + Softmax trained with cross-entropy == the same model (no Softmax) trained on
    logits with CrossEntropy(from_logits=True): bit-identical, the Softmax never runs."""
    x, y = blobs()
    a = mlp(softmax=True)
    b = mlp(softmax=False)
    calls = []
    # the Softmax layer's forward and backward are the backend's softmax ops (the fused
    # loss, softmax_cross_entropy, uses neither): watch them on this backend instance
    ops = vars(a.backend)
    assert "softmax" not in ops and "softmax_backward" not in ops
    ops["softmax"] = lambda *args: calls.append("forward")
    ops["softmax_backward"] = lambda *args: calls.append("backward")
    try:
        a.fit(x, y, epochs=1, batch_size=32, seed=1, progress=False)
    finally:
        del ops["softmax"], ops["softmax_backward"]
    b.fit(
        x,
        y,
        loss=losses.CrossEntropy(from_logits=True),
        epochs=1,
        batch_size=32,
        seed=1,
        progress=False,
    )
    assert calls == []
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(v, b.state_dict()[k])


def test_first_layer_skips_its_input_gradient() -> None:
    x, y = blobs(64)
    for model in (mlp(), mf.Sequential(mf.Flatten(), *mlp())):
        first = next(m for m in model if m.param_names)
        seen = []
        # need_input_grad is an argument of the internal backward hook only: no public path
        orig = first._backward

        def spy(grad, need_input_grad, orig=orig, seen=seen):
            seen.append(need_input_grad)
            return orig(grad, need_input_grad)

        first._backward = spy  # type: ignore[method-assign]
        model.fit(
            x.reshape(64, 2, 3) if isinstance(model[0], mf.Flatten) else x,
            y,
            epochs=1,
            batch_size=32,
            progress=False,
        )
        assert seen == [False, False]


def test_one_hot_labels_equal_class_indices(backend_name: str) -> None:
    x, y = blobs()
    sds = []
    with mf.backend.use(backend_name):
        for labels in (y, np.eye(3, dtype=np.float32)[y]):
            model = mlp()
            h = model.fit(x, labels, epochs=2, batch_size=32, seed=0, progress=False)
            sds.append((h.history, model.state_dict()))
    np.testing.assert_allclose(sds[0][0]["loss"], sds[1][0]["loss"], rtol=1e-5)
    assert sds[0][0]["accuracy"] == sds[1][0]["accuracy"]
    for k, v in sds[0][1].items():
        np.testing.assert_allclose(v, sds[1][1][k], rtol=1e-4, atol=1e-6)


def test_mse_regression(backend_name: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (256, 3)).astype(np.float32)
    y = np.sin(x.sum(axis=1))  # (N,) for one output column
    with mf.backend.use(backend_name):
        mf.seed(0)
        model = mf.Sequential(mf.Dense(3, 16), mf.Tanh(), mf.Dense(16, 1))
        h = model.fit(
            x, y, loss="mse", optimizer="adam", epochs=15, batch_size=32, seed=0, progress=False
        )
    assert h.history["loss"][-1] < 0.2 * h.history["loss"][0]
    res = model.evaluate(x, y)  # the loss of the last fit: MSE
    pred = model.predict(x)[:, 0]
    assert res["loss"] == pytest.approx(float(np.mean((pred - y) ** 2)), rel=1e-4)


def test_non_finite_loss_stops_with_epoch_and_step_and_keeps_last_good_weights() -> None:
    x, y = blobs(320)
    x_bad = x.copy()
    x_bad[200] = np.nan  # in batch 7 (rows 192..223) of the unshuffled order
    model = mlp()
    with pytest.raises(mf.NonFiniteLossError, match=r"epoch 1, step 7 of 10") as ei:
        model.fit(
            x_bad,
            y,
            optimizer=optim.SGD(0.1),
            epochs=2,
            batch_size=32,
            shuffle=False,
            progress=False,
        )
    assert ei.value.epoch == 1 and ei.value.step == 7
    assert isinstance(ei.value, FloatingPointError)
    assert not model.training  # the mode in force before fit is restored
    ref = mlp()
    ref.fit(
        x[:192],
        y[:192],
        optimizer=optim.SGD(0.1),
        epochs=1,
        batch_size=32,
        shuffle=False,
        progress=False,
    )
    for k, v in model.state_dict().items():
        assert np.all(np.isfinite(v))
        np.testing.assert_array_equal(v, ref.state_dict()[k])


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid:RuntimeWarning")
def test_divergence_in_a_later_epoch_is_reported_there() -> None:
    x, y = blobs(64)
    model = mlp()
    with pytest.raises(mf.NonFiniteLossError, match=r"epoch \d+, step \d+") as ei:
        model.fit(x * 1e4, y, optimizer=optim.SGD(1e3), epochs=50, batch_size=64, progress=False)
    assert ei.value.epoch >= 1
    assert len(ei.value.history.epoch) == ei.value.epoch - 1
    assert all(np.all(np.isfinite(p)) for p in model.state_dict().values())


@pytest.mark.parametrize(
    "labels, err, match",
    [
        (np.zeros(299, dtype=int), mf.ShapeError, "300 samples but y has shape"),
        (np.full(300, 3), ValueError, "class index 3 is out of range for a model with 3"),
        (np.full(300, -1), ValueError, "class index -1 is out of range"),
        (np.full(300, 0.5), ValueError, "must be integers"),
        (np.zeros((300, 4)), mf.ShapeError, r"one-hot rows of shape \(300, 3\)"),
        (np.zeros((300, 3)), ValueError, "summing to 1"),
        (np.zeros((300, 3, 1)), mf.ShapeError, "class indices of shape"),
        (np.array(["a"] * 300), TypeError, "numeric"),
    ],
)
def test_bad_labels_rejected_before_any_step(labels, err, match: str) -> None:
    x, _ = blobs()
    model = mlp()
    before = model.state_dict()
    with pytest.raises(err, match=match):
        model.fit(x, labels, epochs=1, progress=False)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_bad_arguments() -> None:
    x, y = blobs(10)
    model = mlp()
    with pytest.raises(ValueError, match="batch_size"):
        model.fit(x, y, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="epochs"):
        model.fit(x, y, epochs=-1, progress=False)
    with pytest.raises(ValueError, match="unknown loss"):
        model.fit(x, y, loss="hinge", progress=False)
    with pytest.raises(mf.ShapeError, match="expects input"):
        model.fit(x[:, :5], y, progress=False)
    with pytest.raises(mf.ShapeError, match="validation x"):
        model.fit(x, y, validation_data=(x[:, :5], y), progress=False)
    with pytest.raises(TypeError, match="validation_data"):
        model.fit(x, y, validation_data=x, progress=False)
    with pytest.raises(ValueError, match="no parameters"):
        mf.Sequential(mf.ReLU()).fit(x, y, progress=False)
    with pytest.raises(mf.ShapeError, match="MSE targets"):
        model.fit(x, y, loss="mse", progress=False)


def test_progress_bar_and_silence(capsys: pytest.CaptureFixture[str]) -> None:
    x, y = blobs(64)
    mlp().fit(x, y, epochs=1, batch_size=16, progress=False)
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err == ""
    mlp().fit(x, y, epochs=2, batch_size=16, progress=True)
    err = capsys.readouterr().err
    assert "Epoch 1/2" in err and "Epoch 2/2" in err and "loss=" in err


def test_modes_and_caches() -> None:
    x, y = blobs(32)
    model = mlp()
    assert not model.training
    g16, g3 = np.ones((32, 16), np.float32), np.ones((32, 3), np.float32)

    def kept(layer: mf.Module, grad: np.ndarray) -> bool:
        """Whether ``layer`` kept what its backward needs (else backward says so)."""
        try:
            layer.backward(grad)
        except RuntimeError as e:
            assert "training mode" in str(e)
            return False
        return True

    model(x)
    assert not kept(model[0], g16) and not kept(model[1], g16)  # eval keeps nothing
    with pytest.raises(RuntimeError, match="training mode"):
        model.backward(g3)
    model.train()
    model(x)
    assert kept(model[0], g16) and kept(model[1], g16)
    model.fit(x, y, epochs=1, progress=False)
    assert model.training  # fit restores the mode it found
    model.eval()
    assert not kept(model[0], g16) and not kept(model[1], g16)


# -- losses on their own ---------------------------------------------------------------------


@given(seed=st.integers(0, 2**31), n=st.integers(1, 6), c=st.integers(2, 6))
def test_cross_entropy_indices_equal_one_hot(backend_name: str, seed: int, n: int, c: int) -> None:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(c), n).astype(np.float32)
    t = rng.integers(0, c, n)
    with mf.backend.use(backend_name) as b:
        ce1, ce2 = losses.CrossEntropy(), losses.CrossEntropy()
        l1 = ce1(b.asarray(p), t)
        l2 = ce2(b.asarray(p), np.eye(c, dtype=np.float32)[t])
        expect = -np.mean(np.log(np.clip(p[np.arange(n), t].astype(np.float64), 1e-7, 1)))
        assert l1 == pytest.approx(expect, rel=1e-5)
        assert l2 == pytest.approx(l1, rel=1e-6)
        g1, g2 = ce1.backward(), ce2.backward()
        assert_namespace(g1, backend_name)
        np.testing.assert_allclose(b.to_numpy(g1), b.to_numpy(g2), rtol=1e-6)
        assert b.dtype_name(g1) == "float32"


def test_loss_errors() -> None:
    p = np.full((4, 3), 1 / 3, np.float32)
    with pytest.raises(ValueError, match="class index 3 is out of range for 3 classes"):
        losses.CrossEntropy()(p, np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="class index -1"):
        losses.CrossEntropy(from_logits=True)(p, np.array([0, 1, 2, -1]))
    with pytest.raises(mf.ShapeError, match="3 class indices for 4 predictions"):
        losses.CrossEntropy()(p, np.array([0, 1, 2]))
    with pytest.raises(mf.ShapeError, match="one-hot"):
        losses.CrossEntropy()(p, np.zeros((4, 2)))
    with pytest.raises(mf.ShapeError, match="MSE"):
        losses.MSE()(p, np.zeros((4, 2)))
    with pytest.raises(RuntimeError, match="forward"):
        losses.MSE().backward()
    with pytest.raises(ValueError, match="unknown loss"):
        losses.get("nope")
    assert isinstance(losses.get("mse"), losses.MSE)


def test_fused_loss_is_stable_for_huge_logits(backend_name: str) -> None:
    z = np.array([[1000.0, 0.0, -1000.0], [0.0, 2000.0, 0.0]], np.float32)
    with mf.backend.use(backend_name) as b:
        loss, g = losses.softmax_cross_entropy(b, b.asarray(z), b.from_numpy(np.array([0, 0])))
        assert float(loss) == pytest.approx(1000.0, rel=1e-6)  # (0 + 2000) / 2
        gn = b.to_numpy(g)
    assert np.all(np.isfinite(gn))
    np.testing.assert_allclose(gn, [[0, 0, 0], [-0.5, 0.5, 0]], atol=1e-6)


def test_backward_accepts_a_numpy_gradient_on_another_backend() -> None:
    x, _ = blobs(8)
    with mf.backend.use("array_api_strict"):
        model = mlp(softmax=False)
    model.train()
    model(x)
    dx = model.backward(np.ones((8, 3), np.float32))
    assert_namespace(dx, "array_api_strict")
    assert tuple(dx.shape) == (8, 6)


def test_progress_without_tqdm_prints_a_line_per_epoch(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "tqdm", None)  # makes "import tqdm..." fail
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    x, y = blobs(64)
    mlp().fit(x, y, epochs=2, batch_size=16, progress=True)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("Epoch 1/2: 4/4 steps") and "loss=" in lines[0]


def test_lazy_engine_parameters_stay_small_graphs() -> None:
    """On dask each step computes the new parameters and optimizer state, so their graphs
    do not grow with the number of steps (which would make a step cost O(steps))."""
    pytest.importorskip("dask")
    x, y = blobs(60)
    sizes = []
    for steps in (2, 12):
        with mf.backend.use("dask"):
            model = mlp()
            opt = optim.Adam(0.01)
            h = model.fit(x, y, optimizer=opt, epochs=1, batch_size=60 // steps, progress=False)
        assert h.history["loss"][0] > 0
        sizes.append(
            max(len(a.__dask_graph__()) for a in model.parameters())
            + max(len(v.__dask_graph__()) for st in opt.state.values() for v in st.values())
        )
        for p in model.parameters():
            assert_namespace(p, "dask")
    assert sizes[1] == sizes[0]
    with mf.backend.use("dask"):
        ref = mlp()
        ref.fit(x, y, optimizer=optim.Adam(0.01), epochs=1, batch_size=5, progress=False)
    num = mlp()
    num.fit(x, y, optimizer=optim.Adam(0.01), epochs=1, batch_size=5, progress=False)
    for k, v in num.state_dict().items():
        np.testing.assert_allclose(ref.state_dict()[k], v, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("owned", [False, True])
def test_fused_loss_on_non_contiguous_logits(owned: bool) -> None:
    b = mf.backend.get("numpy")
    rng = np.random.default_rng(0)
    big = rng.standard_normal((6, 8)).astype(np.float32)
    t = np.array([0, 1, 2, 3, 0, 1], np.int32)
    z = big[:, ::2]  # (6, 4), not contiguous
    assert not z.flags.c_contiguous
    ref_loss, ref_g = losses.softmax_cross_entropy(b, np.ascontiguousarray(z), t)
    loss, g = losses.softmax_cross_entropy(b, z, t, owned)
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-6)
    np.testing.assert_allclose(g, ref_g, rtol=1e-6, atol=1e-7)


def test_integral_float_and_list_labels_are_class_indices() -> None:
    x, y = blobs(96)
    sds = []
    for labels in (y, y.astype(np.float64), y.tolist()):
        model = mlp()
        model.fit(x, labels, epochs=1, batch_size=32, seed=0, progress=False)
        sds.append(model.state_dict())
    for sd in sds[1:]:
        for k, v in sds[0].items():
            np.testing.assert_array_equal(v, sd[k])
