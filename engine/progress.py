"""Progress of a long step (scoring, evaluating, healing) as ``phase`` events."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from engine.distributed.control import RankedController


@dataclass
class Progress:
    """Throttled progress as `phase` events (a few a second at most), and a safe point per call."""

    control: RankedController
    iteration: int = 0
    phase: str = ""
    last: float = 0.0
    interval: float = 0.5
    extra: dict = field(default_factory=dict)

    def __call__(self, what: str, done: int, total: int) -> None:
        self.control.safe_point()
        now = time.monotonic()
        if done < total and now - self.last < self.interval:
            return
        self.last = now
        self.control.emit(
            "phase", iteration=self.iteration, phase=self.phase, detail=what, done=done, total=total, **self.extra
        )

    def mark(self, what: str) -> None:
        """The start of a part of a long step, never throttled (``bench/phases.py`` times the parts
        of a healing's preparation by these)."""
        self.last = 0.0
        self(what, 0, 1)
