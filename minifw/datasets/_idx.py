"""The IDX file format (MNIST, Fashion-MNIST): a strict reader and a small writer.

An IDX file is ``00 00 <type> <ndim>``, then ``ndim`` big-endian uint32 dimensions, then
the elements, big-endian, row-major. Files may be gzip-compressed (detected by content,
not by name).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import zlib
from typing import IO, Any

import numpy as np

from ..errors import FormatError

__all__ = ["IDX_TYPES", "read_idx", "write_idx"]

#: IDX element-type code -> big-endian NumPy dtype
IDX_TYPES: dict[int, str] = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}
_CODES = {np.dtype(v).newbyteorder("=").name: k for k, v in IDX_TYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20
_MAX_DEFLATE_RATIO = 1032  # deflate cannot expand data more than 1032:1
_GZIP_SLACK = 1 << 16  # headers, and more than any rounding of that ratio on tiny files


class _HashingReader:
    """Reads exactly what is asked (or less at EOF), hashing every byte read."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.sha = hashlib.sha256()

    def read_upto(self, n: int) -> bytes:
        """Up to ``n`` bytes, in bounded chunks: the allocation follows the data, not ``n``."""
        parts: list[bytes] = []
        left = n
        while left > 0:
            b = self._f.read(min(left, _CHUNK))
            if not b:
                break
            parts.append(b)
            left -= len(b)
        data = b"".join(parts)
        self.sha.update(data)
        return data

    def read_into(self, buf: np.ndarray) -> int:
        """Fill the uint8 array ``buf`` in chunks, hashing as it goes; the bytes filled."""
        view = buf.data
        done = 0
        while done < len(view):
            n = self._f.readinto(view[done : done + _CHUNK])  # type: ignore[attr-defined]
            if not n:
                break
            self.sha.update(view[done : done + n])
            done += n
        return done


def _read(path: str | os.PathLike[str]) -> tuple[np.ndarray, str]:
    """``(array, sha256 of the decompressed bytes)``; FormatError on anything malformed."""
    name = os.fspath(path)
    try:
        raw = open(name, "rb")  # noqa: SIM115
    except IsADirectoryError:
        raise FormatError(f"{name}: is a directory, not an IDX file") from None
    with raw:
        compressed = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        size = os.fstat(raw.fileno()).st_size
        f: Any = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
        r = _HashingReader(f)
        kind = "gzip-compressed IDX" if compressed else "IDX"
        try:
            return _parse(r, name, kind, size, compressed)
        except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
            raise FormatError(f"{name}: corrupt {kind} file ({type(e).__name__}: {e})") from None


def _parse(
    r: _HashingReader, name: str, kind: str, size: int, compressed: bool
) -> tuple[np.ndarray, str]:
    head = r.read_upto(4)
    if len(head) < 4:
        raise FormatError(f"{name}: not an IDX file (only {len(head)} bytes; the header has 4+)")
    if head[0] != 0 or head[1] != 0:
        raise FormatError(
            f"{name}: not an IDX file (magic number starts {head[:2].hex()}, expected 0000)"
        )
    code, ndim = head[2], head[3]
    if code not in IDX_TYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_TYPES)
        raise FormatError(f"{name}: unknown IDX element type 0x{code:02X} (known: {known})")
    if ndim == 0:
        raise FormatError(f"{name}: IDX header declares 0 dimensions")
    try:
        np.empty((0,) * ndim, dtype=np.uint8)  # allocates nothing; fails past NumPy's limit
    except ValueError:
        raise FormatError(
            f"{name}: IDX header declares {ndim} dimensions, more than a NumPy array can have"
        ) from None
    dims_raw = r.read_upto(4 * ndim)
    if len(dims_raw) < 4 * ndim:
        raise FormatError(
            f"{name}: truncated IDX header: {ndim} dimensions need {4 * ndim} bytes after the "
            f"magic number, the file has {len(dims_raw)}"
        )
    dims = struct.unpack(f">{ndim}I", dims_raw)
    dtype = np.dtype(IDX_TYPES[code])
    count = 1
    for d in dims:
        count *= d
    want = count * dtype.itemsize
    header = 4 + 4 * ndim
    # Refuse, before allocating anything, a payload the file cannot possibly hold.
    if not compressed and size - header != want:
        _bad_length(name, kind, dims, dtype, want, size - header)
    if compressed and header + want > _MAX_DEFLATE_RATIO * size + _GZIP_SLACK:
        _bad_length(name, kind, dims, dtype, want, None, size)
    buf = np.empty(want, dtype=np.uint8)  # the one array: bytes are read straight into it
    got = r.read_into(buf)
    if got < want:
        _bad_length(name, kind, dims, dtype, want, got)
    if r.read_upto(1):  # one byte more tells an oversized file (and gzip checks its CRC)
        _bad_length(name, kind, dims, dtype, want, want + 1, at_least=True)
    arr = buf.view(dtype)
    if not dtype.isnative:
        arr.byteswap(inplace=True)  # in place: no second copy of the payload
    arr = arr.view(dtype.newbyteorder("=")).reshape(dims)
    return arr, r.sha.hexdigest()


