"""The importance panel: a heatmap of every layer's score in every iteration, a cursor inspector, a legend.

The grid is a Line-API ``ScrollView``, one row per original layer and one column per iteration:
the header row (iteration numbers) and the label column stay put while the grid scrolls, so an
80-layer model over 60 iterations still reads. A cell's colour is the layer's importance in that
iteration, normalised per iteration (default), globally, or by rank. Removed layers leave gaps;
``××`` marks the iteration a layer was removed in, ``▸◂`` the open proposal, ``~`` a score computed
on part of the items (racing stopped scoring a layer that could not win). On NO_COLOR and
16/256-colour terminals the cells fall back to ░▒▓█. What the grid holds is computed in ``heatmap_data``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widgets import Static

from ..widgets.palette import DEFAULT, SHADES, Palette, contrast, shade
from .heatmap_data import NORM_LABEL, NORMS, PARTIAL_MARK, HeatmapData, heatmap_view
from .inspector import Inspector

if TYPE_CHECKING:
    from engine.runlog.fold import RunState

    from .model import LiveModel

MIN_CELL, MAX_CELL = 2, 6


class Heatmap(ScrollView, can_focus=True):
    """Layers x iterations; the cursor picks a cell to inspect (and a layer to override with)."""

    BINDINGS = [
        Binding("up,k", "move(-1, 0)", "layer up", show=False),
        Binding("down,j", "move(1, 0)", "layer down", show=False),
        Binding("left,h", "move(0, -1)", "earlier", show=False),
        Binding("right,l", "move(0, 1)", "later", show=False),
        Binding("pageup", "move(-10, 0)", show=False),
        Binding("pagedown", "move(10, 0)", show=False),
        Binding("home", "jump('first')", show=False),
        Binding("end", "jump('last')", show=False),
        Binding("n", "cycle_norm", "normalise", show=False),
        Binding("g", "toggle_glyphs", "glyphs", show=False),
        Binding("enter", "pick", "pick layer", show=False),
    ]

    DEFAULT_CSS = """
    Heatmap { overflow-x: auto; overflow-y: auto; scrollbar-size: 1 1; }
    """

    class CursorMoved(Message):
        def __init__(self, heatmap: Heatmap, layer: int | None, iteration: int | None) -> None:
            super().__init__()
            self.heatmap = heatmap
            self.layer = layer
            self.iteration = iteration

    class Picked(Message):
        def __init__(self, heatmap: Heatmap, layer: int) -> None:
            super().__init__()
            self.heatmap = heatmap
            self.layer = layer

    class NormChanged(Message):
        def __init__(self, norm: str) -> None:
            super().__init__()
            self.norm = norm

    def __init__(self, *, norm: str = "rank", mode: str = "auto", **kwargs) -> None:
        super().__init__(**kwargs)
        self.data = HeatmapData()
        self.norm = norm if norm in NORMS else "rank"
        self.mode = mode  # auto | blocks | shades | mono
        self.force_shades = False
        self.palette: Palette = DEFAULT
        self.row = 0
        self.col = 0
        self._follow = True  # keep the cursor on the newest column as columns arrive
        self._placed = False
        self._norm_cache: tuple | None = None

    # -- data ------------------------------------------------------------------------------

    def set_data(self, data: HeatmapData) -> None:
        old_cols = len(self.data.iterations)
        old_proposal = self.data.proposal
        self.data = data
        self._norm_cache = None
        ncols = len(data.iterations)
        if ncols and (not self._placed or (self._follow and ncols != old_cols)):
            self.col = ncols - 1
            if not self._placed:
                self.row = self._default_row()
            self._placed = True
        if self._follow and data.proposal and data.proposal != old_proposal:
            self.row = self._default_row()
            if data.proposal[0] in data.iterations:
                self.col = data.iterations.index(data.proposal[0])
        self.row = max(0, min(self.row, len(data.layers) - 1))
        self.col = max(0, min(self.col, ncols - 1)) if ncols else 0
        self._update_virtual_size()
        self._scroll_cursor_visible()
        self.refresh()
        self._announce()

    @property
    def cell(self) -> int:
        """Cell width: wide while there are few iterations, never below 2 (then it scrolls)."""
        planned = max(len(self.data.iterations), self.data.planned or 0, 1)
        avail = max(self.size.width - 1 - self._label_width(), 0)
        return max(MIN_CELL, min(MAX_CELL, avail // planned))

    def _update_virtual_size(self) -> None:
        self.virtual_size = Size(
            self._label_width() + self.cell * len(self.data.iterations) + 1, len(self.data.layers) + 1
        )

    def _default_row(self) -> int:
        d = self.data
        target = None
        if d.proposal:
            target = d.proposal[1]
        elif d.raw and d.raw[-1]:
            col = d.raw[-1]
            target = min(col, key=lambda k: (col[k], k))
        if target is not None and target in d.layers:
            return d.layers.index(target)
        return 0

    def normalised(self) -> list[dict[int, float]]:
        key = (id(self.data), self.norm)
        if self._norm_cache is None or self._norm_cache[0] != key:
            self._norm_cache = (key, self.data.normalised(self.norm))
        return self._norm_cache[1]

    @property
    def cursor_layer(self) -> int | None:
        return self.data.layers[self.row] if self.data.layers else None

    @property
    def cursor_iteration(self) -> int | None:
        return self.data.iterations[self.col] if self.data.iterations else None

    def move_to_layer(self, layer: int, iteration: int | None = None, announce: bool = False) -> None:
        if layer not in self.data.layers:
            return
        self.row = self.data.layers.index(layer)
        if iteration is not None and iteration in self.data.iterations:
            self.col = self.data.iterations.index(iteration)
        self._scroll_cursor_visible()
        self.refresh()
        if announce:
            self._announce()

    # -- appearance --------------------------------------------------------------------------

    def effective_mode(self) -> str:
        if self.app.no_color:
            return "mono"
        if self.force_shades:
            return "shades"
        if self.mode != "auto":
            return self.mode
        system = getattr(self.app.console, "color_system", None)
        if system == "truecolor":
            return "blocks"
        if system == "256":
            return "shades"
        return "mono"

    def legend(self) -> Text:
        """A one-line colour scale with what the marks mean."""
        mode = self.effective_mode()
        axis = Style(color=self.palette.axis)
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append("least important ", axis)
        steps = self.palette.scale(16)
        if mode == "blocks":
            for c in steps:
                t.append(" ", Style(bgcolor=c))
        else:
            for i, ch in enumerate(SHADES):
                t.append(ch * 3, Style(color=None if mode == "mono" else steps[int(i * 15 / 3)]))
        t.append(" most", axis)
        if self.norm == "global" and (rng := self.data.range()):
            t.append(f"  ({rng[0]:.3g}..{rng[1]:.3g})", axis)
        else:
            t.append(f"  ({NORM_LABEL[self.norm]})", axis)
        t.append("   ×× removed  ▸◂ proposed", axis)
        if any(self.data.partial):
            t.append(f"  {PARTIAL_MARK} partial", axis)
        return t

    # -- rendering ---------------------------------------------------------------------------

    def _label_width(self) -> int:
        if not self.data.layers:
            return 4
        return len(str(max(self.data.layers))) + 2

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        base = self.rich_style
        d = self.data
        if not d.layers or d.fixed:
            if y == 1:
                msg = "no importance scores yet"
                if d.fixed:  # nothing scored: an empty grid would say nothing
                    removed = sorted(d.removed_at, key=lambda layer: (d.removed_at[layer], layer))
                    msg = f"fixed removals, nothing scored: {', '.join(map(str, removed))}"
                return Strip(
                    [Segment(msg.center(width)[:width], base + Style(italic=True, dim=True))], width
                ).crop_extend(0, width, base)
            return Strip.blank(width, base)
        sx, sy = self.scroll_offset
        lw = self._label_width()
        cw = self.cell
        c0 = max(0, sx // cw)
        ncols_vis = max(0, (width - lw) // cw)
        cols = range(c0, min(len(d.iterations), c0 + ncols_vis))
        dim = base + Style(dim=True)
        if y == 0:
            segs = [Segment("it".rjust(lw - 1) + " ", dim)]
            txt = []
            skip = 0
            for c in cols:
                k = d.iterations[c]
                if skip > 0:
                    skip -= 1
                    continue
                lab = str(k)
                if k == 1 or k % 5 == 0 or c == c0 or c == len(d.iterations) - 1:
                    cell = lab.ljust(cw)
                    skip = (len(cell) - 1) // cw
                    txt.append(cell[: cw * (skip + 1)])
                else:
                    txt.append(" " * cw)
            segs.append(Segment("".join(txt), dim))
            return Strip(segs).crop_extend(0, width, base)
        row = sy + y - 1
        if row >= len(d.layers):
            return Strip.blank(width, base)
        layer = d.layers[row]
        mode = self.effective_mode()
        norm = self.normalised()
        removed_at = d.removed_at.get(layer)
        lab_style = base
        if removed_at is not None:
            lab_style = base + Style(dim=True)
        if d.proposal and d.proposal[1] == layer:
            lab_style = base + Style(bold=True, color=self.palette.after_removal)
        if row == self.row:
            lab_style = lab_style + Style(reverse=True)
        segs = [Segment(str(layer).rjust(lw - 1), lab_style), Segment(" ", base)]
        for c in cols:
            it = d.iterations[c]
            v = norm[c].get(layer) if c < len(norm) else None
            marker = None
            if removed_at is not None and removed_at == it:
                marker = "××"
            if d.proposal and d.proposal == (it, layer):
                marker = "▸◂"
            partial = marker is None and c < len(d.partial) and layer in d.partial[c]
            cursor = row == self.row and c == self.col
            if v is None:
                if removed_at is not None and removed_at < it:
                    text, style = " " * cw, base
                else:
                    text, style = "·".center(cw), dim
                if cursor:
                    text, style = ("[" + " " * (cw - 2) + "]"), base + Style(reverse=True)
                segs.append(Segment(text, style))
                continue
            if mode == "blocks":
                bg = self.palette.color_at(v)
                style = Style(bgcolor=bg, color=contrast(bg))
                text = marker.center(cw) if marker else (PARTIAL_MARK.center(cw) if partial else " " * cw)
                if cursor:
                    text = (
                        ("[" + " " * (cw - 2) + "]")
                        if marker is None
                        else ("[" + marker.center(cw - 2)[: cw - 2] + "]" if cw >= 4 else marker)
                    )
                    style = style + Style(bold=True)
            else:
                g = shade(v)
                color = None if mode == "mono" else self.palette.color_at(v)
                style = base + Style(color=color)
                text = marker.center(cw) if marker else (g * (cw - 1) + PARTIAL_MARK if partial else g * cw)
                if marker:
                    style = style + Style(bold=True)
                if cursor:
                    style = style + Style(reverse=True)
            segs.append(Segment(text, style))
        return Strip(segs).crop_extend(0, width, base)

    # -- cursor --------------------------------------------------------------------------------

    def _scroll_cursor_visible(self) -> None:
        if not self.is_mounted or not self.size.width:
            return
        lw = self._label_width()
        width = self.scrollable_content_region.width
        height = self.scrollable_content_region.height
        cw = self.cell
        vis_cols = max(1, (width - lw) // cw)
        vis_rows = max(1, height - 1)
        sx, sy = self.scroll_offset
        c0 = sx // cw
        if self.col < c0:
            c0 = self.col
        elif self.col >= c0 + vis_cols:
            c0 = self.col - vis_cols + 1
        if self.row < sy:
            sy = self.row
        elif self.row >= sy + vis_rows:
            sy = self.row - vis_rows + 1
        self.scroll_to(c0 * cw, sy, animate=False, immediate=True)

    def _announce(self) -> None:
        self.post_message(self.CursorMoved(self, self.cursor_layer, self.cursor_iteration))

    def action_move(self, drow: int, dcol: int) -> None:
        d = self.data
        if not d.layers:
            return
        self.row = max(0, min(len(d.layers) - 1, self.row + drow))
        if d.iterations:
            self.col = max(0, min(len(d.iterations) - 1, self.col + dcol))
            self._follow = self.col == len(d.iterations) - 1
        self._scroll_cursor_visible()
        self.refresh()
        self._announce()

    def action_jump(self, where: str) -> None:
        if not self.data.iterations:
            return
        self.col = 0 if where == "first" else len(self.data.iterations) - 1
        self._follow = where != "first"
        self._scroll_cursor_visible()
        self.refresh()
        self._announce()

    def action_cycle_norm(self) -> None:
        self.norm = NORMS[(NORMS.index(self.norm) + 1) % len(NORMS)]
        self._norm_cache = None
        self.refresh()
        self.post_message(self.NormChanged(self.norm))

    def action_toggle_glyphs(self) -> None:
        self.force_shades = not self.force_shades
        self.refresh()
        self.post_message(self.NormChanged(self.norm))

    def action_pick(self) -> None:
        if self.cursor_layer is not None:
            self.post_message(self.Picked(self, self.cursor_layer))

    def on_click(self, event: events.Click) -> None:
        lw = self._label_width()
        sx, sy = self.scroll_offset
        if event.y < 1 or not self.data.layers:
            return
        row = sy + event.y - 1
        if row < len(self.data.layers):
            self.row = row
        if event.x >= lw and self.data.iterations:
            cw = self.cell
            col = (sx // cw) + (event.x - lw) // cw
            if col < len(self.data.iterations):
                self.col = col
                self._follow = col == len(self.data.iterations) - 1
        self.refresh()
        self._announce()

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()

    def on_resize(self) -> None:
        self._update_virtual_size()
        self._scroll_cursor_visible()


class HeatmapPanel(Vertical):
    """The heatmap, the inspector beside it and the legend under it."""

    EVENTS = frozenset(
        {
            "run_started",
            "importance",
            "proposal",
            "awaiting_decision",
            "decision",
            "layer_removed",
            "eval",
            "run_finished",
            "run_failed",
        }
    )

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._state: RunState | None = None

    def compose(self):
        with Horizontal(id="heat-body"):
            yield Heatmap(id="heatmap", norm=self.app.settings.heatmap_norm, mode=self.app.heatmap_mode)
            yield Inspector(id="inspector")
        yield Static(id="heat-legend")

    def on_mount(self) -> None:
        self.border_title = "Importance"

    @property
    def heatmap(self) -> Heatmap:
        return self.query_one(Heatmap)

    def draw(self, model: LiveModel) -> None:
        self._state = model.state
        hm = self.heatmap
        hm.palette = self.app.palette
        hm.set_data(heatmap_view(model.state))
        self._legend()
        self.inspect()

    def _legend(self) -> None:
        hm = self.heatmap
        self.query_one("#heat-legend", Static).update(hm.legend())
        metric = hm.data.metric
        self.border_title = "Importance" + (f" · {metric}" if metric else "")
        self.border_subtitle = "n normalise · g glyphs · ↑↓←→ inspect"

    def inspect(self) -> None:
        """Show the cell under the cursor in the inspector."""
        if self._state is not None:
            hm = self.heatmap
            self.query_one(Inspector).show(self._state, hm.cursor_layer, hm.cursor_iteration, self.app.palette)

    def move_to_layer(self, layer: int, iteration: int | None) -> None:
        self.heatmap.move_to_layer(layer, iteration)
        self.inspect()

    def on_heatmap_cursor_moved(self, message: Heatmap.CursorMoved) -> None:
        self.inspect()  # and on to the screen, which keeps the decision list in step

    def on_heatmap_norm_changed(self, message: Heatmap.NormChanged) -> None:
        message.stop()
        self._legend()
        self.app.settings.heatmap_norm = message.norm
        self.app.save_settings()
