"""The ild dashboard: a thin Textual ``App`` over three screens (runs, live run, compare).

Screen stack: the runs screen is always at the bottom; ``attach`` pushes a live screen on top
of it, the runs screen pushes live and compare screens. Everything the screens show comes from
run directories through ``engine.runlog``; nothing here imports the engine proper.

Testing hooks (all keyword arguments of ``IldApp``): ``clock`` (a fixed "now" makes elapsed
times and countdowns deterministic), ``liveness`` (how engine life is checked), ``heatmap_mode``
(``auto`` picks from the terminal's colours), ``settings``/``save_settings`` (no writes to the
real user config), ``poll_interval`` and ``redraw_interval``.
"""

from __future__ import annotations

import os
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

from textual import events
from textual.app import App
from textual.binding import Binding
from textual.screen import Screen
from textual.theme import Theme

from engine.runlog.layout import RunDir
from engine.runlog.lock import is_alive

from .live.screen import LiveScreen
from .screens.compare import CompareScreen
from .screens.dialogs import HelpScreen
from .screens.runs import RunsScreen
from .settings import DEFAULT_THEME, Settings, config_dir
from .widgets.palette import DEFAULT as DEFAULT_PALETTE
from .widgets.palette import Palette

THEMES_DIR = Path(__file__).resolve().parent.parent / "themes"
_THEME_KEYS = (
    "primary",
    "secondary",
    "warning",
    "error",
    "success",
    "accent",
    "foreground",
    "background",
    "surface",
    "panel",
    "boost",
)

# Used when themes/ is not next to the package (a wheel install): the same three themes.
_FALLBACK = {
    "ild-dark": {
        "name": "ild-dark",
        "dark": True,
        "primary": "#5fafff",
        "secondary": "#8787d7",
        "accent": "#ffaf5f",
        "foreground": "#d7d7d7",
        "background": "#121212",
        "surface": "#1a1a1a",
        "panel": "#262626",
        "success": "#5fd787",
        "warning": "#ffd75f",
        "error": "#ff5f5f",
    },
    "ild-light": {
        "name": "ild-light",
        "dark": False,
        "primary": "#005fd7",
        "secondary": "#5f5faf",
        "accent": "#af5f00",
        "foreground": "#1c1c1c",
        "background": "#fafafa",
        "surface": "#f0f0f0",
        "panel": "#e4e4e4",
        "success": "#008700",
        "warning": "#af8700",
        "error": "#d70000",
        "heatmap": {"colors": ["#0d0887", "#7e03a8", "#cc4778", "#f89540", "#f0f921"]},
    },
    "ild-colorblind": {
        "name": "ild-colorblind",
        "dark": True,
        "primary": "#56b4e9",
        "secondary": "#cc79a7",
        "accent": "#e69f00",
        "foreground": "#e4e4e4",
        "background": "#101418",
        "surface": "#181c20",
        "panel": "#242a30",
        "success": "#009e73",
        "warning": "#f0e442",
        "error": "#d55e00",
        "heatmap": {"colors": ["#00224e", "#35456c", "#666970", "#948e77", "#c8b866", "#fee838"]},
        "series": {
            "loss": "#e69f00",
            "kl": "#56b4e9",
            "mse": "#cc79a7",
            "after_removal": "#d55e00",
            "after_healing": "#009e73",
            "good": "#56b4e9",
            "bad": "#e69f00",
            "runs": ["#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00"],
        },
    },
}


def load_theme_files(dirs: list[Path] | None = None) -> dict[str, tuple[Theme, Palette]]:
    """Themes from ``themes/*.toml`` and ``<user config>/themes/*.toml`` (later ones win)."""
    if dirs is None:
        dirs = [THEMES_DIR, config_dir() / "themes"]
    found: dict[str, dict] = {}
    for d in dirs:
        try:
            files = sorted(Path(d).glob("*.toml"))
        except OSError:
            continue
        for f in files:
            try:
                data = tomllib.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(data.get("primary"), str):
                found[str(data.get("name") or f.stem)] = data
    for name, data in _FALLBACK.items():
        found.setdefault(name, data)
    out = {}
    for name, data in found.items():
        try:
            theme = Theme(
                name=name,
                dark=bool(data.get("dark", True)),
                **{k: data[k] for k in _THEME_KEYS if isinstance(data.get(k), str)},
            )
        except Exception:
            continue
        out[name] = (theme, Palette.from_dict(data))
    return out


