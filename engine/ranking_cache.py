"""Rankings kept across runs: the same weights scored by the same metric on the same items rank the same.

Every run of a study that scores the teacher by task drop races the same thirty candidates on the
same selection items (the first iteration's scoring is the longest of a run), and a run repeated
with other healing settings scores the same teacher again. A ranking is stored under a key made of
everything that decides it: the metric, the weights (``weights_digest``) and which original layers
they are, the selection items (``evaluator_digest``, and whether tasks share batches), the
calibration text, the teacher's weights where the metric compares against it, the batching, the
racing settings and the source of the code that scores. The whole ``Ranking`` comes back: the
importance event as it was emitted (racing's rounds included) and the per-item results of layers
the race dropped early, which an evaluation of the model without such a layer completes.
"""

from __future__ import annotations

import dataclasses

from engine.digests import code_digest, value_digest, weights_digest
from engine.score_cache import SCORING_CODE, JsonEntries, evaluator_digest
from engine.scoring import Ranking
from engine.tasks.item_scores import ITEM_COLUMNS, ItemScores

FORMAT = 1
RANKING_CODE = (*SCORING_CODE, "scoring.py", "importance", "models/surgery.py", "models/bridge.py")


class RankingCache(JsonEntries):
    def key(self, scorer) -> str:
        """The key of what ``scorer`` (an ``engine.scoring.Scorer``) would rank now."""
        from engine.models.surgery import layer_map

        evaluator = scorer.evaluator
        return value_digest(
            [
                FORMAT,
                scorer.metric,
                weights_digest(scorer.model),
                layer_map(scorer.model),
                None if evaluator is None else [evaluator_digest(evaluator), getattr(evaluator, "pack_tasks", False)],
                value_digest([dataclasses.asdict(s) for s in scorer.calibration]),
                None if scorer.teacher is None else weights_digest(scorer.teacher),
                scorer.pad_id,
                scorer.batch_tokens,
                scorer.block,
                None if scorer.racing is None else dataclasses.asdict(scorer.racing),
                code_digest(*RANKING_CODE),
            ]
        )

    def get(self, key: str) -> Ranking | None:
        stored = self.read(key)
        try:
            return _ranking(stored)
        except (TypeError, KeyError, ValueError, AttributeError):
            return None

    def put(self, key: str, ranking: Ranking) -> None:
        self.write(
            key,
            {
                "ranked": [[layer, score] for layer, score in ranking.ranked],
                "per_task": {str(layer): tasks for layer, tasks in ranking.per_task.items()},
                "event": ranking.event,
                "partial_items": {
                    str(layer): {task: dataclasses.asdict(items) for task, items in tasks.items()}
                    for layer, tasks in ranking.partial_items.items()
                },
            },
        )


def _ranking(stored: dict) -> Ranking:
    ranked = [(int(layer), float(score)) for layer, score in stored["ranked"]]
    if not ranked or not isinstance(stored["event"], dict):
        raise ValueError("an empty ranking")
    per_task = {
        int(layer): {str(task): float(score) for task, score in tasks.items()}
        for layer, tasks in stored["per_task"].items()
    }
    partial = {
        int(layer): {
            str(task): ItemScores(**{c: list(items[c]) for c in ITEM_COLUMNS}) for task, items in tasks.items()
        }
        for layer, tasks in stored["partial_items"].items()
    }
    return Ranking(ranked, per_task, stored["event"], partial)
