"""The live run screen: it composes the panels, runs the tail worker and routes the keys.

Each panel (``ild_tui.live.heatmap``, ``scores``, ``losses``, ``decision``, ``eventlog``, and the
header) owns its view and its maths and draws itself from the ``LiveModel``; it lists in
``EVENTS`` the event types that change what it shows.

Data flow (the only one): a thread worker tails ``events.jsonl``; the first poll (the replay,
possibly 100,000 events) is folded in that thread into a fresh ``LiveModel``, which is then
handed to the UI thread in one ``Loaded`` message and never touched by the thread again. Every
later poll posts one ``EventsBatch``, folded on the UI thread. A 4 Hz timer redraws only the
panels whose events arrived. Liveness (the engine's flock) is checked in the thread each second.

Nothing here decides anything: the decision panel shows what the folded log says is open, and
the keys drop commands into the inbox; the engine's ``command_applied``/``command_rejected``
reply is what the screen then shows.
"""

from __future__ import annotations

import gc
import json
import os
import threading
import time
from pathlib import Path

from rich.style import Style
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widget import Widget
from textual.widgets import Footer, Static
from textual.worker import Worker, WorkerState, get_current_worker

from engine.runlog.jsonsafe import printable
from engine.runlog.layout import RunDir
from engine.runlog.safefile import open_regular
from engine.runlog.tailer import EventTailer

from ..messages import EngineStatus, EventsBatch, Loaded
from ..widgets.header import RunHeader, theme_color
from .decision import DecisionPanel
from .eventlog import EventLog
from .heatmap import Heatmap, HeatmapPanel
from .losses import SMOOTHING_STEPS, LossPanel
from .model import LiveModel
from .scores import ScoresPanel
from .steering import SteeringScreen


def replay(path: Path) -> tuple[list[dict], EventTailer]:
    """Every event in the log so far, and a tailer that follows on from there.

    Attaching to a long run is dominated by JSON parsing, and one ``json.loads`` over all
    complete lines is about twice as fast as one per line. Anything unusual (a line that is not
    one JSON object) falls back to ``EventTailer``, which owns the rules for torn and bad lines.
    """
    try:
        with os.fdopen(open_regular(path), "rb") as f:  # never a FIFO (it would block) or a link
            data = f.read()
    except FileNotFoundError:
        return [], EventTailer(path)
    end = data.rfind(b"\n") + 1
    lines = [line for line in data[:end].split(b"\n") if line.strip()]
    try:
        events = json.loads(b"[" + b",".join(lines) + b"]")
    except (ValueError, RecursionError):
        events = None
    if events is None or len(events) != len(lines) or not all(type(e) is dict for e in events):
        tailer = EventTailer(path)
        return tailer.poll(), tailer
    return events, EventTailer(path, offset=end)


