"""Hardening of the file writers and readers.

* saves (``model.save``, ``write_idx``, the CLI's ``-o``) follow symlinks, write into FIFOs
  and devices directly, refuse directories, and keep an existing file's mode and owner;
* ``read_idx`` refuses gzip bombs before allocating, reads into one preallocated array, and
  turns an impossible number of dimensions into a FormatError;
* the model readers turn negative shapes, deeply nested JSON and empty weight matrices into
  FormatErrors naming the file and the entry.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import stat
import struct
import subprocess
import sys
import threading
import tracemalloc
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minifw as mf
from minifw import cli, persistence
from minifw._atomic import atomic_write
from minifw.datasets import read_idx, write_idx

# -- helpers -----------------------------------------------------------------------------------


def small_model() -> mf.Sequential:
    return mf.Sequential(mf.Dense(4, 3), mf.ReLU(), mf.Dense(3, 2), mf.Softmax(axis=-1))


def same_params(a: mf.Module, b: mf.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(np.array_equal(sa[k], sb[k]) for k in sa)


def idx_bytes(a: np.ndarray) -> bytes:
    """An IDX file built by hand (independently of write_idx)."""
    codes = {"uint8": 8, "int8": 9, "int16": 11, "int32": 12, "float32": 13, "float64": 14}
    head = bytes([0, 0, codes[a.dtype.name], a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    return head + a.astype(a.dtype.newbyteorder(">")).tobytes()


def gzip_stream(path: Path, head: bytes, n: int, noise: bool = False) -> int:
    """A gzip file of ``head`` then ``n`` zero (or random) bytes, built in 1 MiB pieces;
    returns its size."""
    rng = np.random.default_rng(0)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as g:
        g.write(head)
        while n > 0:
            k = min(n, 1 << 20)
            g.write(rng.bytes(k) if noise else bytes(k))
            n -= k
    return path.stat().st_size


def peak_of(fn: Callable[[], Any]) -> tuple[BaseException | None, int]:
    """(the exception ``fn`` raised, or None; the tracemalloc peak in bytes while it ran)."""
    tracemalloc.start()
    try:
        fn()
        err: BaseException | None = None
    except Exception as e:
        err = e
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return err, peak


def npy_entry(shape_text: str, payload: bytes = b"", descr: str = "<f4") -> bytes:
    """A version 1.0 ``.npy`` entry whose header is written by hand."""
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}"
    header += " " * (-(len(header) + 11) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + payload


def write_zip(path: Path, entries: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)


def arch_text(model: Any, **top: Any) -> str:
    doc = {"format": "minifw.model", "version": 1, "model": model}
    doc.update(top)
    return json.dumps(doc)


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[tuple[Path, dict[str, bytes]]]:
    """A FIFO and a reader thread that drains it (its bytes land in ``got["data"]``)."""
    p = tmp_path / "pipe"
    os.mkfifo(p)
    got: dict[str, bytes] = {}

    def drain() -> None:
        with open(p, "rb") as f:
            got["data"] = f.read()

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    yield p, got
    if t.is_alive():  # the test never opened it for writing: release the reader
        with open(p, "wb"):
            pass
    t.join(10)


# -- 1. saves follow symlinks and respect non-regular files ------------------------------------


def test_save_through_a_symlink_keeps_the_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    target = tmp_path / "b" / "m.npz"
    small_model().save(target)
    link = tmp_path / "a" / "m.npz"
    link.symlink_to(os.path.join("..", "b", "m.npz"))  # relative, from another folder

    renames: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src: Any, dst: Any) -> None:
        renames.append((os.fspath(src), os.fspath(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    m = small_model()
    m.save(link)
    assert link.is_symlink() and os.readlink(link) == os.path.join("..", "b", "m.npz")
    assert same_params(mf.load(target), m)
    assert len(renames) == 1
    src, dst = renames[0]
    assert os.path.dirname(src) == os.path.dirname(dst) == str(tmp_path / "b")
    assert sorted(os.listdir(tmp_path / "a")) == ["m.npz"]
    assert sorted(os.listdir(tmp_path / "b")) == ["m.npz"]


def test_save_through_a_chain_of_links_and_a_dangling_link(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    final = tmp_path / "d" / "final.npz"
    (tmp_path / "l2").symlink_to(final)  # dangling: final does not exist yet
    (tmp_path / "l1").symlink_to("l2")
    m = small_model()
    m.save(tmp_path / "l1")
    assert (tmp_path / "l1").is_symlink() and (tmp_path / "l2").is_symlink()
    assert final.is_file() and not final.is_symlink()
    assert same_params(mf.load(final), m)
    assert sorted(os.listdir(tmp_path)) == ["d", "l1", "l2"]


def test_write_idx_and_cli_output_follow_links(tmp_path: Path) -> None:
    a = np.arange(12, dtype=np.int16).reshape(3, 4)
    (tmp_path / "real.idx").write_bytes(b"old")
    (tmp_path / "x.idx").symlink_to("real.idx")
    write_idx(tmp_path / "x.idx", a)
    assert (tmp_path / "x.idx").is_symlink()
    assert (tmp_path / "real.idx").read_bytes() == idx_bytes(a)

    model = tmp_path / "m.npz"
    small_model().save(model)
    np.save(tmp_path / "in.npy", np.ones((2, 4), np.float32))
    (tmp_path / "out.npy").symlink_to("real-out.npy")  # dangling
    assert (
        cli.main(["predict", str(model), str(tmp_path / "in.npy"), "-o", str(tmp_path / "out.npy")])
        == 0
    )
    assert (tmp_path / "out.npy").is_symlink()
    assert np.load(tmp_path / "real-out.npy").shape == (2, 2)


def test_a_symlink_loop_is_an_error_not_a_hang(tmp_path: Path) -> None:
    (tmp_path / "x").symlink_to("y")
    (tmp_path / "y").symlink_to("x")
    with pytest.raises(OSError):
        small_model().save(tmp_path / "x")
    assert sorted(os.listdir(tmp_path)) == ["x", "y"]


def test_save_into_a_fifo(fifo: tuple[Path, dict[str, bytes]]) -> None:
    p, got = fifo
    m = small_model()
    m.save(p)
    assert stat.S_ISFIFO(os.lstat(p).st_mode)
    assert sorted(os.listdir(p.parent)) == ["pipe"]  # no temporary file was made
    for _ in range(100):
        if "data" in got:
            break
        threading.Event().wait(0.05)
    data = got["data"]
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert persistence.HEADER_KEY + ".npy" in zf.namelist()
    (p.parent / "copy.npz").write_bytes(data)
    assert same_params(mf.load(p.parent / "copy.npz"), m)


def test_write_idx_into_a_fifo(fifo: tuple[Path, dict[str, bytes]]) -> None:
    p, got = fifo
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    write_idx(p, a, compress=False)
    for _ in range(100):
        if "data" in got:
            break
        threading.Event().wait(0.05)
    assert got["data"] == idx_bytes(a)
    assert stat.S_ISFIFO(os.lstat(p).st_mode)


def test_dev_null_stays_a_device(tmp_path: Path) -> None:
    """First on a private null device (made with mknod), so that a broken writer replaces
    that one, not the machine's; only then on /dev/null itself."""
    private = tmp_path / "null"
    try:
        os.mknod(private, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        with open(private, "wb") as f:  # a nodev mount refuses to open it
            f.write(b"")
    except OSError as e:
        pytest.skip(f"cannot make a private null device here ({e})")
    for dev in (str(private), "/dev/null"):
        assert stat.S_ISCHR(os.stat(dev).st_mode)
        before = sorted(os.listdir(os.path.dirname(dev)))
        small_model().save(dev)
        write_idx(dev, np.zeros(3, np.uint8))
        with atomic_write(dev) as f:
            f.write(b"x" * 100)
        assert stat.S_ISCHR(os.stat(dev).st_mode), f"{dev} is no longer a device"
        assert sorted(os.listdir(os.path.dirname(dev))) == before  # no temporary files


def test_a_directory_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "link").symlink_to("d")
    for p in (tmp_path / "d", tmp_path / "link"):
        with pytest.raises(IsADirectoryError, match="is a directory") as e:
            small_model().save(p)
        assert str(p) in str(e.value)
        with pytest.raises(IsADirectoryError):
            write_idx(p, np.zeros(2, np.uint8))
    assert sorted(os.listdir(tmp_path)) == ["d", "link"]
    assert os.listdir(tmp_path / "d") == []


