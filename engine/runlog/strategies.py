"""The strategies, as presets over importance metric, re-scoring and healing.

In ``engine.runlog`` (standard library only) so that the CLI and the dashboard read the same
table as the engine: no client keeps its own list of names.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Strategy:
    name: str
    importance: str  # "bi" | "angular" | "task_drop" | "loss_nll" | "loss_kl"
    rescore: bool  # re-score the student every iteration (False: one shot on the teacher)
    heal: bool  # distil the student against the teacher after each removal
    summary: str


STRATEGIES = {
    s.name: s
    for s in (
        Strategy("shortgpt", "bi", False, False, "Block Influence once on the teacher; remove the lowest"),
        Strategy("iterative-bi", "bi", True, False, "Block Influence re-scored after every removal"),
        Strategy("iterative-bi-distill", "bi", True, True, "iterative Block Influence, healed by distillation"),
        Strategy("iterative-pruning", "task_drop", True, False, "task-score drop re-scored after every removal"),
        Strategy("iterative-distill", "task_drop", True, True, "the paper's method: task drop + distillation"),
    )
}
DEFAULT_STRATEGY = "iterative-distill"
IMPORTANCE_METRICS = ("task_drop", "bi", "angular", "loss_nll", "loss_kl")


class UnknownStrategy(ValueError):
    pass


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise UnknownStrategy(f"unknown strategy '{name}' (known: {', '.join(STRATEGIES)})") from None
