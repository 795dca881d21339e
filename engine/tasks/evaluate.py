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
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch

from engine.models.adapters import adapter_for
from engine.models.surgery import skipping

from .depth_cache import depth_cache_for
from .layouts import stop_token_ids
from .metrics import CORPUS_METRICS, SENTENCE_METRICS, mmlu_category_mean
from .requests import GenerationRequest, PreparedTask, ScoredSequence, prepare_task
from .sources import Part
from .spec import SuiteSpec, TaskSpec

Candidate = int | None  # a current layer index to skip, or None for the model as it is
Progress = Callable[[str, int, int], None]  # (what, done, total)
ItemSelection = Mapping[str, Iterable[int]]  # task name -> item indices to score


@dataclass
class ForwardCount:
    """Decoder-layer work done by an evaluator, counted where it happens.

    ``layer_forwards``: one decoder layer applied to one sequence (a layer run on a batch of 8
    rows counts 8). ``layer_tokens``: the same weighted by the sequence's real (unpadded) tokens;
    KV-cached decoding counts each new token once per layer. Both include every path: the shared
    prefix, each candidate's own layers, the verification pass and the decoding of generation tasks.
    """

    layer_forwards: int = 0
    layer_tokens: int = 0

    def add(self, layers: int, sequences: int, tokens: int) -> None:
        self.layer_forwards += layers * sequences
        self.layer_tokens += layers * tokens

    def copy(self) -> ForwardCount:
        return ForwardCount(self.layer_forwards, self.layer_tokens)

    def __sub__(self, other: ForwardCount) -> ForwardCount:
        return ForwardCount(self.layer_forwards - other.layer_forwards, self.layer_tokens - other.layer_tokens)


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


