"""Write a report: CSVs, PNGs and ``report.html`` for some runs, into one directory.

The directory gets a manifest (``report.json``) naming every file written, so a later report into
the same directory replaces them (and only them); a directory that is not empty and holds no
earlier report is refused, so a typo cannot litter a run directory or a home directory.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from engine.runlog.jsonsafe import printable
from engine.runlog.safefile import read_regular

from . import facts

MANIFEST = "report.json"
PAGE = "report.html"


class ReportError(Exception):
    """One line for the user."""


@dataclass
class ReportResult:
    out: Path
    page: Path
    files: list[str]
    notes: list[str] = field(default_factory=list)


def out_problem(out: Path) -> str | None:
    """Why ``out`` cannot take a report, or None."""
    if out.exists() and not out.is_dir():
        return f"--out {out} is a file"
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        return f"--out {out} is not empty and holds no earlier ild report; pick another directory"
    return None


def _clear_earlier(out: Path) -> None:
    try:
        # Never blocks on a FIFO, never follows a link; deep nesting is a RecursionError.
        names = json.loads(read_regular(out / MANIFEST, 1 << 20)).get("files", [])
    except (OSError, ValueError, AttributeError, RecursionError):
        names = []
    for name in names:
        if isinstance(name, str) and "/" not in name and "\\" not in name and name not in ("", ".", ".."):
            (out / name).unlink(missing_ok=True)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # every digit the event had
    return str(value)


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row.get(c)) for c in columns])
    return path


def write_report(
    run_paths: list[Path],
    out: Path,
    *,
    measure: bool = True,
    device: str | None = None,
    title: str | None = None,
    progress: Callable[[str], None] | None = None,
    more_sections: Callable[[Path], list[str]] | None = None,
) -> ReportResult:
    """Write the report of ``run_paths`` into ``out`` (made if missing). ``measure``: time the
    teachers and the exported students on this machine (minutes for large models).
    ``more_sections``: called with ``out`` once its tables (``summary.csv`` among them) and the page
    are written, returns HTML sections the page is written again with (a study's paired comparisons
    of its best strategies); an OSError there leaves the page without them, with a note."""
    from . import page, plots
    from .cost import COST_COLUMNS, measure_runs

    say = progress or (lambda text: None)
    out = Path(out)
    if not run_paths:
        raise ReportError("no runs to report on")
    problem = out_problem(out)
    if problem:
        raise ReportError(problem)
    now = time.time()
    runs = facts.load_runs([Path(p) for p in run_paths], now)
    for r in runs:
        if r.state.unreadable:
            raise ReportError(f"{r.label}: unreadable: {printable(r.state.unreadable)}")
    out.mkdir(parents=True, exist_ok=True)
    _clear_earlier(out)
    written: list[Path] = []

    run_rows = facts.run_rows(runs, now)
    written.append(write_csv(out / "summary.csv", facts.SUMMARY_COLUMNS, facts.summary_rows(runs)))
    written.append(write_csv(out / "runs.csv", facts.RUN_COLUMNS, run_rows))
    eval_columns, eval_rows = facts.eval_rows(runs)
    written.append(write_csv(out / "evals.csv", eval_columns, eval_rows))
    written.append(write_csv(out / "importance.csv", facts.IMPORTANCE_COLUMNS, facts.importance_rows(runs)))
    removal_columns, removal_rows = facts.removal_rows(runs)
    written.append(write_csv(out / "removals.csv", removal_columns, removal_rows))
    train = facts.train_rows(runs)
    if train:
        written.append(write_csv(out / "train_steps.csv", facts.train_columns(train), train))

    from . import lm_eval

    harness = lm_eval.rows(runs)
    if harness:
        written.append(write_csv(out / "lm_eval.csv", lm_eval.COLUMNS, harness))

    notes: list[str] = []
    cost_rows = None
    if measure:
        measured = measure_runs(runs, device, say)
        cost_rows, notes = measured.rows, measured.notes
        written.append(write_csv(out / "cost.csv", COST_COLUMNS, cost_rows))

    say("drawing the figures")
    figures = {
        "aggregate": plots.aggregate_figure(runs, out / "fig9_aggregate.png"),
        "select_report": plots.select_report_figure(runs, out / "select_vs_report.png"),
        "removals": plots.removal_figure(runs, out / "fig10_removals.png"),
        "cost": plots.cost_figure(cost_rows, out / "cost.png") if cost_rows else None,
    }
    per_run = {
        r.label: {
            "importance": plots.importance_figure(r, out / f"importance_{r.label}.png"),
            "loss": plots.loss_figure(r, out / f"loss_{r.label}.png"),
        }
        for r in runs
    }
    written += [p for p in figures.values() if p] + [p for d in per_run.values() for p in d.values() if p]

    files = [p.name for p in written]

    def write_page(extra: list[str]) -> None:
        html = page.render(
            title=title or _title(runs),
            runs=runs,
            run_rows=run_rows,
            figures=figures,
            per_run=per_run,
            tasks=facts.tasks_of(runs),
            cost_rows=cost_rows,
            notes=notes,
            files=files,
            sections=[lm_eval.section(harness), *extra],
        )
        (out / PAGE).write_text(html, encoding="utf-8")

    # The page exists before the extra sections are made (a study's pairing may score its students
    # again, minutes, and a failure there must not cost the report); it is written again with them.
    write_page([])
    names = [PAGE, *files]
    (out / MANIFEST).write_text(
        json.dumps({"files": names, "runs": [str(r.path) for r in runs], "written": now, "measured": measure}, indent=1)
        + "\n"
    )
    if more_sections:
        try:
            extra = more_sections(out)
        except OSError as exc:
            notes.append(f"the page's extra sections were not written: {exc}")
            extra = []
        write_page(extra)
    return ReportResult(out, out / PAGE, names + [MANIFEST], notes)


def _title(runs: list[facts.ReportRun]) -> str:
    models = sorted({r.model for r in runs})
    strategies = sorted({r.strategy for r in runs})
    if len(runs) == 1:
        return f"ild report: {runs[0].label} ({runs[0].strategy}, {runs[0].model})"
    return f"ild report: {', '.join(strategies)} on {', '.join(models)}"
