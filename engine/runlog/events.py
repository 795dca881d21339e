"""The single writer of ``events.jsonl``.

``events.jsonl`` is the one source of truth a dashboard rebuilds itself from,
so the writer guarantees four things:

* every event is well formed: its type, fields and their JSON types are those
  of the registry in ``engine.runlog.schema`` (docs/events.md), checked before
  anything is written;
* every line is one complete JSON object, written by one ``os.write`` on an
  ``O_APPEND`` descriptor, so a local reader never sees two events spliced;
* ``seq`` has no gaps and no duplicates, across crashes: on open, a torn last
  line (a SIGKILL mid-write, no final newline) or an unparsable last line is
  cut off, and ``seq`` continues from the last good line;
* events a person acts on (a proposal, a decision, a removed layer) are
  fsynced at once; chatty ones (``train_step``) at most every 2 s, because a
  per-line fsync is slow on NFS/Lustre.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.runlog._fileio import FILE_MODE, rfind_newline
from engine.runlog.jsonsafe import dumps, encode_line
from engine.runlog.safefile import open_regular
from engine.runlog.schema import EVENTS, field_problem

__all__ = ["EventWriter"]

_RESERVED = ("seq", "t")


def _parse_seq(line: bytes) -> int | None:
    """``seq`` of a log line if it is a JSON object with an int seq, else None."""
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if isinstance(obj, dict):
        seq = obj.get("seq")
        if isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0:
            return seq
    return None


class EventWriter:
    """Appends events to ``events.jsonl``; the only writer of that file.

    Exactly one writer per file: the engine holds ``engine.lock`` while it
    owns one. Thread-safe, so the stall watchdog's thread and the main loop
    can share it. The file is created readable by its owner only. After construction, ``repaired_bytes`` says how much torn or
    unparsable tail was cut off (the engine should log it) and ``next_seq``
    is the seq the next event gets.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        fsync_interval: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(os.fspath(path))
        self.fsync_interval = fsync_interval
        self._clock = clock
        self._lock = threading.Lock()
        # Never through a link or into a FIFO: the log is the run's own file (engine.runlog.safefile).
        self._fd: int | None = open_regular(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, FILE_MODE)
        try:
            self.next_seq, self._size, self.repaired_bytes = self._repair()
        except BaseException:
            os.close(self._fd)
            self._fd = None
            raise
        self._last_fsync = time.monotonic()
        self._dirty = False

    def _repair(self) -> tuple[int, int, int]:
        """Cut the file back to its last good line; return (next_seq, size, bytes cut)."""
        fd = self._fd
        size = os.fstat(fd).st_size
        good_end = rfind_newline(fd, size) + 1  # drop a torn tail with no "\n"
        next_seq = 0
        while good_end > 0:
            start = rfind_newline(fd, good_end - 1) + 1
            seq = _parse_seq(os.pread(fd, good_end - start, start))
            if seq is not None:
                next_seq = seq + 1
                break
            good_end = start  # an unparsable last line: cut it too
        if good_end != size:
            os.ftruncate(fd, good_end)
            os.fsync(fd)
        return next_seq, good_end, size - good_end

    def emit(self, type: str, **fields: Any) -> dict:
        """Append one event and return the record as written.

        Raises ``ValueError`` for an unknown type, a reserved or unknown field
        name, a missing required field or a value of the wrong type (a NaN or
        infinity is written as null, so it is wrong where null is not allowed),
        and ``TypeError`` for a value JSON cannot hold. All are raised before
        anything is written and before a seq is used, so the log stays gap-free.
        """
        spec = EVENTS.get(type)
        if spec is None:
            raise ValueError(f"unknown event type {type!r}; known: {sorted(EVENTS)}")
        for key in _RESERVED:
            if key in fields:
                raise ValueError(f"event field {key!r} is set by the writer")
        _, text = dumps(fields)  # TypeError for what JSON cannot hold; NaN -> null
        reason = field_problem(type, json.loads(text))
        if reason:
            raise ValueError(reason)
        with self._lock:
            if self._fd is None:
                raise ValueError("EventWriter is closed")
            record = {"seq": self.next_seq, "t": self._clock(), "type": type, **fields}
            record, text = dumps(record)
            data = encode_line(text)
            self._write(data)
            self.next_seq += 1
            self._dirty = True
            now = time.monotonic()
            if spec.durable or now - self._last_fsync >= self.fsync_interval:
                os.fsync(self._fd)
                self._last_fsync = now
                self._dirty = False
            return record

    def _write(self, data: bytes) -> None:
        """One ``os.write``; if the disk fills mid-line, cut the partial line back off."""
        fd = self._fd
        try:
            n = os.write(fd, data)
            while n < len(data):  # only on a nearly full disk or a signal
                n += os.write(fd, data[n:])
        except BaseException:
            try:
                os.ftruncate(fd, self._size)
            except OSError:
                pass
            raise
        self._size += len(data)

    def close(self) -> None:
        with self._lock:
            if self._fd is None:
                return
            try:
                if self._dirty:
                    os.fsync(self._fd)
            finally:
                os.close(self._fd)
                self._fd = None

    @property
    def closed(self) -> bool:
        return self._fd is None

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
