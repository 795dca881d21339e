"""The decision panel: the engine asks which layer goes; the ranked candidates and the keys.

``decision_view`` turns the open proposal into rows: each candidate's score, the aggregate and the
task scores with it skipped, and their change against the model the iteration starts from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.style import Style
from rich.text import Text
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import DataTable, Static

from engine.runlog.fold import RunState

from ..widgets.header import fmt_duration
from ..widgets.palette import DEFAULT, Palette

if TYPE_CHECKING:
    from .model import LiveModel, SentCommand


@dataclass
class Candidate:
    rank: int
    layer: int
    score: float | None
    aggregate: float | None  # aggregate with the layer skipped, when known
    delta: float | None  # aggregate change vs before this iteration
    task_deltas: dict[str, float]  # task -> score with the layer skipped minus score before
    proposed: bool


@dataclass
class DecisionData:
    iteration: int
    layer: int | None
    mode: str | None
    deadline: float | None
    metric: str | None
    candidates: list[Candidate]
    tasks: list[str]


def decision_view(state: RunState) -> DecisionData | None:
    pending = state.pending_proposal
    if not pending:
        return None
    it = pending["iteration"]
    layer = pending["layer"]
    before = state.eval_before(it) or {}
    base_tasks = before.get("tasks") or {}
    base_agg = before.get("aggregate")
    imp = state.importance.get(it) or {}
    aggregates = imp.get("aggregates") or {}
    per_task = imp.get("per_task") or {}
    # The proposal's candidates carry scores and per-task results; awaiting_decision repeats the
    # first of them as bare layer numbers, which only stand in when there is no proposal.
    cands: list[dict] = list((state.proposals.get(it) or {}).get("candidates") or ())
    if not cands:  # no ranked list given: rank the importance scores
        scores = {k: v for k, v in state.scores(it).items() if v is not None}
        cands = [{"layer": k, "score": v} for k, v in sorted(scores.items(), key=lambda kv: (kv[1], kv[0]))]
    if not cands:
        cands = [{"layer": c} for c in pending.get("candidates", ())]
    tasks: list[str] = list(base_tasks)
    out: list[Candidate] = []
    for i, c in enumerate(cands):
        lay = c["layer"]
        key = str(lay)
        skipped = c.get("tasks")
        if skipped is None:
            skipped = {t: m[key] for t, m in per_task.items() if key in m}
        for t in skipped:
            if t not in tasks:
                tasks.append(t)
        deltas = {}
        for t, v in skipped.items():
            b = base_tasks.get(t)
            if b is not None and v is not None:
                deltas[t] = v - b
        agg = aggregates.get(key)
        if agg is None and skipped:
            vals = [v for v in skipped.values() if v is not None]
            agg = sum(vals) / len(vals) if vals else None
        delta = agg - base_agg if agg is not None and base_agg is not None else None
        out.append(Candidate(i + 1, lay, c.get("score"), agg, delta, deltas, lay == layer))
    metric = pending.get("metric") or imp.get("metric")
    return DecisionData(it, layer, pending.get("mode") or state.mode, pending.get("deadline"), metric, out, tasks)


def countdown(deadline: float | None, now: float) -> str | None:
    if deadline is None:
        return None
    left = deadline - now
    if left <= 0:
        return "deadline passed: the engine takes the proposal"
    m, s = divmod(int(left + 0.999), 60)
    return f"auto-approve in {m}:{s:02d}"


class DecisionPanel(Vertical):
    """Shown while the engine awaits a decision. ``selected_layer`` is the override target."""

    EVENTS = frozenset(
        {
            "run_started",
            "proposal",
            "awaiting_decision",
            "decision",
            "layer_removed",
            "eval",
            "command_applied",
            "command_rejected",
            "run_finished",
            "run_failed",
        }
    )

    DEFAULT_CSS = """
    DecisionPanel { height: 1fr; border: round $warning; padding: 0 1; }
    DecisionPanel > #decision-title { height: 1; }
    DecisionPanel > DataTable { height: 1fr; }
    DecisionPanel > #decision-hint { height: 1; color: $text-muted; }
    """

    class Selected(Message):
        """The user highlighted a candidate in the list."""

        def __init__(self, layer: int) -> None:
            super().__init__()
            self.layer = layer

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.data: DecisionData | None = None
        self._key: tuple | None = None
        self._expect: int | None = None
        self.border_title = "Decision needed"

    def compose(self):
        yield Static(id="decision-title")
        table = DataTable(id="candidates", cursor_type="row", zebra_stripes=False)
        yield table
        yield Static(id="decision-hint")

    @property
    def table(self) -> DataTable:
        return self.query_one("#candidates", DataTable)

    @property
    def selected_layer(self) -> int | None:
        if not self.data or not self.data.candidates:
            return None
        row = self.table.cursor_row
        if 0 <= row < len(self.data.candidates):
            return self.data.candidates[row].layer
        return None

    def select_layer(self, layer: int) -> None:
        """Highlight ``layer`` (from the heatmap cursor) without echoing a Selected message."""
        if not self.data:
            return
        for i, c in enumerate(self.data.candidates):
            if c.layer == layer:
                self._expect = layer
                if self.table.cursor_row != i:
                    self.table.move_cursor(row=i, animate=False)
                return

    def draw(self, model: LiveModel, asking: bool = True) -> None:
        """Shown with the open decision's candidates, hidden while nothing is asked (and while no
        engine runs to ask: a dead run's last question is not open to an answer)."""
        data = decision_view(model.state) if asking else None
        self.display = data is not None
        if data is not None:
            self.show(data, self.app.palette)

    def show(self, data: DecisionData, palette: Palette = DEFAULT) -> None:
        key = (
            data.iteration,
            data.layer,
            tuple((c.layer, c.score, c.delta) for c in data.candidates),
            tuple(data.tasks),
            palette.good,
            palette.bad,
        )
        self.data = data
        if key == self._key:
            return
        self._key = key
        table = self.table
        keep = self.selected_layer if table.row_count else None
        table.clear(columns=True)
        tasks = data.tasks
        table.add_column("#", key="rank")
        table.add_column("layer", key="layer")
        table.add_column(data.metric or "score", key="score")
        table.add_column("agg", key="agg")
        table.add_column("Δagg", key="dagg")
        for t in tasks:
            table.add_column(f"Δ{t[:7]}", key=f"t:{t}")

        def delta(v: float | None) -> Text:
            if v is None:
                return Text("-", style="dim", justify="right")
            style = Style(dim=True) if abs(v) < 5e-4 else Style(color=palette.good if v > 0 else palette.bad)
            return Text(f"{v:+.3f}", style=style, justify="right")

        for c in data.candidates:
            mark = Style(bold=True) if c.proposed else Style()
            cells = [
                Text(f"{c.rank}", style=mark, justify="right"),
                Text(("◆ " if c.proposed else "  ") + str(c.layer), style=mark, justify="right"),
                Text("-" if c.score is None else f"{c.score:.4g}", style=mark, justify="right"),
                Text("-" if c.aggregate is None else f"{c.aggregate:.3f}", justify="right"),
                delta(c.delta),
                *[delta(c.task_deltas.get(t)) for t in tasks],
            ]
            table.add_row(*cells, key=str(c.layer))
        target = keep if keep is not None else data.layer
        if target is not None:
            self.select_layer(target)

    def show_status(
        self,
        data: DecisionData,
        now: float,
        waiting: SentCommand | None,
        alive: bool | None,
        paused: bool = False,
        target: int | None = None,
    ) -> None:
        title = Text(no_wrap=True, overflow="ellipsis")
        title.append(f"iteration {data.iteration}: remove layer ", Style(bold=True))
        title.append(str(data.layer if data.layer is not None else "?"), Style(bold=True, reverse=True))
        title.append("?", Style(bold=True))
        mode = data.mode or "manual"
        if waiting is not None:
            args = f" {waiting.args.get('layer')}" if waiting.args.get("layer") is not None else ""
            title.append(
                f"   {waiting.name}{args} sent {fmt_duration(now - waiting.t)} ago, waiting for the engine…",
                Style(italic=True),
            )
        elif mode == "auto-after" and (cd := countdown(data.deadline, now)):
            title.append(f"   {cd}", Style(bold=True))
        title.append(f"   mode {mode}", Style(dim=True))
        if alive is False:
            title.append("   engine not running: commands wait in the inbox", Style(italic=True))
        if paused:
            title.append("   (paused)", Style(italic=True))
        self.query_one("#decision-title", Static).update(title)
        sel = target if target is not None else self.selected_layer
        candidates = {c.layer for c in data.candidates}
        hint = Text(no_wrap=True, overflow="ellipsis")
        hint.append("a", Style(bold=True))
        hint.append(f" approve {data.layer}   ")
        hint.append("o", Style(bold=True))
        if sel is None or sel == data.layer:
            hint.append(" override: pick another layer   ")
        elif sel in candidates:
            hint.append(f" override with {sel}   ")
        else:
            hint.append(f" (layer {sel} is not a candidate)   ", Style(dim=True))
        hint.append("↑↓", Style(bold=True))
        hint.append(" pick (list or heatmap)   ")
        hint.append("m", Style(bold=True))
        hint.append(" mode   ")
        hint.append("p", Style(bold=True))
        hint.append(" pause")
        self.query_one("#decision-hint", Static).update(hint)
        self.border_subtitle = f"{len(data.candidates)} candidates"

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        layer = self.selected_layer
        if layer is None or layer == self._expect:
            return
        self._expect = None
        self.post_message(self.Selected(layer))
