"""Scoring a suite on the current model and on "skip layer i" candidates, sharing the prefix.

What is shared (``shared=True``):
  * Forward-scored tasks (multiple choice, language modelling) and the verification pass of
    generation tasks: for one batch, the input of every layer is computed once by the full pass;
    candidate *i* continues from layer *i*'s stored input through layers i+1.. and the head.
    Roughly L²/2 layer forwards per batch instead of L².
  * The LM head runs only at the positions a task reads, not at every token, a chunk of positions
    at a time (``score_positions``). Not shared, but not repeated either: each candidate's head.
  * Generation: the current model's greedy output is the *draft*. Candidate *i* checks the whole
    draft in one teacher-forced pass (from the shared prefix); up to its first disagreement its
    greedy output is the draft's. Only from there does it decode on its own.
What is not shared: that own decoding (a normal KV-cached ``generate`` of the candidate), which
is exactly what a plain per-candidate run would do from the same point.

``shared=False`` runs the same algorithm recomputing every candidate from the embeddings: it is
the baseline of ``bench/importance.py`` and gives bit-identical scores.

The parts: ``batches`` (padding, batching, the LM head at the scored positions), ``prefix`` (the
shared prefix and the work count), ``generation`` (draft and verification), ``item_scores`` (per-item
results, task scores, the aggregate). This module puts them together and keeps their names importable.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from engine.config import BATCH_TOKENS
from engine.models.adapters import adapter_for

from .batches import (
    HEAD_CHUNK_BYTES,
    HEAD_CHUNK_BYTES_OTHER,
    head_chunks,
    length_batches,
    letter_rows,
    pack_right,
    per_sequence,
    score_positions,
)
from .depth_cache import depth_cache_for
from .generation import GenerationScoring
from .item_scores import (
    ITEM_COLUMNS,
    Candidate,
    ItemScores,
    ItemSelection,
    Progress,
    SequenceResult,
    TaskScores,
    aggregate,
    forward_items,
    scores_per_task,
    task_items,
    task_score,
)
from .layouts import stop_token_ids
from .prefix import ForwardCount, candidate_hidden, candidate_layers, shared_cost, shared_start
from .requests import PreparedTask, ScoredSequence, prepare_task
from .sources import Part
from .spec import SuiteSpec

_forward_items = forward_items  # the name bench/importance.py reads

__all__ = [
    "HEAD_CHUNK_BYTES",
    "HEAD_CHUNK_BYTES_OTHER",
    "ITEM_COLUMNS",
    "Candidate",
    "ForwardCount",
    "ItemScores",
    "ItemSelection",
    "Progress",
    "SequenceResult",
    "SuiteEvaluator",
    "aggregate",
    "candidate_hidden",
    "candidate_layers",
    "forward_items",
    "head_chunks",
    "letter_rows",
    "pack_right",
    "per_sequence",
    "score_positions",
    "scores_per_task",
    "shared_cost",
    "shared_start",
    "task_score",
]


class SuiteEvaluator(GenerationScoring, TaskScores):
    """Evaluates one suite (or one part of its split) on ``model`` and on "skip layer i" candidates.

    ``part``: None evaluates every task's first ``samples`` items (the whole suite); "select" only
    the items of the selection part (task drop and proposals), "report" only those of the report
    part (headline numbers). The split is per row (``sources.in_selection_part``) with each task's
    ``select_fraction`` (default the suite's, 0.5) and ``split_seed``; ``samples`` counts items of
    the part, so both parts get up to ``samples`` items each.

    The items are tokenised once here; ``model`` is read at each call, so the evaluator follows
    layer removals done in place. ``forwards`` counts the decoder-layer work of every call.
    """

    def __init__(
        self,
        model,
        tokenizer,
        suite: SuiteSpec,
        batch_tokens: int = BATCH_TOKENS,
        max_batch: int = 16,
        part: Part = None,
        split_seed: int = 0,
        eval_cache_mb: int | None = None,
        depth_pool=None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.suite = suite
        self.part = part
        self.split_seed = split_seed
        self.batch_tokens = batch_tokens
        self.max_batch = max_batch
        self.tasks: list[PreparedTask] = [
            prepare_task(t, tokenizer, part, suite.fraction_for(t), split_seed) for t in suite.tasks
        ]
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_id = tokenizer.eos_token_id
        # Every id that ends an answer: EOS, generation_config's list, the template's end of turn.
        self.stop_ids = stop_token_ids(tokenizer, model)
        self.forwards = ForwardCount()
        # The model's own evaluations start from the lowest changed layer (depth_cache.py): in the
        # process's pool (ILD_EVAL_CACHE_MB), the given ``depth_pool`` (a run's evaluators share
        # one), or a pool of eval_cache_mb of its own; None when 0.
        self.depth_cache = depth_cache_for(self, eval_cache_mb, depth_pool)
        # Several candidates (task drop): the forward-scored tasks' sequences share batches instead of
        # each task batching its own. A racing round scores a few items a task, so per-task batches
        # are tiny, and a GPU runs at the speed of its kernel launches; packed, a round is a few full
        # batches. Off on a CPU, where batch size barely matters and per-task batches keep the
        # scores bit-for-bit those of the runs before (the setup turns it on for a GPU).
        self.pack_tasks = False

    @property
    def task_names(self) -> list[str]:
        return [t.spec.name for t in self.tasks]

    def items(self) -> dict[str, list[int]]:
        """Every task's item indices (the items ``evaluate`` scores)."""
        return {t.spec.name: task_items(t) for t in self.tasks}

    # --- public -------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate_items(
        self,
        candidates: Iterable[Candidate] = (None,),
        shared: bool = True,
        progress: Progress | None = None,
        items: ItemSelection | None = None,
    ) -> dict[Candidate, dict[str, ItemScores]]:
        """Per-item results per candidate and task. ``items`` (task name -> item indices) limits
        the work to those items; a task it does not name is not evaluated. None: every item."""
        candidates = list(dict.fromkeys(candidates))
        results: dict[Candidate, dict[str, ItemScores]] = {c: {} for c in candidates}
        tasks = [t for t in self.tasks if items is None or t.spec.name in items]
        packed = {}
        if self.pack_tasks and len(candidates) > 1:
            packed = self._packed_scores(
                [t for t in tasks if t.spec.kind != "generation"], candidates, shared, progress, items
            )
        for number, task in enumerate(tasks):
            if task.spec.name in packed:
                for c in candidates:
                    results[c][task.spec.name] = packed[task.spec.name][c]
                continue

            def step(done, total, _name=task.spec.name, _n=number):
                if progress:
                    progress(f"{_name} ({_n + 1}/{len(tasks)})", done, total)

            if task.spec.kind == "generation":
                wanted = None if items is None else set(items[task.spec.name])
                scores = self._generation_scores(task, candidates, shared, step, wanted)
            else:
                sequences = _chosen(task, items)
                per_seq = (
                    self._forward(sequences, candidates, shared, step) if sequences else {c: [] for c in candidates}
                )
                scores = {c: forward_items(task, sequences, per_seq[c]) for c in candidates}
            for c in candidates:
                results[c][task.spec.name] = scores[c]
        return results

    def _packed_scores(self, tasks, candidates, shared, progress, items) -> dict[str, dict[Candidate, ItemScores]]:
        """Task name -> candidate -> per-item scores of the forward-scored ``tasks``, their sequences
        scored in shared batches (``pack_tasks``)."""
        chosen = {task.spec.name: _chosen(task, items) for task in tasks}
        sequences = [s for seqs in chosen.values() for s in seqs]

        def step(done, total):
            if progress:
                progress(f"{len(tasks)} tasks packed", done, total)

        per_seq = self._forward(sequences, candidates, shared, step) if sequences else {c: [] for c in candidates}
        out, start = {}, 0
        for task in tasks:
            seqs = chosen[task.spec.name]
            end = start + len(seqs)
            out[task.spec.name] = {c: forward_items(task, seqs, per_seq[c][start:end]) for c in candidates}
            start = end
        return out

    # --- forward passes with a shared prefix ----------------------------------------------------
    def _batches(self, sequences: list[ScoredSequence]) -> list[list[int]]:
        return length_batches([len(s.ids) for s in sequences], self.batch_tokens, self.max_batch)

    def _forward(
        self, sequences: list[ScoredSequence], candidates: list[Candidate], shared: bool, progress
    ) -> dict[Candidate, list[SequenceResult]]:
        adapter = adapter_for(self.model)
        device = next(self.model.parameters()).device
        out: dict[Candidate, list] = {c: [None] * len(sequences) for c in candidates}
        batches = self._batches(sequences)
        for number, batch in enumerate(batches):
            seqs = [sequences[i] for i in batch]
            ids, mask, rows, cols, targets = pack_right(seqs, self.pad_id, device)
            if self.depth_cache is not None and shared and candidates == [None]:
                finals = {None: self.depth_cache.hidden(adapter, ids, mask, rows, cols, self.forwards)}
            else:
                finals = candidate_hidden(adapter, ids, mask, candidates, shared, rows, cols, counter=self.forwards)
            letter_at = letter_rows(seqs)
            for c in candidates:
                # Popped so each candidate's final hidden state is freed once it is scored.
                chosen, argmax, letters = score_positions(adapter, finals.pop(c), targets, letter_at)
                for i, result in zip(batch, per_sequence(seqs, chosen, argmax, letters)):
                    out[c][i] = result
            progress(number + 1, len(batches))
        return out


def _chosen(task: PreparedTask, items: ItemSelection | None) -> list[ScoredSequence]:
    """The task's forward-scored sequences of the selected items (None: every item)."""
    wanted = None if items is None else set(items[task.spec.name])
    return [s for s in task.sequences if wanted is None or s.item in wanted]