def test_cli_output_to_dev_stdout(tmp_path: Path) -> None:
    """``-o /dev/stdout`` with stdout a pipe: the .npy goes down the pipe, the note to stderr.

    First through a private link to /proc/self/fd/1 (what /dev/stdout is), so that a broken
    writer replaces that link, not the machine's; only then through /dev/stdout itself.
    """
    model = tmp_path / "m.npz"
    small_model().save(model)
    np.save(tmp_path / "in.npy", np.ones((5, 4), np.float32))
    private = tmp_path / "stdout"
    private.symlink_to("/proc/self/fd/1")
    if not os.path.islink("/dev/stdout"):
        pytest.skip("/dev/stdout is not a link to /proc/self/fd/1 on this machine")
    for out in (str(private), "/dev/stdout"):
        r = subprocess.run(
            [sys.executable, "-m", "minifw.cli", "predict", str(model), str(tmp_path / "in.npy")]
            + ["-o", out, "--classes"],
            capture_output=True,
            timeout=300,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        assert r.returncode == 0, r.stderr.decode()
        assert private.is_symlink() and os.path.islink("/dev/stdout")
        got = np.load(io.BytesIO(r.stdout))
        assert got.shape == (5,) and got.dtype == np.int64
        assert f"wrote {out}".encode() in r.stderr


# -- 2. modes and owners are kept -------------------------------------------------------------


def test_save_keeps_a_private_mode(tmp_path: Path) -> None:
    p = tmp_path / "m.npz"
    small_model().save(p)
    os.chmod(p, 0o600)
    small_model().save(p)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600


def test_a_new_file_gets_the_umask_mode(tmp_path: Path) -> None:
    mask = os.umask(0o022)
    os.umask(mask)
    small_model().save(tmp_path / "new.npz")
    assert stat.S_IMODE(os.stat(tmp_path / "new.npz").st_mode) == 0o666 & ~mask


@given(st.integers(0, 0o7777))
def test_atomic_write_keeps_any_mode(tmp_path_factory: pytest.TempPathFactory, mode: int) -> None:
    p = tmp_path_factory.mktemp("mode") / "f"
    p.write_bytes(b"old")
    os.chmod(p, mode)
    want = stat.S_IMODE(os.stat(p).st_mode)  # what the filesystem really holds
    with atomic_write(p) as f:
        f.write(b"new")
    assert p.read_bytes() == b"new"
    assert stat.S_IMODE(os.stat(p).st_mode) == want


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root")
def test_save_keeps_owner_and_group(tmp_path: Path) -> None:
    p = tmp_path / "m.npz"
    small_model().save(p)
    os.chown(p, 1234, 5678)
    os.chmod(p, 0o640)
    small_model().save(p)
    s = os.stat(p)
    assert (s.st_uid, s.st_gid, stat.S_IMODE(s.st_mode)) == (1234, 5678, 0o640)


def test_a_hard_link_is_broken_by_the_rename(tmp_path: Path) -> None:
    """Documented behaviour: the path gets a new inode; the other name keeps the old data."""
    p, other = tmp_path / "m.npz", tmp_path / "hard.npz"
    old = small_model()
    old.save(p)
    os.link(p, other)
    new = mf.Sequential(mf.Dense(2, 2))
    new.save(p)
    assert not os.path.samefile(p, other)
    assert same_params(mf.load(other), old) and same_params(mf.load(p), new)


def test_the_docstring_mentions_hard_links() -> None:
    assert "hard link" in (atomic_write.__doc__ or "")


# -- 3. read_idx: bombs, exact payloads, dimensions -------------------------------------------


def test_gzip_bomb_is_refused_before_allocating(tmp_path: Path) -> None:
    """~100 KB of gzip declaring 2**32 bytes (more than 1032x the file): refused at once."""
    p = tmp_path / "bomb.gz"
    size = gzip_stream(p, b"\x00\x00\x08\x02" + struct.pack(">2I", 2**31, 2), 100 << 20)
    assert size < 200_000
    err, peak = peak_of(lambda: read_idx(p))
    assert isinstance(err, mf.FormatError), err
    assert str(p) in str(err) and "4294967296 bytes" in str(err)
    assert peak < 5 << 20, f"peak {peak / 2**20:.1f} MiB"


def test_gzip_short_of_its_header_uses_one_array(tmp_path: Path) -> None:
    """Within the deflate bound (16 MiB declared, 8 MiB of incompressible bytes present):
    an error after reading, with about the declared array allocated, not twice it."""
    p = tmp_path / "short.gz"
    gzip_stream(p, b"\x00\x00\x08\x01" + struct.pack(">I", 16 << 20), 8 << 20, noise=True)
    err, peak = peak_of(lambda: read_idx(p))
    assert isinstance(err, mf.FormatError) and "truncated" in str(err) and str(p) in str(err)
    assert "payload has 8388608 bytes" in str(err)
    assert peak < (16 << 20) + (2 << 20), f"peak {peak / 2**20:.1f} MiB"


def test_gzip_of_zeros_short_of_its_header_is_refused_at_once(tmp_path: Path) -> None:
    """16 MiB declared, 8 MiB of zeros: the ~8 KB file cannot hold 16 MiB; nothing is read."""
    p = tmp_path / "zeros.gz"
    gzip_stream(p, b"\x00\x00\x08\x01" + struct.pack(">I", 16 << 20), 8 << 20)
    err, peak = peak_of(lambda: read_idx(p))
    assert isinstance(err, mf.FormatError) and "holds at most" in str(err)
    assert peak < 1 << 20, f"peak {peak / 2**20:.1f} MiB"


def test_gzip_longer_than_its_header_stops_early(tmp_path: Path) -> None:
    """1 KiB declared, 200 MiB of zeros behind it: stops after the first extra byte."""
    p = tmp_path / "long.gz"
    gzip_stream(p, b"\x00\x00\x08\x01" + struct.pack(">I", 1024), 200 << 20)
    err, peak = peak_of(lambda: read_idx(p))
    assert isinstance(err, mf.FormatError) and "oversized" in str(err) and str(p) in str(err)
    assert peak < 5 << 20, f"peak {peak / 2**20:.1f} MiB"


def test_raw_file_declaring_more_than_it_holds(tmp_path: Path) -> None:
    p = tmp_path / "raw.idx"
    p.write_bytes(b"\x00\x00\x0e\x02" + struct.pack(">2I", 2**31, 2**31) + bytes(64))
    err, peak = peak_of(lambda: read_idx(p))
    assert isinstance(err, mf.FormatError) and str(p) in str(err)
    assert peak < 1 << 20


@pytest.mark.parametrize("ndim", [65, 100, 255])
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_too_many_dimensions(tmp_path: Path, ndim: int, gz: bool) -> None:
    data = bytes([0, 0, 8, ndim]) + b"\x00\x00\x00\x01" * ndim + b"\x07"
    p = tmp_path / "many.idx"
    p.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(mf.FormatError, match="dimensions") as e:
        read_idx(p)
    assert str(p) in str(e.value)


def test_read_idx_sixty_four_dimensions_still_read(tmp_path: Path) -> None:
    a = np.arange(2, dtype=np.int32).reshape((1,) * 63 + (2,))
    p = tmp_path / "d64.idx"
    p.write_bytes(idx_bytes(a))
    np.testing.assert_array_equal(read_idx(p), a)


_DTYPES = ["uint8", "int8", "int16", "int32", "float32", "float64"]
_shapes = st.lists(st.integers(0, 5), min_size=1, max_size=4).map(tuple)


@given(_shapes, st.sampled_from(_DTYPES), st.booleans(), st.integers(0, 2**32 - 1))
def test_read_idx_round_trips_write_idx(
    tmp_path_factory: pytest.TempPathFactory,
    shape: tuple[int, ...],
    dtype: str,
    gz: bool,
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal(shape) * 100).astype(dtype)
    p = tmp_path_factory.mktemp("rt") / ("a.idx.gz" if gz else "a.idx")
    write_idx(p, a)
    b = read_idx(p)
    assert b.dtype == a.dtype and b.shape == a.shape and b.dtype.isnative
    np.testing.assert_array_equal(b, a)
    assert b.flags.writeable and b.flags.c_contiguous


@given(
    st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple),
    st.sampled_from(_DTYPES),
    st.booleans(),
    st.data(),
)
def test_read_idx_refuses_every_truncation_and_extension(
    tmp_path_factory: pytest.TempPathFactory,
    shape: tuple[int, ...],
    dtype: str,
    gz: bool,
    data: st.DataObject,
) -> None:
    good = idx_bytes(np.ones(shape, dtype=dtype))
    cut = data.draw(st.integers(0, len(good) - 1), label="cut")
    extra = data.draw(st.binary(min_size=1, max_size=9), label="extra")
    d = tmp_path_factory.mktemp("cut")
    for name, raw in (("short", good[:cut]), ("long", good + extra)):
        p = d / name
        p.write_bytes(gzip.compress(raw) if gz else raw)
        with pytest.raises(mf.FormatError) as e:
            read_idx(p)
        assert str(p) in str(e.value)


