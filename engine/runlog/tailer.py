"""Follow ``events.jsonl`` from another process, possibly on another host.

The file is reopened on every poll instead of held open: on NFS a held
descriptor can keep showing a stale size, and inotify does not see other
hosts' writes, so polling a fresh open is the portable choice.

What the tailer must survive:

* a partial last line (the writer is mid-write, or was killed mid-write): it
  is never parsed; it is re-read on the next poll until its newline arrives;
* a complete line that is not a JSON object: skipped and counted in ``bad_lines``
  (whether its fields make a valid event is the fold's call, see ``RunState``);
* the writer cutting such lines back off when it resumes, and writing new
  ones in their place: the tailer re-reads from the end of the last *good*
  line on each poll, so bytes it already judged bad are checked again and
  nothing written in their place is lost or spliced.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from engine.runlog._fileio import rfind_newline
from engine.runlog.safefile import open_regular

__all__ = ["EventTailer", "read_all"]

_CHUNK = 8 * 1024 * 1024


class EventTailer:
    """Incremental reader of an event log; ``poll()`` returns the new events.

    ``offset`` is the byte position just after the last complete line
    consumed: save it and pass it back to a new tailer to resume following
    without replaying. An offset in the middle of a line is moved on to the
    start of the next line.
    """

    def __init__(self, path: str | os.PathLike, offset: int = 0) -> None:
        self.path = Path(os.fspath(path))
        if offset < 0:
            raise ValueError("offset must be >= 0")
        self.offset = offset  # after the last complete line consumed
        self._good = offset  # after the last line that parsed
        self._bad: list[bytes] = []  # complete bad lines between _good and offset
        self.partial = b""  # bytes after offset with no newline yet
        self.bad_lines = 0
        self._aligned = offset == 0

    def poll(self) -> list[dict]:
        """Events appended since the last poll (an empty list if none or no file).

        Raises ``UnsafeFile`` (an ``OSError``) when the log is a link, a FIFO or a directory: never
        followed, never blocked on.
        """
        try:
            f = os.fdopen(open_regular(self.path), "rb")
        except FileNotFoundError:
            return []
        with f:
            fd = f.fileno()
            size = os.fstat(fd).st_size
            if size < self._good:
                # Cut below a line we parsed: only a replaced or hand-edited
                # file does this. Resume at the last line boundary that exists.
                self._good = self.offset = rfind_newline(fd, size) + 1
                self._drop_bad()
                self.partial = b""
            if not self._aligned and not self._align(fd):
                return []
            start = self._good
            if self._bad:
                seen = b"".join(self._bad)
                if os.pread(fd, len(seen), start) == seen:
                    start += len(seen)  # still there, already counted
                else:
                    self._drop_bad()  # cut back by a resumed writer: re-read
            f.seek(start)
            return self._consume(f, start)

    def _align(self, fd: int) -> bool:
        """Move a mid-line starting offset to the next line start; False if not there yet."""
        if self._good > 0 and os.pread(fd, 1, self._good - 1) != b"\n":
            nxt = _find_newline_from(fd, self._good)
            if nxt < 0:
                return False
            self._good = self.offset = nxt + 1
        self._aligned = True
        return True

    def _drop_bad(self) -> None:
        self.bad_lines -= len(self._bad)
        self._bad = []

    def _consume(self, f, pos: int) -> list[dict]:
        events: list[dict] = []
        append = events.append
        loads = json.loads
        carry = b""
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                break
            lines = (carry + chunk if carry else chunk).split(b"\n")
            carry = lines.pop()
            for line in lines:
                pos += len(line) + 1
                try:
                    obj = loads(line)
                except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
                    obj = None
                if type(obj) is dict:
                    append(obj)
                    self._good = pos
                    if self._bad:
                        self._bad = []
                else:
                    self._bad.append(line + b"\n")
                    self.bad_lines += 1
        self.offset = pos
        self.partial = carry
        return events


def _find_newline_from(fd: int, start: int) -> int:
    pos = start
    while True:
        chunk = os.pread(fd, 64 * 1024, pos)
        if not chunk:
            return -1
        i = chunk.find(b"\n")
        if i >= 0:
            return pos + i
        pos += len(chunk)


def read_all(path: str | os.PathLike) -> list[dict]:
    """Every complete, parsable event in the log (a missing file is no events)."""
    return EventTailer(path).poll()
