"""The controller of a run with several ranks: rank 0 speaks and listens, every rank obeys together.

Rank 0 holds the real ``Controller`` (the one event writer, the command inbox, notifications, the
stall watchdog); the other ranks' ``emit`` and ``notify`` do nothing. Commands are read on rank 0
only, so a pause, a stop or a decision reaches the others through a collective, at *lockstep
points* where every rank is at the same place of the recipe: ``lockstep_point()`` (between phases,
every healing step, after every shared evaluation step) and the decision loop. Elsewhere (an
evaluation batch, which differs per rank while the work is shared out) ``safe_point()`` only lets
rank 0 read its inbox; a pause or a stop asked for there takes effect at the next lockstep point.

Signals are the exception: SIGTERM and SIGINT reach every rank together (the launcher forwards
them), so a rank that received one stops at its own next safe point without waiting for the
others; a rank that has not yet received it learns it at the next lockstep point, which combines
every rank's flag.
"""

from __future__ import annotations

import time

from engine.control import Controller, Decision, StopRequested

from .ranks import Ranks


class _Silent:
    """The event writer of a rank that does not write."""

    def emit(self, type_: str, **fields) -> dict:
        return {}

    def close(self) -> None:
        pass


class RankedController(Controller):
    def __init__(self, ranks: Ranks, run_dir, mode: str, auto_after: float | None, **kwargs):
        if not ranks.is_main:
            kwargs["writer"] = _Silent()
        super().__init__(run_dir, mode, auto_after, **kwargs)
        self.ranks = ranks

    # --- rank 0 alone speaks ----------------------------------------------------------------------
    def poll(self) -> None:
        if self.ranks.is_main:
            super().poll()

    def notify(self, event: str, message: str) -> None:
        if self.ranks.is_main:
            super().notify(event, message)

    def _start_watchdog(self) -> None:
        if self.ranks.is_main:
            super()._start_watchdog()

    # --- safe points ------------------------------------------------------------------------------
    def safe_point(self, force: bool = False) -> None:
        """Not a lockstep point: read the inbox (rank 0); stop here only on this rank's own signal."""
        if not self.ranks.distributed:
            return super().safe_point(force)
        now = time.monotonic()
        if force or now - self._last_poll >= self.poll_interval:
            self._last_poll = now
            self.poll()
        if self.stop_signal:
            self._stop()

    def lockstep_point(self) -> None:
        """Every rank here at once: agree on stop and pause (a paused run keeps meeting here, a
        short collective every poll interval, so no collective waits out a long pause)."""
        if not self.ranks.distributed:
            return super().lockstep_point()
        while True:
            self.poll()
            states = self.ranks.gather((self.stop_requested, self.paused))
            if any(stop for stop, _ in states):
                self._stop()
            if not states[0][1]:
                return
            time.sleep(self.poll_interval)

    def _stop(self):
        self.stop_requested = True
        if self.stop_signal and self.stop_signal != "reported":
            self.emit("log", level="warning", message=f"received {self.stop_signal}: stopping at this safe point")
            self.stop_signal = "reported"
        raise StopRequested()

    # --- the decision point -----------------------------------------------------------------------
    def decide(self, iteration: int, proposal: int, remaining: list[int], candidates: list[dict]) -> Decision:
        """Rank 0 decides as one process would; every poll interval all ranks meet to learn whether
        it has (and whether to stop), so nobody waits in a collective for a person."""
        if not self.ranks.distributed:
            return super().decide(iteration, proposal, remaining, candidates)
        self.poll()
        if self.ranks.is_main and self.mode != "auto":
            from engine.control import Awaiting

            self.awaiting = Awaiting(iteration, proposal, list(remaining))
            self._candidates = candidates
            self._announce_wait()
        try:
            while True:
                outcome = self._outcome(proposal) if self.ranks.is_main else None
                states = self.ranks.gather((self.stop_requested, outcome))
                if any(stop for stop, _ in states):
                    self._stop()
                if states[0][1] is not None:
                    return states[0][1]
                time.sleep(self.poll_interval)
                self.poll()
        finally:
            self.awaiting = None

    def _outcome(self, proposal: int) -> Decision | None:
        if self.mode == "auto":
            return Decision(proposal, "auto")
        if self.paused:
            return None
        if self.awaiting is not None and self.awaiting.decision is not None:
            return self.awaiting.decision
        if self.mode == "auto-after" and self._deadline is not None and time.time() >= self._deadline:
            return Decision(proposal, "timeout")
        return None
