"""Panel navigation for the live screen: direct keys, zoom, and the compact layout of small terminals.

``1``-``4`` go to the heatmap, scores, loss and event panels; ``z`` shows the panel that has the
focus full screen (``z`` or escape again brings the layout back). A one-line tab strip names the
panels and marks the one in use, so the focus is always visible, also under ``NO_COLOR`` (reverse
video, not colour).

Below ``COMPACT_WIDTH`` columns or ``COMPACT_HEIGHT`` rows the three main panels do not fit side
by side (at 80x24 the scores ran off the right edge and the loss panel vanished): the screen takes
the ``-compact`` class and shows one main panel at a time, the one last picked, full width.
"""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Static

COMPACT_WIDTH = 100
COMPACT_HEIGHT = 36
# key -> (panel id, tab label); the main panels are the first three.
PANELS = {
    "1": ("heat-panel", "heatmap"),
    "2": ("scores-panel", "scores"),
    "3": ("loss-panel", "loss"),
    "4": ("event-log", "events"),
}
MAIN = ("heat-panel", "scores-panel", "loss-panel")


class PanelScreen(Screen):
    """The navigation half of ``LiveScreen`` (which composes ``#panel-tabs`` and the panels)."""

    BINDINGS = [
        *[Binding(key, f"panel('{key}')", label, show=False) for key, (_, label) in PANELS.items()],
        Binding("z", "zoom", "zoom"),
    ]

    active_main = "heat-panel"  # the main panel shown in the compact layout
    compact = False

    def _panel(self, panel_id: str) -> Widget:
        return self.query_one(f"#{panel_id}")

    def _panel_with_focus(self) -> str | None:
        focused = self.focused
        for panel_id, _ in PANELS.values():
            panel = self._panel(panel_id)
            if focused is not None and (focused is panel or panel in focused.ancestors):
                return panel_id
        return None

    def action_panel(self, key: str) -> None:
        panel_id, _ = PANELS[key]
        if self.maximized is not None:
            self.minimize()
        if panel_id in MAIN:
            self.active_main = panel_id
            self._apply_compact()
        panel = self._panel(panel_id)
        target = panel if panel.focusable else next((w for w in panel.query("*") if w.focusable), None)
        if target is not None:
            self.set_focus(target)
        self._update_tabs()

    def action_zoom(self) -> None:
        if self.maximized is not None:
            self.minimize()
        else:
            panel_id = self._panel_with_focus() or self.active_main
            self.maximized = self._panel(panel_id)
        self._update_tabs()

    def on_resize(self, event: events.Resize) -> None:
        compact = event.size.width < COMPACT_WIDTH or event.size.height < COMPACT_HEIGHT
        if compact != self.compact:
            self.compact = compact
            self.set_class(compact, "-compact")
            self._apply_compact()
        self.set_class(event.size.height < 30, "-short")
        self._update_tabs()

    def _apply_compact(self) -> None:
        """Compact: only the active main panel is shown; otherwise all three."""
        for panel_id in MAIN:
            self._panel(panel_id).display = not self.compact or panel_id == self.active_main
        self.query_one("#right").display = not self.compact or self.active_main != "heat-panel"

    def on_descendant_focus(self, event) -> None:
        panel_id = self._panel_with_focus()
        if panel_id in MAIN and panel_id != self.active_main:
            self.active_main = panel_id
            if self.compact:
                self._apply_compact()
        self._update_tabs()

    def _update_tabs(self) -> None:
        try:
            tabs = self.query_one("#panel-tabs", Static)
        except Exception:
            return
        current = self._panel_with_focus()
        t = Text(no_wrap=True, overflow="ellipsis")
        for key, (panel_id, label) in PANELS.items():
            on = panel_id == current
            shown = not self.compact or panel_id not in MAIN or panel_id == self.active_main
            style = Style(bold=True, reverse=True) if on else Style(dim=not shown)
            t.append(f" {key} {label}{' ▸' if on else ''} ", style)
        t.append("  ")
        t.append("z", Style(bold=True))
        t.append(" back from zoom" if self.maximized is not None else " zoom", Style(dim=True))
        if self.compact:
            t.append("  (one at a time)", Style(dim=True, italic=True))
        key = (t.plain, current)
        if key != getattr(self, "_tabs_key", None):
            self._tabs_key = key
            tabs.update(t)
