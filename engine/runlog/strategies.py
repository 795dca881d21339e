"""The strategies, as presets over importance metric, re-scoring, bridging and healing.

In ``engine.runlog`` (standard library only) so that the CLI and the dashboard read the same
table as the engine: no client keeps its own list of names.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Strategy:
    name: str
    importance: str  # "bi" | "angular" | "task_drop" | "loss_nll" | "loss_kl" | "position" | "block_distance"
    rescore: bool  # re-score the student every iteration (False: one shot on the teacher)
    heal: bool  # distil the student against the teacher after each removal
    summary: str
    bridge: bool = False  # replace each removed layer by a least-squares linear map fused into the layer before
    heal_settings: dict = field(default_factory=dict)  # the strategy's own healing defaults (``--set heal.*`` wins)


STRATEGIES = {
    s.name: s
    for s in (
        Strategy("shortgpt", "bi", False, False, "Block Influence once on the teacher; remove the lowest"),
        Strategy("iterative-bi", "bi", True, False, "Block Influence re-scored after every removal"),
        Strategy("iterative-bi-distill", "bi", True, True, "iterative Block Influence, healed by distillation"),
        Strategy("iterative-pruning", "task_drop", True, False, "task-score drop re-scored after every removal"),
        Strategy("iterative-distill", "task_drop", True, True, "the paper's method: task drop + distillation"),
        Strategy(
            "reverse-order",
            "position",
            False,
            True,
            "remove the last layers before the final one; heal the LM head and the last three layers (Lu et al., ICLR 2026)",
            # On a tied head (SmolLM2) the last three layers only: untying healed more (healing
            # ablation, layers 28, 27, 26: 61.3 % against 58.9 % of the teacher) but the student
            # then outweighs the teacher by the head's vocabulary x hidden matrix (+21 % here).
            # lr 1e-4, as measured: the default 3e-4 was measured on two trainable layers, and four
            # went unstable at 3e-4 (grad norm to 428, early stop at step 32).
            heal_settings={"trainable": "last", "trainable_k": 3, "train_head": "untied", "lr": 1e-4},
        ),
        Strategy(
            "replaceme",
            "block_distance",
            False,
            False,
            "training-free: the most redundant block, each layer replaced by a least-squares linear map (ReplaceMe)",
            bridge=True,
        ),
        Strategy(
            "iterative-distill-bridge",
            "task_drop",
            True,
            True,
            "the paper's method, healing from a least-squares linear bridge fused at each removal",
            bridge=True,
        ),
    )
}
DEFAULT_STRATEGY = "iterative-distill"
IMPORTANCE_METRICS = ("task_drop", "bi", "angular", "loss_nll", "loss_kl", "position", "block_distance")


class UnknownStrategy(ValueError):
    pass


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise UnknownStrategy(f"unknown strategy '{name}' (known: {', '.join(STRATEGIES)})") from None
