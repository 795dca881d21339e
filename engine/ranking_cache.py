"""Rankings kept across runs: the same weights scored by the same metric on the same items rank the same.

Every run of a study that scores the teacher by task drop races the same thirty candidates on the
same selection items (the first iteration's scoring is the longest of a run), and a run repeated
with other healing settings scores the same teacher again. A ranking is stored under a key made of
everything that decides it: the metric, the weights (``weights_digest``) and which original layers
they are, what the metric declared it reads (the selection items with ``evaluator_digest``,
whether tasks share batches and the racing settings; the calibration text; the teacher's weights),
the batching and the source of the code that scores (the engine's, and the module of a metric
registered from outside it). The whole ``Ranking`` comes back: the
importance event as it was emitted (racing's rounds included) and the per-item results of layers
the race dropped early, which an evaluation of the model without such a layer completes.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from pathlib import Path

from engine.digests import code_digest, value_digest, weights_digest
from engine.runlog.strategies import get_metric
from engine.score_cache import SCORING_CODE, JsonEntries, evaluator_digest
from engine.scoring import Ranking
from engine.tasks.item_scores import ITEM_COLUMNS, ItemScores

FORMAT = 1
RANKING_CODE = (*SCORING_CODE, "scoring.py", "importance", "models/surgery.py", "models/bridge.py")


class RankingCache(JsonEntries):
    def key(self, scorer) -> str:
        """The key of what ``scorer`` (an ``engine.scoring.Scorer``) would rank now. What the metric
        did not declare it needs (``engine.runlog.strategies.Metric``) stays out of the key: a
        study's task-drop presets share the teacher's ranking whether or not a bridge made them
        load the calibration text."""
        from engine.models.surgery import layer_map

        needs = get_metric(scorer.metric)
        evaluator = scorer.evaluator
        suite = needs.suite and evaluator is not None
        return value_digest(
            [
                FORMAT,
                scorer.metric,
                _source(needs.score),
                weights_digest(scorer.model),
                layer_map(scorer.model),
                [evaluator_digest(evaluator), getattr(evaluator, "pack_tasks", False)] if suite else None,
                dataclasses.asdict(scorer.racing) if suite and scorer.racing is not None else None,
                value_digest([dataclasses.asdict(s) for s in scorer.calibration]) if needs.calibration else None,
                weights_digest(scorer.teacher) if needs.teacher and scorer.teacher is not None else None,
                scorer.pad_id,
                scorer.batch_tokens,
                scorer.block,
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


def _source(function: str) -> str:
    """A digest of the module a registered scoring function lives in ("package.module:function"):
    a metric registered from outside the engine is not covered by the engine's code digest."""
    module = importlib.import_module(function.partition(":")[0])
    try:
        return value_digest(Path(inspect.getfile(module)).read_text())
    except (OSError, TypeError):
        return function  # no source to read (a built-in or a module made in memory): by name only


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
