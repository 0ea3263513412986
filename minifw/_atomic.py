"""Atomic file writes: a temporary file in the same directory, then ``os.replace``."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import tempfile
from collections.abc import Iterator
from typing import IO, Any, cast

_UMASK: int | None = None
_MAX_LINKS = 40  # as Linux's ELOOP limit


def _umask() -> int:
    global _UMASK
    if _UMASK is None:  # os.umask can only be read by setting it: do that once
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return _UMASK


def _resolve(name: str) -> tuple[str, bool]:
    """``(the final target of name's chain of symlinks, whether the chain went through
    /proc)``. A dangling link resolves to its (missing) target; a loop is ELOOP. /proc's
    links (``/dev/stdout`` -> ``/proc/self/fd/1``) name open files, not paths: report them.
    """
    p = os.path.abspath(name)
    for _ in range(_MAX_LINKS):
        if not os.path.islink(p):
            return os.path.realpath(p), False
        folder = os.path.realpath(os.path.dirname(p))
        if folder == "/proc" or folder.startswith("/proc/"):
            return p, True
        p = os.path.join(folder, os.readlink(p))  # an absolute link replaces the folder
    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), name)


class _Stream(io.RawIOBase):
    """Write-only and unseekable, over a FIFO or a device: writers that would seek or call
    ``tofile`` (zipfile, ``np.save``) fall back to plain sequential writes."""

    def __init__(self, f: IO[bytes]) -> None:
        super().__init__()
        self._f = f

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self._f.write(b)
        return memoryview(b).nbytes

    def flush(self) -> None:
        self._f.flush()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Open ``path`` for binary writing, replacing its content atomically where it can.

    A regular (or missing) file: the data goes to a temporary file in the same directory,
    which on success is flushed, synced and renamed onto the path; on any error it is
    deleted and the path is untouched. The rename gives the path a new inode: it breaks a
    hard link (another name of the old file keeps the old content). An existing file's
    mode (and, where allowed, owner and group) is kept; a new file gets ``0o666 & ~umask``.

    A symlink (or a chain of them) is followed: the link stays a link and its final target
    gets the new content (a dangling link's target is created), with the temporary file in
    the target's directory. An existing non-regular file (a FIFO, a character device such
    as ``/dev/null``, a socket) and a ``/proc`` file-descriptor link (``/dev/stdout``) are
    written directly, without a temporary file: no atomicity there. A directory is an
    :class:`IsADirectoryError` naming the path.
    """
    name = os.fspath(path)
    target, fd_link = _resolve(name)
    try:
        st: os.stat_result | None = os.stat(name if fd_link else target)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "is a directory, cannot write a file there", name)
    if fd_link or (st is not None and not stat.S_ISREG(st.st_mode)):
        with open(name if fd_link else target, "wb") as raw:
            stream = _Stream(raw)
            yield cast(IO[bytes], stream)
            stream.flush()
        return
    folder = os.path.dirname(target)
    fd, tmp = tempfile.mkstemp(
        dir=folder, prefix="." + os.path.basename(target) + ".", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if st is None:
                os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp makes 0600
            else:
                mine = os.fstat(f.fileno())
                if (st.st_uid, st.st_gid) != (mine.st_uid, mine.st_gid):
                    with contextlib.suppress(OSError):  # allowed to root (or a group member)
                        os.fchown(f.fileno(), st.st_uid, st.st_gid)
                os.fchmod(f.fileno(), stat.S_IMODE(st.st_mode))  # after fchown: it clears setuid
            os.fsync(f.fileno())
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
