"""A Textual widget around ``braille.render_chart``: set a spec, it redraws at its own size."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from .braille import ChartSpec, render_chart


class BrailleChart(Widget):
    DEFAULT_CSS = """
    BrailleChart { height: 1fr; min-height: 5; }
    """

    def __init__(self, *, legend: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.spec = ChartSpec()
        self.legend = legend

    def set_spec(self, spec: ChartSpec) -> None:
        self.spec = spec
        self.refresh()

    def render(self) -> Text:
        width, height = self.content_size.width, self.content_size.height
        if width <= 0 or height <= 0:
            return Text("")
        return Text("\n", no_wrap=True).join(render_chart(self.spec, width, height, self.legend))
