"""Small modal screens: confirm, pick a mode, help."""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, OptionList, Static
from textual.widgets.option_list import Option


class ConfirmScreen(ModalScreen[bool]):
    """Yes/no. ``y``/enter says yes, ``n``/escape says no."""

    BINDINGS = [
        Binding("y", "answer(True)", "yes"),
        Binding("n,escape", "answer(False)", "no"),
    ]

    def __init__(self, question: str, yes: str = "yes", no: str = "no") -> None:
        super().__init__()
        self.question = question
        self.yes = yes
        self.no = no

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="dialog"):
            yield Label(self.question, id="question")
            with Horizontal(classes="buttons"):
                yield Button(f"{self.yes} (y)", variant="warning", id="yes")
                yield Button(f"{self.no} (n)", variant="default", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)


class ModeScreen(ModalScreen["tuple[str, float | None] | None"]):
    """manual / auto / auto-after N seconds."""

    BINDINGS = [
        Binding("escape", "cancel", "cancel"),
        Binding("1", "pick('manual')", "manual", show=False),
        Binding("2", "pick('auto')", "auto", show=False),
        Binding("3", "pick('auto-after')", "auto-after", show=False),
    ]

    MODES = (
        ("manual", "manual: the engine waits for a person at every removal"),
        ("auto", "auto: the engine takes its own proposal"),
        ("auto-after", "auto-after: wait, then take the proposal if nobody answered"),
    )

    def __init__(self, current: str, seconds: float | None) -> None:
        super().__init__()
        self.current = current
        self.seconds = seconds

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="dialog"):
            yield Label(f"Decision mode (now: {self.current})", id="question")
            yield OptionList(
                *[Option(f"{i + 1}  {text}", id=mode) for i, (mode, text) in enumerate(self.MODES)], id="modes"
            )
            with Horizontal(id="seconds-row"):
                yield Label("auto-after seconds ")
                yield Input(str(int(self.seconds)) if self.seconds else "120", id="seconds", type="number")
            yield Label("enter picks · 1/2/3 · escape cancels", classes="hint")

    def on_mount(self) -> None:
        ol = self.query_one(OptionList)
        ids = [m for m, _ in self.MODES]
        ol.highlighted = ids.index(self.current) if self.current in ids else 0
        ol.focus()

    def _seconds(self) -> float | None:
        try:
            v = float(self.query_one("#seconds", Input).value)
        except ValueError:
            return None
        return v if v > 0 else None

    def action_pick(self, mode: str) -> None:
        if mode == "auto-after":
            secs = self._seconds()
            if secs is None:
                self.notify("auto-after needs a positive number of seconds", severity="warning")
                self.query_one("#seconds", Input).focus()
                return
            self.dismiss((mode, secs))
        else:
            self.dismiss((mode, None))

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.action_pick(event.option.id or "manual")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_pick("auto-after")

    def action_cancel(self) -> None:
        self.dismiss(None)


class ReportScreen(ModalScreen["tuple[str, bool] | None"]):
    """Where to write a report of the marked runs, and whether to time the models. Enter writes."""

    BINDINGS = [Binding("escape", "cancel", "cancel")]

    def __init__(self, names: list[str], default_dir: str) -> None:
        super().__init__()
        self.names = names
        self.default_dir = default_dir

    def compose(self) -> ComposeResult:
        shown = ", ".join(self.names[:4]) + (f" and {len(self.names) - 4} more" if len(self.names) > 4 else "")
        with Vertical(id="dialog", classes="dialog"):
            yield Label(f"Write a report of {shown}", id="question")
            yield Label("into the directory (an earlier report there is replaced):")
            yield Input(self.default_dir, id="report-dir")
            yield Checkbox("also time the teacher and each student (loads every model)", False, id="report-measure")
            with Horizontal(classes="buttons"):
                yield Button("write (enter)", variant="primary", id="write")
                yield Button("cancel (escape)", variant="default", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#report-dir", Input).focus()

    def _write(self) -> None:
        where = self.query_one("#report-dir", Input).value.strip()
        if not where:
            self.notify("name a directory for the report", severity="warning")
            return
        self.dismiss((where, self.query_one("#report-measure", Checkbox).value))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._write()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "write":
            self._write()
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)


INTRO = (
    "Everything here is read from the run directory; the engine runs on without the dashboard, "
    "and quitting (q) only detaches. Any number of dashboards may watch one run."
)

HELP_SECTIONS: list[tuple[str, list[tuple[str, str]]]] = [
    (
        "Anywhere",
        [
            ("?", "this help"),
            ("t", "next theme: dark, light, colour-blind-safe (remembered)"),
            ("r", "runs screen"),
            ("q  ctrl+q", "quit the dashboard (the run goes on)"),
            ("tab  shift+tab", "move focus between panels"),
        ],
    ),
    (
        "Live run",
        [
            ("↑ ↓ ← →  h j k l", "move the heatmap cursor: layer / iteration"),
            ("n", "heatmap colour: rank per iteration, min-max per iteration, global"),
            ("g", "heatmap shade glyphs ░▒▓█ (automatic on NO_COLOR and 256 colours)"),
            ("s", "loss smoothing: off, debiased EMA 0.6 / 0.9 / 0.97 / 0.99"),
            ("y", "loss log scale"),
            ("a", "approve the proposed layer"),
            ("o  enter", "override: remove the layer under the heatmap cursor, or the one"),
            ("", "highlighted in the candidate list when that has focus (asks first)"),
            ("m", "decision mode: manual, auto, auto-after N seconds"),
            ("p", "pause / resume the engine"),
            ("X", "stop the run (asks first)"),
        ],
    ),
    (
        "Runs",
        [
            ("enter  o", "open the run"),
            ("space", "mark / unmark for comparison"),
            ("c", "compare the marked runs (or all shown)"),
            ("w", "write a report (HTML, PNGs, CSVs) of the marked runs (or the highlighted one)"),
            ("/", "filter by words in name, model, strategy, status"),
            ("s  S", "sort by the next column / reverse (or click a header)"),
            ("d", "delete the run (asks first; never a live one)"),
        ],
    ),
    (
        "Compare",
        [
            ("escape", "back"),
        ],
    ),
]

LEGEND = (
    "Heatmap: one row per original layer, one column per iteration; colour = the layer's importance "
    "in that iteration (dark = least important = removed first). ×× marks the iteration a layer was "
    "removed in, ▸◂ the open proposal; removed layers leave gaps. Compare: aggregate against layers "
    "removed (the paper's Figure 9) and how often each original layer was removed (Figure 10)."
)


def help_text() -> Text:
    t = Text()
    t.append("ild dashboard\n", Style(bold=True, underline=True))
    t.append(INTRO + "\n")
    for title, rows in HELP_SECTIONS:
        t.append(f"\n{title}\n", Style(bold=True))
        for key, desc in rows:
            t.append(f"  {key:<18}", Style(bold=True))
            t.append(desc + "\n")
    t.append("\n" + LEGEND, Style(dim=True))
    return t


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "close", "close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help", classes="dialog"):
            yield Static(help_text())

    def action_close(self) -> None:
        self.dismiss(None)
