"""The tables ``ild ls`` and ``ild show`` print (Rich), from ``ild_tui.runs``' summaries.

Names come from run directories and logs: they go in as ``Text``, so "[red]x" is shown as it is,
not read as markup.
"""

from __future__ import annotations

import time

from rich.table import Table
from rich.text import Text

from engine.runlog.schema import REPORT, SELECT, STAGES


def fmt(value, digits=4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )


def runs_table(runs) -> Table:
    """``ild ls``: one row per run (``RunRow``)."""
    table = Table(box=None, header_style="bold")
    for column in ("run", "status", "model", "strategy", "layers", "aggregate", "best", "started", "duration"):
        table.add_column(column, justify="right" if column in ("layers", "aggregate", "best") else "left")
    for r in runs:
        table.add_row(
            Text(r.shown_name),
            r.status,
            Text(r.model),
            Text(r.strategy),
            f"{r.layers_now}/{r.start_layers}" if r.start_layers else "-",
            fmt(r.now),
            fmt(r.best),
            time.strftime("%Y-%m-%d %H:%M", time.localtime(r.started)) if r.started else "-",
            duration(r.duration),
        )
    return table


def run_heading(row, s) -> Text:
    """``ild show``'s first line: the run, its status, model, strategy and depth."""
    return Text.assemble(
        (row.name, "bold"),
        f"  {row.status}  model {s.model}  strategy {s.strategy}  "
        f"layers {row.layers_now}/{s.start_layers} (target {s.target_layers})",
    )


def iteration_table(s) -> Table:
    """``ild show``: one row per evaluation of the report part (``RunState``), per-task deltas to the
    teacher, and the selection part's aggregate beside it when the run logs one."""
    report = sorted(
        ((it, stage, rec) for (it, stage, part), rec in s.evals.items() if part == REPORT),
        key=lambda x: (x[0], STAGES.index(x[1])),
    )
    select = {(it, stage): rec for (it, stage, part), rec in s.evals.items() if part == SELECT}
    tasks: list[str] = []
    for _, _, rec in report:
        tasks += [t for t in rec["tasks"] if t not in tasks]
    table = Table(header_style="bold")
    columns = [
        "iter",
        "removed",
        "by",
        "stage",
        "layers",
        "params",
        "aggregate",
        *(["select"] if select else []),
        *tasks,
    ]
    for column in columns:
        table.add_column(column, justify="left" if column in ("by", "stage") else "right")
    teacher = s.teacher_eval() or {}
    by_iteration = {r["iteration"]: r for r in s.removed}
    for iteration, stage, record in report:
        removal = by_iteration.get(iteration, {})
        params = record.get("params")
        cells = []
        for task in tasks:
            value = record["tasks"].get(task)
            base = teacher.get("tasks", {}).get(task)
            delta = f" ({value - base:+.3f})" if stage != "teacher" and value is not None and base is not None else ""
            cells.append(f"{fmt(value, 3)}{delta}")
        chosen = [] if not select else [fmt((select.get((iteration, stage)) or {}).get("aggregate"))]
        table.add_row(
            str(iteration),
            "-" if stage == "teacher" else str(removal.get("layer", "-")),
            "-" if stage == "teacher" else str(removal.get("by") or "-"),
            stage,
            str(record.get("layers", "-")),
            f"{params / 1e6:.1f}M" if params else "-",
            fmt(record["aggregate"]),
            *chosen,
            *cells,
        )
    return table
