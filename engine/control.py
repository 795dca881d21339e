"""The engine's voice and ears: the one event writer, commands, the decision point, pause and stop.

Every event of a run goes out through ``Controller.emit`` (the stall watchdog's clock is that one
path's clock). The runner calls ``safe_point()`` where stopping is harmless (every evaluation
batch, every training step, between phases): commands are applied there, a pause blocks there, and
a stop (a ``stop`` command, SIGTERM or SIGINT) unwinds from there as ``StopRequested`` so the runner
can save and end cleanly. Every command gets a ``command_applied`` or ``command_rejected`` event with
its id, then moves to ``commands/done/``.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import threading
import time
from dataclasses import dataclass

from engine.runlog.events import EventWriter
from engine.runlog.inbox import Command, CommandInbox
from engine.runlog.layout import RunDir

log = logging.getLogger(__name__)


class StopRequested(Exception):
    """A person or the system asked the run to stop: finish the current step, checkpoint, end."""


@dataclass
class Decision:
    layer: int  # original index
    by: str  # "auto" | "user" | "timeout" | "fixed"
    command_id: str | None = None


@dataclass
class Awaiting:
    iteration: int
    proposal: int
    remaining: list[int]
    decision: Decision | None = None


def check_notify_cmd(command: str) -> None:
    """Raise ValueError (one line) for a notify command the shell could not even split."""
    try:
        if not shlex.split(command):
            raise ValueError("notify command is empty")
    except ValueError as exc:
        raise ValueError(f"notify command {command!r}: {exc}") from None


class Controller:
    def __init__(
        self,
        run_dir,
        mode: str,
        auto_after: float | None,
        notify_cmd: str | None = None,
        poll_interval: float = 0.25,
        stall_seconds: float = 900.0,
        writer: EventWriter | None = None,
    ):
        self.rundir = RunDir(run_dir)
        self.inbox = CommandInbox(run_dir)
        self.writer = writer if writer is not None else EventWriter(self.rundir.events_file)
        self.mode = mode
        self.auto_after = auto_after
        self.notify_cmd = notify_cmd
        self.poll_interval = poll_interval
        self.paused = False
        self.stop_requested = False
        self.stop_signal: str | None = None
        self.awaiting: Awaiting | None = None
        self._candidates: list[dict] = []
        self._deadline: float | None = None
        self._last_poll = 0.0
        self.stall_seconds = stall_seconds
        self.last_event = time.monotonic()
        self._watchdog: threading.Thread | None = None
        self._closed = threading.Event()
        self._previous_handlers: dict[int, object] = {}
        self._first_signal_at = 0.0
        self._answered: set | None = None  # see _answered_ids

    # --- the one way out ----------------------------------------------------------------------
    def emit(self, type_: str, **fields) -> dict:
        self.last_event = time.monotonic()
        return self.writer.emit(type_, **fields)

    # --- signals --------------------------------------------------------------------------------
    def handle_signals(self) -> None:
        """SIGTERM (timeout, systemd, SLURM preemption, kill) and SIGINT stop the run like ``stop``.

        The handler only sets a flag: writing an event from inside a signal handler could deadlock
        on the writer's lock. A second signal ends the process at once, as it would have without us.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous_handlers[signum] = signal.signal(signum, self._on_signal)

    # One stop often arrives as several signals at once: `timeout` and SLURM signal the whole
    # process group, and the CLI and the supervisor also pass it on. Only a signal that comes later
    # than this is a second request, which ends the process at once.
    DUPLICATE_SIGNAL_S = 2.0

    def _on_signal(self, signum, frame) -> None:
        now = time.monotonic()
        if self.stop_requested and self.stop_signal:
            if now - self._first_signal_at < self.DUPLICATE_SIGNAL_S:
                return
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.stop_requested = True
        self.stop_signal = signal.Signals(signum).name
        self._first_signal_at = now

    def _restore_signals(self) -> None:
        for signum, handler in self._previous_handlers.items():
            try:
                signal.signal(signum, handler)
            except (ValueError, TypeError):
                pass
        self._previous_handlers.clear()

    # --- safe points --------------------------------------------------------------------------
    def safe_point(self, force: bool = False) -> None:
        """Apply pending commands; block while paused; raise StopRequested when asked to stop."""
        now = time.monotonic()
        if force or now - self._last_poll >= self.poll_interval:
            self._last_poll = now
            self.poll()
        while self.paused and not self.stop_requested:
            time.sleep(self.poll_interval)
            self.poll()
        if self.stop_requested:
            if self.stop_signal:
                self.emit("log", level="warning", message=f"received {self.stop_signal}: stopping at this safe point")
                self.stop_signal = "reported"
            raise StopRequested()

    def lockstep_point(self) -> None:
        """A safe point where every engine process of the run is at the same place of the recipe
        (between phases, each healing step): where several ranks agree on pause and stop (see
        ``engine.distributed.control``). One process: a safe point that reads the inbox now."""
        self.safe_point(force=True)

    def poll(self) -> None:
        for command in self.inbox.pending():
            cid = getattr(command, "id", None)
            if cid in self._answered_ids():
                # Answered by an engine that died before filing it: applying it again would, say,
                # pause the resumed run by itself. Exactly once, by id.
                self.inbox.done(command)
                continue
            reason = self.inbox.validate(command)
            if reason is None and isinstance(command, Command):
                reason = self._apply(command)
            name = getattr(command, "name", None)
            if reason is None:
                self.emit("command_applied", command_id=cid, name=name, args=command.args, by=command.by)
            else:
                self.emit("command_rejected", command_id=cid, name=name, reason=reason)
            self._answered.add(cid)
            self.inbox.done(command)

    def _answered_ids(self) -> set:
        """Ids of the commands the log has an answer to (read once, when a command first arrives)."""
        if self._answered is None:
            from engine.runlog.tailer import read_all

            answers = ("command_applied", "command_rejected")
            self._answered = {
                e.get("command_id") for e in read_all(self.rundir.events_file) if e.get("type") in answers
            }
        return self._answered

    def _apply(self, command: Command) -> str | None:
        name, args = command.name, command.args
        if name == "set_mode":
            self.mode = args["mode"]
            self.auto_after = args.get("seconds")
            if self.awaiting is not None:
                self._announce_wait()
            return None
        if name == "pause":
            if self.paused:
                return "already paused"
            self.paused = True
            return None
        if name == "resume":
            if not self.paused:
                return "not paused"
            self.paused = False
            return None
        if name == "stop":
            self.stop_requested = True
            return None
        # approve / override
        if self.awaiting is None or self.awaiting.decision is not None:
            return "no decision is awaited"
        layer = args.get("layer")
        if name == "approve" and layer is None:
            layer = self.awaiting.proposal
        if layer not in self.awaiting.remaining:
            return f"layer {layer} is not a remaining layer (remaining: {self.awaiting.remaining})"
        self.awaiting.decision = Decision(layer=layer, by="user", command_id=command.id)
        return None

    # --- the decision point -------------------------------------------------------------------
    def decide(self, iteration: int, proposal: int, remaining: list[int], candidates: list[dict]) -> Decision:
        """Auto: the proposal. Manual: wait for approve/override. auto-after: wait, then the proposal."""
        self.poll()  # a mode switch sent during scoring counts
        if self.mode == "auto":
            return Decision(proposal, "auto")
        self.awaiting = Awaiting(iteration, proposal, list(remaining))
        self._candidates = candidates
        self._announce_wait()
        try:
            while True:
                self.safe_point(force=True)
                if self.awaiting.decision is not None:
                    return self.awaiting.decision
                if self.mode == "auto":
                    return Decision(proposal, "auto")
                if self.mode == "auto-after" and self._deadline is not None and time.time() >= self._deadline:
                    return Decision(proposal, "timeout")
                time.sleep(self.poll_interval)
        finally:
            self.awaiting = None

    def _announce_wait(self) -> None:
        a = self.awaiting
        self._deadline = time.time() + float(self.auto_after) if self.mode == "auto-after" and self.auto_after else None
        self.emit(
            "awaiting_decision",
            iteration=a.iteration,
            layer=a.proposal,
            mode=self.mode,
            deadline=self._deadline,
            remaining=a.remaining,
            candidates=[c["layer"] for c in self._candidates[:10]],
        )
        if self.mode != "auto":
            self.notify(
                "awaiting_decision", f"iteration {a.iteration}: remove layer {a.proposal}? (ild approve / ild override)"
            )

    # --- notifications and the stall watchdog ---------------------------------------------------
    def notify(self, event: str, message: str) -> None:
        """Run the user's --notify-cmd through the shell with ILD_EVENT / ILD_RUN / ILD_MESSAGE set.

        Called after the event it reports is written. It never blocks the run and never stops it:
        a notifier that cannot start is a warning in the log.
        """
        if not self.notify_cmd:
            return
        env = dict(os.environ, ILD_EVENT=event, ILD_RUN=str(self.rundir.path), ILD_MESSAGE=message)
        try:
            subprocess.Popen(
                ["/bin/sh", "-c", self.notify_cmd],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except Exception as exc:
            log.warning("notify command failed: %s", exc)

    def start(self) -> None:
        self.handle_signals()
        self._start_watchdog()

    def _start_watchdog(self) -> None:
        """A stuck main thread (hung kernel, dead data loader) emits nothing: say so once per stall."""

        def watch():
            reported = False
            while not self._closed.wait(min(30.0, self.stall_seconds / 4)):
                silent = time.monotonic() - self.last_event
                if silent > self.stall_seconds and not reported and not self.paused and self.awaiting is None:
                    reported = True
                    message = f"no progress for {silent / 60:.1f} minutes"
                    try:
                        self.writer.emit("alert", level="warning", message=message, kind="stall")
                    except ValueError:
                        return  # the writer closed under us: the run is over
                    self.notify("stalled", message)
                elif silent <= self.stall_seconds:
                    reported = False

        self._watchdog = threading.Thread(target=watch, name="ild-watchdog", daemon=True)
        self._watchdog.start()

    def close(self) -> None:
        self._closed.set()
        self._restore_signals()
        self.writer.close()

    def __enter__(self) -> Controller:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
