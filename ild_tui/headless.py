"""Following a run in a terminal without the dashboard: Rich progress on a TTY, plain lines otherwise.

It reads only the event log, so it shows the same thing for a run it started and for one it
re-attaches to. An event that does not match the registry (``engine.runlog.schema``) is skipped.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from engine.runlog.jsonsafe import printable
from engine.runlog.loss_terms import step_terms
from engine.runlog.schema import describe, problem


def _fmt(v: float | None, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _short(scores: dict) -> str:
    return ", ".join(f"{k} {_fmt(v, 3)}" for k, v in scores.items())


class HeadlessView:
    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=False, highlight=False)
        self.tty = self.console.is_terminal
        self.progress: Progress | None = None
        self.task_id = None
        self.last_phase = None
        self.finished: dict | None = None
        self.failed: dict | None = None
        self.skipped = 0  # events that do not match the registry

    def __enter__(self):
        if self.tty:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            self.progress.start()
            self.task_id = self.progress.add_task("starting", total=None)
        return self

    def __exit__(self, *exc):
        if self.progress:
            self.progress.stop()

    def line(self, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        text = printable(text)  # names and messages come from the log: no control character reaches the terminal
        self.console.print(
            f"[dim]{stamp}[/dim] {escape(text)}" if self.tty else f"{stamp} {text}",
            markup=self.tty,
            highlight=False,
            soft_wrap=True,
        )

    def handle(self, event: dict) -> None:
        if problem(event):
            self.skipped += 1
            return
        kind = event["type"]
        if kind == "phase":
            self._phase(event)
        elif kind == "train_step":
            self._train_step(event)
        elif kind in LINES:
            if kind == "run_finished":
                self.finished = event
            elif kind == "run_failed":
                self.failed = event
            self.line(LINES[kind](event))

    def _phase(self, event: dict) -> None:
        """A TTY's bar follows the phase and its progress; piped, a line when a new phase begins."""
        it, phase, detail = event.get("iteration"), event.get("phase"), event.get("detail") or ""
        if self.progress is not None:
            total, done = event.get("total"), event.get("done")
            description = f"[{it}] {phase}: {detail}"
            if done is None:
                # A phase begins: its own count and clock. A new bar, since Rich's update()
                # and reset() cannot take a total back to unknown.
                self.progress.remove_task(self.task_id)
                self.task_id = self.progress.add_task(description, total=None)
            else:
                self.progress.update(self.task_id, description=description, total=total, completed=done)
        elif (phase, detail) != self.last_phase and event.get("done") is None:
            self.line(f"[{it}] {phase} {detail}".rstrip())
        self.last_phase = (phase, detail)

    def _train_step(self, event: dict) -> None:
        """Healing emits steps, not phases: the bar counts them; piped, a line every quarter."""
        it, step, steps = event.get("iteration"), event["step"], event.get("steps")
        if self.progress is not None:
            self.progress.update(self.task_id, description=f"[{it}] healing: step", total=steps, completed=step)
            return
        if step == 1 or step == steps or (steps and step % max(1, steps // 4) == 0):
            of = f"/{steps}" if steps else ""
            terms = ", ".join(f"{n} term {_fmt(v, 4)}" for n, v in step_terms(event)[0].items())
            terms = f" ({terms})" if terms else ""
            self.line(f"[{it}] healing step {step}{of}: loss {_fmt(event.get('loss'), 4)}" + terms)


def _removed(event: dict) -> str:
    removed = event.get("removed") or []
    layers = event.get("layers")
    if not removed:
        return "before any layer was removed" + (f" ({layers} layers)" if layers is not None else "")
    depth = f"{layers} layers, " if layers is not None else ""
    return f"{depth}removed {', '.join(str(x) for x in removed)} (original indices)"


def finish_words(event: dict) -> str:
    """One line for each way a run ends (never "None layers")."""
    reason = event.get("reason")
    where = f"; the student is in {event['export']}" if event.get("export") else ""
    if reason == "stopped":
        return f"stopped at a safe point, {_removed(event)}; `ild resume` continues from the last checkpoint"
    if reason == "target":
        return f"finished: reached the target depth, {_removed(event)}{where}"
    if reason == "floor":
        return (
            "finished at the quality floor: the next removal would take the report aggregate below "
            f"--min-retention of the teacher's (that student was not kept); {_removed(event)}{where}"
        )
    return f"finished ({reason}): {_removed(event)}{where}"


def wait_words(event: dict) -> str:
    """What the engine waits for, and how to answer."""
    it, layer, mode = event.get("iteration"), event.get("layer"), event.get("mode")
    if mode == "auto":
        return f"[{it}] proposal: remove layer {layer} (auto mode: taken at once)"
    text = f"[{it}] waiting for a decision: remove layer {layer}? (`ild approve RUN` or `ild override RUN --layer N`"
    deadline = event.get("deadline")
    if mode == "auto-after" and isinstance(deadline, (int, float)):
        text += f"; taken by itself at {time.strftime('%H:%M:%S', time.localtime(deadline))}"
    return text + ")"


_APPLIED = {
    "pause": "paused: the engine waits at a safe point until `ild resume RUN`",
    "resume": "resumed",
    "stop": "stop requested: the engine stops at its next safe point and writes a checkpoint",
}


def command_words(event: dict) -> str:
    name, args, by = event.get("name"), event.get("args") or {}, event.get("by")
    who = f" (from {by})" if by else ""
    if event.get("type") == "command_rejected":
        return f"command {name} rejected: {event.get('reason')}"
    if name in _APPLIED:
        return _APPLIED[name] + who
    if name == "set_mode":
        seconds = f" {args['seconds']:g}s" if isinstance(args.get("seconds"), (int, float)) else ""
        return f"mode set to {args.get('mode')}{seconds}{who}"
    if name in ("approve", "override"):
        layer = args.get("layer")
        return f"{name}{' layer ' + str(layer) if layer is not None else ''} taken{who}"
    return f"{name} applied{who}"


def _said(event: dict) -> str:
    """The event log's line for the event (``engine.runlog.schema.describe``)."""
    return describe(event)[1]


def _logged(event: dict) -> str:
    level, text = describe(event)
    return f"{level}: {text}"


# What a terminal without the dashboard prints for each event: the event log's line, or more where
# a person at a shell needs it (every task's score, how to answer, where the student went). Types
# not here print nothing: phases and healing steps drive the progress (above), a proposal is said
# by the awaiting_decision that follows it, checkpoints and engine starts are chatter here.
LINES = {
    "run_started": _said,
    "importance": _said,
    "decision": _said,
    "layer_removed": _said,
    "eval": lambda e: f"{_said(e)} ({_short(e['tasks'])})",
    "log": _logged,
    "alert": _logged,
    "run_finished": finish_words,
    "run_failed": _said,
    "awaiting_decision": wait_words,
    "command_applied": command_words,
    "command_rejected": command_words,
}
