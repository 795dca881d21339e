"""Suite evaluation shared out over the ranks, with the results every rank would have alone.

``SharedEvaluator`` wraps a ``SuiteEvaluator`` and keeps its interface (``evaluate``,
``evaluate_items``, ``items``, ``tasks``, ``model``, ``forwards``), so task drop, racing and the
report evaluation use it unchanged. Each call is one collective step: every rank scores its share,
the per-item results are gathered on every rank, and merged into the order one process gives.

* As many candidates as ranks or more: the candidates are shared out (each rank scoring its own
  from the shared prefix of its deepest one), balanced by the decoder layers each costs. A
  candidate's numbers do not depend on which others share its batch: they equal one process's
  to the bit (same batches, same kernels, same thread count).
* Fewer candidates (an evaluation of the model itself, the last rounds of a race): every rank scores
  every candidate on its share of each task's items (every ``size``-th). The batches then hold
  other items than in one process, so numbers agree to float tolerance, not to the bit (padding
  changes the shape of the kernels); generation tasks decode their own share.
"""

from __future__ import annotations

from collections.abc import Iterable

from engine.tasks.evaluate import SuiteEvaluator
from engine.tasks.item_scores import ITEM_COLUMNS, Candidate, ItemScores, ItemSelection, Progress, TaskScores
from engine.tasks.prefix import ForwardCount, shared_cost

from .ranks import Ranks


def candidate_cost(candidate: Candidate, num_layers: int) -> tuple[int, int]:
    """(the shared prefix it needs, its own layers), as ``candidate_hidden`` runs it on the scored
    rows: candidate i continues from layer i's input through the layers above."""
    return shared_cost(candidate, num_layers, at_rows=True)


def assign_candidates(candidates: list[Candidate], num_layers: int, size: int) -> list[list[Candidate]]:
    """Share the candidates out so that each rank's decoder-layer work (its deepest prefix plus each
    candidate's own layers) is about equal: largest first, each to the rank it raises least.
    Deterministic: every rank computes the same assignment."""
    shares: list[list[Candidate]] = [[] for _ in range(size)]
    prefix, own = [0] * size, [0] * size
    ordered = sorted(candidates, key=lambda c: (-sum(candidate_cost(c, num_layers)), -1 if c is None else c))
    for c in ordered:
        start, cost = candidate_cost(c, num_layers)
        totals = [max(prefix[r], start) + own[r] + cost for r in range(size)]
        best = min(range(size), key=lambda r: (totals[r], r))
        shares[best].append(c)
        prefix[best] = max(prefix[best], start)
        own[best] += cost
    order = {c: k for k, c in enumerate(candidates)}
    return [sorted(share, key=order.__getitem__) for share in shares]


def merge_item_scores(parts: list[ItemScores], order: dict[int, int]) -> ItemScores:
    """Several ranks' results for one task and candidate, in the order one process scores items."""
    rows = []
    for part in parts:
        for k, item in enumerate(part.items):
            rows.append(
                (
                    order.get(item, len(order)),
                    item,
                    [getattr(part, c)[k] if getattr(part, c) else None for c in ITEM_COLUMNS[1:]],
                )
            )
    rows.sort(key=lambda r: (r[0], r[1]))
    out = ItemScores()
    for _, item, values in rows:
        out.items.append(item)
        for column, value in zip(ITEM_COLUMNS[1:], values):
            if value is not None:
                getattr(out, column).append(value)
    return out


class SharedEvaluator(TaskScores):
    """A ``SuiteEvaluator`` whose work is shared out over ``ranks`` (see the module docstring).

    ``after_step`` runs on every rank after each collective step: the ranks are in lockstep there,
    the place to apply a pause or a stop to all of them at once.
    """

    def __init__(self, inner: SuiteEvaluator, ranks: Ranks, after_step=None):
        self.inner = inner
        self.ranks = ranks
        self.after_step = after_step
        self.forwards = ForwardCount()  # the work of every rank together
        self._order: dict[str, dict[int, int]] | None = None

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _item_order(self) -> dict[str, dict[int, int]]:
        if self._order is None:
            self._order = {
                task: {item: k for k, item in enumerate(items)} for task, items in self.inner.items().items()
            }
        return self._order

    def evaluate_items(
        self,
        candidates: Iterable[Candidate] = (None,),
        shared: bool = True,
        progress: Progress | None = None,
        items: ItemSelection | None = None,
    ) -> dict[Candidate, dict[str, ItemScores]]:
        candidates = list(dict.fromkeys(candidates))
        size, rank = self.ranks.size, self.ranks.rank
        if size == 1:
            before = self.inner.forwards.copy()
            out = self.inner.evaluate_items(candidates, shared=shared, progress=progress, items=items)
            self.forwards += self.inner.forwards - before
            return out
        selection = {
            task: list(chosen) for task, chosen in (items if items is not None else self.inner.items()).items()
        }
        if len(candidates) >= size:
            from engine.models.adapters import adapter_for

            mine = assign_candidates(candidates, adapter_for(self.inner.model).num_layers, size)[rank]
            my_items = items
        else:
            mine = candidates
            my_items = {task: chosen[rank::size] for task, chosen in selection.items()}
        before = self.inner.forwards.copy()
        local = self.inner.evaluate_items(mine, shared=shared, progress=progress, items=my_items) if mine else {}
        parts = self.ranks.gather((local, self.inner.forwards - before))
        for _, work in parts:
            self.forwards += work
        order = self._item_order()
        merged: dict[Candidate, dict[str, ItemScores]] = {}
        for c in candidates:
            per_task = {}
            for task in selection:
                pieces = [results[c][task] for results, _ in parts if c in results and task in results[c]]
                per_task[task] = merge_item_scores(pieces, order.get(task, {}))
            merged[c] = per_task
        if self.after_step is not None:
            self.after_step()
        return merged


def share_evaluation(evaluation, ranks: Ranks, after_step=None) -> None:
    """Share out every evaluator of an ``engine.evaluation.Evaluation`` (selection and report parts)."""
    evaluation.select = SharedEvaluator(evaluation.select, ranks, after_step)
    evaluation.report = [SharedEvaluator(e, ranks, after_step) for e in evaluation.report]
