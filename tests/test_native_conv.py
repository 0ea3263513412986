"""The optional compiled convolution kernel (minifw/backend/_native.c) of the NumPy engine.

The kernel itself is checked against a float64 reference on random geometries, for every
instruction set this CPU runs (AVX-512 and AVX2 on an AVX-512 machine); through the public
API, a model's predictions with the kernel agree with those without it
(``MINIFW_NATIVE=0``), do not depend on how the batch is split, and
``mf.plan.explain`` says which convolutions the kernel computes.
"""

from __future__ import annotations

import platform
import shutil
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minifw as mf
from minifw.backend import _native_conv


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


FLAGS = _cpu_flags()
CAN_BUILD = (
    sys.platform == "linux"
    and platform.machine() in ("x86_64", "AMD64")
    and {"avx2", "fma"} <= FLAGS
    and shutil.which("cc") is not None
)
LOADED = _native_conv.loaded()
KERNEL = None if LOADED is None else (LOADED, LOADED.best)
needs_kernel = pytest.mark.skipif(
    KERNEL is None, reason="no compiled kernel here (not built, or a CPU without AVX2+FMA)"
)
#: the instruction sets this CPU runs, by their MINIFW_NATIVE names
ISAS = [n for k, n in _native_conv.ISA_NAMES.items() if KERNEL is not None and k >= KERNEL[1]]


def _code(isa: str) -> int:
    """The C side's code of the instruction set ``isa`` ("avx512", "avx2")."""
    return next(i for i, name in _native_conv.ISA_NAMES.items() if name == isa)


def test_the_kernel_is_built_where_it_can_be() -> None:
    # the install (pip install -e .) compiles it on a Linux x86-64 machine with a C
    # compiler; if it silently did not, every test below would skip
    if not CAN_BUILD:
        pytest.skip("not a Linux x86-64 machine with AVX2+FMA and a C compiler")
    assert KERNEL is not None
    best = "avx512" if "avx512f" in FLAGS else "avx2"
    assert _native_conv.ISA_NAMES[KERNEL[1]] == best


def _reference(x, w, b, relu, pool, stride=(1, 1)):
    """float64: the correlation (of ``stride``) of the padded NHWC x with w (KH, KW, C, F)."""
    n, hp, wp, c = x.shape
    kh, kw, _, f = w.shape
    sh, sw = stride
    oh, ow = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    y = np.zeros((n, oh, ow, f))
    mag = np.zeros((n, oh, ow, f))
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    for i in range(kh):
        for j in range(kw):
            patch = x64[:, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw, :]
            y += patch @ w64[i, j]
            mag += np.abs(patch) @ np.abs(w64[i, j])
    y += b
    mag += np.abs(b)
    if pool:
        ph, pw = oh // 2, ow // 2
        y = y[:, : 2 * ph, : 2 * pw].reshape(n, ph, 2, pw, 2, f).max(axis=(2, 4))
        mag = mag[:, : 2 * ph, : 2 * pw].reshape(n, ph, 2, pw, 2, f).max(axis=(2, 4))
    if relu:
        y = np.maximum(y, 0)
    return y, mag


