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
import threading
import time
from pathlib import Path

from rich.style import Style
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Footer, Static
from textual.worker import Worker, WorkerState, get_current_worker

from engine.runlog.inbox import send_command
from engine.runlog.layout import RunDir
from engine.runlog.tailer import EventTailer

from ..widgets.header import RunHeader, theme_color
from .decision import DecisionPanel
from .eventlog import EventLog
from .heatmap import Heatmap, HeatmapPanel
from .losses import SMOOTHING_STEPS, LossPanel
from .model import LiveModel
from .panels import PanelScreen
from .scores import ScoresPanel


def replay(path: Path) -> tuple[list[dict], EventTailer]:
    """Every event in the log so far, and a tailer that follows on from there.

    Attaching to a long run is dominated by JSON parsing, and one ``json.loads`` over all
    complete lines is about twice as fast as one per line. Anything unusual (a line that is not
    one JSON object) falls back to ``EventTailer``, which owns the rules for torn and bad lines.
    """
    try:
        with open(path, "rb") as f:
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


class Loaded(Message):
    """The replayed log, folded in the tail thread; the model now belongs to the UI thread."""

    def __init__(self, model: LiveModel, alive: bool, seconds: float) -> None:
        super().__init__()
        self.model = model
        self.alive = alive
        self.seconds = seconds


class EventsBatch(Message):
    """Everything one poll of the log found (never one message per event)."""

    def __init__(self, events: list[dict]) -> None:
        super().__init__()
        self.events = events


class EngineStatus(Message):
    def __init__(self, alive: bool) -> None:
        super().__init__()
        self.alive = alive


