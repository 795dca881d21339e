"""Finding runs and summarising them from their event logs (no engine, no torch)."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from engine.runlog.fold import RunState, derive_status, fold
from engine.runlog.layout import RunDir, is_run_dir, list_runs
from engine.runlog.lock import is_alive
from engine.runlog.tailer import read_all


class RunNotFound(Exception):
    pass


@dataclass
class RunSummary:
    run: RunDir
    state: RunState
    status: str

    @property
    def name(self) -> str:
        return self.state.name or self.run.name

    @property
    def aggregate(self) -> float | None:
        latest = self.state.latest_eval
        return latest.get("aggregate") if latest else None

    @property
    def best_aggregate(self) -> float | None:
        values = [v for it, v in self.state.eval_series() if v is not None and it not in (None, 0)]
        return max(values) if values else None

    @property
    def layers_now(self) -> int | None:
        if self.state.removals:
            return len(self.state.layers)
        return self.state.start_layers

    @property
    def started(self) -> float | None:
        info = self.state.run_info
        return info.get("t") if info else None


def summarise(run: RunDir) -> RunSummary:
    state = fold(read_all(run.events_file))
    alive = is_alive(run.path)
    status = derive_status(state, alive)
    if status == "died" and state.last_event_t is None and time.time() - run.path.stat().st_mtime < 30:
        status = "starting"  # made a moment ago; the engine has not taken its lock yet
    return RunSummary(run, state, status)


def all_runs(runs_dir: str | Path) -> list[RunSummary]:
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    return [summarise(r) for r in list_runs(root)]


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
    runs = list_runs(Path(runs_dir)) if Path(runs_dir).is_dir() else []
    if not runs:
        raise RunNotFound(f"no runs in {runs_dir}")
    return runs[-1]


def new_run_id(name: str | None, model: str, strategy: str) -> str:
    if name:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise ValueError(f"run name '{name}' may use letters, digits, '.', '_' and '-' only")
        return name
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(model.rstrip("/")).name.removesuffix(".gguf")).strip("-")
    return f"{base}-{strategy}-{time.strftime('%Y%m%d-%H%M%S')}"
