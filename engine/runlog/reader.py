"""One run's log followed incrementally: a tailer and the ``RunState`` folded from it.

``ild ls``, ``ild show``, the runs screen and the compare screen all read a run this way, so each
sees the same state (and the same "starting" grace for a run directory made a moment ago).
"""

from __future__ import annotations

import os

from engine.runlog.fold import RunState, fold
from engine.runlog.layout import RunDir
from engine.runlog.safefile import UnsafeFile
from engine.runlog.tailer import EventTailer

__all__ = ["RunReader", "read_run"]


class RunReader:
    """``update()`` folds whatever the log gained since the last call into ``state``."""

    def __init__(self, run_dir: str | os.PathLike, keep_train_steps: bool = False) -> None:
        self.run = RunDir(run_dir)
        self.tailer = EventTailer(self.run.events_file)
        self.state = RunState(keep_train_steps=keep_train_steps)

    def update(self) -> list[dict]:
        """The new events (already folded in).

        A log that cannot be read (a directory, a FIFO or a link where ``events.jsonl`` belongs,
        or a permission error) sets ``state.unreadable`` to the one-line reason instead of raising:
        one broken run must never hide the others from ``ild ls`` or the dashboard.
        """
        try:
            events = self.tailer.poll()
        except OSError as exc:
            self.state.unreadable = (
                str(exc) if isinstance(exc, UnsafeFile) else f"{self.run.events_file}: {exc.strerror or exc}"
            )
            return []
        self.state.unreadable = None
        fold(events, self.state)
        self.state.unparsable = self.tailer.bad_lines
        if self.state.events_seen == 0:  # only an empty log needs the directory's age
            self.state.dir_mtime = self.run.mtime()
        return events


def read_run(run_dir: str | os.PathLike, keep_train_steps: bool = False) -> RunState:
    """The state of a run folded from its whole log (with every healing step if asked)."""
    reader = RunReader(run_dir, keep_train_steps)
    reader.update()
    return reader.state