class LiveScreen(PanelScreen):
    """One run, live or finished."""

    BINDINGS = [
        Binding("a", "approve", "approve"),
        Binding("o", "override", "override"),
        Binding("m", "mode", "mode"),
        Binding("p", "pause", "pause"),
        Binding("p", "resume_engine", "resume"),  # the one of the two that applies is offered
        Binding("X", "stop", "stop run"),
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
        events, tailer = replay(self.run_dir.events_file)
        model = LiveModel(dir_mtime=self.run_dir.mtime())
        model.apply(events)
        del events
        alive = liveness(self.run_dir)
        self.post_message(Loaded(model, alive, time.perf_counter() - started))
        del model  # the UI thread owns it from here on
        last_check = time.monotonic()
        poll = self.app.poll_interval
        while not worker.is_cancelled and not self._stop.wait(poll):
            events = tailer.poll()
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

    # -- decisions and commands -----------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        """Offer the steering keys only where they can apply: a live engine (a dead or ended run
        takes no command: `ild resume` first), and for a/o an open decision."""
        if action in ("approve", "override", "pause", "resume_engine", "stop", "mode"):
            if not self._steerable():
                return False
            state = self.model.state
            if action in ("approve", "override"):
                return state.pending_proposal is not None
            if action in ("pause", "resume_engine"):
                return state.paused == (action == "resume_engine")
        return True

    def _steerable(self) -> bool:
        return bool(self.model and self.alive is True and not self.model.state.ended)

    def _send(self, name: str, **args) -> str | None:
        state = self.model.state if self.model else None
        if state is None:
            return None
        if state.ended:
            self.notify(f"the run has {state.outcome}: nothing to send", severity="warning")
            return None
        if self.alive is not True:
            # The CLI refuses too: a command queued for a dead engine would act, unseen, the
            # moment someone resumes the run.
            self.notify(
                f"no engine runs {self.run_dir.name}: nothing sent (`ild resume {self.run_dir.name}` first)",
                severity="warning",
            )
            return None
        try:
            cid = send_command(self.run_dir, name, by="dashboard", **args)
        except (ValueError, OSError) as exc:
            self.notify(f"could not send {name}: {exc}", severity="error")
            return None
        self.model.note_sent(cid, name, args, self.app.clock())
        self.notify(f"sent {name}{' ' + str(args['layer']) if 'layer' in args else ''}", timeout=3)
        self._dirty.add(self.query_one(DecisionPanel))
        self._draw()
        return cid

    def _refuse_unless_steerable(self) -> bool:
        """True if the engine can take a command now; else say why (and False)."""
        if self._steerable():
            return True
        state = self.model.state if self.model else None
        if state is not None and state.ended:
            self.notify(f"the run has {state.outcome}: nothing to steer", severity="warning")
        else:
            self.notify(
                f"no engine runs {self.run_dir.name}: `ild resume {self.run_dir.name}` first", severity="warning"
            )
        return False

    def _open_proposal(self) -> dict | None:
        """The proposal a person may still decide, or None (with the reason shown)."""
        if not self._refuse_unless_steerable():
            return None
        pending = self.model.state.pending_proposal if self.model else None
        if not pending:
            self.notify("nothing awaits a decision", severity="warning")
            return None
        if self.model.awaiting_reply():
            self.notify("a decision was already sent; waiting for the engine", severity="warning")
            return None
        return pending

    def _removal_words(self, layer: int, iteration: int) -> str:
        """What a removal does, in the words a dialog asks with: "remove original layer 17: 29 -> 28 layers"."""
        now = self.model.state.layers_now if self.model else None
        depth = f": {now} -> {now - 1} layers" if now else ""
        return f"remove original layer {layer} in iteration {iteration}{depth}"

    def action_approve(self) -> None:
        pending = self._open_proposal()
        if pending is None:
            return
        layer = pending["layer"]
        if self.app.settings.approve_one_key:
            self._send("approve", layer=layer)
            return
        from ..screens.dialogs import ConfirmScreen

        def done(ok: bool | None) -> None:
            if ok and self._still_open(pending):
                self._send("approve", layer=layer)

        what = self._removal_words(layer, pending["iteration"])
        self.app.push_screen(
            ConfirmScreen(
                f"Approve: {what}?",
                detail="(approve_one_key = true in the dashboard's config.toml makes `a` act at once)",
                yes="approve",
            ),
            done,
        )

    def _still_open(self, pending: dict) -> bool:
        """The decision a dialog asked about is still the open one (the engine may have moved on)."""
        now = self.model.state.pending_proposal if self.model else None
        if now is None or now["iteration"] != pending["iteration"]:
            self.notify(f"iteration {pending['iteration']} was decided meanwhile: nothing sent", severity="warning")
            return False
        return True

    def action_override(self, layer: int | None = None) -> None:
        pending = self._open_proposal()
        if pending is None:
            return
        panel = self.query_one(DecisionPanel)
        if layer is None:
            layer = self._override_target()
        if layer is None:
            self.notify("pick a layer in the list or on the heatmap first", severity="warning")
            return
        proposed = pending["layer"]
        if layer == proposed:
            self.action_approve()
            return
        data = panel.data
        if data and data.candidates and layer not in {c.layer for c in data.candidates}:
            gone = layer in self.model.state.removed_layers
            why = "it was removed already" if gone else "it is not a candidate"
            self.notify(f"cannot remove layer {layer} in iteration {pending['iteration']}: {why}", severity="warning")
            return
        from ..screens.dialogs import ConfirmScreen

        def done(ok: bool | None) -> None:
            if ok and self._still_open(pending):
                self._send("override", layer=layer)

        what = self._removal_words(layer, pending["iteration"])
        self.app.push_screen(
            ConfirmScreen(f"Override: {what}, instead of the proposed layer {proposed}?", yes="override"),
            done,
        )

    def _override_target(self) -> int | None:
        """The layer `o` would remove: the list's row when the list has focus, else the heatmap cursor's."""
        panel = self.query_one(DecisionPanel)
        if panel.has_focus_within:
            return panel.selected_layer
        return self.query_one(Heatmap).cursor_layer

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

    def action_mode(self) -> None:
        from ..screens.dialogs import ModeScreen

        state = self.model.state if self.model else None
        if state is None or not self._refuse_unless_steerable():
            return

        def done(result: tuple[str, float | None] | None) -> None:
            if result:
                mode, seconds = result
                self._send("set_mode", mode=mode, **({"seconds": seconds} if mode == "auto-after" else {}))

        seconds = state.mode_seconds
        pending = state.pending_proposal or {}
        if seconds is None and pending.get("deadline") is not None:
            seconds = round(pending["deadline"] - pending["t"])  # the wait the engine announced
        if seconds is None:
            seconds = state.run_info.get("mode_seconds")
        self.app.push_screen(ModeScreen(state.mode or "auto", seconds), done)

    def action_pause(self) -> None:
        if self.model is None or not self._refuse_unless_steerable():
            return
        self._send("resume" if self.model.state.paused else "pause")

    def action_resume_engine(self) -> None:
        self.action_pause()

    def action_stop(self) -> None:
        from ..screens.dialogs import ConfirmScreen

        if self.model is None or not self._refuse_unless_steerable():
            return
        name = self.run_dir.name

        def done(ok: bool | None) -> None:
            if ok:
                self._send("stop")

        self.app.push_screen(
            ConfirmScreen(
                f"Stop run {name}: the engine finishes its current step, writes a checkpoint and exits?",
                detail=f"`ild resume {name}` continues it later from that checkpoint.",
                yes="stop the run",
            ),
            done,
        )

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