@needs_kernel
@given(
    isa=st.sampled_from(ISAS or ["avx2"]),
    n=st.integers(1, 3),
    c=st.integers(1, 20),
    f=st.integers(1, 70),
    kh=st.integers(1, 5),
    kw=st.integers(1, 5),
    extra_h=st.integers(0, 9),
    extra_w=st.integers(0, 30),
    sh=st.integers(1, 3),
    sw=st.integers(1, 3),
    relu=st.booleans(),
    pool=st.booleans(),
    bias=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_kernel_matches_a_float64_reference(
    isa, n, c, f, kh, kw, extra_h, extra_w, sh, sw, relu, pool, bias, seed
) -> None:
    # any filter count: the kernel computes them padded with zero filters up to its vector
    # width and writes the first f
    assert KERNEL is not None
    k = KERNEL[0]
    code = _code(isa)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, kh + extra_h, kw + extra_w, c)).astype(np.float32)
    w = rng.standard_normal((f, c, kh, kw)).astype(np.float32)  # the layer's layout
    b = rng.standard_normal(f).astype(np.float32) if bias else None
    wk, bk = k.weights(code, w, b)
    assert wk.shape == (kh, kw, c, k.padded(code, f)) and wk.shape[3] % k.width(code) == 0
    oh, ow = extra_h // sh + 1, extra_w // sw + 1
    shape = (n, oh // 2, ow // 2, f) if pool else (n, oh, ow, f)
    # the output as the interior of a larger array (as the next layer's padded input):
    # the kernel writes that view and nothing around it
    big = np.full((n, shape[1] + 2, shape[2] + 2, f), 7.0, np.float32)
    out = big[:, 1:-1, 1:-1]
    scratch = np.empty(2 * ow * wk.shape[3], np.float32)
    k.conv(code, x, wk, bk, relu, pool, out, scratch, (sh, sw))
    want, mag = _reference(
        x, w.transpose(2, 3, 1, 0), np.zeros(f) if b is None else b, relu, pool, (sh, sw)
    )
    assert out.shape == want.shape
    assert np.all(np.abs(out - want) <= 1e-5 * mag + 1e-6)
    border = big.copy()
    border[:, 1:-1, 1:-1] = 7.0
    assert np.all(border == 7.0)


@needs_kernel
@given(
    isa=st.sampled_from(ISAS or ["avx2"]),
    c=st.integers(1, 9),
    f=st.integers(1, 40),
    half_h=st.integers(1, 5),
    half_w=st.integers(1, 9),
    relu=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_kernel_writes_the_blocked_order_of_the_training_blocks(
    isa, c, f, half_h, half_w, relu, seed
) -> None:
    # conv2d(blocked=True) of the fused training blocks: pixel (2r+i, 2c+j) of channel f at
    # [n, f, i, j, r, c] of an (N, F, OH, OW) array
    assert KERNEL is not None
    k = KERNEL[0]
    code = _code(isa)
    rng = np.random.default_rng(seed)
    oh, ow = 2 * half_h, 2 * half_w
    x = rng.standard_normal((2, oh + 2, ow + 2, c)).astype(np.float32)
    w = rng.standard_normal((f, c, 3, 3)).astype(np.float32)
    b = rng.standard_normal(f).astype(np.float32)
    wk, bk = k.weights(code, w, b)
    y = np.empty((2, f, oh, ow), np.float32)
    view = y.reshape(2, f, 2, 2, half_h, half_w).transpose(0, 2, 3, 4, 5, 1)
    k.conv(code, x, wk, bk, relu, False, view, np.empty(2 * ow * wk.shape[3], np.float32))
    want, mag = _reference(x, w.transpose(2, 3, 1, 0), b, relu, False)  # (n, OH, OW, F)
    # the blocked planes back in pixel order
    got = y.reshape(2, f, 2, 2, half_h, half_w).transpose(0, 4, 2, 5, 3, 1).reshape(want.shape)
    assert np.all(np.abs(got - want) <= 1e-5 * mag + 1e-6)
    with pytest.raises(mf.BackendError, match="native convolution kernel"):  # not with pool
        k.conv(code, x, wk, bk, relu, True, view, np.empty(2 * ow * wk.shape[3], np.float32))


@needs_kernel
def test_the_kernel_takes_filter_counts_it_pads_by_at_most_a_quarter() -> None:
    assert LOADED is not None
    assert LOADED.padded(1, 30) == 32 and LOADED.padded(2, 30) == 32
    assert LOADED.takes(1, 16) and LOADED.takes(1, 30) and LOADED.takes(1, 64)
    assert not LOADED.takes(1, 10) and not LOADED.takes(1, 20)  # 16, 32: +60 %, +60 %
    assert LOADED.takes(2, 20) and not LOADED.takes(2, 3)  # 24: +20 %; 8: +167 %


@needs_kernel
@pytest.mark.parametrize("isa", ISAS)
def test_kernel_writes_channels_first_through_strides(isa: str) -> None:
    assert KERNEL is not None
    code = _code(isa)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 9, 11, 5)).astype(np.float32)
    w = rng.standard_normal((30, 5, 3, 3)).astype(np.float32)
    b = rng.standard_normal(30).astype(np.float32)
    wk, bk = KERNEL[0].weights(code, w, b)
    y = np.empty((2, 30, 7, 9), np.float32)  # NCHW, written through its NHWC view
    KERNEL[0].conv(
        code, x, wk, bk, True, False, y.transpose(0, 2, 3, 1), np.empty(2 * 9 * 32, np.float32)
    )
    want, mag = _reference(x, w.transpose(2, 3, 1, 0), b, True, False)
    assert np.all(np.abs(y.transpose(0, 2, 3, 1) - want) <= 1e-5 * mag + 1e-6)