def _bad_length(
    name: str,
    kind: str,
    dims: tuple[int, ...],
    dtype: np.dtype[Any],
    want: int,
    got: int | None,
    file_size: int = 0,
    at_least: bool = False,
) -> None:
    """Raise the FormatError for a payload of ``got`` bytes (None: a gzip file of
    ``file_size`` bytes, too small to hold ``want`` bytes at deflate's best ratio)."""
    shape = "x".join(map(str, dims))
    declares = f"the header declares {shape} {dtype.newbyteorder('=').name} elements ({want} bytes)"
    if got is None:
        most = _MAX_DEFLATE_RATIO * file_size + _GZIP_SLACK
        raise FormatError(
            f"{name}: truncated {kind} file: {declares} but a {file_size}-byte gzip file "
            f"holds at most {most} bytes (deflate expands at most {_MAX_DEFLATE_RATIO}:1)"
        )
    what = f"truncated {kind} file" if got < want else f"oversized {kind} file"
    more = "at least " if at_least else ""
    raise FormatError(f"{name}: {what}: {declares} but the payload has {more}{got} bytes")


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (raw or gzip-compressed) into a NumPy array of native byte order.

    The magic number, the element type, the number of dimensions and each dimension are
    checked against the payload, which must be exactly as long as the header says.
    A malformed, truncated or oversized file raises :class:`minifw.FormatError` naming
    the file. A header declaring more than the file can hold (its size; for gzip, 1032
    times it, deflate's best ratio) is refused before anything is allocated; otherwise the
    payload is read straight into one array of the declared size, and reading stops at the
    first byte past it.
    """
    return _read(path)[0]


def write_idx(path: str | os.PathLike[str], array: Any, *, compress: bool | None = None) -> None:
    """Write ``array`` as an IDX file (gzip-compressed if ``compress``, by default when
    ``path`` ends in ``.gz``). Written to a temporary file and renamed into place.
    """
    a = np.asarray(array)
    code = _CODES.get(a.dtype.name)
    if code is None:
        raise TypeError(f"write_idx: IDX cannot hold dtype {a.dtype} (use one of {list(_CODES)})")
    if a.ndim == 0 or a.ndim > 255:
        raise ValueError(f"write_idx: IDX holds 1 to 255 dimensions, got {a.ndim}")
    if any(d >= 2**32 for d in a.shape):
        raise ValueError(f"write_idx: dimensions must be < 2**32, got {a.shape}")
    name = os.fspath(path)
    if compress is None:
        compress = name.endswith(".gz")
    data = bytes([0, 0, code, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    data += np.ascontiguousarray(a, dtype=IDX_TYPES[code]).tobytes()
    if compress:
        data = gzip.compress(data, mtime=0)
    from .._atomic import atomic_write

    with atomic_write(name) as f:
        f.write(data)
