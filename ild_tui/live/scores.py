"""The scores panel: the aggregate across iterations against the teacher's, and the per-task table.

Every headline number is the *report* part of the evaluation (held-out items and the report suite,
never used to choose a layer). Runs that also log the *select* part (the items that chose the
layers) get it as a second, thinner line, so a gap between the two - selection overfitting its
own items - shows at a glance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.style import Style
from rich.text import Text
from textual.containers import Vertical
from textual.widgets import DataTable

from engine.runlog.fold import RunState
from engine.runlog.schema import REPORT, SELECT

from ..widgets.braille import Series
from ..widgets.charts import BrailleChart, aggregate_chart

if TYPE_CHECKING:
    from .model import LiveModel


def _finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)


@dataclass
class ScoresData:
    teacher: float | None
    teacher_tasks: dict[str, float | None]
    removal: list[tuple[int, float]]  # (iteration, aggregate) after removal
    healing: list[tuple[int, float]]  # after healing
    best_path: list[tuple[int, float]]  # the model each iteration ended with, from 0 = the teacher
    latest: dict | None
    latest_label: str
    tasks: list[str]
    select_path: list[tuple[int, float]]  # best_path of the select part (empty in runs that do not log it)


def final_path(state: RunState, part: str) -> list[tuple[int, float]]:
    """(iteration, aggregate) of the model each iteration ended with, the teacher's at 0."""
    path = [(it, rec["aggregate"]) for it, rec in state.final_evals(part).items() if _finite(rec["aggregate"])]
    teacher = state.teacher_eval(part)
    if teacher is not None and _finite(teacher["aggregate"]):
        path = [(0, teacher["aggregate"])] + [p for p in path if p[0] != 0]
    return path


def scores_view(state: RunState) -> ScoresData:
    teacher = state.teacher_eval(REPORT) or {}
    removal, healing = [], []
    for (it, stage, part), rec in state.evals.items():
        if part != REPORT or not _finite(rec["aggregate"]):
            continue
        if stage == "after_removal":
            removal.append((it, rec["aggregate"]))
        # the final healing (heal.final_tokens): a second point at the last iteration
        elif stage in ("after_healing", "after_final_healing"):
            healing.append((it, rec["aggregate"]))
    removal.sort()
    healing.sort()
    latest = state.eval_before(None, REPORT)
    label = "-"
    if latest is not None:
        label = (
            "teacher"
            if latest["stage"] == "teacher"
            else f"iter {latest['iteration']} {latest['stage'].replace('_', ' ')}"
        )
    tasks: list[str] = list(teacher.get("tasks") or {})
    for (_, _, part), rec in state.evals.items():
        if part == REPORT:
            tasks += [t for t in rec["tasks"] if t not in tasks]
    return ScoresData(
        teacher.get("aggregate"),
        dict(teacher.get("tasks") or {}),
        removal,
        healing,
        final_path(state, REPORT),
        latest,
        label,
        tasks,
        final_path(state, SELECT),
    )


class ScoresPanel(Vertical):
    """The aggregate chart and the table of task scores now against the teacher's."""

    EVENTS = frozenset({"run_started", "eval"})

    def compose(self):
        yield BrailleChart(id="score-chart")
        yield DataTable(id="task-table", show_cursor=False, zebra_stripes=True)

    def on_mount(self) -> None:
        self.border_title = "Scores"

    def draw(self, model: LiveModel) -> None:
        pal = self.app.palette
        state = model.state
        sd = scores_view(state)
        expected = None
        if state.start_layers and state.target_layers and state.start_layers > state.target_layers:
            expected = state.start_layers - state.target_layers
        x_max = max([expected or 0, *(p[0] for p in sd.best_path)])
        healed = bool(sd.healing)
        series = [
            Series(
                "path",
                pal.after_healing if healed else pal.after_removal,
                points=sd.best_path,
                kind="line",
                legend=False,
            ),
            Series("after removal", pal.after_removal, points=sd.removal, kind="points", marker="●"),
        ]
        if healed:
            series.append(Series("after healing", pal.after_healing, points=sd.healing, kind="points", marker="◆"))
        if sd.select_path:
            series.append(Series("select", pal.axis, points=sd.select_path, kind="linepoints", marker="·", z=-1))
        teachers = [sd.teacher] if sd.teacher is not None else []
        spec = aggregate_chart(series, teachers, x_max, pal, empty="no evaluations yet")
        self.query_one("#score-chart", BrailleChart).set_spec(spec)
        title = "Scores"
        latest = sd.latest or {}
        agg = latest.get("aggregate")
        if sd.teacher is not None:
            title += f" · teacher {sd.teacher:.3f}"
        if agg is not None and sd.latest_label != "teacher":
            title += f" · now {agg:.3f}"
            if sd.teacher:
                title += f" ({(agg / sd.teacher - 1) * 100:+.1f}%)"
        self.border_title = title
        self.border_subtitle = sd.latest_label
        table = self.query_one("#task-table", DataTable)
        table.clear(columns=True)
        for col, key in (("task", "task"), ("teacher", "teacher"), ("now", "now"), ("Δ", "d"), ("Δ%", "dp")):
            table.add_column(col, key=key)
        rows = [("aggregate", sd.teacher, agg)]
        latest_tasks = latest.get("tasks") or {}
        for t in sd.tasks:
            rows.append((t, sd.teacher_tasks.get(t), latest_tasks.get(t)))
        for name, base, now in rows:
            d = now - base if now is not None and base is not None else None
            style = Style() if d is None or abs(d) < 5e-4 else Style(color=pal.good if d > 0 else pal.bad)
            table.add_row(
                Text(name, style=Style(bold=name == "aggregate")),
                Text("-" if base is None else f"{base:.3f}", justify="right"),
                Text("-" if now is None else f"{now:.3f}", justify="right"),
                Text("-" if d is None else f"{d:+.3f}", style=style, justify="right"),
                Text("-" if d is None or not base else f"{d / base * 100:+.1f}%", style=style, justify="right"),
            )
