"""Sequences into batches, and the LM head read at the scored positions of a batch.

Batches are right-padded (padding keeps every target position where the sequence wrote it) and
packed so that each scored position is one row; the head runs over those rows a chunk at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .item_scores import SequenceResult
from .requests import ScoredSequence


def length_batches(lengths: Sequence[int], batch_tokens: int, max_batch: int) -> list[list[int]]:
    """Indices grouped into batches, shortest first: each batch at most ``max_batch`` rows and at most
    ``batch_tokens`` once padded to its longest (a longer sequence goes alone)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches, current, longest = [], [], 0
    for i in order:
        n = lengths[i]
        if current and (max(longest, n) * (len(current) + 1) > batch_tokens or len(current) >= max_batch):
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, n)
    if current:
        batches.append(current)
    return batches


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
