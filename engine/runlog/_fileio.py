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


def is_real_dir(path: str | os.PathLike) -> bool:
    """A directory that is not a symlink to one."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False
