"""Opening a run directory's own files: never through a symbolic link, never a FIFO or a directory.

A run directory is often copied between machines (``rsync``, ``scp -r``, a tarball), and what is
copied may be hostile or just odd: ``events.jsonl`` a link to a user's file, ``commands/`` a link
to a folder of someone's ``*.json``, ``LATEST`` a FIFO. Following the link would make the engine
write into (or move) a file that is not the run's; opening a FIFO blocks ``ild ls`` forever. So
every file the engine or the CLI opens inside a run directory goes through ``open_regular``
(``O_NOFOLLOW | O_NONBLOCK``, then ``fstat``: a regular file or ``UnsafeFile``) and every folder it
writes into through ``require_dir`` (``lstat``: a real directory or ``UnsafeFile``).

``UnsafeFile`` is an ``OSError`` whose message is one line naming the path and what it is, so a
caller that already turns ``OSError`` into a one-line refusal needs nothing more.
"""

from __future__ import annotations

import errno
import os
import stat

__all__ = ["UnsafeFile", "kind_of", "open_regular", "read_regular", "require_dir"]

FILE_MODE = 0o600
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class UnsafeFile(OSError):
    """An entry of a run directory that is not what ild makes there (a link, a FIFO, a directory...)."""

    def __init__(self, path: str | os.PathLike, what: str, expected: str = "a regular file") -> None:
        super().__init__(f"{os.fspath(path)} is {what}, not {expected}; ild does not follow or open it")
        self.path = os.fspath(path)
        self.what = what


def kind_of(mode: int) -> str:
    """What an ``st_mode`` is, in words ("a symbolic link", "a FIFO", ...)."""
    for test, words in (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISREG, "a regular file"),
    ):
        if test(mode):
            return words
    return "a special file"


def _refusal(path: str | os.PathLike, expected: str = "a regular file") -> UnsafeFile | None:
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return None
    return UnsafeFile(path, kind_of(mode), expected)


def open_regular(path: str | os.PathLike, flags: int = os.O_RDONLY, mode: int = FILE_MODE) -> int:
    """``os.open`` of a regular file inside a run directory; the descriptor is blocking.

    Never follows a symbolic link in the last component and never blocks on a FIFO (opened with
    ``O_NONBLOCK`` and refused after ``fstat``); raises ``UnsafeFile`` for anything that is not a
    regular file, and ``FileNotFoundError`` etc. as ``os.open`` does.
    """
    try:
        fd = os.open(path, flags | _NOFOLLOW | os.O_NONBLOCK | _CLOEXEC, mode)
    except OSError as exc:
        # ELOOP: a link under O_NOFOLLOW; EISDIR: a directory opened for writing; ENXIO: a FIFO
        # opened for writing with no reader (or a socket).
        if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO, errno.EMLINK):
            refusal = _refusal(path)
            if refusal is not None:
                raise refusal from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFile(path, kind_of(st.st_mode))
        if not flags & os.O_NONBLOCK:
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: str | os.PathLike, limit: int | None = None) -> bytes:
    """The bytes of a regular file in a run directory (at most ``limit``), never through a link."""
    fd = open_regular(path)
    try:
        chunks, left = [], limit
        while left is None or left > 0:
            chunk = os.read(fd, 1 << 20 if left is None else min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            if left is not None:
                left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def require_dir(path: str | os.PathLike) -> bool:
    """True if ``path`` is a real directory, False if it is missing; ``UnsafeFile`` for anything else
    (a symbolic link to a directory included: writing through it would write somewhere else)."""
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return False
    if stat.S_ISDIR(mode):
        return True
    raise UnsafeFile(path, kind_of(mode), "a directory")
