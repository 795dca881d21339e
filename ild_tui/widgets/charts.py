"""A Textual widget around ``braille.render_chart``: set a spec, it redraws at its own size."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from .braille import ChartSpec, HLine, Series, render_chart


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


def aggregate_chart(
    series: list[Series],
    teachers: list[float],
    x_max: float,
    palette,
    empty: str,
    teacher_label: str = "teacher",
    legend_extra: str = "",
) -> ChartSpec:
    """The aggregate against layers removed, from 0 (the teacher) on, with each teacher's as a
    dashed line (the first one labelled): the live scores panel and the compare screen (Figure 9)."""
    return ChartSpec(
        series=series,
        hlines=[HLine(t, palette.teacher, teacher_label if k == 0 else "") for k, t in enumerate(teachers)],
        x_range=(0, max(1, x_max)),
        integer_x=True,
        axis_color=palette.axis,
        empty=empty,
        legend_extra=legend_extra,
    )