@needs_kernel
def test_kernel_rejects_what_it_does_not_compute() -> None:
    assert KERNEL is not None
    k, code = KERNEL
    x = np.zeros((1, 6, 6, 3), np.float32)
    w = np.zeros((3, 3, 3, 16), np.float32)
    b = np.zeros(16, np.float32)
    scratch = np.empty(2 * 4 * 16, np.float32)
    with pytest.raises(mf.BackendError, match="native convolution kernel"):
        k.conv(code, x, w, b, False, False, np.empty((1, 3, 4, 16), np.float32), scratch)
    with pytest.raises(mf.BackendError, match="native convolution kernel"):
        k.conv(
            code,
            x.astype(np.float64),
            w,
            b,
            False,
            False,
            np.empty((1, 4, 4, 16), np.float32),
            scratch,
        )
    with pytest.raises(mf.BackendError, match="native convolution kernel"):
        k.conv(
            code, x, w[..., :12], b[:12], False, False, np.empty((1, 4, 4, 12), np.float32), scratch
        )
    with pytest.raises(mf.BackendError, match="native convolution kernel"):  # 20 > 16 filters
        k.conv(code, x, w, b, False, False, np.empty((1, 4, 4, 20), np.float32), scratch)


# -- through the public API ----------------------------------------------------------------


def _net(c_in: int = 1) -> mf.Sequential:
    """A lone short-row head convolution, odd sizes, a pool that drops a row and a column,
    one convolution the kernel cannot take (20 filters) and one it can after it."""
    return mf.Sequential(
        mf.Conv2D(c_in, 16, 3, padding=1),
        mf.ReLU(),
        mf.Conv2D(16, 32, (3, 2), padding=(1, 0)),
        mf.ReLU(),
        mf.MaxPool2D(2),
        mf.Conv2D(32, 20, 3, padding=1),
        mf.ReLU(),
        mf.Conv2D(20, 16, 1),
        mf.Flatten(),
        mf.Dense(16 * 5 * 6, 10),
    )


def _predict(
    model: mf.Sequential, x: np.ndarray, monkeypatch: pytest.MonkeyPatch, native: str
) -> np.ndarray:
    monkeypatch.setenv("MINIFW_NATIVE", native)
    return model.predict(x)


