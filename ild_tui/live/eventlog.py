"""The event log panel: the readable lines of the run's events, newest last.

The wording of each event is the registry's (``engine.runlog.schema.describe``), so the dashboard,
the docs and the engine agree on what an event says. The pane is a Line-API view over a bounded
list: it renders only the visible lines, so attaching to a long run costs nothing here, and
appending a line is a list append plus a refresh. It follows the end unless the user scrolled up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.segment import Segment
from rich.style import Style
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from engine.runlog import schema
from engine.runlog.jsonsafe import printable

from ..widgets.header import fmt_clock, theme_color

if TYPE_CHECKING:
    from .model import LiveModel


@dataclass
class LogLine:
    seq: int
    t: float
    kind: str
    level: str
    text: str


def describe(event: dict) -> LogLine | None:
    """One readable line for a *valid* event, or None for the chatty ones (train steps, progress)."""
    said = schema.describe(event)
    if said is None:
        return None
    level, text = said
    # Segments go to the terminal as they are: a control character from a copied log is shown escaped.
    return LogLine(event["seq"], event["t"], event["type"], level, printable(text))


LEVEL_STYLE = {
    "debug": Style(dim=True),
    "notice": Style(bold=True),
    "warning": Style(color="yellow"),
    "error": Style(color="red", bold=True),
}


class EventLog(ScrollView, can_focus=True):
    DEFAULT_CSS = """
    EventLog { scrollbar-size: 1 1; }
    """

    # Every type with a line in the log (the registry says which ones are too chatty for it).
    EVENTS = frozenset(name for name, spec in schema.EVENTS.items() if spec.wording is not None)

    def __init__(self, max_lines: int = 1000, **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_lines = max_lines
        self.rows: list[tuple[str, str, Style]] = []
        self._widest = 0
        self._stick = True  # follow the end until the user scrolls up
        self._written = 0  # of the model's lines

    def on_mount(self) -> None:
        self.border_title = "Events"

    def draw(self, model: LiveModel) -> None:
        """Append the lines the model gained since the last draw."""
        new = model.lines_added - self._written
        if new <= 0:
            return
        lines = list(model.lines)[-min(new, len(model.lines)) :]
        self.add(lines, bad=self.app.palette.bad, warn=theme_color(self.app, "warning"))
        self._written = model.lines_added

    def add(self, lines: list[LogLine], bad: str | None = None, warn: str | None = None) -> None:
        for line in lines:
            style = LEVEL_STYLE.get(line.level, Style())
            if line.level == "error" and bad:
                style = Style(color=bad, bold=True)
            elif line.level == "warning" and warn:
                style = Style(color=warn)
            stamp = fmt_clock(line.t)
            self.rows.append((stamp, line.text, style))
            self._widest = max(self._widest, len(line.text) + 9)
        if len(self.rows) > self.max_lines:
            del self.rows[: len(self.rows) - self.max_lines]
        self.virtual_size = Size(self._widest, len(self.rows))
        if self._stick:
            self.call_after_refresh(self._to_end)
        self.refresh()

    def _to_end(self) -> None:
        self.scroll_to(0, self.max_scroll_y, animate=False, immediate=True)
        self._stick = True

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        self._stick = new >= self.max_scroll_y - 0.5

    def on_resize(self) -> None:
        if self._stick:
            self.call_after_refresh(self._to_end)

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        base = self.rich_style
        sx, sy = self.scroll_offset
        i = sy + y
        if i >= len(self.rows):
            return Strip.blank(width, base)
        stamp, text, style = self.rows[i]
        strip = Strip([Segment(stamp + " ", base + Style(dim=True)), Segment(text, base + style)])
        return strip.crop_extend(sx, sx + width, base)
