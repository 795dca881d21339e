"""The report's tables, each a list of rows, from ``RunState`` alone (``engine.runlog.fold``).

Every number here is one ``RunState`` answer (final and best aggregates, the teacher's eval, the
curve against layers removed, the importance per iteration, the healing steps), so the report,
``ild ls``, the runs screen and the compare screen agree. This module only lays the answers out.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from engine.runlog.fold import LIVE_STATUSES, RunState
from engine.runlog.layout import RunDir
from engine.runlog.lock import is_alive
from engine.runlog.loss_terms import step_terms
from engine.runlog.reader import read_run
from engine.runlog.schema import PARTS, REPORT, SELECT, STAGES


@dataclass
class ReportRun:
    """One run of the report: its directory, a unique label and its folded state."""

    path: Path
    label: str  # unique within the report, safe in a file name
    state: RunState
    status: str

    @property
    def name(self) -> str:
        return self.state.name or self.path.name

    @property
    def model(self) -> str:
        return self.state.model or "-"

    @property
    def strategy(self) -> str:
        return self.state.strategy or "-"

    @property
    def export_dir(self) -> Path | None:
        """The exported student, when the run wrote one."""
        export = RunDir(self.path).export_dir
        return export if (export / "config.json").is_file() else None

    def has_part(self, part: str) -> bool:
        return any(p == part for (_, _, p) in self.state.evals)


def load_runs(paths: list[Path], now: float | None = None) -> list[ReportRun]:
    """Fold each run (with its healing steps) and give it a label no other run of the report has."""
    now = time.time() if now is None else now
    runs, taken = [], set()
    for path in paths:
        path = Path(path)
        state = read_run(path, keep_train_steps=True)
        base = re.sub(r"[^A-Za-z0-9_.-]+", "-", state.name or path.name).strip("-.") or "run"
        label, n = base, 2
        while label in taken:
            label, n = f"{base}-{n}", n + 1
        taken.add(label)
        runs.append(ReportRun(path, label, state, state.status(is_alive(RunDir(path)), now)))
    return runs


def _pct(value: float | None, base: float | None) -> float | None:
    return None if value is None or not base else 100.0 * value / base


def _aggregate(rec: dict | None) -> float | None:
    return rec["aggregate"] if rec else None


def tasks_of(runs: list[ReportRun]) -> list[str]:
    """Every task of every eval, in the order they first appear."""
    tasks: list[str] = []
    for r in runs:
        for rec in r.state.evals.values():
            tasks += [t for t in rec["tasks"] if t not in tasks]
    return tasks


# -- Table 2: one row per run ----------------------------------------------------------------------

RUN_COLUMNS = [
    "run",
    "model",
    "strategy",
    "status",
    "start_layers",
    "layers",
    "target_layers",
    "teacher_params",
    "params",
    "params_pct",
    "teacher_aggregate",
    "aggregate",
    "best_aggregate",
    "retention_pct",
    "select_teacher_aggregate",
    "select_aggregate",
    "select_retention_pct",
    "removed",
    "duration_s",
    "engine_s",
]


def run_rows(runs: list[ReportRun], now: float | None = None) -> list[dict]:
    now = time.time() if now is None else now
    rows = []
    for r in runs:
        s = r.state
        final, teacher = s.final_eval(REPORT), s.teacher_eval(REPORT)
        layers = (final or {}).get("layers", s.layers_now)
        params = (final or {}).get("params", s.params)
        # run_started's count: older runs logged an untied student's size in the teacher's eval row
        teacher_params = s.start_params or (teacher or {}).get("params")
        rows.append(
            {
                "run": r.label,
                "model": r.model,
                "strategy": r.strategy,
                "status": r.status,
                "start_layers": s.start_layers,
                "layers": layers,
                "target_layers": s.target_layers,
                "teacher_params": teacher_params,
                "params": params,
                "params_pct": _pct(params, teacher_params),
                "teacher_aggregate": _aggregate(teacher),
                "aggregate": _aggregate(final),
                "best_aggregate": s.best_aggregate(REPORT),
                "retention_pct": _pct(s.retention(REPORT), 1.0),
                "select_teacher_aggregate": _aggregate(s.teacher_eval(SELECT)),
                "select_aggregate": _aggregate(s.final_eval(SELECT)),
                "select_retention_pct": _pct(s.retention(SELECT), 1.0),
                "removed": " ".join(str(x) for x in s.removed_layers),
                "duration_s": s.duration(now, r.status in LIVE_STATUSES),
                "engine_s": s.engine_time(now, r.status in LIVE_STATUSES),
            }
        )
    return rows


# -- Table 3: every eval -----------------------------------------------------------------------------

EVAL_COLUMNS = [
    "run",
    "strategy",
    "iteration",
    "stage",
    "part",
    "final",
    "removed_layer",
    "by",
    "layers",
    "params",
    "aggregate",
]


def eval_rows(runs: list[ReportRun]) -> tuple[list[str], list[dict]]:
    """Every (iteration, stage, part) eval of every run; ``final`` marks the teacher and each
    iteration's final eval (the ones the aggregates above are made of). Columns: EVAL_COLUMNS + tasks."""
    tasks = tasks_of(runs)
    rows = []
    for r in runs:
        s = r.state
        removal = {x["iteration"]: x for x in s.removed}
        finals = {part: s.final_evals(part) for part in PARTS}
        for it, stage, part in sorted(s.evals, key=lambda k: (k[0], STAGES.index(k[1]), PARTS.index(k[2]))):
            rec = s.evals[(it, stage, part)]
            final = stage == "teacher" or finals[part].get(it) is rec
            row = {
                "run": r.label,
                "strategy": r.strategy,
                "iteration": it,
                "stage": stage,
                "part": part,
                "final": int(final),
                "removed_layer": None if stage == "teacher" else removal.get(it, {}).get("layer"),
                "by": None if stage == "teacher" else removal.get(it, {}).get("by"),
                "layers": rec.get("layers"),
                "params": rec.get("params"),
                "aggregate": rec["aggregate"],
            }
            row.update({t: rec["tasks"].get(t) for t in tasks})
            rows.append(row)
    return EVAL_COLUMNS + tasks, rows


