"""Layer importance: Block Influence, angular distance, loss drop and task drop.

Every function returns ``{current layer index: importance}``; higher = more important, so the
proposal is always the lowest score. Callers convert indices to original teacher indices.

* Block Influence (ShortGPT): ``1 - E_t cos(x_i, y_i)`` on layer i's own input and output, before
  the final norm (the official code compares the last layer against the post-norm state).
* Angular distance (Gromov et al.): ``E_t arccos(cos(x_i, y_i)) / pi``, same inputs.
* Loss drop (SLEB-style): calibration NLL, or KL(teacher || student), with the layer skipped,
  minus the same for the model as it is; from the shared prefix.
* Task drop (the paper): aggregate suite score of the model minus that with the layer skipped
  (``racing.task_drop``; racing scores the candidates that cannot win on fewer items).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from engine.config import BATCH_TOKENS
from engine.models.adapters import adapter_for
from engine.tasks.evaluate import SuiteEvaluator, candidate_hidden, head_chunks, pack_right
from engine.tasks.requests import ScoredSequence

Progress = Callable[[str, int, int], None]


def _batches(sequences: list[ScoredSequence], batch_tokens: int) -> list[list[ScoredSequence]]:
    ordered = sorted(sequences, key=lambda s: len(s.ids))
    out, current = [], []
    for s in ordered:
        if current and len(s.ids) * (len(current) + 1) > batch_tokens:
            out.append(current)
            current = []
        current.append(s)
    if current:
        out.append(current)
    return out


@torch.no_grad()
def similarity_scores(
    model,
    sequences: list[ScoredSequence],
    pad_id: int,
    batch_tokens: int = BATCH_TOKENS,
    progress: Progress | None = None,
) -> dict[str, dict[int, float]]:
    """Block Influence and angular distance of every current layer, over real (unpadded) tokens."""
    adapter = adapter_for(model)
    device = next(model.parameters()).device
    n = adapter.num_layers
    cos_sum = torch.zeros(n, dtype=torch.float64)
    angle_sum = torch.zeros(n, dtype=torch.float64)
    tokens = 0
    batches = _batches(sequences, batch_tokens)
    for number, batch in enumerate(batches):
        ids, mask, *_ = pack_right(batch, pad_id, device)
        inputs = adapter.prepare(ids, mask)
        real = mask.bool()
        hidden = inputs.hidden
        for i in range(n):
            out = adapter.run_layer(i, hidden, inputs)
            cos = torch.nn.functional.cosine_similarity(hidden[real].double(), out[real].double(), dim=-1).clamp(-1, 1)
            cos_sum[i] += cos.sum().cpu()
            angle_sum[i] += (torch.arccos(cos) / math.pi).sum().cpu()
            hidden = out
        tokens += int(real.sum())
        if progress:
            progress("block influence", number + 1, len(batches))
    return {
        "bi": {i: float(1 - cos_sum[i] / tokens) for i in range(n)},
        "angular": {i: float(angle_sum[i] / tokens) for i in range(n)},
    }


@torch.no_grad()
def loss_drop_scores(
    model,
    sequences: list[ScoredSequence],
    pad_id: int,
    kind: str = "nll",
    teacher=None,
    shared: bool = True,
    batch_tokens: int = BATCH_TOKENS,
    progress: Progress | None = None,
) -> dict[int, float]:
    """Increase of calibration NLL (or KL to the teacher) when each layer is skipped."""
    if kind not in ("nll", "kl"):
        raise ValueError(f"unknown loss-drop kind '{kind}' (nll or kl)")
    if kind == "kl" and teacher is None:
        raise ValueError("loss drop by KL needs the teacher model")
    adapter = adapter_for(model)
    device = next(model.parameters()).device
    candidates = [None, *range(adapter.num_layers)]
    totals = dict.fromkeys(candidates, 0.0)
    count = 0
    batches = _batches(sequences, batch_tokens)
    for number, batch in enumerate(batches):
        ids, mask, rows, cols, targets = pack_right(batch, pad_id, device)
        finals = candidate_hidden(adapter, ids, mask, candidates, shared, rows, cols)
        t_adapter = t_hidden = None
        if kind == "kl":
            t_adapter = adapter_for(teacher)
            t_hidden = candidate_hidden(t_adapter, ids, mask, [None], False, rows, cols)[None]
        # Chunks of positions outside, candidates inside: the teacher's chunk of log-probabilities
        # is computed once, and no positions x vocabulary tensor exists (see head_chunks).
        for start, stop in head_chunks(len(targets), adapter.vocab_size, device):
            if kind == "kl":
                teacher_logp = torch.log_softmax(t_adapter.head(t_hidden[start:stop]).float(), -1)
            for c, hidden in finals.items():
                logp = torch.log_softmax(adapter.head(hidden[start:stop]).float(), -1)
                if kind == "nll":
                    totals[c] += float(-logp.gather(1, targets[start:stop, None]).sum())
                else:
                    totals[c] += float((teacher_logp.exp() * (teacher_logp - logp)).sum())
        count += len(targets)
        if progress:
            progress(f"loss drop ({kind})", number + 1, len(batches))
    base = totals[None] / count
    return {c: totals[c] / count - base for c in candidates if c is not None}


def task_drop_scores(
    evaluator: SuiteEvaluator, shared: bool = True, progress: Progress | None = None
) -> tuple[dict[int, float], dict[int, dict[str, float]], dict[str, float]]:
    """(drop of the aggregate per layer, per-task scores per layer, the current model's scores),
    every candidate on every item. ``engine.importance.racing.task_drop`` is the same with racing
    and a richer result (partial layers, item counts, the bound)."""
    from engine.importance.racing import task_drop

    result = task_drop(evaluator, racing=None, shared=shared, progress=progress)
    return result.drops, result.per_task, result.current
