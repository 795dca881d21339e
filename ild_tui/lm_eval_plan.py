"""``ild eval MODEL|RUN... --lm-eval TASKS``: which models lm-evaluation-harness scores.

A run stands for its exported student and its teacher (the model the run started from), scored
with the same settings; anything else is a model as ``ild run --model`` takes it (a Hub id, a local
directory, a GGUF file, ``smollm2-135m``). The plan goes to ``python -m engine.harness`` (torch is
the engine's), which prints the table and stores each run's results in the run directory.
"""

from __future__ import annotations

from pathlib import Path

from engine.runlog.layout import EXPORT_MARKER, RunDir
from engine.runlog.reader import read_run

from .runs import RunNotFound, find_run


class PlanError(Exception):
    """One line for the user."""


def targets(refs: list[str], runs_dir: str, teacher: bool = True) -> list[dict]:
    """``[{label, model, role, run, for}]`` in the order given; a run adds its teacher (once per
    teacher model) before its student."""
    out: list[dict] = []
    seen_teachers: dict[str, str] = {}
    for ref in refs:
        run = _run(ref, runs_dir)
        if run is None:
            out.append({"label": Path(ref).name or ref, "model": ref, "role": "model"})
            continue
        export = run.path / "export"
        if not (export / EXPORT_MARKER).is_file():
            raise PlanError(
                f"run '{run.path.name}' has no export yet (it exports when it finishes): nothing to evaluate"
            )
        model = read_run(run.path).model
        if teacher and model and model not in seen_teachers:
            seen_teachers[model] = "teacher" if not seen_teachers else f"teacher-{len(seen_teachers) + 1}"
            out.append({"label": seen_teachers[model], "model": model, "role": "teacher"})
        out.append({"label": run.path.name, "model": str(export), "role": "student", "run": str(run.path)})
        for t in out:  # every run of the same teacher shares its teacher's results
            if t["role"] == "teacher" and t["model"] == model:
                t.setdefault("runs", []).append(str(run.path))
    return out


def _run(ref: str, runs_dir: str) -> RunDir | None:
    try:
        return find_run(runs_dir, ref)
    except RunNotFound:
        return None