# -- 4. model readers: FormatError, never a raw ValueError/RecursionError ---------------------


def test_npz_negative_shape_is_a_format_error(tmp_path: Path) -> None:
    p = tmp_path / "neg.npz"
    write_zip(p, {"W1.npy": npy_entry("(-5, -10)", bytes(200))})
    with pytest.raises(mf.FormatError, match="W1") as e:
        mf.from_weights(p)
    assert str(p) in str(e.value)
    p2 = tmp_path / "neg-model.npz"
    text = arch_text({"class": "Dense", "config": {"in_features": 5, "out_features": 10}})
    header = np.lib.format.header_data_from_array_1_0(np.array(text))
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    write_zip(
        p2,
        {
            persistence.HEADER_KEY + ".npy": buf.getvalue() + np.array(text).tobytes(),
            "weight.npy": npy_entry("(-5, -10)", bytes(200)),
            "bias.npy": npy_entry("(10,)", bytes(40)),
        },
    )
    with pytest.raises(mf.FormatError, match="weight") as e:
        mf.load(p2)
    assert str(p2) in str(e.value)


@pytest.mark.parametrize("shape", ["(-1,)", "(2, -3)", "(" + "1, " * 65 + ")", "(True, 2)"])
def test_npz_bad_shapes(tmp_path: Path, shape: str) -> None:
    p = tmp_path / "bad.npz"
    write_zip(p, {"W1.npy": npy_entry(shape, bytes(64))})
    with pytest.raises(mf.FormatError) as e:
        mf.from_weights(p)
    assert str(p) in str(e.value) and "W1" in str(e.value)


