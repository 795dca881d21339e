"""The event log pane: a Line-API view over the model's bounded deque of readable lines.

It renders only the visible lines, so attaching to a long run costs nothing here, and appending
a line is a list append plus a refresh. It follows the end unless the user scrolled up.
"""

from __future__ import annotations

from rich.segment import Segment
from rich.style import Style
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from .header import fmt_clock
from .model import LogLine

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

    def __init__(self, max_lines: int = 1000, **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_lines = max_lines
        self.rows: list[tuple[str, str, Style]] = []
        self._widest = 0
        self._stick = True  # follow the end until the user scrolls up

    def add(self, lines: list[LogLine], bad: str | None = None, warn: str | None = None) -> None:
        for line in lines:
            style = LEVEL_STYLE.get(line.level, Style())
            if line.level == "error" and bad:
                style = Style(color=bad, bold=True)
            elif line.level == "warning" and warn:
                style = Style(color=warn)
            stamp = fmt_clock(line.t) if line.t is not None else "--:--:--"
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
