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
from engine.runlog.schema import problem


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
        it = event.get("iteration")
        if kind == "run_started":
            self.line(
                f"run {event.get('name')}: {event.get('model')}, strategy {event.get('strategy')} "
                f"({event.get('importance')}), {event.get('start_layers')} -> {event.get('target_layers')} layers"
            )
        elif kind == "phase":
            phase = event.get("phase")
            detail = event.get("detail") or ""
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
        elif kind == "train_step":
            self._train_step(event)
        elif kind == "importance":
            scores = {k: v for k, v in event["scores"].items() if v is not None}
            lowest = sorted(scores.items(), key=lambda kv: kv[1])[:3]
            note = " (one-shot, reused)" if event.get("reused") else ""
            self.line(
                f"[{it}] importance {event.get('metric')}{note}: least important "
                + ", ".join(f"layer {k} {v:.4f}" for k, v in lowest)
            )
        elif kind == "decision":
            self.line(
                f"[{it}] decision: remove layer {event.get('layer')} (by {event.get('by')}, proposed {event.get('proposed')})"
            )
        elif kind == "layer_removed":
            params = event.get("params")
            self.line(
                f"[{it}] removed layer {event.get('layer')}: {event.get('layers', len(event.get('remaining', [])))} layers"
                + (f", {params / 1e6:.1f}M parameters" if params else "")
            )
        elif kind == "eval":
            part = " (select)" if event.get("part") == "select" else ""
            self.line(
                f"[{it}] eval {event['stage']}{part}: aggregate {_fmt(event['aggregate'], 4)} ({_short(event['tasks'])})"
            )
        elif kind == "log":
            self.line(f"{event.get('level', 'info')}: {event.get('message')}")
        elif kind == "run_finished":
            self.finished = event
            where = f"; model in {event['export']}" if event.get("export") else ""
            self.line(
                f"finished ({event.get('reason')}): {event.get('layers')} layers, removed {event.get('removed')}{where}"
            )
        elif kind == "run_failed":
            self.failed = event
            self.line(f"failed: {event.get('error')} — {event.get('hint', '')}")

    def _train_step(self, event: dict) -> None:
        """Healing emits steps, not phases: the bar counts them; piped, a line every quarter."""
        it, step, steps = event.get("iteration"), event["step"], event.get("steps")
        if self.progress is not None:
            self.progress.update(self.task_id, description=f"[{it}] healing: step", total=steps, completed=step)
            return
        if step == 1 or step == steps or (steps and step % max(1, steps // 4) == 0):
            of = f"/{steps}" if steps else ""
            terms = f" (kl term {_fmt(event.get('kl_term'), 4)}, mse term {_fmt(event.get('mse_term'), 4)})"
            self.line(f"[{it}] healing step {step}{of}: loss {_fmt(event.get('loss'), 4)}" + terms)
