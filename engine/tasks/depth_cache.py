"""Evaluating from the lowest changed layer: the hidden states of earlier evaluations, reused.

Between two evaluations of a run only some layers change: removing layer g leaves layers 0..g-1 as
they were, healing leaves every layer below the lowest trainable one as it was. The input of layer p
(the hidden state at *depth* p) depends only on the embedding and layers 0..p-1, so an evaluation
that stored it can hand it to the next one, which runs layers p.. only.

Which states are still valid is read off the model itself, with no help from the caller: a layer's
*signature* is the identity of its module, of each of its parameters and buffers (weak references,
so an object that died and another that took its address never match), and of each tensor's
storage (``data_ptr``, ``_version``, dtype, shape, stride, device), plus its attention kind and the
classes and train/eval modes of its submodules. ``_version`` increments on every in-place update
(``copy_``, the optimizers' in-place steps), a reloaded model has new objects, and a removal
shifts the layers above the gap. A state at depth p is valid iff the first p layer signatures, and
the *base* (embedding, rotary tables, attention implementation, thread count), equal those it was
computed with.

Two updates escape ``_version`` (checked by tests/test_depth_cache.py): ``torch.optim`` steps
with ``fused=True`` (torch's fused kernels do not bump it) and writes through ``tensor.data``.
The engine uses neither (healing's AdamW takes torch's default, foreach); code that does must turn
the cache off (``ILD_EVAL_CACHE_MB=0``).

Exact: a layer run on the stored tensor computes what it computed on the same tensor in a full
pass (same batch, same shapes, same kernels), so scores equal a full pass to the bit. The state is
kept on the CPU in the model's dtype and copied back per use.

What is kept, per batch of an evaluation of the model itself (candidate ``None``): the states at
some depths and the final hidden state at the scored positions (small; an unchanged model then runs
no layer at all). Which depths, within the byte budget (``plan_depths``): densely from the lowest
changed layer of this evaluation down to where it started (healing after a removal trains the
layers next to the gap, just below it: the next evaluation then starts exactly there), the rest
spread evenly over the stack (the next removal can fall anywhere).

Budget: one pool of ``ILD_EVAL_CACHE_MB`` MiB (default 1024; 0 turns the cache off) for every
evaluator of the process, shared as an equal number of depths per evaluator (the depths each one
can keep = budget / (tokens of all registered evaluators x bytes of a hidden state per token)).
Over budget the cache keeps fewer depths (down to none): the layers are recomputed, never spilled.
"""

from __future__ import annotations

import os
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

ENV = "ILD_EVAL_CACHE_MB"
DEFAULT_MB = 1024


def budget_from_env() -> int:
    """The pool's byte budget from ``ILD_EVAL_CACHE_MB`` (MiB; 0 or "off" disables the cache)."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return DEFAULT_MB << 20
    if raw.lower() in ("off", "no", "false"):
        return 0
    try:
        mb = int(raw)
    except ValueError:
        mb = -1
    if mb < 0:
        raise ValueError(f"{ENV} must be a whole number of MiB (0 turns the evaluation cache off), got {raw!r}")
    return mb << 20


class Pool:
    """The byte budget the depth caches of one process share."""

    def __init__(self, limit_bytes: int):
        self.limit = limit_bytes
        self.used = 0
        self.tokens: dict[int, int] = {}  # id of a live cache -> the tokens of one depth of its batches

    def fits(self, nbytes: int) -> bool:
        return self.used + nbytes <= self.limit

    def slots(self, bytes_per_token: int) -> int:
        """Depths every registered cache can keep for all its batches at once."""
        total = sum(self.tokens.values()) * bytes_per_token
        return self.limit // total if total > 0 else 0


_SHARED: Pool | None = None


def shared_pool() -> Pool:
    """The process's pool; its budget follows ``ILD_EVAL_CACHE_MB`` as read now."""
    global _SHARED
    limit = budget_from_env()
    if _SHARED is None:
        _SHARED = Pool(limit)
    _SHARED.limit = limit
    return _SHARED


# --- signatures ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Signature:
    refs: tuple  # weak references: the module, then each of its parameters and buffers
    state: tuple

    def matches(self, other: Signature) -> bool:
        if self.state != other.state or len(self.refs) != len(other.refs):
            return False
        for mine, theirs in zip(self.refs, other.refs):
            obj = mine()
            if obj is None or obj is not theirs():
                return False
        return True