@needs_kernel
@pytest.mark.parametrize("isa", ISAS)
def test_predictions_with_and_without_the_kernel_agree(
    isa: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _net()
    x = np.random.default_rng(1).standard_normal((37, 1, 11, 13)).astype(np.float32)
    plain = _predict(model, x, monkeypatch, "0")
    fast = _predict(model, x, monkeypatch, isa)
    assert fast.dtype == np.float32 and fast.shape == plain.shape == (37, 10)
    np.testing.assert_allclose(fast, plain, rtol=1e-4, atol=1e-5)


@needs_kernel
def test_explain_names_the_convolutions_the_kernel_computes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert KERNEL is not None
    model = _net()
    name = _native_conv.ISA_NAMES[KERNEL[1]]
    monkeypatch.delenv("MINIFW_NATIVE", raising=False)
    text = mf.plan.explain(model)
    # the 20-filter convolution: padded to 32 on AVX-512 (not taken), 24 on AVX2 (taken)
    takes20 = KERNEL[0].takes(KERNEL[1], 20)
    assert text.count(f"({name} kernel)") == 3 + takes20
    assert (f"Conv2D 32→20 3x3 relu ({name} kernel)" in text) == takes20
    monkeypatch.setenv("MINIFW_NATIVE", "0")
    assert "kernel" not in mf.plan.explain(model)


@needs_kernel
def test_a_lone_convolution_and_an_unfusable_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    # a convolution outside a chain (the layer's own conv2d) runs on the kernel too; a
    # max-pool the kernel cannot do on its rows (3x3, stride 2) runs after it, alone
    assert KERNEL is not None
    name = _native_conv.ISA_NAMES[KERNEL[1]]
    lone = mf.Sequential(
        mf.Conv2D(3, 16, 3, padding=1), mf.ReLU(), mf.Flatten(), mf.Dense(16 * 64, 4)
    )
    pooled = mf.Sequential(
        mf.Conv2D(3, 32, 3),
        mf.ReLU(),
        mf.MaxPool2D(3, 2),
        mf.Conv2D(32, 16, 2, stride=2, padding=1),
    )
    x = np.random.default_rng(3).standard_normal((9, 3, 8, 8)).astype(np.float32)
    monkeypatch.delenv("MINIFW_NATIVE", raising=False)
    assert f"Conv2D 3→16 3x3 relu ({name} kernel)" in mf.plan.explain(lone)
    text = mf.plan.explain(pooled)
    assert (
        f"Conv2D 3→32 3x3 relu ({name} kernel) | MaxPool2D 3x3 | Conv2D 32→16 2x2 ({name} kernel)"
        in text
    ), text
    for model in (lone, pooled):
        fast = _predict(model, x, monkeypatch, "1")
        layers = x
        for m in model:  # the layers' own forward, eval mode
            layers = m(layers)
        plain = _predict(model, x, monkeypatch, "0")
        np.testing.assert_allclose(fast, plain, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(layers, plain, rtol=1e-4, atol=1e-5)


@needs_kernel
@given(n=st.integers(1, 12), split=st.integers(1, 11), seed=st.integers(0, 2**31 - 1))
def test_kernel_results_do_not_depend_on_the_batch_split(
    n: int, split: int, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # each output is the bias plus its products in one fixed order: bit for bit the same
    # whatever the batch, the chunk or the thread (GEMMs do not promise that: only
    # convolutions the kernel computes here)
    monkeypatch.delenv("MINIFW_NATIVE", raising=False)
    model = mf.Sequential(
        mf.Conv2D(3, 16, 3, padding=1),
        mf.ReLU(),
        mf.Conv2D(16, 32, 3),
        mf.ReLU(),
        mf.MaxPool2D(2),
        mf.Conv2D(32, 16, (1, 3)),
    )
    assert mf.plan.explain(model).count("kernel)") == 3
    x = np.random.default_rng(seed).standard_normal((n, 3, 11, 13)).astype(np.float32)
    whole = model.predict(x)
    s = min(split, n)
    parts = np.concatenate([model.predict(x[:s]), model.predict(x[s:])]) if s < n else whole
    ones = np.concatenate([model.predict(x[i : i + 1]) for i in range(n)])
    assert np.array_equal(whole, parts) and np.array_equal(whole, ones)


@needs_kernel
def test_nan_propagates_as_without_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    model = mf.Sequential(
        mf.Conv2D(1, 16, 3, padding=1), mf.ReLU(), mf.MaxPool2D(2), mf.Conv2D(16, 16, 3)
    )
    x = np.random.default_rng(2).standard_normal((3, 1, 10, 10)).astype(np.float32)
    x[1, 0, 4, 5] = np.nan
    plain = _predict(model, x, monkeypatch, "0")
    fast = _predict(model, x, monkeypatch, "1")
    assert np.isnan(plain).any()
    assert np.array_equal(np.isnan(fast), np.isnan(plain))
    np.testing.assert_allclose(fast[~np.isnan(fast)], plain[~np.isnan(plain)], rtol=1e-4, atol=1e-5)


@needs_kernel
def test_predict_from_several_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MINIFW_NATIVE", raising=False)
    model = _net(3)
    xs = [
        np.random.default_rng(i).standard_normal((20, 3, 11, 13)).astype(np.float32)
        for i in range(4)
    ]
    want = [model.predict(x) for x in xs]
    got: list[np.ndarray | None] = [None] * 4

    def work(i: int) -> None:
        for _ in range(5):
            got[i] = model.predict(xs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g, w in zip(got, want, strict=True):
        assert g is not None and np.array_equal(g, w)


def test_a_bad_minifw_native_value_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    if KERNEL is None:
        pytest.skip("no compiled kernel: MINIFW_NATIVE is not read")
    model = _net()
    monkeypatch.setenv("MINIFW_NATIVE", "fastest")
    with pytest.raises(mf.BackendError, match="MINIFW_NATIVE='fastest'"):
        model.predict(np.zeros((2, 1, 11, 13), np.float32))


def test_float64_models_never_use_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    model = mf.Sequential(mf.Conv2D(1, 16, 3, dtype="float64"), mf.ReLU(), mf.MaxPool2D(2))
    monkeypatch.delenv("MINIFW_NATIVE", raising=False)
    assert "kernel" not in mf.plan.explain(model)
    y = model.predict(np.ones((2, 1, 6, 6)))
    assert y.dtype == np.float64


def test_minifw_native_values() -> None:
    # what each value of MINIFW_NATIVE selects, on an AVX-512 CPU and on an AVX2 one
    k = object.__new__(_native_conv.Kernel)
    k.best = 1  # AVX-512
    assert [k.isa(v) for v in ("", "1", "auto", "on", " AVX512 ", "avx2", "0", "off")] == [
        1, 1, 1, 1, 1, 2, 0, 0,
    ]  # fmt: skip
    k.best = 2  # AVX2 only
    assert k.isa("") == 2 and k.isa("avx2") == 2
    with pytest.raises(mf.BackendError, match="MINIFW_NATIVE='avx512': this CPU has no avx512"):
        k.isa("avx512")
    with pytest.raises(mf.BackendError, match="expected one of 0, 1, auto, avx512, avx2"):
        k.isa("sse")


def test_a_library_without_this_interface_version_is_not_called(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # an extension left by an older install (or any other library) is never called with
    # arguments it does not take: here NumPy's own extension, which has no version symbol
    import types

    umath = np._core._multiarray_umath if hasattr(np, "_core") else np.core._multiarray_umath
    fake = types.SimpleNamespace(__file__=umath.__file__)
    monkeypatch.setattr(_native_conv.importlib, "import_module", lambda name: fake)
    assert _native_conv._load() is None


def test_minifw_info_says_whether_the_kernel_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from minifw import cli

    monkeypatch.delenv("MINIFW_NATIVE", raising=False)
    assert cli.main(["info", "--json"]) == 0
    line = json.loads(capsys.readouterr().out)["conv_kernel"]
    if KERNEL is None:
        assert line.startswith("none: ")
    else:
        assert line.startswith(_native_conv.ISA_NAMES[KERNEL[1]] + " ")
        monkeypatch.setenv("MINIFW_NATIVE", "0")
        assert cli.main(["info"]) == 0
        assert "conv kernel: off (MINIFW_NATIVE='0')" in capsys.readouterr().out
        monkeypatch.setenv("MINIFW_NATIVE", "fastest")
        assert cli.main(["info"]) != 0
        assert "MINIFW_NATIVE='fastest'" in capsys.readouterr().err
