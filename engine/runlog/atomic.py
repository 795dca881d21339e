"""Whole-file replacement that a reader never sees half done.

Readers of ``state.json`` or ``LATEST`` may be another process on another
host (a dashboard on a login node), and the writer may be SIGKILLed at any
instruction. Writing a temp file in the same directory, fsyncing it, and
``os.replace``-ing it over the target means a reader sees either the old or
the new content, never a mix; fsyncing the directory makes the rename itself
survive a power loss. Temp names start with a dot so that directory scanners
(the command inbox, ``ls``) skip them. The files are readable by their owner
only.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from engine.runlog._fileio import FILE_MODE, fsync_dir
from engine.runlog.jsonsafe import sanitize
from engine.runlog.safefile import UnsafeFile, read_regular

__all__ = ["read_json", "temp_name", "write_bytes_atomic", "write_json_atomic", "write_text_atomic"]


def temp_name(final_name: str) -> str:
    """A dot-prefixed temp name next to ``final_name``, unique per writer."""
    return f".tmp-{final_name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Replace ``path`` with ``data`` atomically and durably; return the path."""
    path = Path(path)
    tmp = path.with_name(temp_name(path.name))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Replace ``path`` with UTF-8 ``text`` atomically and durably."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Replace ``path`` with strict, indented JSON of ``obj`` (NaN -> null).

    Serialisation happens before any file is touched, so a ``TypeError`` for
    an unserialisable value leaves the old file intact.
    """
    text = json.dumps(sanitize(obj), allow_nan=False, ensure_ascii=False, indent=2) + "\n"
    return write_text_atomic(path, text)


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    """Parsed JSON from ``path``, or ``default`` if it is missing or not valid JSON.

    Atomic writes mean invalid JSON only comes from a human edit or another
    tool; a dashboard should show "unknown", not crash, so it is not raised.
    A link, a FIFO or a directory in its place is never opened: that too is ``default``.
    """
    try:
        return json.loads(read_regular(path))
    except (FileNotFoundError, NotADirectoryError, UnsafeFile, ValueError, RecursionError):
        return default
