"""Step 1 of the method: rank the remaining layers, least important first.

One ``Ranking`` whatever the metric: the ranked original indices with their scores (lowest =
proposed), the per-task scores where the metric has them, and the fields of the ``importance``
event. Metrics that score the teacher once (``rescore`` false in the strategy) reuse that score.
The metrics themselves are registered in ``engine.runlog.strategies`` (the built-in ones live in
``engine.importance.metrics``); the ``Scorer`` holds what they may need and calls the run's.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.runlog.strategies import get_metric


@dataclass
class Ranking:
    ranked: list[tuple[int, float]]  # (original layer, score), least important first
    per_task: dict[int, dict[str, float]] = field(default_factory=dict)  # original layer -> task scores
    event: dict = field(default_factory=dict)  # fields of the importance event (metric, scores, ...)
    # original layer -> {task: ItemScores}: what racing measured of a layer it dropped early
    partial_items: dict[int, dict] = field(default_factory=dict)

    @property
    def proposal(self) -> int:
        return self.ranked[0][0]


def keyed(scores: dict[int, float] | None) -> dict[str, float]:
    return {str(k): v for k, v in sorted((scores or {}).items())}


class Scorer:
    """Scores the student as it is now, by the run's metric; what a metric did not declare it
    needs (``engine.runlog.strategies.Metric``) is None or empty here."""

    def __init__(
        self,
        metric: str,
        model,
        select_evaluator,
        calibration,
        pad_id: int,
        batch_tokens: int,
        teacher=None,
        racing=None,
        block: int = 1,
        progress: Callable | None = None,
        cache=None,
    ):
        self.metric = metric
        self.model = model
        self.evaluator = select_evaluator
        self.calibration = calibration
        self.pad_id = pad_id
        self.batch_tokens = batch_tokens
        self.teacher = teacher
        self.racing = racing
        self.block = block
        self.progress = progress
        self.cache = cache  # an engine.ranking_cache.RankingCache, or None
        self.cached = False  # whether the last ranking came from it

    def score(self) -> Ranking:
        """The ranking of the model as it is now (from the ranking cache when these weights were
        ranked by this metric on these items with these settings before)."""
        key = None
        self.cached = False
        if self.cache is not None:
            try:
                key = self.cache.key(self)
            except (RuntimeError, NotImplementedError):  # weights not all readable here (offloaded): no cache
                self.cache = None
            else:
                stored = self.cache.get(key)
                if stored is not None:
                    self.cached = True
                    return stored
        ranking = scoring_function(self.metric)(self)
        if key is not None:
            self.cache.put(key, ranking)
        return ranking

    def ranking(self, scores: dict[int, float], by_layer: dict | None = None, **extra) -> Ranking:
        """``scores`` (original layer -> score) ranked lowest first, ties by layer; ``extra`` goes
        into the importance event."""
        ranked = sorted(scores.items(), key=lambda kv: (kv[1], kv[0]))
        return Ranking(ranked, by_layer or {}, {"metric": self.metric, "scores": keyed(scores), **extra})


def scoring_function(metric: str) -> Callable[[Scorer], Ranking]:
    """The registered scoring function of ``metric`` (imported on first use)."""
    module, _, name = get_metric(metric).score.partition(":")
    return getattr(importlib.import_module(module), name)


def reuse(ranking_scores: dict[int, float], mapping: list[int], metric: str) -> Ranking:
    """A one-shot strategy's ranking on the teacher, restricted to the layers still there."""
    scores = {o: ranking_scores[o] for o in mapping if o in ranking_scores}
    ranked = sorted(scores.items(), key=lambda kv: (kv[1], kv[0]))
    return Ranking(ranked, {}, {"metric": metric, "scores": keyed(scores), "reused": True})
