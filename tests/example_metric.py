"""A test-only importance metric, whole: its scoring function and its registration.

What a new metric takes: this one module (the function, and ``register_metric`` naming it with what
it needs), and a test or a run that uses it (``--importance deepest_first`` once imported). It
proposes the deepest remaining layer and records what the setup handed it, so that a test can see
that the setup builds only what a metric declares.
"""

from __future__ import annotations

from engine.models.surgery import layer_map
from engine.runlog.strategies import Metric, register_metric

SEEN: list[dict] = []  # per call: the iteration's remaining layers and what the scorer held


def score(scorer):
    mapping = layer_map(scorer.model)
    SEEN.append(
        {
            "remaining": mapping,
            "calibration": len(scorer.calibration),
            "teacher": scorer.teacher is not None,
            "suite": scorer.evaluator is not None,
        }
    )
    return scorer.ranking({layer: float(-place) for place, layer in enumerate(mapping)})


METRIC = register_metric(
    Metric("deepest_first", f"{__name__}:score", "the deepest remaining layer first", calibration=True)
)
