"""The live screen's steering: the keys that send the engine a command, and the questions they ask.

Every key here is offered only while an engine runs the run (``check_action``): a dead, stopped or
finished run takes no command from a dashboard, so nothing waits in the inbox to act, unseen, at
the next resume. Approve (unless ``approve_one_key``), override and stop ask first, naming exactly
what will happen; the mode picker is the question for a mode change.
"""

from __future__ import annotations

from textual.binding import Binding

from engine.runlog.inbox import send_command

from .decision import DecisionPanel
from .heatmap import Heatmap
from .panels import PanelScreen


class SteeringScreen(PanelScreen):
    """The command half of ``LiveScreen``, which provides ``model``, ``alive``, ``run_dir`` and drawing."""

    BINDINGS = [
        Binding("a", "approve", "approve"),
        Binding("o", "override", "override"),
        Binding("m", "mode", "mode"),
        Binding("p", "pause", "pause"),
        Binding("p", "resume_engine", "resume"),  # the one of the two that applies is offered
        Binding("X", "stop", "stop run"),
    ]

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