def theme_names() -> list[str]:
    return list(load_theme_files())


class IldApp(App):
    CSS_PATH = "ild.tcss"
    TITLE = "ild"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [
        Binding("question_mark", "help", "help"),
        Binding("t", "next_theme", "theme"),
        Binding("q", "quit", "quit"),
        Binding("ctrl+q", "quit", "quit", show=False),
    ]

    def __init__(
        self,
        runs_dir: str | os.PathLike = "runs",
        run: str | os.PathLike | None = None,
        *,
        theme: str | None = None,
        clock: Callable[[], float] = time.time,
        liveness: Callable[[RunDir], bool] = is_alive,
        heatmap_mode: str = "auto",
        settings: Settings | None = None,
        save_settings: bool = True,
        poll_interval: float = 0.25,
        redraw_interval: float = 0.25,
        compare: list[str] | None = None,
    ) -> None:
        self.runs_dir = Path(runs_dir)
        self.initial_run = RunDir(run) if run is not None else None
        self.initial_compare = compare
        self.clock = clock
        self.liveness = liveness
        self.heatmap_mode = heatmap_mode
        self.settings = settings if settings is not None else Settings.load()
        self._save = save_settings
        self.poll_interval = poll_interval
        self.redraw_interval = redraw_interval
        self.themes = load_theme_files()
        self._requested_theme = theme
        super().__init__()
        for t, _ in self.themes.values():
            self.register_theme(t)
        name = theme or self.settings.theme or DEFAULT_THEME
        if name not in self.available_themes:
            name = DEFAULT_THEME
        self.theme = name
        if theme and theme in self.available_themes and theme != self.settings.theme:
            self.settings.theme = theme
            self.save_settings()

    async def on_event(self, event: events.Event) -> None:
        # A key typed before the dialog on top was painted is not an answer to it (a burst such as
        # `d` Enter, a paste, tmux send-keys): drop it before any binding sees it. Both ways a key
        # reaches the app count: fresh from the terminal, and bubbling back from the widget it was
        # forwarded to (in a burst, Enter was already forwarded to the table before `d` bubbled
        # back and opened the dialog; the app checks bindings, the dialog's among them, only then).
        if isinstance(event, events.Key):
            stale = getattr(self.screen, "stale", None)
            if stale is not None and stale(event):
                return
        await super().on_event(event)

    @property
    def palette(self) -> Palette:
        entry = self.themes.get(self.theme)
        return entry[1] if entry else DEFAULT_PALETTE

    def save_settings(self) -> None:
        if self._save:
            self.settings.save()

    def get_default_screen(self) -> Screen:
        # A blank base: the runs screen is built only when shown, so attaching to a run does not
        # also compose (and scan) every run in the directory.
        return Screen(id="base")

    def on_mount(self) -> None:
        if self.initial_run is not None:
            self.push_screen(LiveScreen(self.initial_run))
        elif self.initial_compare:
            self.push_screen(CompareScreen(self.initial_compare))
        else:
            self.show_runs()

    # -- navigation ------------------------------------------------------------------------------
    # The stack is [base, runs?, live | compare, modals...]: one level below the runs screen.

    def _runs_screen(self) -> RunsScreen:
        if not self.is_screen_installed("runs"):
            self.install_screen(RunsScreen(self.runs_dir), name="runs")
        return self.get_screen("runs")

    def open_run(self, path: str | os.PathLike) -> None:
        self.push_screen(LiveScreen(RunDir(path)))

    def open_compare(self, paths: list[str]) -> None:
        self.push_screen(CompareScreen(paths))

    def show_runs(self) -> None:
        runs = self._runs_screen()
        if self.screen is runs:
            return
        if runs in self.screen_stack:
            while self.screen is not runs:
                self.pop_screen()
            return
        while len(self.screen_stack) > 1:
            self.pop_screen()
        self.push_screen(runs)

    # -- actions ---------------------------------------------------------------------------------

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_next_theme(self) -> None:
        ours = list(self.themes)
        order = [n for n in ("ild-dark", "ild-light", "ild-colorblind") if n in ours] + sorted(
            n for n in ours if n not in ("ild-dark", "ild-light", "ild-colorblind")
        )
        i = order.index(self.theme) if self.theme in order else -1
        self.theme = order[(i + 1) % len(order)]
        self.settings.theme = self.theme
        self.save_settings()
        self.notify(f"theme {self.theme}", timeout=2)