# -- summary.csv: strategy x layers x part -----------------------------------------------------------

SUMMARY_COLUMNS = [
    "strategy",
    "layers",
    "part",
    "aggregate",
    "teacher_aggregate",
    "retention_pct",
    "params",
    "layers_removed",
    "model",
    "run",
]


def summary_rows(runs: list[ReportRun]) -> list[dict]:
    """One row per run, student depth and part: each iteration's final aggregate beside the teacher's."""
    rows = []
    for r in runs:
        s = r.state
        teachers = {part: _aggregate(s.teacher_eval(part)) for part in PARTS}
        points = sorted(
            (p["removed"], PARTS.index(part), part, p) for part in PARTS for p in s.curve(part) if p["removed"]
        )
        for removed, _, part, point in points:
            layers = point["layers"] if point["layers"] is not None else (s.start_layers or 0) - removed
            rows.append(
                {
                    "strategy": r.strategy,
                    "layers": layers,
                    "part": part,
                    "aggregate": point["aggregate"],
                    "teacher_aggregate": teachers[part],
                    "retention_pct": _pct(point["aggregate"], teachers[part]),
                    "params": point["params"],
                    "layers_removed": removed,
                    "model": r.model,
                    "run": r.label,
                }
            )
    return rows


# -- importance, removals, healing -------------------------------------------------------------------

IMPORTANCE_COLUMNS = ["run", "iteration", "metric", "layer", "score", "rank", "partial", "removed_here"]


def importance_rows(runs: list[ReportRun]) -> list[dict]:
    """Each layer's score in each iteration; rank 1 = the least important (the proposal's end)."""
    rows = []
    for r in runs:
        s = r.state
        removed_in = {x["iteration"]: x["layer"] for x in s.removed}
        for it in sorted(s.importance):
            scores = s.scores(it)
            ranked = sorted((v, k) for k, v in scores.items() if v is not None)
            rank = {k: i + 1 for i, (_, k) in enumerate(ranked)}
            partial = set(s.partial_layers(it))
            for layer in sorted(scores):
                rows.append(
                    {
                        "run": r.label,
                        "iteration": it,
                        "metric": s.importance[it]["metric"],
                        "layer": layer,
                        "score": scores[layer],
                        "rank": rank.get(layer),
                        "partial": int(layer in partial),
                        "removed_here": int(removed_in.get(it) == layer),
                    }
                )
    return rows


def removal_rows(runs: list[ReportRun]) -> tuple[list[str], list[dict]]:
    """The paper's Figure 10 as a table: per original layer, how many runs removed it, and in which
    iteration each run did."""
    depth = max((r.state.start_layers or 0 for r in runs), default=0)
    columns = ["layer", "count"] + [r.label for r in runs]
    when = [{x["layer"]: x["iteration"] for x in r.state.removed} for r in runs]
    rows = []
    for layer in range(depth):
        row = {"layer": layer, "count": sum(layer in w for w in when)}
        row.update({r.label: w.get(layer) for r, w in zip(runs, when)})
        rows.append(row)
    return columns, rows


TRAIN_COLUMNS = ["run", "iteration", "step", "loss"]  # then each term's columns, then TRAIN_TAIL
TRAIN_TAIL = ["lr", "grad_norm", "tokens_per_s", "heldout_loss"]


def train_rows(runs: list[ReportRun]) -> list[dict]:
    """One row a healing step: each term of the loss as ``<term>`` (unweighted) and ``<term>_term``
    (weighted; they add up to the loss), whichever terms the run logged (older runs: kl and mse)."""
    rows = []
    for r in runs:
        for step in r.state.train_curve():
            weighted, unweighted = step_terms(step)
            row = {"run": r.label, **{c: step.get(c) for c in (*TRAIN_COLUMNS[1:], *TRAIN_TAIL)}}
            for name in dict.fromkeys([*unweighted, *weighted]):
                row[name], row[f"{name}_term"] = unweighted.get(name), weighted.get(name)
            rows.append(row)
    return rows


def train_columns(rows: list[dict]) -> list[str]:
    """The columns of ``train_rows``: the terms' in the order they first appear."""
    fixed = {*TRAIN_COLUMNS, *TRAIN_TAIL}
    terms = dict.fromkeys(k for row in rows for k in row if k not in fixed)
    return [*TRAIN_COLUMNS, *terms, *TRAIN_TAIL]
