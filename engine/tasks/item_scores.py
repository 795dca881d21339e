"""What an evaluation returns, item by item, and how items become task scores.

The per-item results of one task for one candidate (``ItemScores``), the reading of a
forward-scored task's sequences into per-item values (language modelling: token accuracy,
probability or perplexity; multiple choice: the chosen answer), each task's score from its items
by its metric, and the suite's aggregate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch

from .metrics import CORPUS_METRICS, mmlu_category_mean
from .requests import PreparedTask, ScoredSequence
from .spec import TaskSpec

Candidate = int | None  # a current layer index to skip, or None for the model as it is
Progress = Callable[[str, int, int], None]  # (what, done, total)
ItemSelection = Mapping[str, Iterable[int]]  # task name -> item indices to score


@dataclass
class ItemScores:
    """One task's results for one candidate, item by item, in the order they were scored.

    ``values`` is each item's own score in [0, 1] and ``weights`` its weight in the task score
    (scored tokens for language modelling, 1 otherwise); generation tasks also keep the texts, for
    the corpus-level metrics. ``task_score`` turns them into the task's score.
    """

    items: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    predictions: list[str] = field(default_factory=list)
    references: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)  # per item, for metrics that average by group

    def extend(self, other: ItemScores) -> None:
        for name in ITEM_COLUMNS:
            getattr(self, name).extend(getattr(other, name))

    def subset(self, items: Iterable[int]) -> ItemScores:
        keep = set(items)
        return self.at([k for k, item in enumerate(self.items) if item in keep])

    def at(self, positions: Iterable[int]) -> ItemScores:
        """The results at these positions, in their order (repeats allowed: a bootstrap draw)."""
        positions = list(positions)
        out = ItemScores()
        for name in ITEM_COLUMNS:
            column = getattr(self, name)
            if column:
                setattr(out, name, [column[k] for k in positions])
        return out


ITEM_COLUMNS = ("items", "values", "weights", "predictions", "references", "groups")  # ItemScores' per-item lists


def task_score(spec: TaskSpec, scores: ItemScores) -> float:
    """The task's score from its per-item results: the corpus metric over the texts (chrF, BLEU),
    the geometric mean of the per-item values weighted by tokens (1/perplexity), or the weighted
    mean of the values (everything else); 0 for no items."""
    if not scores.items:
        return 0.0
    if spec.metric in CORPUS_METRICS:
        return CORPUS_METRICS[spec.metric](scores.predictions, scores.references)
    if spec.metric == "mmlu_category_mean":
        return mmlu_category_mean(scores.values, scores.groups)
    total = sum(scores.weights)
    if spec.metric == "perplexity_score":
        return math.exp(sum(w * math.log(max(v, 1e-300)) for v, w in zip(scores.values, scores.weights)) / total)
    return sum(v * w for v, w in zip(scores.values, scores.weights)) / total


@dataclass
class SequenceResult:
    logprobs: torch.Tensor  # at each target
    argmax: torch.Tensor  # the model's greedy token at each target position
    letter: int = -1  # letter scoring: the chosen letter


def scores_per_task(tasks, per_item: dict[Candidate, dict[str, list]]) -> dict[Candidate, dict[str, float]]:
    """Each candidate's per-item scores reduced to one score per task, by the task's metric."""
    specs = {t.spec.name: t.spec for t in tasks}
    return {
        c: {name: task_score(specs[name], scores) for name, scores in by_task.items()}
        for c, by_task in per_item.items()
    }


class TaskScores:
    """``evaluate`` from ``evaluate_items``: the one reduction of per-item results to task scores,
    for every evaluator (one process, or shared out over ranks)."""

    def evaluate(
        self,
        candidates: Iterable[Candidate] = (None,),
        shared: bool = True,
        progress: Progress | None = None,
        items: ItemSelection | None = None,
    ) -> dict[Candidate, dict[str, float]]:
        """Scores per candidate and task, each in [0, 1] (on the given items only, if ``items``)."""
        per_item = self.evaluate_items(candidates, shared=shared, progress=progress, items=items)
        return scores_per_task(self.tasks, per_item)


def task_items(task: PreparedTask) -> list[int]:
    """The task's item indices, in the order they are scored."""
    if task.spec.kind == "generation":
        return [r.item for r in task.generations]
    return list(dict.fromkeys(s.item for s in task.sequences))


def forward_items(task: PreparedTask, sequences: list[ScoredSequence], results: list[SequenceResult]) -> ItemScores:
    """Per-item values of a forward-scored task (see ItemScores)."""
    spec = task.spec
    out = ItemScores()
    if spec.kind == "language_modeling":
        for s, r in zip(sequences, results):
            n = len(r.logprobs)
            if spec.metric == "next_token_accuracy":
                value = int((r.argmax == torch.tensor(s.targets)).sum()) / n
            elif spec.metric == "next_token_probability":
                value = float(r.logprobs.exp().sum()) / n
            else:  # perplexity_score: the item's geometric-mean token probability
                value = math.exp(float(r.logprobs.sum()) / n)
            out.items.append(s.item)
            out.values.append(value)
            out.weights.append(float(n))
        return out
    # multiple choice: one value per item, from its sequences (one per choice, or one for letters)
    by_item: dict[int, list[tuple[ScoredSequence, SequenceResult]]] = {}
    for s, r in zip(sequences, results):
        by_item.setdefault(s.item, []).append((s, r))
    for item, pairs in by_item.items():
        answer = task.answers[item]
        if spec.scoring == "letter":
            value = float(pairs[0][1].letter // pairs[0][0].letter_variants == answer)
        else:
            totals = {s.choice: float(r.logprobs.sum()) for s, r in pairs}
            if spec.metric == "choice_probability":
                # The model's probability of the right choice among the offered ones.
                value = float(
                    torch.softmax(torch.tensor([totals[k] for k in sorted(totals)]), 0)[sorted(totals).index(answer)]
                )
            else:
                ranked = {
                    s.choice: totals[s.choice] / (max(1, s.chars) if spec.normalize == "length" else 1)
                    for s, _ in pairs
                }
                value = float(max(ranked, key=lambda k: (ranked[k], -k)) == answer)
        out.items.append(item)
        out.values.append(value)
        out.weights.append(1.0)
        if task.groups:
            out.groups.append(task.groups[item])
    return out


def aggregate(scores: dict[str, float]) -> float:
    """The paper's aggregate: the plain mean of the task scores."""
    return sum(scores.values()) / len(scores) if scores else 0.0
