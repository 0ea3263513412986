"""minifw.datasets: the IDX reader, the search order, integrity checks and downloads.

Downloads are tested against a local HTTP server on 127.0.0.1 (never the internet); the
real MNIST / Fashion-MNIST files are used when MINIFW_DATA_DIR is set.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.server
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minifw as mf
from minifw.datasets import _loaders, load_fashion_mnist, load_mnist, read_idx, write_idx

# -- helpers ---------------------------------------------------------------------------------


def idx_bytes(a: np.ndarray) -> bytes:
    """An IDX file built by hand (independently of write_idx)."""
    codes = {
        "uint8": 0x08,
        "int8": 0x09,
        "int16": 0x0B,
        "int32": 0x0C,
        "float32": 0x0D,
        "float64": 0x0E,
    }
    head = bytes([0, 0, codes[a.dtype.name], a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    return head + a.astype(a.dtype.newbyteorder(">")).tobytes()


def fake_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, n, dtype=np.uint8),
    )


def write_split(
    folder: Path, split: str, images: np.ndarray, labels: np.ndarray, gz: bool = True
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    prefix = "train" if split == "train" else "t10k"
    for base, arr in (
        (f"{prefix}-images-idx3-ubyte", images),
        (f"{prefix}-labels-idx1-ubyte", labels),
    ):
        data = idx_bytes(arr)
        if gz:
            (folder / (base + ".gz")).write_bytes(gzip.compress(data))
        else:
            (folder / base).write_bytes(data)


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No MINIFW_DATA_DIR, a private cache, no system folder, no proxy for 127.0.0.1."""
    monkeypatch.delenv("MINIFW_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    fm = _loaders.DATASETS["fashion-mnist"]
    monkeypatch.setitem(
        _loaders.DATASETS,
        "fashion-mnist",
        dataclasses.replace(fm, system_dirs=(str(tmp_path / "system"),)),
    )
    return tmp_path


def cache_files(root: Path) -> list[str]:
    d = root / "xdg" / "minifw"
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()) if d.exists() else []


# -- read_idx ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_every_type(tmp_path: Path, dtype: str, gz: bool) -> None:
    rng = np.random.default_rng(1)
    a = (rng.standard_normal((3, 4, 5)) * 100).astype(dtype)
    data = idx_bytes(a)
    p = tmp_path / "a.idx"
    p.write_bytes(gzip.compress(data) if gz else data)
    b = read_idx(p)
    assert b.dtype == np.dtype(dtype) and b.dtype.isnative
    assert b.shape == (3, 4, 5)
    np.testing.assert_array_equal(a, b)
    b[0, 0, 0] = 1  # a writable array of its own


def test_write_idx_round_trip(tmp_path: Path) -> None:
    a = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", a)
    write_idx(tmp_path / "a", a)
    assert (tmp_path / "a.gz").read_bytes()[:2] == b"\x1f\x8b"
    assert (tmp_path / "a").read_bytes() == idx_bytes(a)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), a)
    with pytest.raises(TypeError, match="dtype"):
        write_idx(tmp_path / "b", np.zeros(3, dtype=np.complex64))


GOOD = idx_bytes(np.arange(12, dtype=np.uint8).reshape(3, 4))


@pytest.mark.parametrize(
    "data, match",
    [
        (b"", "only 0 bytes"),
        (b"\x00\x00", "only 2 bytes"),
        (b"\x01\x00\x08\x01" + GOOD[4:], "magic number"),
        (b"\x00\x00\x07\x02" + GOOD[4:], "unknown IDX element type 0x07"),
        (b"\x00\x00\x08\x00", "0 dimensions"),
        (GOOD[:6], "truncated IDX header"),
        (GOOD[:-1], "truncated (gzip-compressed )?IDX file"),
        (GOOD + b"\x00", "oversized (gzip-compressed )?IDX file"),
        (b"\x00\x00\x08\x02\xff\xff\xff\xff\xff\xff\xff\xff" + b"\x00" * 10, "truncated"),
        (b"\x00\x00\x0e\x01\x00\x00\x00\x02" + b"\x00" * 12, "truncated"),  # 2 float64 = 16
    ],
    ids=[
        "empty",
        "2-bytes",
        "bad-magic",
        "bad-type",
        "0-dims",
        "short-header",
        "short-payload",
        "long-payload",
        "huge-dims",
        "short-float64",
    ],
)
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_malformed(tmp_path: Path, data: bytes, match: str, gz: bool) -> None:
    p = tmp_path / "bad.idx"
    p.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(mf.FormatError, match=match) as e:
        read_idx(p)
    assert str(p) in str(e.value)