def _tensor_state(t: torch.Tensor) -> tuple:
    return (t.data_ptr(), t._version, t.dtype, tuple(t.shape), t.stride(), t.device)


def module_signature(module: torch.nn.Module, extra: tuple = ()) -> Signature:
    tensors = [*module.parameters(), *module.buffers()]
    modules = list(module.modules())
    return Signature(
        (weakref.ref(module), *(weakref.ref(t) for t in tensors)),
        (
            extra,
            tuple(type(m) for m in modules),
            tuple(m.training for m in modules),
            tuple(_tensor_state(t) for t in tensors),
        ),
    )


def base_signature(adapter) -> Signature:
    """What every depth depends on: the embedding, the rotary tables, how attention is computed."""
    config = adapter.config
    extra = (
        adapter.model_type,
        getattr(config, "_attn_implementation", None),
        getattr(adapter.rotary_emb, "attention_scaling", None),
        torch.get_num_threads(),
    )
    embed, rotary = module_signature(adapter.embed_tokens, extra), module_signature(adapter.rotary_emb)
    return Signature(embed.refs + rotary.refs, (embed.state, rotary.state))


def layer_signatures(adapter) -> list[Signature]:
    return [module_signature(layer, (adapter.layer_type(i),)) for i, layer in enumerate(adapter.layers)]


def first_change(stored: list[Signature], now: list[Signature]) -> int:
    """The lowest layer index whose signature differs (the shorter stack's depth if none does)."""
    for index, (then, current) in enumerate(zip(stored, now)):
        if not then.matches(current):
            return index
    return min(len(stored), len(now))


# --- which depths to keep -----------------------------------------------------------------------
def plan_depths(num_layers: int, start: int, change: int | None, old: set[int], slots: int) -> set[int]:
    """The depths (1..num_layers-1) to keep after an evaluation that ran layers ``start``.. on a
    model whose lowest changed layer was ``change`` (None: nothing was stored), with ``old`` the
    still-valid stored depths (all <= start) and room for ``slots`` depths.

    First the depths from ``change`` down to ``start`` (the next change is most likely just below
    the last one: healing trains the layers next to a gap), then the rest spread evenly."""
    available = (set(old) | set(range(start + 1, num_layers))) - {0}
    if slots <= 0 or not available:
        return set()
    chosen: list[int] = []
    if change is not None:
        chosen = [p for p in range(min(change, num_layers - 1), start - 1, -1) if p in available][:slots]
    rest = sorted(available - set(chosen))
    free = slots - len(chosen)
    for j in range(1, free + 1):
        if not rest:
            break
        target = j * num_layers / (free + 1)
        best = min(rest, key=lambda p: (abs(p - target), p))
        chosen.append(best)
        rest.remove(best)
    return set(chosen)


# --- the cache ----------------------------------------------------------------------------------
@dataclass
class Entry:
    ids: torch.Tensor
    mask: torch.Tensor | None
    base: Signature
    layers: list[Signature]
    depths: dict[int, torch.Tensor] = field(default_factory=dict)
    final: torch.Tensor | None = None  # the last hidden state at (rows, cols)
    rows: torch.Tensor | None = None
    cols: torch.Tensor | None = None

    @property
    def nbytes(self) -> int:
        tensors = [*self.depths.values(), *(t for t in (self.final, self.rows, self.cols) if t is not None)]
        return sum(t.numel() * t.element_size() for t in tensors)


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.shape == b.shape and bool(torch.equal(a, b.to(a.device)))


