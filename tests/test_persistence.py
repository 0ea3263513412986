"""Saving and loading models: round trips, atomic writes, and every kind of bad file."""

from __future__ import annotations

import json
import os
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import assert_namespace
from hypothesis import given
from hypothesis import strategies as st

import minifw as mf
from minifw import persistence

# -- helpers -----------------------------------------------------------------------------------


def small_model(dtype: str = "float32") -> mf.Sequential:
    return mf.Sequential(
        mf.Dense(4, 5, dtype=dtype),
        mf.ReLU(),
        mf.Dense(5, 3, bias=False, dtype=dtype),
        mf.Softmax(axis=-1),
    )


def architecture_of(m: mf.Module) -> Any:
    """Independent description: class names, configs, nesting."""
    if isinstance(m, mf.Sequential):
        return ["Sequential", [architecture_of(c) for c in m]]
    return [type(m).__name__, m.get_config()]


def assert_same_model(a: mf.Module, b: mf.Module) -> None:
    assert architecture_of(a) == architecture_of(b)
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        assert sa[k].shape == sb[k].shape, k
        np.testing.assert_array_equal(sa[k], sb[k])  # exact, bit for bit
    assert a.dtype == b.dtype


def write_npz(path: Path, arrays: dict[str, Any], header: Any = None) -> None:
    """An npz written with plain NumPy (the test builds bad files on purpose)."""
    if header is not None:
        arrays = {persistence.HEADER_KEY: np.array(header), **arrays}
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def arch_json(model: dict[str, Any], **top: Any) -> str:
    doc = {"format": "minifw.model", "version": 1, "model": model}
    doc.update(top)
    return json.dumps(doc)


def dense(i: int, o: int, **kw: Any) -> dict[str, Any]:
    cfg = {"in_features": i, "out_features": o, "bias": True, "dtype": "float32"}
    cfg.update(kw)
    return {"class": "Dense", "config": cfg}


# -- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".npz", ".safetensors", ""])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_round_trip(tmp_path: Path, suffix: str, dtype: str) -> None:
    if suffix == ".safetensors":
        pytest.importorskip("safetensors", reason="the optional safetensors package")
    m = small_model(dtype)
    path = tmp_path / f"model{suffix}"
    m.save(path)
    assert path.exists() and os.listdir(tmp_path) == [path.name]  # no suffix added, no temp
    loaded = mf.load(path)
    assert isinstance(loaded, mf.Sequential)
    assert_same_model(m, loaded)
    x = np.random.default_rng(0).standard_normal((6, 4))
    np.testing.assert_array_equal(m.predict(x), loaded.predict(x))


def test_save_function_and_single_layer_and_nesting(tmp_path: Path) -> None:
    layer = mf.Dense(3, 2)
    mf.save(layer, tmp_path / "d.npz")
    got = mf.load(tmp_path / "d.npz")
    assert isinstance(got, mf.Dense)
    assert_same_model(layer, got)
    nested = mf.Sequential(mf.Flatten(), mf.Sequential(mf.Dense(6, 4), mf.Tanh()), mf.Dense(4, 2))
    nested.save(tmp_path / "n.npz")
    got = mf.load(tmp_path / "n.npz")
    assert_same_model(nested, got)
    assert list(got.state_dict()) == ["1.0.weight", "1.0.bias", "2.weight", "2.bias"]


def test_npz_layout_is_plain_and_pickle_free(tmp_path: Path) -> None:
    small_model().save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz", allow_pickle=False) as z:  # any NumPy can read it
        assert sorted(z.files) == ["0.bias", "0.weight", "2.weight", persistence.HEADER_KEY]
        doc = json.loads(str(z[persistence.HEADER_KEY]))
        assert z["0.weight"].shape == (4, 5)  # (in, out)
    assert doc["format"] == "minifw.model" and doc["version"] == 1
    assert [n["class"] for n in doc["model"]["layers"]] == ["Dense", "ReLU", "Dense", "Softmax"]


def test_safetensors_layout(tmp_path: Path) -> None:
    st = pytest.importorskip("safetensors.numpy", reason="the optional safetensors package")
    m = small_model()
    m.save(tmp_path / "m.safetensors")
    tensors = st.load_file(str(tmp_path / "m.safetensors"))
    assert sorted(tensors) == ["0.bias", "0.weight", "2.weight"]
    np.testing.assert_array_equal(tensors["0.weight"], mf.to_numpy(m[0].weight))  # (in, out)


