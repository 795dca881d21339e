"""Small modal screens: confirm, pick a mode, help.

Every dialog that can change a run or delete data is a ``GuardedModal``: it ignores each key that
was typed before it was on screen (a fast ``d`` Enter, a paste, a laggy SSH link or tmux
``send-keys`` must never answer a question nobody saw), and its default answer is Cancel.
``IldApp.on_event`` asks the screen on top whether a key is stale before routing it.
"""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, OptionList, Static
from textual.widgets.option_list import Option


def key_time() -> float:
    """The clock Textual stamps messages with (``Message.time``): monotonic, perf_counter on Windows."""
    from textual import _time

    return _time.get_time()


class GuardedModal(ModalScreen):
    """A modal that takes no key typed before it was painted.

    ``armed_at`` is set after the first refresh that shows the dialog; ``IldApp`` drops every key
    event stamped earlier (``stale``). Mouse clicks are not affected: one cannot click a button
    that is not on screen.
    """

    armed_at: float = float("inf")

    def on_mount(self) -> None:
        self.call_after_refresh(self._arm)

    def _arm(self) -> None:
        self.armed_at = key_time()

    @property
    def armed(self) -> bool:
        return self.armed_at != float("inf")

    def stale(self, event) -> bool:
        return event.time < self.armed_at


class ConfirmScreen(GuardedModal, ModalScreen[bool]):
    """Yes/no, Cancel by default: ``y`` (or the yes button) says yes; ``n``, escape and enter on
    the focused cancel button say no. ``question`` names exactly what will happen."""

    BINDINGS = [
        Binding("y", "answer(True)", "yes"),
        Binding("n,escape", "answer(False)", "no"),
    ]

    def __init__(self, question: str, yes: str = "yes", no: str = "cancel", detail: str = "") -> None:
        super().__init__()
        self.question = question
        self.detail = detail
        self.yes = yes
        self.no = no

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="dialog"):
            yield Label(self.question, id="question")
            if self.detail:
                yield Label(self.detail, id="detail", classes="hint")
            with Horizontal(classes="buttons"):
                yield Button(f"{self.yes} (y)", variant="warning", id="yes")
                yield Button(f"{self.no} (n, enter)", variant="default", id="no")

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)


class ModeScreen(GuardedModal, ModalScreen["tuple[str, float | None] | None"]):
    """manual / auto / auto-after N seconds. It opens on the current mode, and picking the mode the
    run already has (or escape) changes nothing: the default is no change."""

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
            yield Label(f"Decision mode (now: {self.current}; picking it again changes nothing)", id="question")
            yield OptionList(
                *[
                    Option(f"{i + 1}  {text}" + ("  (now)" if mode == self.current else ""), id=mode)
                    for i, (mode, text) in enumerate(self.MODES)
                ],
                id="modes",
            )
            with Horizontal(id="seconds-row"):
                yield Label("auto-after seconds ")
                yield Input(str(int(self.seconds)) if self.seconds else "120", id="seconds", type="number")
            yield Label("enter picks · 1/2/3 · escape cancels", classes="hint")

    def on_mount(self) -> None:
        super().on_mount()
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
            if mode == self.current and secs == self.seconds:
                self.dismiss(None)
                return
            self.dismiss((mode, secs))
        elif mode == self.current:
            self.dismiss(None)  # the default: nothing changes
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


class SpaceCheckbox(Checkbox, inherit_bindings=False):
    """A checkbox that only space toggles: enter stays the dialog's "go" key."""

    BINDINGS = [Binding("space", "toggle_button", "toggle", show=False)]


class ReportScreen(GuardedModal, ModalScreen["tuple[str, bool] | None"]):
    """Where to write a report of the marked runs, and whether to time the models. Enter writes
    (also from the checkbox, which space toggles)."""

    BINDINGS = [Binding("escape", "cancel", "cancel"), Binding("enter", "write", "write", show=False)]

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
            yield SpaceCheckbox(
                "also time the teacher and each student (loads every model; space toggles)", False, id="report-measure"
            )
            with Horizontal(classes="buttons"):
                yield Button("write (enter)", variant="primary", id="write")
                yield Button("cancel (escape)", variant="default", id="cancel")

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#report-dir", Input).focus()

    def action_write(self) -> None:
        self._write()

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
        "Asks first (Cancel is the default; keys typed before the question shows are ignored)",
        [
            ("a  o  enter", "approve / override a removal: names the layer and the depth after it"),
            ("X", "stop the run (it checkpoints; `ild resume` continues it)"),
            ("m", "change the decision mode (picking the current one changes nothing)"),
            ("d", "move a run to the trash (`ild restore RUN` brings it back)"),
            ("", "approve_one_key = true in config.toml makes `a` act at once"),
        ],
    ),
    (
        "Live run",
        [
            ("1 2 3 4", "go to the heatmap, scores, loss, events panel (the tab strip marks it ▸)"),
            ("z", "zoom: the focused panel full screen; z or escape again to go back"),
            ("", "below 100x36 one main panel shows at a time: 1 2 3 switch"),
            ("↑ ↓ ← →  h j k l", "move the heatmap cursor: layer / iteration"),
            ("n", "heatmap colour: rank per iteration, min-max per iteration, global"),
            ("g", "heatmap shade glyphs ░▒▓█ (automatic on NO_COLOR and 256 colours)"),
            ("s", "loss smoothing: off, debiased EMA 0.6 / 0.9 / 0.97 / 0.99"),
            ("y", "loss log scale"),
            ("a", "approve the proposed layer (asks first)"),
            ("o  enter", "override: remove the layer under the heatmap cursor, or the one"),
            ("", "highlighted in the candidate list when that has focus (asks first)"),
            ("m", "decision mode: manual, auto, auto-after N seconds (asks)"),
            ("p", "pause / resume the engine"),
            ("X", "stop the run (asks first)"),
            ("", "a o m p X only while an engine runs the run (a dead run: `ild resume` first)"),
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
            ("d", "move the run to the trash (asks first; never a live one)"),
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
