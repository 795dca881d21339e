"""Candidates "skip layer i" run from a shared prefix, and the count of the decoder-layer work.

For one batch the full pass stores the input of every layer once; candidate *i* continues from
layer *i*'s stored input through layers i+1.. (roughly L²/2 layer forwards per batch instead of L²).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.models.adapters import adapter_for

from .item_scores import Candidate


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

    def __iadd__(self, other: ForwardCount) -> ForwardCount:
        self.layer_forwards += other.layer_forwards
        self.layer_tokens += other.layer_tokens
        return self


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


class counting_layers:
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
