"""Task scores kept across runs: the same weights on the same items score the same.

Every run of a study evaluates the same teacher, and every variant of the healing ablation the same
student after the same removals (on the embedded model each evaluation is 1-2 minutes of a 2-core
CPU). An evaluation's scores are stored under a key made of everything that decides them: the
weights (``weights_digest``: names, shapes, dtypes, a strided sample of the values, the device
kind), the prepared items of the part (token ids, targets, references, the task specs), the
tokenizer's vocabulary (generations are scored on decoded text), the batching, and the source of the
code that scores (with torch's version). Anything else changed is a miss, and a miss costs only the
evaluation. The newest ``MAX_ENTRIES`` entries are kept (a few hundred bytes each).
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from pathlib import Path

from engine.digests import code_digest, value_digest, weights_digest

FORMAT = 1
MAX_ENTRIES = 20000
SCORING_CODE = ("tasks", "evaluation.py", "models/adapters.py", "models/cpu_linear.py")


def evaluator_digest(evaluator) -> str:
    """What a ``SuiteEvaluator`` scores and how: its prepared items and settings."""
    tokenizer = evaluator.tokenizer
    tasks = [
        [
            task.spec.model_dump(mode="json"),
            [dataclasses.asdict(s) for s in task.sequences],
            [dataclasses.asdict(g) for g in task.generations],
            task.answers,
            task.n_choices,
            task.groups,
        ]
        for task in evaluator.tasks
    ]
    vocab = sorted(tokenizer.get_vocab().items())
    return value_digest(
        [
            evaluator.part,
            evaluator.batch_tokens,
            evaluator.max_batch,
            evaluator.pad_id,
            evaluator.eos_id,
            getattr(evaluator, "stop_ids", None),
            value_digest(vocab),
            tasks,
        ]
    )


class JsonEntries:
    """Results kept as one JSON file per key, written under a temporary name and renamed into place;
    the newest ``max_entries`` are kept. A damaged or missing entry reads as None."""

    def __init__(self, root: Path, max_entries: int = MAX_ENTRIES) -> None:
        self.root, self.max_entries = Path(root), max_entries

    def read(self, key: str):
        path = self.root / f"{key}.json"
        try:
            value = json.loads(path.read_text())
            os.utime(path)
        except (OSError, ValueError):
            return None
        return value

    def write(self, key: str, value) -> None:
        """Store ``value``; a full disk costs the next run the computation, nothing else."""
        tmp = self.root / f".{key}.{uuid.uuid4().hex}.tmp"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(value))
            os.replace(tmp, self.root / f"{key}.json")
            self._trim()
        except OSError:
            tmp.unlink(missing_ok=True)

    def _trim(self) -> None:
        entries = list(self.root.glob("*.json"))
        if len(entries) <= self.max_entries:
            return
        entries.sort(key=lambda p: p.stat().st_mtime)
        for old in entries[: len(entries) - self.max_entries]:
            old.unlink(missing_ok=True)


class ScoreCache(JsonEntries):
    def key(self, model, evaluators: list[str]) -> str:
        """The key of ``model`` scored by the evaluators of these ``evaluator_digest``s."""
        return value_digest([FORMAT, weights_digest(model), evaluators, code_digest(*SCORING_CODE)])

    def get(self, key: str) -> dict[str, float] | None:
        scores = self.read(key)
        if not isinstance(scores, dict) or not all(isinstance(v, int | float) for v in scores.values()):
            return None
        return {str(k): float(v) for k, v in scores.items()}

    def put(self, key: str, scores: dict[str, float]) -> None:
        self.write(key, scores)
