"""What the live screen knows about its run: the shared fold plus what only a dashboard keeps.

``LiveModel`` wraps ``engine.runlog.fold.RunState`` (the one fold every client shares, so two
dashboards on one run agree) and adds, incrementally so that a run with 100,000 events stays cheap
to follow: the loss series (the loss panel's), the event log lines (the event log panel's), and the
commands this dashboard sent with the engine's replies. ``apply`` returns the event types it folded;
each panel redraws when one of the types it lists in ``EVENTS`` arrives.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from engine.runlog.fold import RunState

from .eventlog import LogLine, describe
from .losses import LossSeries


@dataclass
class SentCommand:
    id: str
    name: str
    args: dict
    t: float
    iteration: int | None = None


class LiveModel:
    """RunState plus the dashboard's incremental extras. Feed it with ``apply``."""

    def __init__(self, log_lines: int = 1000, dir_mtime: float | None = None) -> None:
        self.state = RunState(dir_mtime=dir_mtime)
        self.loss = LossSeries()
        self.lines: deque[LogLine] = deque(maxlen=log_lines)
        self.lines_added = 0  # total ever appended (the log pane writes the new ones)
        self.sent: dict[str, SentCommand] = {}
        self.replies: list[dict] = []  # replies to this dashboard's commands, not yet shown
        self._last_phase: tuple | None = None
        self.phase_event: dict | None = None

    def apply(self, events: Iterable[dict]) -> set[str]:
        """Fold events in; return the types of those the fold took (invalid ones are skipped)."""
        kinds: set[str] = set()
        state = self.state
        state_apply = state.apply
        loss_add = self.loss.add
        lines = self.lines
        for ev in events:
            if not state_apply(ev):  # invalid, or a type this dashboard does not know
                continue
            kind = ev["type"]
            if kind == "train_step":  # nine events in ten on a healing run: keep this path short
                loss_add(ev)
                kinds.add(kind)
                continue
            kinds.add(kind)
            if kind == "phase":
                self.phase_event = ev
                key = (ev["iteration"], ev["phase"], ev.get("detail"))
                if "done" in ev or key == self._last_phase:
                    continue
                self._last_phase = key
            line = describe(ev)
            if line is not None:
                lines.append(line)
                self.lines_added += 1
            if (kind == "command_applied" or kind == "command_rejected") and ev["command_id"] in self.sent:
                self.replies.append(ev)
        return kinds

    def note_sent(self, command_id: str, name: str, args: dict, t: float) -> None:
        pending = self.state.pending_proposal
        self.sent[command_id] = SentCommand(command_id, name, args, t, pending["iteration"] if pending else None)

    def phase_detail(self) -> str | None:
        ev = self.phase_event
        train = self.state.last_train
        if train is not None and (ev is None or train["seq"] > ev["seq"]):
            # Healing emits steps, not phase events: the last phase's detail (the last part of the
            # preparation it marked, "student prefix 0/1") would stand for the whole of the training.
            steps = train.get("steps")
            return f"step {train['step']}/{steps}" if steps else f"step {train['step']}"
        if not ev:
            return None
        detail = ev.get("detail") or ""
        done, total = ev.get("done"), ev.get("total")
        if done is not None and total:
            detail = f"{detail} {done}/{total}".strip()
        return detail or None

    def take_replies(self) -> list[dict]:
        out, self.replies = self.replies, []
        return out

    def awaiting_reply(self) -> SentCommand | None:
        """The newest decision command this dashboard sent that the engine has not answered yet."""
        pending = self.state.pending_proposal
        for cmd in reversed(list(self.sent.values())):
            if cmd.name not in ("approve", "override"):
                continue
            if cmd.id in self.state.commands:
                return None
            if pending is not None and cmd.iteration == pending["iteration"]:
                return cmd
            return None
        return None
