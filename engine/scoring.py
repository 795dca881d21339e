"""Step 1 of the method: rank the remaining layers, least important first.

One ``Ranking`` whatever the metric: the ranked original indices with their scores (lowest =
proposed), the per-task scores where the metric has them, and the fields of the ``importance``
event. Metrics that score the teacher once (``rescore`` false in the strategy) reuse that score.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from engine.models.surgery import layer_map


@dataclass
class Ranking:
    ranked: list[tuple[int, float]]  # (original layer, score), least important first
    per_task: dict[int, dict[str, float]] = field(default_factory=dict)  # original layer -> task scores
    event: dict = field(default_factory=dict)  # fields of the importance event (metric, scores, ...)

    @property
    def proposal(self) -> int:
        return self.ranked[0][0]


def _keyed(scores: dict[int, float] | None) -> dict[str, float]:
    return {str(k): v for k, v in sorted((scores or {}).items())}


class Scorer:
    """Scores the student as it is now, by the run's metric."""

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

    def score(self) -> Ranking:
        mapping = layer_map(self.model)
        if self.metric == "task_drop":
            return self._task_drop(mapping)
        if self.metric in ("bi", "angular"):
            from engine.importance.scores import similarity_scores

            both = similarity_scores(self.model, self.calibration, self.pad_id, self.batch_tokens, self.progress)
            scores = {mapping[i]: v for i, v in both[self.metric].items()}
            other = "angular" if self.metric == "bi" else "bi"
            return self._ranking(scores, also={other: _keyed({mapping[i]: v for i, v in both[other].items()})})
        if self.metric in ("loss_nll", "loss_kl"):
            from engine.importance.scores import loss_drop_scores

            drops = loss_drop_scores(
                self.model,
                self.calibration,
                self.pad_id,
                kind=self.metric.removeprefix("loss_"),
                teacher=self.teacher,
                batch_tokens=self.batch_tokens,
                progress=self.progress,
            )
            return self._ranking({mapping[i]: v for i, v in drops.items()})
        if self.metric == "position":
            from engine.models.surgery import reverse_order_candidates

            order = reverse_order_candidates(mapping)
            # The score is the place in the removal order: the dashboard shows it like any other.
            return self._ranking({o: float(order.index(o)) if o in order else float(len(mapping)) for o in mapping})
        if self.metric == "block_distance":
            return self._block(mapping)
        raise ValueError(f"unknown importance metric '{self.metric}'")

    def _ranking(self, scores: dict[int, float], by_layer: dict | None = None, **extra) -> Ranking:
        ranked = sorted(scores.items(), key=lambda kv: (kv[1], kv[0]))
        return Ranking(ranked, by_layer or {}, {"metric": self.metric, "scores": _keyed(scores), **extra})

    def _task_drop(self, mapping: list[int]) -> Ranking:
        """Task drop on the selection part, racing the candidates unless ``scoring.racing`` is off.

        A layer the race dropped early keeps its estimate on the items it saw (``partial``): it is
        ranked after every fully scored layer, and its per-task scores are not an evaluation of the
        model without it (the runner evaluates that model afresh if a person picks it)."""
        from engine.importance.racing import RacingSettings, task_drop
        from engine.tasks.evaluate import aggregate

        racing = self.racing if self.racing is not None else RacingSettings(enabled=False)
        result = task_drop(self.evaluator, racing=racing, progress=self.progress)
        name = lambda i: mapping[i]
        ranked = [(mapping[i], drop) for i, drop in result.ranked()]
        by_layer = {mapping[i]: result.per_task[i] for i in result.per_task if i not in result.partial}
        by_task = {
            task: {str(mapping[i]): result.per_task[i][task] for i in result.per_task}
            for task in self.evaluator.task_names
        }
        event = {
            "metric": self.metric,
            "scores": _keyed({mapping[i]: d for i, d in result.drops.items()}),
            "per_task": by_task,
            "aggregates": {str(mapping[i]): aggregate(result.per_task[i]) for i in result.per_task},
        }
        if racing.enabled:
            event.update(
                partial=sorted(mapping[i] for i in result.partial),
                items={str(mapping[i]): n for i, n in sorted(result.items.items())},
                racing={
                    "total_items": result.total_items,
                    "layer_forwards": result.forwards.layer_forwards,
                    "rounds": [r.as_dict(name=name) for r in result.rounds],
                },
            )
        return Ranking(ranked, by_layer, event)

    def _block(self, mapping: list[int]) -> Ranking:
        """ReplaceMe's one-shot choice: the contiguous block of ``block`` layers whose input and
        output are closest (cosine distance); its layers are proposed in order, the rest after."""
        from engine.models.bridge import block_distances

        distances = block_distances(self.model, self.block, self.calibration, self.pad_id, self.batch_tokens)
        start = min(distances, key=lambda s: (distances[s], s))
        chosen = mapping[mapping.index(start) : mapping.index(start) + self.block]
        scores = {
            o: float(chosen.index(o)) if o in chosen else float(self.block + distances.get(o, 1.0)) for o in mapping
        }
        return self._ranking(scores, block=chosen, block_distance=_keyed(distances))


def reuse(ranking_scores: dict[int, float], mapping: list[int], metric: str) -> Ranking:
    """A one-shot strategy's ranking on the teacher, restricted to the layers still there."""
    scores = {o: ranking_scores[o] for o in mapping if o in ranking_scores}
    ranked = sorted(scores.items(), key=lambda kv: (kv[1], kv[0]))
    return Ranking(ranked, {}, {"metric": metric, "scores": _keyed(scores), "reused": True})