@pytest.mark.parametrize("shape", ["()", "(3,)", "(0,)"])
def test_npz_zero_size_dtype(tmp_path: Path, shape: str) -> None:
    """``<U0``: NumPy's frombuffer would say "itemsize cannot be zero"."""
    p = tmp_path / "u0.npz"
    write_zip(p, {"W1.npy": npy_entry(shape, b"", descr="<U0")})
    with pytest.raises(mf.FormatError, match="W1") as e:
        mf.from_weights(p)
    assert str(p) in str(e.value)


def _deep(n: int) -> str:
    return arch_text("__DEEP__").replace('"__DEEP__"', "[" * n + "]" * n)


@pytest.mark.parametrize("depth", [100, 100_000])
def test_deep_json_in_npz(tmp_path: Path, depth: int) -> None:
    p = tmp_path / "deep.npz"
    with open(p, "wb") as f:
        np.savez(f, **{persistence.HEADER_KEY: np.array(_deep(depth))})
    with pytest.raises(mf.FormatError, match="nested") as e:
        mf.load(p)
    assert str(p) in str(e.value)


@pytest.mark.parametrize("depth", [100, 100_000])
def test_deep_json_in_safetensors(tmp_path: Path, depth: int) -> None:
    stn = pytest.importorskip("safetensors.numpy", reason="the optional safetensors package")
    p = tmp_path / "deep.safetensors"
    stn.save_file({"x": np.zeros(2, np.float32)}, str(p), metadata={"minifw": _deep(depth)})
    with pytest.raises(mf.FormatError, match="nested") as e:
        mf.load(p)
    assert str(p) in str(e.value)