class SuiteEvaluator:
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
        batch_tokens: int = 4096,
        max_batch: int = 16,
        part: Part = None,
        split_seed: int = 0,
        eval_cache_mb: int | None = None,
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
        # process's pool (ILD_EVAL_CACHE_MB), or a pool of eval_cache_mb of its own; None when 0.
        self.depth_cache = depth_cache_for(self, eval_cache_mb)

    @property
    def task_names(self) -> list[str]:
        return [t.spec.name for t in self.tasks]

    def items(self) -> dict[str, list[int]]:
        """Every task's item indices (the items ``evaluate`` scores)."""
        return {t.spec.name: _task_items(t) for t in self.tasks}

    # --- public -------------------------------------------------------------------------------
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
        for number, task in enumerate(tasks):

            def step(done, total, _name=task.spec.name, _n=number):
                if progress:
                    progress(f"{_name} ({_n + 1}/{len(tasks)})", done, total)

            wanted = None if items is None else set(items[task.spec.name])
            if task.spec.kind == "generation":
                scores = self._generation_scores(task, candidates, shared, step, wanted)
            else:
                sequences = [s for s in task.sequences if wanted is None or s.item in wanted]
                per_seq = (
                    self._forward(sequences, candidates, shared, step) if sequences else {c: [] for c in candidates}
                )
                scores = {c: _forward_items(task, sequences, per_seq[c]) for c in candidates}
            for c in candidates:
                results[c][task.spec.name] = scores[c]
        return results

    # --- forward passes with a shared prefix ----------------------------------------------------
    def _batches(self, sequences: list[ScoredSequence]) -> list[list[int]]:
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i].ids))
        batches, current, longest = [], [], 0
        for i in order:
            n = len(sequences[i].ids)
            if current and (max(longest, n) * (len(current) + 1) > self.batch_tokens or len(current) >= self.max_batch):
                batches.append(current)
                current, longest = [], 0
            current.append(i)
            longest = max(longest, n)
        if current:
            batches.append(current)
        return batches

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

    # --- generation -----------------------------------------------------------------------------
    def _generate(
        self, prompts: list[list[int]], max_new_tokens: int, stop: list[str], skip: Candidate = None
    ) -> list[list[int]]:
        """Greedy continuations (new tokens only, cut after EOS), in batches, left-padded."""
        device = next(self.model.parameters()).device
        results: list[list[int]] = [[] for _ in prompts]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        step = max(1, min(self.max_batch, self.batch_tokens // max(1, max(len(p) for p in prompts) + max_new_tokens)))
        context = skipping(self.model, skip) if skip is not None else _nothing()
        with context, _counting_layers(self.model, self.forwards):
            for start in range(0, len(order), step):
                chunk = order[start : start + step]
                width = max(len(prompts[i]) for i in chunk)
                ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros_like(ids)
                for row, i in enumerate(chunk):
                    ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
                    mask[row, width - len(prompts[i]) :] = 1
                generated = self.model.generate(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    pad_token_id=self.pad_id,
                    eos_token_id=self.stop_ids or self.eos_id,
                    stopping_criteria=_stop_criteria(self.tokenizer, stop, width),
                )[:, width:].tolist()
                for row, i in enumerate(chunk):
                    results[i] = self._trim(generated[row], stop)
        return results

    def _trim(self, tokens: list[int], stop: list[str]) -> list[int]:
        out = []
        for t in tokens:
            out.append(t)
            # The tail is enough: generate() checked every earlier step already.
            if t in self.stop_ids or (stop and self._stopped(out[-16:], stop)):
                break
        return out

    def _stopped(self, tokens: list[int], stop: list[str]) -> bool:
        text = self.tokenizer.decode(tokens)
        return any(s in text for s in stop)

    def _finished(self, tokens: list[int], max_new_tokens: int, stop: list[str]) -> bool:
        return (
            (tokens and tokens[-1] in self.stop_ids)
            or len(tokens) >= max_new_tokens
            or (bool(stop) and self._stopped(tokens, stop))
        )

    def _generation_scores(
        self, task: PreparedTask, candidates: list[Candidate], shared: bool, progress, wanted: set[int] | None = None
    ) -> dict[Candidate, ItemScores]:
        spec = task.spec
        requests: list[GenerationRequest] = [r for r in task.generations if wanted is None or r.item in wanted]
        if not requests:
            return {c: ItemScores() for c in candidates}
        prompts = [r.prompt_ids for r in requests]
        stop = list(dict.fromkeys(spec.stop + [s for r in requests for s in r.stop]))
        draft = self._generate(prompts, spec.max_new_tokens, stop)
        outputs: dict[Candidate, list[list[int]]] = {None: draft}
        others = [c for c in candidates if c is not None]
        if others:
            # Verify the draft under every candidate at once, from the shared prefix.
            checks = [
                ScoredSequence(p + d, list(range(len(p) - 1, len(p) + len(d) - 1)), d, item=i)
                for i, (p, d) in enumerate(zip(prompts, draft))
                if d
            ]
            which = [i for i, d in enumerate(draft) if d]
            verified = self._forward(checks, others, shared, lambda done, total: progress(done, total + len(others)))
            for number, c in enumerate(others):
                accepted = [list(d) for d in draft]
                pending = []
                for k, i in enumerate(which):
                    result = verified[c][k]
                    disagree = (result.argmax != torch.tensor(draft[i])).nonzero()
                    if len(disagree) == 0:
                        continue
                    p = int(disagree[0])
                    accepted[i] = draft[i][:p] + [int(result.argmax[p])]
                    if not self._finished(accepted[i], spec.max_new_tokens, stop):
                        pending.append(i)
                if pending:
                    more = self._generate(
                        [prompts[i] + accepted[i] for i in pending],
                        spec.max_new_tokens,  # trimmed below: a candidate never exceeds the budget
                        stop,
                        skip=c,
                    )
                    for i, extra in zip(pending, more):
                        accepted[i] = (accepted[i] + extra)[: spec.max_new_tokens]
                outputs[c] = accepted
                progress(len(checks) + number + 1, len(checks) + len(others))
        sentence = SENTENCE_METRICS[spec.metric]
        out = {}
        for c in candidates:
            texts = [self._text(t, stop) for t in outputs[c]]
            out[c] = ItemScores(
                items=[r.item for r in requests],
                values=[sentence(p, r.reference) for p, r in zip(texts, requests)],
                weights=[1.0] * len(requests),
                predictions=texts,
                references=[r.reference for r in requests],
            )
        return out

    def _text(self, tokens: list[int], stop: list[str]) -> str:
        if tokens and tokens[-1] in self.stop_ids:  # the end of turn is not part of the answer
            tokens = tokens[:-1]
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        for s in stop:
            cut = text.find(s)
            if cut > 0:
                text = text[:cut]
        return text.strip()


def _stop_criteria(tokenizer, stop: list[str], prompt_width: int):
    """Stop a row once its new text contains a stop string.

    transformers' own ``stop_strings`` needs to map every vocabulary entry to text, which fails
    for some tokenizers; decoding the tail of each row works for all of them.
    """
    if not stop:
        return None
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopStrings(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            tails = tokenizer.batch_decode(input_ids[:, prompt_width:][:, -16:])
            return torch.tensor([any(s in t for s in stop) for t in tails], device=input_ids.device)

    return StoppingCriteriaList([StopStrings()])


def pack_right(seqs: list[ScoredSequence], pad_id: int, device) -> tuple[torch.Tensor, ...]:
    """A right-padded batch (padding keeps target positions as written) and its target index."""
    width = max(len(s.ids) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, s in enumerate(seqs):
        ids[row, : len(s.ids)] = torch.tensor(s.ids)
        mask[row, : len(s.ids)] = 1
    rows = torch.tensor([row for row, s in enumerate(seqs) for _ in s.positions], dtype=torch.long)
    cols = torch.tensor([p for s in seqs for p in s.positions], dtype=torch.long)
    targets = torch.tensor([t for s in seqs for t in s.targets], dtype=torch.long)
    return ids.to(device), mask.to(device), rows.to(device), cols.to(device), targets.to(device)


def letter_rows(seqs: list[ScoredSequence]) -> dict[int, list[int]]:
    """Letter scoring: the packed row of each such sequence's last target -> the letters' token ids."""
    rows, end = {}, 0
    for s in seqs:
        end += len(s.positions)
        if s.letter_ids:
            rows[end - 1] = s.letter_ids
    return rows


def per_sequence(
    seqs: list[ScoredSequence], chosen: torch.Tensor, argmax: torch.Tensor, letters: dict[int, int]
) -> list[SequenceResult]:
    """Split the packed rows of one batch (``pack_right`` order) back into one result per sequence."""
    results, start = [], 0
    for s in seqs:
        stop = start + len(s.positions)
        results.append(SequenceResult(chosen[start:stop], argmax[start:stop], letters.get(stop - 1, -1)))
        start = stop
    return results


# Logits per chunk of the LM head: 48 MiB is 256 rows of SmolLM2's 49k vocabulary. On the 2-core
# EPYC (32 MiB L3) chunks of 16 to 64 MiB ran SmolLM2's head within 10% of each other (48-50 MiB
# the fastest: 357-372 GFLOPS); the chunk is there to bound memory (1,500 positions would be 290 MB
# of logits at once, and loss drop's 4,096-token batches 800 MB).
HEAD_CHUNK_BYTES = {"cpu": 48 << 20}
HEAD_CHUNK_BYTES_OTHER = 1 << 30


def head_chunks(n: int, vocab: int, device: torch.device | str) -> list[tuple[int, int]]:
    """Row ranges [start, stop) covering n positions, each at most the device's chunk of logits and
    of equal size (a small last chunk would run the GEMM at a fraction of its speed)."""
    if n <= 0:
        return []
    budget = HEAD_CHUNK_BYTES.get(torch.device(device).type, HEAD_CHUNK_BYTES_OTHER)
    rows = max(16, budget // (4 * vocab))
    count = -(-n // rows)
    step = -(-n // count)
    return [(start, min(n, start + step)) for start in range(0, n, step)]


def score_positions(
    adapter, hidden: torch.Tensor, targets: torch.Tensor, letter_at: dict[int, list[int]] | None = None
):
    """The LM head at the scored positions, a chunk of rows at a time (``head_chunks``): the
    log-probability of each target, the greedy token, and for the rows in ``letter_at`` the best of
    the given letter tokens.

    The full logits (positions x vocabulary) never exist at once, which also made the head 1.5x
    faster on the CPU than one big matmul followed by ``log_softmax`` over every position. Each
    row's values are the same either way: rows are independent.
    """
    letter_at = letter_at or {}
    n = hidden.shape[0]
    chosen = torch.empty(n)
    argmax = torch.empty(n, dtype=torch.long)
    letters: dict[int, int] = {}
    for start, stop in head_chunks(n, adapter.vocab_size, hidden.device):
        logits = adapter.head(hidden[start:stop]).float()
        chosen[start:stop] = torch.log_softmax(logits, dim=-1).gather(1, targets[start:stop, None])[:, 0].cpu()
        argmax[start:stop] = logits.argmax(-1).cpu()
        for row, ids in letter_at.items():
            if start <= row < stop:
                letters[row] = int(logits[row - start, ids].argmax())
    return chosen, argmax, letters


def candidate_hidden(
    adapter,
    ids,
    mask,
    candidates: list[Candidate],
    shared: bool,
    rows: torch.Tensor | None = None,
    cols: torch.Tensor | None = None,
    counter: ForwardCount | None = None,
) -> dict[Candidate, torch.Tensor]:
    """The last hidden state (before the final norm) of each candidate on one batch; with ``rows``
    and ``cols`` only at those positions (each candidate's last layer then runs its MLP only there).

    With ``shared`` the full pass stores the inputs of the layers the candidates start from, and
    candidate *i* runs only layers i+1.. from there (the pass stops at the deepest input needed);
    without it every candidate starts from the embeddings. ``counter`` counts the layers run.
    """
    inputs = adapter.prepare(ids, mask)
    n = adapter.num_layers
    at_rows = rows is not None
    if counter is not None:
        sequences, tokens = ids.shape[0], int(mask.sum()) if mask is not None else ids.numel()
        counter.add(candidate_layers(candidates, n, shared, at_rows), sequences, tokens)

    finals: dict[Candidate, torch.Tensor] = {}
    if not shared:
        for c in candidates:
            finals[c] = adapter.run_layers(inputs.hidden, inputs, skip=c, rows=rows, cols=cols)
        return finals

    deepest = max(shared_start(c, n, at_rows) for c in candidates)
    layer_inputs, hidden = [], inputs.hidden
    for index in range(deepest + 1):
        layer_inputs.append(hidden)
        if index < deepest:
            hidden = adapter.run_layer(index, hidden, inputs)
    for c in candidates:
        start = shared_start(c, n, at_rows)
        if c is None:
            finals[c] = adapter.run_layers(layer_inputs[start], inputs, start=start, rows=rows, cols=cols)
        elif start != c:
            finals[c] = adapter.run_layers(layer_inputs[start], inputs, start=start, skip=c, rows=rows, cols=cols)
        else:
            finals[c] = adapter.run_layers(layer_inputs[c], inputs, start=c + 1, rows=rows, cols=cols)
    return finals


def shared_start(candidate: Candidate, num_layers: int, at_rows: bool) -> int:
    """The layer whose stored input ``candidate_hidden`` continues a candidate from on the shared
    path: its own (it runs the layers above it); the last layer's for the full model."""
    last = num_layers - 1
    if candidate is None:
        return last
    # Without the last layer, layer last-1 is the one read at the rows: run it as the naive path
    # does, so the two give the same numbers to the bit.
    return last - 1 if candidate == last and at_rows and last > 0 else candidate


def shared_cost(candidate: Candidate, num_layers: int, at_rows: bool) -> tuple[int, int]:
    """(the shared prefix a candidate needs, the layers it runs after it) on the shared path."""
    start = shared_start(candidate, num_layers, at_rows)
    if start == candidate:
        return start, num_layers - candidate - 1
    return start, sum(1 for i in range(start, num_layers) if i != candidate)


def candidate_layers(candidates: list[Candidate], num_layers: int, shared: bool, at_rows: bool) -> int:
    """Decoder layers one sequence goes through when ``candidate_hidden`` scores these candidates:
    the one count of that work (the evaluator's ForwardCount, the ranks' shares, the racing replay)."""
    if not shared:
        return sum(num_layers - (c is not None) for c in candidates)
    costs = [shared_cost(c, num_layers, at_rows) for c in candidates]
    return max(start for start, _ in costs) + sum(own for _, own in costs)


class _counting_layers:
    """Counts the decoder layers ``generate`` runs (forward pre-hooks on the layer modules)."""

    def __init__(self, model, counter: ForwardCount):
        self.layers = adapter_for(model).layers
        self.counter = counter
        self.handles = []

    def _hook(self, module, args, kwargs):
        hidden = args[0] if args else kwargs.get("hidden_states")
        if hidden is not None:
            self.counter.add(1, hidden.shape[0], hidden.shape[0] * hidden.shape[1])

    def __enter__(self):
        self.handles = [layer.register_forward_pre_hook(self._hook, with_kwargs=True) for layer in self.layers]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        return None


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return None


def _task_items(task: PreparedTask) -> list[int]:
    if task.spec.kind == "generation":
        return [r.item for r in task.generations]
    return list(dict.fromkeys(s.item for s in task.sequences))


def _forward_items(task: PreparedTask, sequences: list[ScoredSequence], results: list[SequenceResult]) -> ItemScores:
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
