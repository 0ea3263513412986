"""Malicious and broken ONNX files: every one gives mf.FormatError (never another exception),
and nothing is allocated beyond the tensor sizes the file can hold. The reader is fuzzed
with hypothesis: a mutated valid file gives FormatError or a valid model."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minifw as mf

onnx = pytest.importorskip("onnx", reason="the tests build their files with the onnx package")
helper = onnx.helper
nh = onnx.numpy_helper
TP = onnx.TensorProto


def _model(inits: list[Any] | None = None, w: Any = None, n_in: Any = 4, n_out: int = 3) -> Any:
    rng = np.random.default_rng(0)
    w = nh.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W") if w is None else w
    b = nh.from_array(rng.standard_normal(n_out).astype(np.float32), "b")
    nodes = [
        helper.make_node("Gemm", ["x", "W", "b"], ["h"], name="fc"),
        helper.make_node("Relu", ["h"], ["r"], name="act"),
        helper.make_node("Softmax", ["r"], ["y"], name="sm", axis=-1),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TP.FLOAT, ["N", n_in])],
        [helper.make_tensor_value_info("y", TP.FLOAT, ["N", n_out])],
        [w, b] if inits is None else inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


VALID = _model().SerializeToString()
X = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
WANT = mf.onnx.loads(VALID)(X)


def _format_error_or_model(data: bytes) -> None:
    try:
        m = mf.onnx.loads(data)
    except mf.FormatError:
        return
    assert isinstance(m, mf.Sequential)
    with np.errstate(all="ignore"):
        m(np.zeros((2, *[d or 1 for d in (m[0].input_shape() or (None, 4))[1:]]), np.float32))


def test_the_valid_file_loads() -> None:
    assert [type(m).__name__ for m in mf.onnx.loads(VALID)] == ["Dense", "ReLU", "Softmax"]


def test_every_truncation_is_an_error_or_the_same_model() -> None:
    for n in range(len(VALID)):
        try:
            m = mf.onnx.loads(VALID[:n])
        except mf.FormatError:
            continue
        assert np.array_equal(m(X), WANT), n  # cut between fields after everything needed


def test_random_bytes_and_empty() -> None:
    rng = np.random.default_rng(2)
    for size in (0, 1, 2, 7, 100, 5000):
        for _ in range(20):
            with pytest.raises(mf.FormatError):
                mf.onnx.loads(rng.integers(0, 256, size, dtype=np.uint8).tobytes())


def test_a_tensor_declaring_1e12_elements_allocates_nothing(tmp_path: Path) -> None:
    w = _raw("W", [1_000_000, 1_000_000], b"\x00" * 16)
    path = tmp_path / "big.onnx"
    path.write_bytes(_model(w=w, n_in=10**6, n_out=10**6).SerializeToString())
    tracemalloc.start()
    try:
        with pytest.raises(mf.FormatError, match="raw_data has 16 bytes"):
            mf.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20
    # the same with packed float_data, and as external data
    w = _raw("W", [1_000_000, 1_000_000], b"")
    w.ClearField("raw_data")
    w.float_data.extend([1.0, 2.0])
    with pytest.raises(mf.FormatError, match="packed data"):
        mf.onnx.loads(_model(w=w, n_in=None, n_out=10**6).SerializeToString())
    (tmp_path / "w.bin").write_bytes(b"\x00" * 64)
    w = _external("W", [1_000_000, 1_000_000], "w.bin")
    path.write_bytes(_model(w=w, n_in=10**6, n_out=10**6).SerializeToString())
    with pytest.raises(mf.FormatError, match="which has only 64 bytes"):
        mf.load(path)


def test_raw_data_length_disagreeing_with_dims() -> None:
    w = _raw("W", [4, 3], b"\x00" * 44)
    with pytest.raises(mf.FormatError, match="raw_data has 44 bytes but dims"):
        mf.onnx.loads(_model(w=w).SerializeToString())
    w = _raw("W", [4, 3], b"\x00" * 52)
    with pytest.raises(mf.FormatError, match="raw_data has 52 bytes"):
        mf.onnx.loads(_model(w=w).SerializeToString())


def _raw(name: str, dims: list[int], raw: bytes) -> Any:
    """A FLOAT tensor with any raw_data (the onnx helper refuses a wrong length)."""
    t = TP()
    t.name = name
    t.data_type = TP.FLOAT
    t.dims.extend(dims)
    t.raw_data = raw
    return t


def _external(name: str, dims: list[int], location: str, **extra: str) -> Any:
    t = TP()
    t.name = name
    t.data_type = TP.FLOAT
    t.dims.extend(dims)
    t.data_location = TP.EXTERNAL
    for k, v in {"location": location, **extra}.items():
        e = t.external_data.add()
        e.key, e.value = k, v
    return t


def test_external_data_inside_the_folder_loads(tmp_path: Path) -> None:
    w = np.arange(12, dtype=np.float32).reshape(4, 3)
    (tmp_path / "w.bin").write_bytes(b"pad!" + w.tobytes())
    path = tmp_path / "m.onnx"
    path.write_bytes(_model(w=_external("W", [4, 3], "w.bin", offset="4")).SerializeToString())
    assert np.array_equal(mf.load(path)[0].weight, w)


@pytest.mark.parametrize(
    "location",
    ["/etc/passwd", "../outside.bin", "sub/../../outside.bin", "C:\\w.bin", "link.bin", "nope.bin"],
)
def test_external_data_outside_the_folder_is_refused(tmp_path: Path, location: str) -> None:
    (tmp_path / "outside.bin").write_bytes(b"\x00" * 48)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "sub").mkdir()
    os.symlink(tmp_path / "outside.bin", folder / "link.bin")
    path = folder / "m.onnx"
    path.write_bytes(_model(w=_external("W", [4, 3], location)).SerializeToString())
    with pytest.raises(mf.FormatError, match="external data"):
        mf.load(path)


def test_external_data_too_short_or_a_folder(tmp_path: Path) -> None:
    (tmp_path / "w.bin").write_bytes(b"\x00" * 47)
    (tmp_path / "d").mkdir()
    path = tmp_path / "m.onnx"
    for loc, extra, msg in [
        ("w.bin", {}, "only 47 bytes"),
        ("w.bin", {"offset": "8"}, "only 47 bytes"),
        ("w.bin", {"offset": "x"}, "not integers"),
        ("d", {}, "not a regular file"),
    ]:
        path.write_bytes(_model(w=_external("W", [4, 3], loc, **extra)).SerializeToString())
        with pytest.raises(mf.FormatError, match=msg):
            mf.load(path)


def test_other_malformed_structures() -> None:
    for data in (
        b"\x08\x08",  # ir_version only
        b"\x08\x08\x3a\x05abc",  # graph length past the end
        b"\x08\x08\x3a\x02\x0a\xff",  # a node of 255 bytes in 1
        b"\x0b\x00",  # wire type 3 (groups)
        b"\x08" + b"\xff" * 11,  # a varint of 11 bytes
    ):
        with pytest.raises(mf.FormatError):
            mf.onnx.loads(data)


def _mutations() -> Any:
    pos = st.integers(0, len(VALID) - 1)
    byte = st.integers(0, 255)
    one = st.one_of(
        st.tuples(st.just("set"), pos, byte),
        st.tuples(st.just("insert"), pos, byte),
        st.tuples(st.just("delete"), pos, byte),
        st.tuples(st.just("varint"), pos, st.sampled_from([0x7F, 0xFF, 0x80, 0x00, 0x01])),
    )
    return st.lists(one, min_size=1, max_size=6)


@given(_mutations())
def test_fuzz_mutated_files_give_format_error_or_a_model(muts: list[tuple[str, int, int]]) -> None:
    data = bytearray(VALID)
    for kind, p, b in muts:
        p = min(p, len(data) - 1)
        if kind == "insert":
            data.insert(p, b)
        elif kind == "delete" and len(data) > 1:
            del data[p]
        else:
            data[p] = b
    _format_error_or_model(bytes(data))


@given(st.binary(max_size=300))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    _format_error_or_model(data)


@given(st.binary(min_size=1, max_size=40), st.integers(0, len(VALID)))
def test_fuzz_spliced_bytes(chunk: bytes, at: int) -> None:
    _format_error_or_model(VALID[:at] + chunk + VALID[at:])