def test_brackets_inside_strings_do_not_count(tmp_path: Path) -> None:
    m = mf.Sequential(mf.Dense(2, 2))
    p = tmp_path / "m.npz"
    m.save(p)
    with np.load(p) as z:
        arrays = {k: z[k] for k in z.files}
    doc = json.loads(str(arrays[persistence.HEADER_KEY]))
    doc["note"] = '[{"\\"' * 500 + "\\\\"
    arrays[persistence.HEADER_KEY] = np.array(json.dumps(doc))
    with open(p, "wb") as f:
        np.savez(f, **arrays)
    assert same_params(mf.load(p), m)


def test_deeply_nested_model_still_loads(tmp_path: Path) -> None:
    m: mf.Module = mf.Dense(2, 2)
    for _ in range(30):
        m = mf.Sequential(m)
    m.save(tmp_path / "n.npz")
    assert same_params(mf.load(tmp_path / "n.npz"), m)


@pytest.mark.parametrize("shape", [(784, 0), (0, 10), (0, 0)])
def test_from_weights_empty_matrix(tmp_path: Path, shape: tuple[int, int]) -> None:
    with pytest.raises(mf.FormatError, match="W1"):
        mf.from_weights({"W1": np.zeros(shape, np.float32)})
    p = tmp_path / "w.npz"
    np.savez(p, W1=np.ones((3, 4), np.float32), W2=np.zeros((4, 0), np.float32))
    with pytest.raises(mf.FormatError, match="W2") as e:
        mf.from_weights(p)
    assert str(p) in str(e.value)


