"""Compare runs: aggregate against layers removed (the paper's Figure 9) and how often each
original layer was removed (Figure 10), plus each run's removal order. Aggregates are the report
part's, each iteration's final one (``RunState.final_evals``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.style import Style
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import DataTable, Footer, Static

from engine.runlog.fold import RunState
from engine.runlog.jsonsafe import printable
from engine.runlog.reader import RunReader

from ..messages import Compared
from ..runs import status_label
from ..widgets.braille import Series
from ..widgets.charts import BrailleChart, aggregate_chart
from ..widgets.palette import Palette

MARKERS = "●◆■▲▼★✚◉"


@dataclass
class ComparedRun:
    path: str
    name: str
    state: RunState
    status: str

    @property
    def start_layers(self) -> int:
        return self.state.start_layers or len(self.state.initial_layers) or 0

    @property
    def teacher(self) -> float | None:
        teacher = self.state.teacher_eval()
        return teacher["aggregate"] if teacher else None

    def curve(self) -> list[tuple[int, float]]:
        """(layers removed, final aggregate of that iteration), from 0 = the teacher (``RunState.curve``)."""
        return [(p["removed"], p["aggregate"]) for p in self.state.curve()]


def removal_bars(runs: list[ComparedRun], palette: Palette, width: int, height: int) -> Text:
    """Figure 10: one bar per original layer, stacked by run (in the run's colour)."""
    n_layers = max((r.start_layers for r in runs), default=0)
    axis = Style(color=palette.axis)
    if not n_layers or height < 3:
        return Text("no layers", style=axis)
    removed_by: dict[int, list[int]] = {i: [] for i in range(n_layers)}
    for ri, r in enumerate(runs):
        for layer in r.state.removed_layers:
            if layer in removed_by:
                removed_by[layer].append(ri)
    max_count = max((len(v) for v in removed_by.values()), default=0) or 1
    gutter = len(str(max_count)) + 2
    cw = max(1, min(4, (width - gutter) // n_layers))
    bar_w = cw - 1 if cw >= 2 else cw
    rows = height - 2  # x labels + legend
    unit = max(1, rows // max_count) if max_count <= rows else 0
    lines: list[Text] = []
    for r in range(rows, 0, -1):  # r = 1 is the bottom row
        t = Text(no_wrap=True, overflow="crop")
        label = ""
        if unit:
            if r % unit == 0 and r // unit <= max_count:
                label = str(r // unit)
        elif r == rows:
            label = str(max_count)
        t.append(label.rjust(gutter - 2) + (" ┤" if label else " │"), axis)
        for layer in range(n_layers):
            who = removed_by[layer]
            if unit:
                idx = (r - 1) // unit
                if idx < len(who):
                    t.append("█" * bar_w, Style(color=palette.run_color(who[idx])))
                else:
                    t.append(" " * bar_w)
            else:
                filled = round(len(who) / max_count * rows)
                t.append(("█" * bar_w) if r <= filled else " " * bar_w, Style(color=palette.run_color(0)))
            t.append(" " * (cw - bar_w))
        lines.append(t)
    xl = [" "] * (gutter + n_layers * cw + 4)
    for layer in range(n_layers):
        if layer % 5 == 0 or layer == n_layers - 1:
            lab = str(layer)
            pos = gutter + layer * cw
            if all(c == " " for c in xl[pos : pos + len(lab) + 1]):
                for i, ch in enumerate(lab):
                    xl[pos + i] = ch
    lines.append(Text("".join(xl).rstrip(), style=axis, no_wrap=True))
    legend = Text(" " * gutter, no_wrap=True, overflow="ellipsis")
    legend.append("original layer index; bar = number of runs that removed it", axis)
    lines.append(legend)
    return Text("\n").join(lines)


def removal_map(runs: list[ComparedRun], palette: Palette) -> Text:
    """Each run's removal order: the iteration in which each original layer went (· = kept)."""
    n_layers = max((r.start_layers for r in runs), default=0)
    axis = Style(color=palette.axis)
    name_w = min(max((len(r.name) for r in runs), default=4), 28) + 3
    head = Text(" " * name_w, no_wrap=True)
    for layer in range(n_layers):
        head.append(f"{layer:>3}", axis)
    lines = [head]
    for ri, r in enumerate(runs):
        color = palette.run_color(ri)
        t = Text(no_wrap=True, overflow="crop")
        t.append(MARKERS[ri % len(MARKERS)] + " ", Style(color=color, bold=True))
        t.append(r.name[: name_w - 3].ljust(name_w - 2), Style(color=color))
        order = {rec["layer"]: rec["iteration"] for rec in r.state.removed}
        for layer in range(n_layers):
            it = order.get(layer)
            if it is None:
                t.append("  ·", axis)
            else:
                t.append(f"{it:>3}", Style(color=color, bold=True))
        lines.append(t)
    return Text("\n").join(lines)


class RemovalBars(Widget):
    DEFAULT_CSS = "RemovalBars { height: 1fr; }"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.runs: list[ComparedRun] = []

    def set_runs(self, runs: list[ComparedRun]) -> None:
        self.runs = runs
        self.refresh()

    def render(self) -> Text:
        if not self.runs:
            return Text("loading…", style=Style(italic=True))
        return removal_bars(self.runs, self.app.palette, self.content_size.width, self.content_size.height)


class CompareScreen(Screen):
    BINDINGS = [
        Binding("escape", "back", "back"),
        Binding("r", "runs", "runs"),
    ]

    def __init__(self, paths: list[str], **kwargs) -> None:
        super().__init__(**kwargs)
        self.paths = [str(p) for p in paths]
        self.runs: list[ComparedRun] = []
        self.loaded = False

    def compose(self) -> ComposeResult:
        yield Static(id="compare-title")
        # One scrolling body: on a small terminal (80x24) the table and the removal order are
        # below the charts, reachable with the arrow keys / page down instead of cut off.
        with VerticalScroll(id="compare-body"):
            with Horizontal(id="compare-charts"):
                with Vertical(id="fig9", classes="panel"):
                    yield BrailleChart(id="fig9-chart")
                with Vertical(id="fig10", classes="panel"):
                    yield RemovalBars(id="fig10-bars")
            yield DataTable(id="compare-table", show_cursor=False, zebra_stripes=True)
            with Vertical(id="order-panel", classes="panel"):
                yield Static(id="removal-map")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#fig9").border_title = "Aggregate vs layers removed (Fig. 9)"
        self.query_one("#fig10").border_title = "How often each original layer was removed (Fig. 10)"
        self.query_one("#order-panel").border_title = "Removal order: iteration each original layer was removed in"
        self.query_one("#compare-title", Static).update(
            Text(f" Compare  loading {len(self.paths)} runs…", style=Style(italic=True))
        )
        self.app.theme_changed_signal.subscribe(self, lambda _t: self._draw())
        self._load()

    @work(thread=True, exclusive=True, group="compare-load", exit_on_error=False)
    def _load(self) -> None:
        runs = []
        now = self.app.clock()
        for p in self.paths:
            reader = RunReader(p)
            reader.update()
            state = reader.state
            runs.append(
                ComparedRun(
                    p, state.name or printable(Path(p).name), state, state.status(self.app.liveness(reader.run), now)
                )
            )
        self.post_message(Compared(runs))

    def on_compared(self, message: Compared) -> None:
        self.runs = message.runs
        self.loaded = True
        self._draw()

    def _draw(self) -> None:
        if not self.runs:
            return
        pal: Palette = self.app.palette
        title = Text(no_wrap=True, overflow="ellipsis")
        title.append(" Compare ", Style(bold=True, reverse=True))
        title.append(f"  {len(self.runs)} runs  ")
        for i, r in enumerate(self.runs):
            title.append(f"{MARKERS[i % len(MARKERS)]} {r.name}  ", Style(color=pal.run_color(i), bold=True))
        self.query_one("#compare-title", Static).update(title)

        series = []
        teachers = []
        # Different teachers (another model or suite): absolute aggregates on one axis compare
        # nothing, so each run is drawn as % of its own teacher, and the chart says so.
        distinct = {(r.state.model, round(r.teacher, 6)) for r in self.runs if r.teacher is not None}
        rel = len(distinct) > 1
        for i, r in enumerate(self.runs):
            points = r.curve()
            if rel:
                points = [(x, y / r.teacher * 100) for x, y in points] if r.teacher else []
            series.append(
                Series(
                    r.name,
                    pal.run_color(i),
                    points=points,
                    kind="linepoints",
                    marker=MARKERS[i % len(MARKERS)],
                    legend=False,
                )
            )
            t = r.teacher
            if t is not None and all(abs(t - x) > 1e-9 for x in teachers):
                teachers.append(t)
        spec = aggregate_chart(
            series,
            [100.0] if rel else teachers,
            max([0] + [p[0] for s in series for p in s.points]),
            pal,
            empty="no evaluations in these runs",
            teacher_label="own teacher = 100 %" if rel else "teacher",
            legend_extra="x: layers removed · y: "
            + ("% of each run's own teacher (the teachers differ)" if rel else "aggregate"),
        )
        self.query_one("#fig9-chart", BrailleChart).set_spec(spec)
        self.query_one("#fig10-bars", RemovalBars).set_runs(self.runs)

        table = self.query_one("#compare-table", DataTable)
        table.clear(columns=True)
        columns = ("", "run", "strategy", "status", "layers", "teacher", "final", "retained", "removed (in order)")
        # Below 120 columns: the columns that tell the runs apart (the removal order panel below
        # lists what was removed, and the title bar names the strategies' runs).
        narrow = self.size.width < 120
        shown = [c for c in columns if not narrow or c not in ("strategy", "teacher", "removed (in order)")]
        for col in shown:
            table.add_column(col, key=col or "mark")
        for i, r in enumerate(self.runs):
            s = r.state
            curve = r.curve()
            teacher = r.teacher
            final = curve[-1][1] if curve and curve[-1][0] > 0 else None
            layers_now = s.layers_now
            cells = (
                Text(MARKERS[i % len(MARKERS)], style=Style(color=pal.run_color(i), bold=True)),
                Text(r.name, style=Style(bold=True)),
                s.strategy or "-",
                status_label(r.status),
                Text(f"{s.start_layers or '-'} → {layers_now if layers_now is not None else '-'}", justify="right"),
                Text("-" if teacher is None else f"{teacher:.3f}", justify="right"),
                Text("-" if final is None else f"{final:.3f}", justify="right"),
                Text("-" if final is None or not teacher else f"{final / teacher * 100:.1f}%", justify="right"),
                Text(" ".join(str(x) for x in s.removed_layers) or "-", no_wrap=True, overflow="ellipsis"),
            )
            table.add_row(*[cell for col, cell in zip(columns, cells) if col in shown])
        self.query_one("#removal-map", Static).update(removal_map(self.runs, pal))

    def on_resize(self, event) -> None:
        if self.runs:
            self._draw()  # the table's columns follow the width

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_runs(self) -> None:
        self.app.show_runs()
