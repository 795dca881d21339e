"""Early stopping on the held-out distillation loss, and the state a mid-healing checkpoint keeps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class HealState:
    """What a mid-iteration checkpoint holds to continue exactly where it stopped."""

    step: int = 0
    optimizer: dict | None = None
    trainable: dict[str, torch.Tensor] | None = None
    early: EarlyStop | None = None

    def to_saved(self) -> dict:
        """Tensors, numbers and lists only: loadable with ``torch.load(weights_only=True)``."""
        return {
            "step": self.step,
            "optimizer": self.optimizer,
            "trainable": self.trainable,
            "early": self.early.to_saved() if self.early is not None else None,
        }

    @classmethod
    def from_saved(cls, saved: dict) -> HealState:
        early = saved.get("early")
        return cls(
            step=int(saved["step"]),
            optimizer=saved.get("optimizer"),
            trainable=saved.get("trainable"),
            early=EarlyStop.from_saved(early) if early else None,
        )


@dataclass
class EarlyStop:
    """The held-out checks of one iteration's healing: the best loss, its weights, the misses since."""

    best_loss: float
    best_step: int = 0
    misses: int = 0
    best: dict[str, torch.Tensor] | None = None  # trainable weights at the best check (None: from before healing)
    checks: list[tuple[int, float]] = field(default_factory=list)

    def update(self, step: int, loss: float, weights: Callable[[], dict[str, torch.Tensor]], min_delta: float) -> bool:
        """Record a check; True when it improved on the best by at least ``min_delta`` (relative)."""
        self.checks.append((step, loss))
        if loss < self.best_loss * (1 - min_delta):
            self.best_loss, self.best_step, self.misses, self.best = loss, step, 0, weights()
            return True
        self.misses += 1
        return False

    def to_saved(self) -> dict:
        return {
            "best_loss": self.best_loss,
            "best_step": self.best_step,
            "misses": self.misses,
            "best": self.best,
            "checks": [[s, v] for s, v in self.checks],
        }

    @classmethod
    def from_saved(cls, saved: dict) -> EarlyStop:
        return cls(
            best_loss=float(saved["best_loss"]),
            best_step=int(saved["best_step"]),
            misses=int(saved["misses"]),
            best=saved.get("best"),
            checks=[(int(s), float(v)) for s, v in saved.get("checks", [])],
        )