def test_load_on_the_current_backend(tmp_path: Path, backend_name: str) -> None:
    m = small_model()
    m.save(tmp_path / "m.npz")
    with mf.backend.use(backend_name):
        got = mf.load(tmp_path / "m.npz")
    assert got.backend.name == backend_name
    assert_namespace(got[0].weight, backend_name)
    assert_same_model(m, got)
    got2 = mf.load(tmp_path / "m.npz", backend=backend_name)
    assert_namespace(got2[2].weight, backend_name)


def test_save_from_another_backend(tmp_path: Path) -> None:
    with mf.backend.use("array_api_strict"):
        m = small_model()
    m.save(tmp_path / "m.npz")
    got = mf.load(tmp_path / "m.npz")
    assert got.backend.name == "numpy"
    assert_same_model(m, got)


def test_load_does_not_disturb_the_seeded_stream(tmp_path: Path) -> None:
    small_model().save(tmp_path / "m.npz")
    mf.seed(7)
    w1 = mf.to_numpy(mf.Dense(8, 8).weight)
    mf.seed(7)
    mf.load(tmp_path / "m.npz")
    w2 = mf.to_numpy(mf.Dense(8, 8).weight)
    np.testing.assert_array_equal(w1, w2)


_ACTS = [mf.Sigmoid, mf.ReLU, mf.Tanh, mf.Step, mf.Identity, mf.Softmax]


@st.composite
def random_models(draw: st.DrawFn) -> mf.Sequential:
    dtype = draw(st.sampled_from(["float32", "float64"]))
    sizes = draw(st.lists(st.integers(1, 6), min_size=2, max_size=5))
    layers: list[mf.Module] = []
    for i in range(len(sizes) - 1):
        d = mf.Dense(sizes[i], sizes[i + 1], bias=draw(st.booleans()), dtype=dtype)
        elems = st.floats(width=32 if dtype == "float32" else 64)  # NaN, inf, subnormals too
        w = draw(
            st.lists(elems, min_size=sizes[i] * sizes[i + 1], max_size=sizes[i] * sizes[i + 1])
        )
        d.weight = np.array(w, dtype=dtype).reshape(sizes[i], sizes[i + 1])
        layers.append(d)
        act = draw(st.sampled_from([None, *_ACTS]))
        if act is not None:
            layers.append(act())
    if draw(st.booleans()):
        layers = [mf.Sequential(*layers[:1]), *layers[1:]]
    return mf.Sequential(*layers)


@given(random_models(), st.sampled_from([".npz", ".safetensors"]))
def test_property_round_trip_is_exact(
    tmp_path_factory: pytest.TempPathFactory, model: mf.Sequential, suffix: str
) -> None:
    path = tmp_path_factory.mktemp("rt") / f"m{suffix}"
    model.save(path)
    assert_same_model(model, mf.load(path))


# -- atomic writes -----------------------------------------------------------------------------


def test_failed_save_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.npz"
    small_model().save(path)
    before = path.read_bytes()

    def broken(f: Any, *args: Any, **kw: Any) -> None:
        f.write(b"PK partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        mf.Sequential(mf.Dense(2, 2)).save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.npz"]  # the temporary file is gone