class DepthCache:
    """One evaluator's stored hidden states, batch by batch (see the module docstring).

    ``tokens``: the (padded) tokens of the evaluator's forward-scored batches, one depth's worth,
    by which the pool's budget is shared out."""

    def __init__(self, tokens: int, pool: Pool | None = None):
        self.pool = pool if pool is not None else shared_pool()
        self.entries: OrderedDict[tuple, Entry] = OrderedDict()
        self.pool.tokens[id(self)] = tokens
        weakref.finalize(self, _release, self.pool, id(self), self.entries)

    def clear(self) -> None:
        for key in list(self.entries):
            self._drop(key)

    def _drop(self, key) -> None:
        entry = self.entries.pop(key, None)
        if entry is not None:
            self.pool.used -= entry.nbytes

    def _room(self, nbytes: int, keep) -> bool:
        """Make room for ``nbytes`` by dropping this cache's least recently used entries."""
        for key in list(self.entries):
            if self.pool.fits(nbytes):
                break
            if key != keep:
                self._drop(key)
        return self.pool.fits(nbytes)

    def _add(self, entry: Entry, key, where, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self._room(nbytes, key):
            if where == "final":
                entry.final = tensor
            else:
                entry.depths[where] = tensor
            self.pool.used += nbytes

    @torch.no_grad()
    def hidden(self, adapter, ids, mask, rows=None, cols=None, counter=None) -> torch.Tensor:
        """The model's last hidden state on one batch (at ``rows``, ``cols`` if given), as
        ``candidate_hidden(adapter, ids, mask, [None], ...)[None]`` gives it, running only the
        layers above the deepest valid stored state; ``counter`` counts the layers run."""
        n = adapter.num_layers
        base, layers = base_signature(adapter), layer_signatures(adapter)
        cpu_ids = ids.detach().cpu()
        cpu_mask = mask.detach().cpu() if mask is not None else None
        key = (
            tuple(cpu_ids.shape),
            hash(cpu_ids.numpy().tobytes()),
            None if mask is None else hash(cpu_mask.numpy().tobytes()),
        )
        entry = self.entries.get(key)
        if entry is not None and not (_same(entry.ids, cpu_ids) and _same(entry.mask, cpu_mask)):
            self._drop(key)  # a hash collision: another batch
            entry = None
        start, change, old = 0, None, {}
        if entry is not None and entry.base.matches(base):
            change = first_change(entry.layers, layers)
            # Never past the last layer's input: the last layer runs at the scored rows only, and a
            # removal of the last layer leaves a stored full output there that is not that.
            old = {p: t for p, t in entry.depths.items() if p <= min(change, n - 1)}
            start = max(old, default=0)
            if (
                change == n == len(entry.layers)
                and entry.final is not None
                and _same(entry.rows, None if rows is None else rows.cpu())
                and _same(entry.cols, None if cols is None else cols.cpu())
            ):
                self.entries.move_to_end(key)
                return entry.final.to(ids.device, copy=True)
        if counter is not None:
            tokens = int(mask.sum()) if mask is not None else ids.numel()
            counter.add(n - start, ids.shape[0], tokens)

        inputs = adapter.prepare(ids, mask)
        hidden = inputs.hidden
        per_depth = hidden.numel() * hidden.element_size()
        plan = plan_depths(n, start, change, set(old), self.pool.slots(per_depth // max(1, ids.numel())))
        if start > 0:
            hidden = old[start].to(hidden.device, copy=True)
        self._drop(key)
        entry = Entry(cpu_ids, cpu_mask, base, layers)
        self.entries[key] = entry
        for p in sorted(old):
            if p in plan:
                self._add(entry, key, p, old[p])
        del old
        for index in range(start, n):
            if index > start and index in plan:
                self._add(entry, key, index, hidden.detach().to("cpu", copy=True))
            if index == n - 1 and rows is not None:
                hidden = adapter.run_layer_at(index, hidden, inputs, rows, cols)
            else:
                hidden = adapter.run_layer(index, hidden, inputs)
        if rows is not None:
            entry.rows, entry.cols = rows.cpu(), cols.cpu()
            self.pool.used += sum(t.numel() * t.element_size() for t in (entry.rows, entry.cols))
        self._add(entry, key, "final", hidden.detach().to("cpu", copy=True))
        return hidden


def _release(pool: Pool, key: int, entries: OrderedDict) -> None:
    pool.tokens.pop(key, None)
    pool.used -= sum(e.nbytes for e in entries.values())
    entries.clear()


def evaluator_tokens(evaluator) -> int:
    """The padded tokens of an evaluator's forward-scored batches (one depth of all of them)."""
    total = 0
    for task in evaluator.tasks:
        if task.spec.kind != "generation" and task.sequences:
            for batch in evaluator._batches(task.sequences):
                total += len(batch) * max(len(task.sequences[i].ids) for i in batch)
    return total


def depth_cache_for(evaluator, budget_mb: int | None = None, pool: Pool | None = None) -> DepthCache | None:
    """The evaluator's depth cache in ``pool``, or in a pool of its own of ``budget_mb`` MiB if
    given, else in the process's pool; None when the budget is 0."""
    if pool is None:
        pool = shared_pool() if budget_mb is None else Pool(max(0, budget_mb) << 20)
    if pool.limit <= 0:
        return None
    return DepthCache(evaluator_tokens(evaluator), pool)