def test_read_idx_huge_header_does_not_allocate(tmp_path: Path) -> None:
    """Dimensions declaring ~2**96 bytes over a tiny gzip payload: an error, at once."""
    data = b"\x00\x00\x0e\x03" + b"\xff\xff\xff\xff" * 3 + b"\x00" * 64
    p = tmp_path / "huge.gz"
    p.write_bytes(gzip.compress(data))
    with pytest.raises(mf.FormatError, match="truncated"):
        read_idx(p)


def test_read_idx_corrupt_gzip(tmp_path: Path) -> None:
    z = bytearray(gzip.compress(GOOD * 50))
    z[len(z) // 2] ^= 0xFF
    p = tmp_path / "c.gz"
    p.write_bytes(bytes(z))
    with pytest.raises(mf.FormatError, match="c.gz"):
        read_idx(p)
    p.write_bytes(gzip.compress(GOOD)[:-10])  # cut inside the stream
    with pytest.raises(mf.FormatError, match="c.gz"):
        read_idx(p)


def test_read_idx_missing_and_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nope")
    with pytest.raises(mf.FormatError, match="directory"):
        read_idx(tmp_path)


def _check_fuzz_result(path: Path, data: bytes) -> None:
    try:
        a = read_idx(path)
    except mf.FormatError as e:
        assert str(path) in str(e)
        return
    # Accepted: then the file really was a consistent IDX file of exactly this shape.
    raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    assert a.shape == dims
    assert 4 + 4 * ndim + a.nbytes == len(raw)


@given(st.binary(max_size=200))
def test_fuzz_random_bytes(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    p = tmp_path_factory.mktemp("fuzz") / "f"
    p.write_bytes(data)
    _check_fuzz_result(p, data)


@given(
    st.lists(st.tuples(st.integers(0, 19), st.integers(0, 255)), min_size=1, max_size=4),
    st.integers(-3, 3),
    st.booleans(),
)
def test_fuzz_header_mutations(
    tmp_path_factory: pytest.TempPathFactory,
    edits: list[tuple[int, int]],
    length_change: int,
    gz: bool,
) -> None:
    """A valid (2, 3, 4) int16 file with header bytes overwritten and the payload resized."""
    base = bytearray(idx_bytes(np.arange(24, dtype=np.int16).reshape(2, 3, 4)))
    for pos, val in edits:
        base[pos % 16] = val  # the 16 header bytes
    if length_change < 0:
        base = base[:length_change]
    else:
        base += b"\x01" * length_change
    data = gzip.compress(bytes(base)) if gz else bytes(base)
    p = tmp_path_factory.mktemp("mut") / "m"
    p.write_bytes(data)
    _check_fuzz_result(p, data)


# -- loaders on local files --------------------------------------------------------------------


def test_loader_options(isolated: Path) -> None:
    images, labels = fake_split(7, 0)
    write_split(isolated / "d", "test", images, labels)
    x, y = load_mnist("test", data_dir=isolated / "d", verify=False)
    assert x.shape == (7, 784) and x.dtype == np.float32
    assert y.shape == (7,) and y.dtype == np.int64
    np.testing.assert_array_equal(x, images.reshape(7, 784).astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(y, labels)
    assert 0.0 <= x.min() and x.max() <= 1.0

    x, y = load_mnist(
        "test", data_dir=isolated / "d", verify=False, normalize=False, flatten=False, one_hot=True
    )
    assert x.dtype == np.uint8 and x.shape == (7, 28, 28)
    np.testing.assert_array_equal(x, images)
    assert y.shape == (7, 10) and y.dtype == np.float32
    np.testing.assert_array_equal(y.argmax(axis=1), labels)
    np.testing.assert_array_equal(y.sum(axis=1), np.ones(7))

    x, _ = load_mnist("test", data_dir=isolated / "d", verify=False, dtype=np.float64)
    assert x.dtype == np.float64

    with pytest.raises(ValueError, match="split"):
        load_mnist("validation", data_dir=isolated / "d")
    with pytest.raises(TypeError, match="float"):
        load_mnist("test", data_dir=isolated / "d", verify=False, dtype=np.int32)


def test_raw_and_gz_files_both_work(isolated: Path) -> None:
    images, labels = fake_split(5, 1)
    write_split(isolated / "raw", "train", images, labels, gz=False)
    x, y = load_fashion_mnist(
        "train", data_dir=isolated / "raw", verify=False, normalize=False, flatten=False
    )
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)


def test_verify_checks_the_decompressed_payload(isolated: Path) -> None:
    images, labels = fake_split(4, 2)
    write_split(isolated / "d", "test", images, labels)
    with pytest.raises(mf.FormatError, match="SHA-256") as e:
        load_mnist("test", data_dir=isolated / "d")  # verify=True: not the real MNIST
    assert str(isolated / "d" / "t10k-images-idx3-ubyte.gz") in str(e.value)
    # With the dataset's checksums set to these files', a re-compressed copy also passes.
    digests = {
        "t10k-images-idx3-ubyte": hashlib.sha256(idx_bytes(images)).hexdigest(),
        "t10k-labels-idx1-ubyte": hashlib.sha256(idx_bytes(labels)).hexdigest(),
    }
    ds = _loaders.DATASETS["mnist"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(_loaders.DATASETS, "mnist", dataclasses.replace(ds, sha256=digests))
        p = isolated / "d" / "t10k-images-idx3-ubyte.gz"
        p.write_bytes(gzip.compress(idx_bytes(images), compresslevel=1, mtime=12345))
        x, _ = load_mnist("test", data_dir=isolated / "d", normalize=False)
        np.testing.assert_array_equal(x.reshape(4, 28, 28), images)


@pytest.mark.parametrize(
    "images, labels, match",
    [
        (np.zeros((3, 28, 28), np.uint8), np.zeros(4, np.uint8), "3 images but 4 labels"),
        (np.zeros((3, 28, 27), np.uint8), np.zeros(3, np.uint8), r"\(N, 28, 28\)"),
        (np.zeros((3, 28, 28), np.int16), np.zeros(3, np.uint8), "uint8 images"),
        (np.zeros((3, 28, 28), np.uint8), np.full(3, 10, np.uint8), "0..9"),
        (np.zeros((3, 28, 28), np.uint8), np.zeros((3, 1), np.uint8), "labels of shape"),
    ],
)
def test_wrong_content_is_a_format_error(
    isolated: Path, images: np.ndarray, labels: np.ndarray, match: str
) -> None:
    write_split(isolated / "d", "test", images, labels)
    with pytest.raises(mf.FormatError, match=match):
        load_mnist("test", data_dir=isolated / "d", verify=False)


def test_search_order(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """data_dir, then $MINIFW_DATA_DIR/<name>, then the system folder, then the cache."""
    sets = {k: fake_split(3, i) for i, k in enumerate(["data_dir", "env", "system", "cache"])}
    write_split(isolated / "dd", "test", *sets["data_dir"])
    write_split(isolated / "env" / "fashion-mnist", "test", *sets["env"])
    write_split(isolated / "system", "test", *sets["system"])
    write_split(isolated / "xdg" / "minifw" / "fashion-mnist", "test", *sets["cache"])
    monkeypatch.setenv("MINIFW_DATA_DIR", str(isolated / "env"))

    def got() -> np.ndarray:
        kw = {"verify": False, "normalize": False, "flatten": False, "download": False}
        return load_fashion_mnist("test", **kw)[0]

    np.testing.assert_array_equal(
        load_fashion_mnist(
            "test", data_dir=isolated / "dd", verify=False, normalize=False, flatten=False
        )[0],
        sets["data_dir"][0],
    )
    np.testing.assert_array_equal(got(), sets["env"][0])
    monkeypatch.delenv("MINIFW_DATA_DIR")
    np.testing.assert_array_equal(got(), sets["system"][0])
    for f in (isolated / "system").iterdir():
        f.unlink()
    np.testing.assert_array_equal(got(), sets["cache"][0])
    # A data_dir without the files falls through to the next place.
    (isolated / "empty").mkdir()
    np.testing.assert_array_equal(
        load_fashion_mnist(
            "test", data_dir=isolated / "empty", verify=False, normalize=False, flatten=False
        )[0],
        sets["cache"][0],
    )


def test_xdg_default_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", "/some/where")
    assert mf.datasets.cache_dir() == Path("/some/where/minifw")
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    assert mf.datasets.cache_dir() == Path.home() / ".cache" / "minifw"


def test_nothing_found_without_download(isolated: Path) -> None:
    with pytest.raises(FileNotFoundError) as e:
        load_mnist("train", download=False)
    msg = str(e.value)
    assert "train-images-idx3-ubyte" in msg and "download=False" in msg
    assert str(isolated / "xdg" / "minifw" / "mnist") in msg  # where it looked
    assert "MINIFW_DATA_DIR" in msg and "data_dir" in msg  # how to supply the files


def test_data_dir_must_be_a_directory(isolated: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_mnist("test", data_dir=isolated / "missing")


def test_corrupt_file_in_cache_is_named(isolated: Path) -> None:
    folder = isolated / "xdg" / "minifw" / "mnist"
    folder.mkdir(parents=True)
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(mf.FormatError) as e:
        load_mnist("test", download=False)
    assert str(folder / "t10k-images-idx3-ubyte.gz") in str(e.value)


# -- downloads from a local HTTP server ----------------------------------------------------------


class _Server:
    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.log: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                outer.log.append(self.path)
                _, mode, name = self.path.split("/", 2)
                body = outer.files.get(name)
                if mode == "missing" or body is None:
                    self.send_error(404)
                    return
                if mode == "corrupt":  # valid gzip + IDX, different content
                    raw = bytearray(gzip.decompress(body))
                    raw[-1] ^= 0x01
                    body = gzip.compress(bytes(raw))
                elif mode == "garbage":
                    body = b"<html>not a dataset</html>"
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if mode == "drop":  # the connection dies half-way through the file
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def mirror(self, mode: str) -> str:
        return f"{self.url}/{mode}/"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake_remote(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[_Server, np.ndarray, np.ndarray]]:
    """A server with a small fake MNIST test split; the dataset's checksums are its files'."""
    images, labels = fake_split(6, 3)
    files = {
        "t10k-images-idx3-ubyte.gz": gzip.compress(idx_bytes(images)),
        "t10k-labels-idx1-ubyte.gz": gzip.compress(idx_bytes(labels)),
    }
    digests = {
        "t10k-images-idx3-ubyte": hashlib.sha256(idx_bytes(images)).hexdigest(),
        "t10k-labels-idx1-ubyte": hashlib.sha256(idx_bytes(labels)).hexdigest(),
    }
    server = _Server(files)
    ds = _loaders.DATASETS["mnist"]
    monkeypatch.setitem(
        _loaders.DATASETS,
        "mnist",
        dataclasses.replace(ds, sha256=digests, mirrors=(server.mirror("good"),)),
    )
    yield server, images, labels
    server.close()


def _load(**kw: object) -> tuple[np.ndarray, np.ndarray]:
    return load_mnist("test", normalize=False, flatten=False, **kw)  # type: ignore[arg-type]


def test_download_good_file_then_cache(
    fake_remote: tuple[_Server, np.ndarray, np.ndarray], isolated: Path
) -> None:
    server, images, labels = fake_remote
    x, y = _load()  # the default mirrors (patched to the local server)
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)
    assert cache_files(isolated) == [
        "mnist/t10k-images-idx3-ubyte.gz",
        "mnist/t10k-labels-idx1-ubyte.gz",
    ]
    n = len(server.log)
    x2, _ = _load(mirrors=[server.mirror("missing")])  # from the cache: no request
    np.testing.assert_array_equal(x2, images)
    assert len(server.log) == n


def test_404_then_working_mirror(
    fake_remote: tuple[_Server, np.ndarray, np.ndarray], isolated: Path
) -> None:
    server, images, _ = fake_remote
    x, _ = _load(mirrors=[server.mirror("missing"), server.mirror("good")])
    np.testing.assert_array_equal(x, images)
    assert server.log[:2] == [
        "/missing/t10k-images-idx3-ubyte.gz",
        "/good/t10k-images-idx3-ubyte.gz",
    ]
    assert len(cache_files(isolated)) == 2


def test_dropped_connection_leaves_nothing(
    fake_remote: tuple[_Server, np.ndarray, np.ndarray], isolated: Path
) -> None:
    server, images, _ = fake_remote
    with pytest.raises(FileNotFoundError) as e:
        _load(mirrors=[server.mirror("drop")])
    assert server.mirror("drop") + "t10k-images-idx3-ubyte.gz" in str(e.value)
    assert cache_files(isolated) == []  # no partial or temporary file
    x, _ = _load(mirrors=[server.mirror("drop"), server.mirror("good")])  # next mirror wins
    np.testing.assert_array_equal(x, images)


@pytest.mark.parametrize("mode, match", [("corrupt", "SHA-256"), ("garbage", "not a valid IDX")])
def test_bad_payload_leaves_nothing(
    fake_remote: tuple[_Server, np.ndarray, np.ndarray], isolated: Path, mode: str, match: str
) -> None:
    server, _, _ = fake_remote
    with pytest.raises(mf.FormatError, match=match) as e:
        _load(mirrors=[server.mirror(mode)])
    assert server.mirror(mode) + "t10k-images-idx3-ubyte.gz" in str(e.value)
    assert cache_files(isolated) == []


def test_corrupt_payload_accepted_only_without_verify(
    fake_remote: tuple[_Server, np.ndarray, np.ndarray], isolated: Path
) -> None:
    server, images, _ = fake_remote
    x, _ = _load(mirrors=[server.mirror("corrupt")], verify=False)
    assert x.shape == images.shape and not np.array_equal(x, images)


def test_offline_error_says_where_it_looked(isolated: Path) -> None:
    with pytest.raises(FileNotFoundError) as e:
        _load(mirrors=["http://127.0.0.1:9/"])  # the discard port: connection refused
    msg = str(e.value)
    assert "127.0.0.1:9" in msg and str(isolated / "xdg" / "minifw" / "mnist") in msg
    assert cache_files(isolated) == []


# -- the real files --------------------------------------------------------------------------------


def test_real_mnist_test_split(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINIFW_DATA_DIR", str(data_dir))
    x, y = load_mnist("test", download=False)  # verified against the canonical checksums
    assert x.shape == (10000, 784) and x.dtype == np.float32
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    np.testing.assert_array_equal(y[:10], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9])
    assert np.bincount(y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    x2, y2 = load_mnist("test", data_dir=data_dir / "mnist", download=False)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)


@pytest.mark.parametrize("split, n", [("train", 60000), ("test", 10000)])
def test_real_fashion_mnist(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, split: str, n: int
) -> None:
    monkeypatch.setenv("MINIFW_DATA_DIR", str(data_dir))
    x, y = load_fashion_mnist(split, download=False, normalize=False, flatten=False)
    assert x.shape == (n, 28, 28) and x.dtype == np.uint8
    assert np.bincount(y).tolist() == [n // 10] * 10  # Fashion-MNIST is balanced


def test_real_files_recompressed_and_raw_still_verify(data_dir: Path, tmp_path: Path) -> None:
    """Verification is of the decompressed bytes: a re-compressed or raw copy passes."""
    for base in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        raw = gzip.decompress((data_dir / "mnist" / (base + ".gz")).read_bytes())
        (tmp_path / "gz").mkdir(exist_ok=True)
        (tmp_path / "gz" / (base + ".gz")).write_bytes(gzip.compress(raw, compresslevel=1))
        (tmp_path / "raw").mkdir(exist_ok=True)
        (tmp_path / "raw" / base).write_bytes(raw)
    a = load_mnist("test", data_dir=tmp_path / "gz", download=False)
    b = load_mnist("test", data_dir=tmp_path / "raw", download=False)
    np.testing.assert_array_equal(a[0], b[0])
    # One flipped pixel: the checksum catches it.
    raw = bytearray((tmp_path / "raw" / "t10k-images-idx3-ubyte").read_bytes())
    raw[5000] ^= 0xFF
    (tmp_path / "raw" / "t10k-images-idx3-ubyte").write_bytes(bytes(raw))
    with pytest.raises(mf.FormatError, match="t10k-images-idx3-ubyte"):
        load_mnist("test", data_dir=tmp_path / "raw", download=False)


def test_real_download_with_canonical_checksums(data_dir: Path, isolated: Path) -> None:
    """The real MNIST test files through the download path, checked against the real sums."""
    files = {p.name: p.read_bytes() for p in (data_dir / "mnist").glob("t10k-*.gz")}
    server = _Server(files)
    try:
        x, y = load_mnist("test", mirrors=[server.mirror("missing"), server.mirror("good")])
    finally:
        server.close()
    assert x.shape == (10000, 784) and y[:3].tolist() == [7, 2, 1]
    assert cache_files(isolated) == [
        "mnist/t10k-images-idx3-ubyte.gz",
        "mnist/t10k-labels-idx1-ubyte.gz",
    ]


def test_download_shows_a_progress_bar_on_a_terminal(
    fake_remote: tuple[_Server, np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    x, _ = _load()
    assert x.shape == (6, 28, 28)
    assert "Downloading t10k-images-idx3-ubyte.gz" in term.getvalue()