def test_npz_needing_a_newer_zip_version(tmp_path: Path) -> None:
    """zipfile's NotImplementedError ("zip file version 25.5") becomes a FormatError."""
    p = tmp_path / "w.npz"
    np.savez(p, W1=np.ones((3, 4), np.float32))
    data = bytearray(p.read_bytes())
    cd = data.index(b"PK\x01\x02")  # the central directory entry
    data[cd + 6 : cd + 8] = struct.pack("<H", 255)  # version needed to extract: 25.5
    p.write_bytes(bytes(data))
    for fn in (mf.from_weights, mf.load):
        with pytest.raises(mf.FormatError) as e:
            fn(p)
        assert str(p) in str(e.value)


def test_npz_entry_marked_encrypted(tmp_path: Path) -> None:
    """zipfile's RuntimeError ("password required") becomes a FormatError naming the entry."""
    p = tmp_path / "w.npz"
    np.savez(p, W1=np.ones((3, 4), np.float32))
    data = bytearray(p.read_bytes())
    for sig, at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # local and central flags
        i = data.index(sig) + at
        data[i] |= 1
    p.write_bytes(bytes(data))
    with pytest.raises(mf.FormatError, match="W1") as e:
        mf.from_weights(p)
    assert str(p) in str(e.value)


@given(st.lists(st.tuples(st.integers(0, 127), st.integers(0, 255)), min_size=1, max_size=6))
def test_npy_header_mutations_give_format_errors(
    tmp_path_factory: pytest.TempPathFactory, edits: list[tuple[int, int]]
) -> None:
    """Bytes of a .npy header overwritten: a FormatError (or a valid file), nothing else."""
    entry = bytearray(npy_entry("(2, 3)", np.arange(6, dtype="<f4").tobytes()))
    for pos, val in edits:
        entry[pos] = val
    p = tmp_path_factory.mktemp("npy") / "w.npz"
    write_zip(p, {"W1.npy": bytes(entry)})
    try:
        mf.from_weights(p)
    except mf.FormatError as e:
        assert str(p) in str(e)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["W1", "b1", "W2", "b2", "W3", "x"]),
            st.lists(st.integers(0, 3), max_size=3),
        ),
        max_size=5,
    )
)
def test_from_weights_random_mappings(entries: list[tuple[str, list[int]]]) -> None:
    """Random keys and shapes: a model or a FormatError, never a bare Key/Index/ValueError."""
    arrays = {k: np.ones(shape, np.float32) for k, shape in entries}
    try:
        mf.from_weights(arrays)
    except mf.FormatError as e:
        assert "weights" in str(e)


@given(
    st.sampled_from([".npz", ".safetensors"]),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_mutated_model_files_give_format_errors(
    tmp_path_factory: pytest.TempPathFactory, suffix: str, edits: list[tuple[int, int]]
) -> None:
    """Bytes of a saved model overwritten: mf.load and mf.from_weights give a FormatError
    naming the file (or a result), never a bare KeyError, IndexError, ValueError..."""
    d = tmp_path_factory.mktemp("mut")
    good = d / f"good{suffix}"
    small_model().save(good)
    data = bytearray(good.read_bytes())
    for pos, val in edits:
        data[pos % len(data)] = val
    p = d / f"bad{suffix}"
    p.write_bytes(bytes(data))
    for fn in (mf.load, mf.from_weights):
        try:
            fn(p)
        except mf.FormatError as e:
            assert str(p) in str(e)