def test_save_refuses_unknown_modules(tmp_path: Path) -> None:
    class Custom(mf.Identity):
        pass

    with pytest.raises(TypeError, match="register"):
        mf.Sequential(mf.Dense(2, 2), Custom()).save(tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()
    mf.register_layer(Custom)
    try:
        mf.Sequential(mf.Dense(2, 2), Custom()).save(tmp_path / "m.npz")
        assert isinstance(mf.load(tmp_path / "m.npz")[1], Custom)
    finally:
        mf.layers.module.LAYERS.pop("Custom")


# -- bad files ---------------------------------------------------------------------------------


def _expect_format_error(path: Path, match: str) -> None:
    with pytest.raises(mf.FormatError, match=match) as e:
        mf.load(path)
    assert str(path) in str(e.value)


def test_random_bytes_and_empty(tmp_path: Path) -> None:
    p = tmp_path / "junk.npz"
    junk = bytearray(os.urandom(300).replace(b"PK", b"pk"))
    if junk[8:9] == b"{":  # would look like a safetensors header (1 in 256 draws)
        junk[8] = 0
    p.write_bytes(bytes(junk))
    _expect_format_error(p, "not a minifw model")
    junk[8] = ord("{")  # a safetensors-looking header of random bytes: still a FormatError
    p.write_bytes(bytes(junk))
    _expect_format_error(p, "safetensors")
    p.write_bytes(b"")
    _expect_format_error(p, "empty")
    p.write_bytes(b"PK\x03\x04garbage")
    _expect_format_error(p, "not an .npz")


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        mf.load(tmp_path / "nope.npz")
    _expect_format_error(tmp_path, "directory")


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_every_truncation_is_a_format_error(tmp_path: Path, suffix: str) -> None:
    if suffix == ".safetensors":
        pytest.importorskip("safetensors", reason="the optional safetensors package")
    good = tmp_path / f"good{suffix}"
    mf.Sequential(mf.Dense(3, 2), mf.Sigmoid()).save(good)
    data = good.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    for n in sorted(
        {1, 2, 8, 9, 20, 64, len(data) // 3, len(data) // 2, len(data) - 22, len(data) - 1}
    ):
        cut.write_bytes(data[:n])
        _expect_format_error(cut, ".")


def test_object_array(tmp_path: Path) -> None:
    p = tmp_path / "obj.npz"
    write_npz(p, {"0.weight": np.array([{"a": 1}, None], dtype=object)}, arch_json(dense(1, 2)))
    _expect_format_error(p, "pickle")


def test_no_architecture(tmp_path: Path) -> None:
    p = tmp_path / "plain.npz"
    write_npz(p, {"W1": np.zeros((2, 2), np.float32)})
    _expect_format_error(p, "from_weights")


@pytest.mark.parametrize(
    "header, arrays, match",
    [
        ("{not json", {}, "not valid JSON"),
        (json.dumps([1, 2]), {}, "not a minifw model description"),
        (arch_json(dense(2, 3), version=99), {}, "version 99"),
        (json.dumps({"format": "minifw.model", "version": 1}), {}, "no 'model'"),
        (arch_json({"class": "Conv3D", "config": {}}), {}, "unknown layer 'Conv3D'"),
        (
            arch_json({"class": "Dense", "config": {"in_features": -1, "out_features": 2}}),
            {},
            "cannot build Dense",
        ),
        (arch_json({"class": "Dense", "config": {"bogus": 1}}), {}, "cannot build Dense"),
        (arch_json({"class": "Sigmoid", "config": [1]}), {}, "'config' must be"),
        (arch_json({"class": "Sequential"}), {}, "'layers' list"),
        (arch_json({"layers": []}), {}, "'class' name"),
        (arch_json(dense(2, 3)), {"0.weight": np.zeros((2, 3), np.float32)}, "missing parameters"),
        (
            arch_json(dense(2, 3)),
            {"weight": np.zeros((2, 3), np.float32)},
            r"missing parameters \['bias'\]",
        ),
        (
            arch_json(dense(2, 3)),
            {
                "weight": np.zeros((2, 3), np.float32),
                "bias": np.zeros(3, np.float32),
                "extra": np.zeros(1, np.float32),
            },
            "unexpected entries",
        ),
        (
            arch_json(dense(2, 3)),
            {"weight": np.zeros((3, 2), np.float32), "bias": np.zeros(3, np.float32)},
            r"shape \(3, 2\), expected \(2, 3\)",
        ),
        (
            arch_json(dense(2, 3)),
            {"weight": np.zeros((2, 3), np.float64), "bias": np.zeros(3, np.float32)},
            "dtype float64, expected float32",
        ),
        (
            arch_json(dense(2, 3)),
            {"weight": np.zeros((2, 3), np.int32), "bias": np.zeros(3, np.float32)},
            "dtype int32",
        ),
        (
            arch_json(dense(100_000, 100_000)),
            {"weight": np.zeros((2, 3), np.float32)},
            "declares 40,000,400,000 bytes",
        ),
    ],
)
def test_bad_contents(tmp_path: Path, header: str, arrays: dict[str, Any], match: str) -> None:
    p = tmp_path / "bad.npz"
    write_npz(p, arrays, header)
    _expect_format_error(p, match)


def test_header_must_be_a_string(tmp_path: Path) -> None:
    p = tmp_path / "h.npz"
    write_npz(p, {persistence.HEADER_KEY: np.zeros(3)})
    _expect_format_error(p, "JSON string")


def test_npy_entry_lying_about_its_shape(tmp_path: Path) -> None:
    """A header that declares far more data than the entry holds: no huge allocation."""
    p = tmp_path / "lie.npz"
    small_model().save(p)
    with zipfile.ZipFile(p) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    head = b"{'descr': '<f4', 'fortran_order': False, 'shape': (100000, 100000), }"
    head = head + b" " * (118 - len(head)) + b"\n"
    entries["0.weight.npy"] = (
        b"\x93NUMPY\x01\x00" + struct.pack("<H", len(head)) + head + b"\0" * 80
    )
    with zipfile.ZipFile(p, "w") as z:
        for n, d in entries.items():
            z.writestr(n, d)
    _expect_format_error(p, "declares shape")


def test_non_npy_entry(tmp_path: Path) -> None:
    p = tmp_path / "z.npz"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("readme.txt", "hello")
    _expect_format_error(p, "readme.txt")


def test_safetensors_without_minifw_metadata(tmp_path: Path) -> None:
    st = pytest.importorskip("safetensors.numpy", reason="the optional safetensors package")
    p = tmp_path / "other.safetensors"
    p.write_bytes(st.save({"W1": np.zeros((2, 2), np.float32)}))
    _expect_format_error(p, "metadata")
    p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json here!}")
    _expect_format_error(p, "not a valid .safetensors")


# -- from_weights -----------------------------------------------------------------------------


def test_from_weights_builds_the_chain() -> None:
    rng = np.random.default_rng(0)
    w = {
        "W1": rng.standard_normal((4, 3)).astype(np.float32),
        "b1": rng.standard_normal(3).astype(np.float32),
        "W2": rng.standard_normal((3, 2)).astype(np.float32),
    }
    m = mf.from_weights(w, activation="relu", output=None)
    assert [type(x).__name__ for x in m] == ["Dense", "ReLU", "Dense"]
    assert not m[2].use_bias
    x = rng.standard_normal((5, 4)).astype(np.float32)
    expected = np.maximum(x @ w["W1"] + w["b1"], 0) @ w["W2"]
    np.testing.assert_allclose(m.predict(x), expected, rtol=1e-5, atol=1e-6)
    m64 = mf.from_weights(w, dtype="float64")
    assert m64.dtype == "float64"
    assert [type(x).__name__ for x in m64] == ["Dense", "Sigmoid", "Dense", "Softmax"]


@pytest.mark.parametrize(
    "weights, match",
    [
        ({}, "1..n"),
        ({"W1": np.zeros((2, 2)), "W3": np.zeros((2, 2))}, "without gaps"),
        ({"W1": np.zeros((2, 3)), "W2": np.zeros((2, 2))}, "W1 outputs 3"),
        ({"W1": np.zeros((2, 3)), "b1": np.zeros(2)}, r"b1 must have shape \(3,\)"),
        ({"W1": np.zeros((2, 3)), "x": np.zeros(2)}, "unexpected key 'x'"),
        ({"W1": np.zeros(3)}, "2-D"),
        ({"b1": np.zeros(3)}, "no matching W1"),
    ],
)
def test_from_weights_bad_mappings(weights: dict[str, Any], match: str) -> None:
    with pytest.raises(mf.FormatError, match=match):
        mf.from_weights(weights)


def test_from_weights_bad_names() -> None:
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        mf.from_weights({"W1": np.zeros((2, 2))}, activation="gelu")


def test_from_weights_files(tmp_path: Path) -> None:
    w = {"W1": np.ones((2, 3), np.float32), "b1": np.zeros(3, np.float32)}
    write_npz(tmp_path / "w.npz", w)
    m = mf.from_weights(tmp_path / "w.npz")
    np.testing.assert_array_equal(mf.to_numpy(m[0].weight), w["W1"])
    st = pytest.importorskip("safetensors.numpy", reason="the optional safetensors package")
    (tmp_path / "w.safetensors").write_bytes(st.save(w))
    m2 = mf.from_weights(tmp_path / "w.safetensors")
    assert_same_model(m, m2)
    (tmp_path / "w.bin").write_bytes(b"nothing useful")
    with pytest.raises(mf.FormatError, match="w.bin"):
        mf.from_weights(tmp_path / "w.bin")


def test_reference_network(data_dir: Path, tmp_path: Path) -> None:
    m = mf.from_weights(data_dir / "weights" / "sample_weight.npz")
    assert [type(x).__name__ for x in m] == ["Dense", "Sigmoid"] * 2 + ["Dense", "Softmax"]
    assert m.num_parameters() == 45_360 and m.dtype == "float32"
    m.save(tmp_path / "ref.npz")
    assert_same_model(m, mf.load(tmp_path / "ref.npz"))
