"""Low-level file helpers shared by the runlog modules.

Kept separate so that the writer (which repairs a torn log) and the tailer
(which re-synchronises after such a repair) agree byte for byte on what a
"line boundary" is.
"""

from __future__ import annotations

import os
import stat

_CHUNK = 64 * 1024

# A run directory holds the model's weights, the commands that steer it and whatever the log
# says: it is its owner's alone, whatever the umask (a shared machine's is often 022).
DIR_MODE = 0o700
FILE_MODE = 0o600


def make_private_dir(path: str | os.PathLike) -> None:
    """``mkdir -p`` whose new directories are 0700 (existing ones are left as they are)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        make_private_dir(parent)
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        if not os.path.isdir(path):
            raise
        return
    os.chmod(path, DIR_MODE)  # mkdir's mode is masked by the umask


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory so that a rename inside it survives a power loss.

    Some filesystems (and some platforms) refuse to fsync a directory; the
    rename itself has still happened, so that is not worth failing over.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def rfind_newline(fd: int, end: int) -> int:
    """Offset of the last b"\\n" strictly before ``end`` in ``fd``, or -1.

    Reads backwards in chunks with ``pread`` so that finding the end of a
    multi-gigabyte log costs one chunk, not the whole file.
    """
    pos = end
    while pos > 0:
        start = max(0, pos - _CHUNK)
        chunk = os.pread(fd, pos - start, start)
        i = chunk.rfind(b"\n")
        if i >= 0:
            return start + i
        pos = start
    return -1


class NotRegularFile(OSError):
    """A path inside a run directory that is a link, a FIFO, a device or a directory."""


def open_regular(path: str | os.PathLike, flags: int = os.O_RDONLY, mode: int = FILE_MODE) -> int:
    """A descriptor of ``path``, which must be a regular file reached without following a link.

    ``O_NONBLOCK`` keeps ``open()`` of a FIFO from waiting forever for a writer; the type is then
    checked on the open descriptor (no window between a check and the open).
    """
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(f"{os.fspath(path)} is not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: str | os.PathLike) -> bytes:
    """The bytes of a regular file reached without following a link (``NotRegularFile`` otherwise;
    a symlink raises ``OSError`` ELOOP from the open)."""
    fd = open_regular(path)
    with os.fdopen(fd, "rb") as f:
        return f.read()


def is_real_dir(path: str | os.PathLike) -> bool:
    """A directory that is not a symlink to one."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False
