"""Step 5 of the method, kept honest: the selection part chooses, the report part is reported.

Every task's items are split (seeded, by content) into a selection part, the only one task drop
sees, and a report part. The report part of the run's suite and every task of the report suite
(evaluated after every iteration, never used to choose) make the report evaluation: the numbers
``ild show``, ``ild ls``, the dashboard and ``ild report`` lead with.
"""

from __future__ import annotations

from engine.score_cache import ScoreCache, evaluator_digest
from engine.tasks.depth_cache import Pool
from engine.tasks.evaluate import ItemScores, SuiteEvaluator, aggregate, task_score
from engine.tasks.spec import load_report_suite, load_suite

PARTS = ("select", "report")


class Evaluation:
    def __init__(
        self,
        model,
        tokenizer,
        suite: str,
        report_suite: str | None,
        batch_tokens: int,
        split_seed: int,
        cache: ScoreCache | None = None,
        eval_cache_mb: int | None = None,
    ):
        self.cache = cache
        self._digests: dict[str, list[str]] = {}
        self.cached: dict[str, bool] = {}  # part -> whether its last scores came from the cache
        main = load_suite(suite)
        # the run's evaluations from the lowest changed layer share one budget (None: ILD_EVAL_CACHE_MB)
        pool = None if eval_cache_mb is None else Pool(eval_cache_mb << 20)
        common = {"batch_tokens": batch_tokens, "depth_pool": pool}
        self.select = SuiteEvaluator(model, tokenizer, main, part="select", split_seed=split_seed, **common)
        self.report = [SuiteEvaluator(model, tokenizer, main, part="report", split_seed=split_seed, **common)]
        extra = load_report_suite(main, report_suite)
        if extra is not None:
            self.report.append(SuiteEvaluator(model, tokenizer, extra, part=None, **common))

    @property
    def pad_id(self) -> int:
        return self.select.pad_id

    def scores(self, part: str, progress=None) -> dict[str, float]:
        """Task scores of the model as it is, on one part (from the score cache when these weights
        were scored on these items before)."""
        evaluators = [self.select] if part == "select" else self.report
        key = None
        if self.cache is not None:
            if part not in self._digests:
                self._digests[part] = [evaluator_digest(e) for e in evaluators]
            try:
                key = self.cache.key(evaluators[0].model, self._digests[part])  # the model they score now
            except (RuntimeError, NotImplementedError):  # weights not all readable here (offloaded): no cache
                self.cache = None
                return self.scores(part, progress)
            stored = self.cache.get(key)
            self.cached[part] = stored is not None
            if stored is not None:
                return stored
        out: dict[str, float] = {}
        for evaluator in evaluators:
            out.update(evaluator.evaluate([None], progress=progress)[None])
        if key is not None:
            self.cache.put(key, out)
        return out

    def completed(self, known: dict[str, ItemScores], progress=None) -> dict[str, float]:
        """Task scores of the model as it is on the selection part, given its per-item results on
        some items already (``known``, e.g. what racing measured of the layer then removed): only
        the other items are scored. Each task's items are put back in the evaluator's own order
        before its score is taken, so the sums run as in a whole evaluation."""
        evaluator = self.select
        order = evaluator.items()
        seen = {t: set(scores.items) for t, scores in known.items()}
        missing = {t: [i for i in items if i not in seen.get(t, ())] for t, items in order.items()}
        missing = {t: items for t, items in missing.items() if items}
        fresh = evaluator.evaluate_items([None], progress=progress, items=missing)[None] if missing else {}
        out = {}
        for task in evaluator.tasks:
            name = task.spec.name
            merged = ItemScores()
            for part in (known.get(name), fresh.get(name)):
                if part is not None:
                    merged.extend(part)
            position = {item: k for k, item in enumerate(merged.items)}
            out[name] = task_score(task.spec, merged.at(position[i] for i in order[name]))
        return out


def summary(scores: dict[str, float]) -> float:
    return aggregate(scores)
