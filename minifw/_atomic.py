"""Atomic file writes: a temporary file in the same directory, then ``os.replace``."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import IO

_UMASK: int | None = None


def _umask() -> int:
    global _UMASK
    if _UMASK is None:  # os.umask can only be read by setting it: do that once
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return _UMASK


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Open a temporary file beside ``path`` for binary writing; on success it is flushed,
    synced and renamed onto ``path``; on any error it is deleted and ``path`` is untouched.
    """
    target = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(target))
    fd, tmp = tempfile.mkstemp(
        dir=folder, prefix="." + os.path.basename(target) + ".", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def temp_path_beside(path: str | os.PathLike[str]) -> str:
    """A fresh, empty temporary file path in ``path``'s directory (the caller removes it)."""
    target = os.fspath(path)
    fd, tmp = tempfile.mkstemp(
        dir=os.path.dirname(os.path.abspath(target)),
        prefix="." + os.path.basename(target) + ".",
        suffix=".part",
    )
    os.close(fd)
    return tmp
