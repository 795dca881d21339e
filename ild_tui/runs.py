"""Finding runs and summarising them, for ``ild ls``/``ild show`` and the runs screen (no Textual).

Every number in a summary is ``RunState``'s answer (``engine.runlog.fold``): the CLI and the
dashboard print the same status, best aggregate and duration because neither computes its own.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from engine.runlog.fold import RunState
from engine.runlog.jsonsafe import printable
from engine.runlog.layout import RunDir, is_run_dir, list_runs
from engine.runlog.lock import is_alive
from engine.runlog.reader import RunReader

NAME_MAX = 100
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


# How a status reads on screen where the word alone would mislead (the rest read as they are).
STATUS_LABELS = {"died": "engine dead", "unknown": "checking"}


def status_label(status: str) -> str:
    return STATUS_LABELS.get(status, status)


class RunNotFound(Exception):
    pass


@dataclass(frozen=True)
class RunRow:
    """One run as a list shows it (``aggregates`` are the report part's)."""

    path: str
    name: str
    status: str
    model: str
    strategy: str
    layers_now: int | None
    start_layers: int | None
    target_layers: int | None
    teacher: float | None
    last: float | None  # the final aggregate of the latest iteration
    best: float | None  # RunState.best_aggregate
    started: float | None
    duration: float | None
    events: int
    removed: tuple = ()
    mode: str | None = None
    note: str = ""
    last_event_t: float | None = None
    pending: str = ""
    skipped: int = 0  # events skipped: lines that are not JSON objects, or fields of the wrong type
    dirname: str = ""  # the run directory's name (a copied run keeps its recorded name)

    @property
    def label(self) -> str:
        """The status as screens show it (``died`` reads "engine dead")."""
        return status_label(self.status)

    @property
    def shown_name(self) -> str:
        """The recorded name, with the directory's where they differ (a copy of a run)."""
        if self.dirname and self.dirname != self.name:
            return f"{self.name} (dir {self.dirname})"
        return self.name

    @property
    def now(self) -> float | None:
        """The aggregate of the model as it stands: the latest iteration's, else the teacher's."""
        return self.last if self.last is not None else self.teacher

    def matches(self, text: str) -> bool:
        text = text.lower().strip()
        if not text:
            return True
        hay = " ".join((self.name, self.status, self.label, self.model, self.strategy, Path(self.path).name)).lower()
        return all(word in hay for word in text.split())

    def sort_key(self, key: str):
        v = {
            "started": self.started,
            "name": self.name.lower(),
            "status": self.status,
            "model": self.model.lower(),
            "strategy": self.strategy,
            "layers": self.layers_now,
            "last": self.last,
            "best": self.best,
            "duration": self.duration,
        }[key]
        return (v is None, v if v is not None else 0)


def summarise_state(path: Path, state: RunState, alive: bool | None, now: float) -> RunRow:
    status = state.status(alive, now)
    final = state.final_eval()
    last = final["aggregate"] if final else None
    teacher = state.teacher_eval()
    return RunRow(
        path=str(path),
        name=state.name or printable(path.name),
        status=status,
        model=state.model or "-",
        strategy=state.strategy or "-",
        layers_now=state.layers_now,
        start_layers=state.start_layers,
        target_layers=state.target_layers,
        teacher=teacher["aggregate"] if teacher else None,
        last=last,
        best=state.best_aggregate(),
        started=state.started,
        duration=state.duration(now, alive),
        events=state.events_seen,
        removed=tuple(state.removed_layers),
        mode=state.mode,
        note=printable(_note(state, status)),
        last_event_t=state.last_event_t,
        pending=printable(_pending(state)),
        skipped=state.skipped + state.unparsable,
        dirname=printable(path.name),
    )


FINISH_NOTES = {"floor": "the next removal would take the report aggregate below --min-retention of the teacher's"}


SKIPPED_NOTE = "events skipped: lines that are not JSON objects or fields of the wrong type"


def _note(state: RunState, status: str) -> str:
    if state.unreadable:
        return f"unreadable: {state.unreadable}"
    if state.failure:
        hint = state.failure.get("hint")
        return f"failed: {state.failure['error']}" + (f" ({hint})" if hint else "")
    if state.finished:
        reason = state.finished["reason"]
        note = FINISH_NOTES.get(reason)
        return f"finished: {reason}" + (f" ({note})" if note else "")
    if status == "died":
        return "the engine died without a final event; `ild resume` continues from the last checkpoint"
    if status == "starting":
        return "the engine is starting (no event from it yet)"
    if status == "paused":
        queued = state.decision_queued
        if queued:
            return (
                f"paused; {queued['name']} of layer {queued['layer']} taken: the engine removes it when resumed "
                "(`ild resume`)"
            )
        return "paused: the engine waits at a safe point until `ild resume` (or p in the dashboard)"
    return ""


def _pending(state: RunState) -> str:
    p = state.pending_proposal
    if not p:
        return ""
    return (
        f"awaiting a decision: iteration {p['iteration']}, proposed layer {p['layer']} "
        f"(`ild approve` / `ild override --layer N`, or a / o in the dashboard)"
    )


def summarise(run: RunDir, now: float | None = None) -> tuple[RunRow, RunState]:
    reader = RunReader(run)
    reader.update()
    now = time.time() if now is None else now
    return summarise_state(run.path, reader.state, is_alive(run.path), now), reader.state


def all_runs(runs_dir: str | Path) -> list[RunRow]:
    return [summarise(r)[0] for r in list_runs(runs_dir)]


def find_run(runs_dir: str | Path, ref: str | None) -> RunDir:
    """A run by path, by directory name under the runs directory, or (None) the latest one."""
    if ref:
        path = Path(ref)
        if is_run_dir(path):
            return RunDir(path)
        candidate = Path(runs_dir) / ref
        if is_run_dir(candidate):
            return RunDir(candidate)
        raise RunNotFound(f"no run '{ref}' (not a run directory, and not a run in {runs_dir})")
    runs = list_runs(runs_dir)
    if not runs:
        raise RunNotFound(f"no runs in {runs_dir}")
    return runs[-1]


def check_name(name: str) -> str:
    """``name`` if it can name a run directory, else ``ValueError`` saying why."""
    if not name:
        raise ValueError("the run name is empty")
    if len(name) > NAME_MAX:
        raise ValueError(f"the run name is {len(name)} characters long; at most {NAME_MAX}")
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"run name '{name}' may use letters, digits, '.', '_' and '-' only, and starts with a letter or digit"
        )
    return name


def new_run_id(name: str | None, model: str, strategy: str) -> str:
    """The run's id: ``name`` (checked), or one made of the model, the strategy and the time."""
    if name is not None:
        return check_name(name)
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(model.rstrip("/")).name.removesuffix(".gguf")).strip("-.")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = base[: NAME_MAX - len(strategy) - len(stamp) - 2] or "run"
    return f"{base}-{strategy}-{stamp}"