class LiveScreen(SteeringScreen):
    """One run, live or finished."""

    BINDINGS = [
        Binding("s", "smoothing", "smooth", show=False),
        Binding("y", "log_scale", "log y", show=False),
        Binding("r", "runs", "runs"),
        Binding("escape", "runs", "runs", show=False),
        Binding("f", "focus_next_panel", "focus", show=False),
    ]

    def __init__(self, run_dir: RunDir | str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        self.model: LiveModel | None = None
        self.alive: bool | None = None
        self.load_seconds: float | None = None
        self.painted = False  # True after the first full paint of the replayed state
        self._dirty: set[Widget] = set()  # panels to redraw
        self._stop = threading.Event()
        self._last_pending: int | None = None
        self._last_second = -1
        self._bindings_key: tuple | None = None
        self._frozen_at = 0

    # -- layout ----------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield RunHeader(id="run-header")
        yield Static(id="panel-tabs")
        with Horizontal(id="main"):
            yield HeatmapPanel(id="heat-panel", classes="panel")
            with Vertical(id="right"):
                yield ScoresPanel(id="scores-panel", classes="panel")
                yield LossPanel(id="loss-panel", classes="panel")
        with Horizontal(id="bottom"):
            yield DecisionPanel(id="decision")
            yield EventLog(id="event-log")
        yield Footer()

    def on_mount(self) -> None:
        # Everything that draws itself from the model, in drawing order.
        self.panels: tuple[Widget, ...] = (
            self.query_one(RunHeader),
            self.query_one(HeatmapPanel),
            self.query_one(DecisionPanel),
            self.query_one(ScoresPanel),
            self.query_one(LossPanel),
            self.query_one(EventLog),
        )
        # Panels stay hidden while the log replays: nothing to draw yet, and the replay thread
        # should not share the interpreter with a full-screen layout pass it does not need.
        self.add_class("-loading")
        self.query_one(DecisionPanel).display = False
        self.query_one(RunHeader).update(Text(f" loading {self.run_dir.path} …", style=Style(italic=True)))
        self.query_one(Heatmap).focus()
        self.app.theme_changed_signal.subscribe(self, self._on_theme)
        self.set_interval(self.app.redraw_interval, self._tick)
        self._tail()

    def on_unmount(self) -> None:
        self._stop.set()
        gc.unfreeze()  # let the collector see this run's objects again once they are dropped

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group == "tail" and event.state == WorkerState.ERROR:
            error = event.worker.error
            self.query_one(RunHeader).update(
                Text(
                    f" cannot follow {self.run_dir.path}: {error}",
                    style=Style(bold=True, color=theme_color(self.app, "error")),
                )
            )
            self.painted = True  # nothing more will come

    def _on_theme(self, _theme) -> None:
        self._dirty.update(self.panels)
        self._decision_key_reset()

    def _decision_key_reset(self) -> None:
        self.query_one(DecisionPanel)._key = None

    # -- the tail thread -------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="tail", exit_on_error=False)
    def _tail(self) -> None:
        worker = get_current_worker()
        started = time.perf_counter()
        liveness = self.app.liveness
        try:
            events, tailer = replay(self.run_dir.events_file)
        except OSError as exc:  # a directory, a FIFO or a link where the log belongs: say so, show nothing
            self.app.call_from_thread(self.app.notify, printable(str(exc)), severity="error", timeout=60)
            return
        model = LiveModel(dir_mtime=self.run_dir.mtime())
        model.apply(events)
        del events
        alive = liveness(self.run_dir)
        self.post_message(Loaded(model, alive, time.perf_counter() - started))
        del model  # the UI thread owns it from here on
        last_check = time.monotonic()
        poll = self.app.poll_interval
        while not worker.is_cancelled and not self._stop.wait(poll):
            try:
                events = tailer.poll()
            except OSError as exc:  # the log was replaced by something that is not a file
                self.app.call_from_thread(self.app.notify, printable(str(exc)), severity="error", timeout=60)
                return
            if events and not alive:
                # A new engine takes its lock before its first event: check now, or the events
                # would be shown with the last second's "no engine" (a false "engine dead").
                last_check = 0.0
            if time.monotonic() - last_check >= 1.0:
                last_check = time.monotonic()
                now_alive = liveness(self.run_dir)
                if now_alive != alive:
                    alive = now_alive
                    self.post_message(EngineStatus(alive))
            if events:
                self.post_message(EventsBatch(events))

    def on_loaded(self, message: Loaded) -> None:
        # The replayed log is long-lived: move it out of the collector's sight, so that full
        # collections (200 ms over 100,000 events) do not stall the UI later.
        gc.freeze()
        self._frozen_at = message.model.state.events_seen
        self.model = message.model
        self.alive = message.alive
        self.load_seconds = message.seconds
        pending = self.model.state.pending_proposal
        self._last_pending = pending["iteration"] if pending else None
        self.remove_class("-loading")
        self._dirty.update(self.panels)
        self._draw()
        self.call_after_refresh(self._painted)

    def _painted(self) -> None:
        self.painted = True

    def on_events_batch(self, message: EventsBatch) -> None:
        if self.model is None:
            return
        kinds = self.model.apply(message.events)
        self._dirty.update(panel for panel in self.panels if panel.EVENTS & kinds)
        if self.model.state.events_seen - self._frozen_at > 20_000:
            gc.freeze()
            self._frozen_at = self.model.state.events_seen
        pending = self.model.state.pending_proposal
        it = pending["iteration"] if pending else None
        if it is not None and it != self._last_pending:
            self.app.bell()
            if self.app.screen is not self:
                self.app.notify(
                    f"{self.model.state.name or self.run_dir.name}: the engine awaits a decision "
                    f"(iteration {it}, layer {pending['layer']})",
                    title="Decision needed",
                    timeout=10,
                )
        self._last_pending = it
        for reply in self.model.take_replies():
            name = reply.get("name")
            if reply["type"] == "command_applied":
                self.notify(f"engine applied {name}", timeout=4)
            else:
                self.notify(f"engine rejected {name}: {reply['reason']}", severity="error", timeout=8)

    def on_engine_status(self, message: EngineStatus) -> None:
        self.alive = message.alive
        self._dirty.update((self.query_one(RunHeader), self.query_one(DecisionPanel)))

    # -- drawing ---------------------------------------------------------------------------------

    def _tick(self) -> None:
        if self.model is None:
            return
        now = self.app.clock()
        second = int(now)
        if second != self._last_second:
            self._last_second = second
            self._dirty.add(self.query_one(RunHeader))  # the elapsed time
            if self.model.state.pending_proposal:
                self._dirty.add(self.query_one(DecisionPanel))  # the countdown
        if self._dirty:
            self._draw()
        self._update_tabs()  # cheap when nothing changed (escape leaves a zoom without a key of ours)

    def _draw(self) -> None:
        dirty, self._dirty = self._dirty, set()
        if self.model is None:
            return
        with self.app.batch_update():
            for panel in self.panels:
                if panel not in dirty:
                    continue
                if isinstance(panel, RunHeader):
                    self._draw_header()
                elif isinstance(panel, DecisionPanel):
                    self._draw_decision()
                else:
                    panel.draw(self.model)

    @property
    def status(self) -> str:
        if not self.model:
            return "unknown"
        return self.model.state.status(self.alive, self.app.clock())

    def _draw_header(self) -> None:
        self.query_one(RunHeader).show(
            self.model.state, self.status, self.app.clock(), self.run_dir.name, self.model.phase_detail()
        )
        self._sync_bindings()

    def _sync_bindings(self) -> None:
        """Re-render the footer only when the set of usable keys changes (it is not cheap)."""
        state = self.model.state
        key = (state.pending_proposal is not None, state.ended, self.alive, state.paused)
        if key != self._bindings_key:
            self._bindings_key = key
            self.refresh_bindings()

    def _draw_decision(self) -> None:
        """The panel draws itself; showing or hiding it also moves the layout and the focus."""
        panel = self.query_one(DecisionPanel)
        was_shown = panel.display
        panel.draw(self.model, asking=self.alive is True)
        if not panel.display:
            if was_shown:
                self.remove_class("-deciding")
                if panel.has_focus_within:
                    self.query_one(Heatmap).focus()
            self._sync_bindings()
            return
        self.add_class("-deciding")
        self._decision_status()
        if not was_shown:
            hm = self.query_one(Heatmap)
            if hm.cursor_layer is not None:
                panel.select_layer(hm.cursor_layer)
        self._sync_bindings()

    # -- decisions (the keys that send commands are in ``steering``) -----------------------------

    def _decision_status(self) -> None:
        panel = self.query_one(DecisionPanel)
        if panel.display and panel.data and self.model:
            panel.show_status(
                panel.data,
                self.app.clock(),
                self.model.awaiting_reply(),
                self.alive,
                paused=self.model.state.paused,
                target=self._override_target(),
            )

    def on_descendant_focus(self, event) -> None:
        self._decision_status()

    def on_heatmap_picked(self, message: Heatmap.Picked) -> None:
        if self.model and self.model.state.pending_proposal:
            self.action_override(message.layer)

    def on_heatmap_cursor_moved(self, message: Heatmap.CursorMoved) -> None:
        if self.model is None:
            return
        panel = self.query_one(DecisionPanel)
        if panel.display and message.layer is not None:
            panel.select_layer(message.layer)
            self._decision_status()

    def on_decision_panel_selected(self, message: DecisionPanel.Selected) -> None:
        pending = self.model.state.pending_proposal if self.model else None
        self.query_one(HeatmapPanel).move_to_layer(message.layer, pending["iteration"] if pending else None)
        self._decision_status()

    def action_smoothing(self) -> None:
        s = self.app.settings
        try:
            i = SMOOTHING_STEPS.index(s.smoothing)
        except ValueError:
            i = 0
        s.smoothing = SMOOTHING_STEPS[(i + 1) % len(SMOOTHING_STEPS)]
        self.app.save_settings()
        self._dirty.add(self.query_one(LossPanel))
        self._draw()

    def action_log_scale(self) -> None:
        s = self.app.settings
        s.log_y = not s.log_y
        self.app.save_settings()
        self._dirty.add(self.query_one(LossPanel))
        self._draw()

    def action_runs(self) -> None:
        self.app.show_runs()

    def action_focus_next_panel(self) -> None:
        self.focus_next()
