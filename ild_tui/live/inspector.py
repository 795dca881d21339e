"""What the heatmap cursor points at: the score, its rank, and the per-task breakdown (part of the importance panel)."""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual.widgets import Static

from engine.runlog.fold import RunState

from ..widgets.palette import DEFAULT, Palette


def inspect_text(
    state: RunState, layer: int | None, iteration: int | None, width: int = 32, palette: Palette = DEFAULT
) -> Text:
    _delta_style = delta_styler(palette)
    dim = Style(dim=True)
    bold = Style(bold=True)
    t = Text(no_wrap=True, overflow="ellipsis")
    if layer is None:
        t.append("move the cursor onto a cell", dim)
        return t
    t.append("layer ", dim)
    t.append(str(layer), bold)
    if iteration is not None:
        t.append("  iteration ", dim)
        t.append(str(iteration), bold)
    t.append("\n")
    removed = {r["layer"]: r for r in state.removed}
    rec = state.importance.get(iteration) or {}
    scores = state.scores(iteration) if iteration is not None else {}
    score = scores.get(layer)
    if score is None:
        r = removed.get(layer)
        if r is not None and iteration is not None and r["iteration"] < iteration:
            t.append(f"removed in iteration {r['iteration']}", dim)
        else:
            t.append("not scored in this iteration", dim)
        return t
    ranked = {k: v for k, v in scores.items() if v is not None}
    order = sorted(ranked, key=lambda k: (ranked[k], k))
    rank = order.index(layer) + 1
    key = str(layer)
    t.append(f"{rec.get('metric') or 'score'} ", dim)
    t.append(f"{score:.4g}", bold)
    t.append(f"\nrank {rank}/{len(order)}", bold)
    t.append(" (1 = least important)\n", dim)
    if layer in rec.get("partial", ()):
        items = rec.get("items", {}).get(key)
        t.append(f"partial ({items} items)\n" if items is not None else "partial\n", Style(italic=True))
    for name, vals in rec.get("also", {}).items():
        if vals.get(key) is not None:
            t.append(f"{name} {vals[key]:.4g}\n", dim)
    before = state.eval_before(iteration) or {}
    base_tasks = before.get("tasks") or {}
    agg = rec.get("aggregates", {}).get(key)
    if agg is not None:
        t.append("aggregate if skipped ", dim)
        t.append(f"{agg:.3f}", bold)
        b = before.get("aggregate")
        if b is not None:
            t.append(f" ({agg - b:+.3f})", _delta_style(agg - b))
        t.append("\n")
    per_task = rec.get("per_task")
    if per_task:
        t.append("task score with it skipped:\n", dim)
        name_w = min(max((len(k) for k in per_task), default=4), max(width - 18, 6))
        for task, vals in per_task.items():
            v = vals.get(key)
            if v is None:
                continue
            t.append(f" {task[:name_w]:<{name_w}} {v:6.3f}")
            b = base_tasks.get(task)
            if b is not None:
                t.append(f" {v - b:+.3f}", _delta_style(v - b))
            t.append("\n")
    r = removed.get(layer)
    if r is not None:
        by = f" by {r['by']}" if r.get("by") else ""
        t.append(f"removed in iteration {r['iteration']}{by}", Style(bold=True))
        if r.get("proposed") not in (None, layer):
            t.append(f" (proposed {r['proposed']})", dim)
    else:
        prop = state.proposals.get(iteration) or {}
        if prop.get("layer") == layer:
            t.append("proposed for removal", Style(bold=True))
    return t


def delta_styler(palette: Palette):
    def style(d: float) -> Style:
        if abs(d) < 5e-4:
            return Style(dim=True)
        return Style(color=palette.good) if d > 0 else Style(color=palette.bad)

    return style


class Inspector(Static):
    DEFAULT_CSS = """
    Inspector { width: 34; padding: 0 1; height: 1fr; border-left: vkey $panel; }
    """

    _shown: tuple | None = None

    def show(self, state: RunState, layer: int | None, iteration: int | None, palette: Palette = DEFAULT) -> None:
        self._shown = (state, layer, iteration, palette)
        self.update(inspect_text(state, layer, iteration, max(self.size.width - 2, 20), palette))

    def on_resize(self) -> None:
        # The first show() can run before layout gives the widget its width (task names would stay
        # cut to the fallback width until the cursor moved).
        if self._shown is not None:
            self.show(*self._shown)
