"""The three training loops of a healing: what each step starts from and what it is compared with.

* ``_PlainLoop``: teacher and the whole student every step, dense head and KL (``heal.cached=false``;
  the reference the others must equal);
* ``_CachedLoop``: the teacher's outputs from the cache, each step from the cached output of the
  frozen layers below the lowest trainable one;
* ``_FusedLoop``: as the cached loop, with the head and the KL fused and chunked (``fused_kl``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from engine.models.adapters import adapter_for

from .cache import BlockStore
from .losses import total_loss
from .teacher_prefix import shared_depth

if TYPE_CHECKING:
    from .heal import Healer


class StudentFromPrefix(nn.Module):
    """Runs the student from a stored layer input upward: the module accelerate prepares (so that
    data-parallel wrappers see the real forward), returning logits and the compared hidden states."""

    def __init__(self, model: nn.Module, start: int, pairs: list[int], final_norm: bool = False, fused: bool = False):
        super().__init__()
        self.model = model
        self.start = start
        self.pairs = pairs
        self.final_norm = final_norm
        self.fused = fused  # return the normed final hidden state; the fused loss applies the head

    def forward(self, hidden: torch.Tensor, input_ids: torch.Tensor):
        adapter = adapter_for(self.model)
        inputs = adapter.prepare(input_ids, None)
        if self.start == 0:
            hidden = inputs.hidden
        captured = {}
        last = adapter.num_layers - 1
        for j in range(self.start, adapter.num_layers):
            hidden = adapter.run_layer(j, hidden, inputs)
            if j in self.pairs:
                captured[j] = adapter.norm(hidden) if (self.final_norm and j == last) else hidden
        if self.fused:
            return adapter.norm(hidden), captured
        return adapter.head(hidden), captured


class _PlainLoop:
    """Teacher and the whole student every step, dense head and KL: the reference the others must equal."""

    def __init__(self, healer: Healer, pairs: list[int], layer_map: list[int], device):
        self.healer, self.pairs, self.layer_map = healer, pairs, layer_map
        config = healer.config
        self.runner = StudentFromPrefix(healer.student, 0, pairs, config.loss.final_norm)

    def inputs(self, picked, ids):
        return None, self._teacher(ids)

    @torch.no_grad()
    def _teacher(self, ids):
        adapter = self.healer.cache.adapter
        inputs = adapter.prepare(ids, None)
        hidden = inputs.hidden
        last = len(self.layer_map) - 1
        wanted = {self.layer_map[j]: j for j in self.pairs if j != last}
        out = {}
        for o in range(adapter.num_layers):
            hidden = adapter.run_layer(o, hidden, inputs)
            if o in wanted:
                out[wanted[o]] = hidden
        if last in self.pairs:
            out[last] = adapter.norm(hidden) if self.healer.config.loss.final_norm else hidden
        return adapter.head(hidden), out

    def loss(self, out, student_hidden, target, mask):
        teacher_logits, teacher_hidden = target
        return total_loss(out, teacher_logits, student_hidden, teacher_hidden, mask, self.healer.train_loss)

    def close(self) -> None:
        pass


class _CachedLoop(_PlainLoop):
    """The teacher's outputs from the cache, each step from the cached output of the frozen layers
    below the lowest trainable one; dense head and KL."""

    def __init__(
        self,
        healer: Healer,
        pairs: list[int],
        layer_map: list[int],
        trainable: list[int],
        device,
        needed: torch.Tensor | None = None,
    ):
        self.healer, self.pairs, self.layer_map, self.device = healer, pairs, layer_map, device
        config = healer.config
        cache = healer.cache
        self.start = min(trainable)
        # The student's lowest layers that are still the teacher's: their output on the training
        # blocks comes from the teacher's pass (same batches, bit-identical), not from a second one.
        # Not with a rank's own subset of blocks, nor where the teacher ran the stream's batches and
        # this window's blocks do not fall into them (it wraps around the data's end): batched
        # differently, the sums could differ.
        same_batches = needed is None and cache.batches_match()
        self.shared = shared_depth(healer.student, cache.teacher, self.start) if same_batches else 0
        healer.stage("teacher outputs")
        cache.ensure(healer._needed(pairs, layer_map) | ({self.shared - 1} if self.shared else set()), "train")
        self.owned = True  # whether close() frees the prefix (not when it is the teacher cache's)
        if self.start > self.shared:
            healer.stage("student prefix")
        self.prefix = self._prefix(device, needed) if self.start > 0 else None
        self.runner = StudentFromPrefix(healer.student, self.start, pairs, config.loss.final_norm, fused=self.fused)

    fused = False

    @torch.no_grad()
    def _prefix(self, device, needed: torch.Tensor | None = None) -> BlockStore:
        """The frozen layers below the lowest trainable one: once per iteration, on the blocks this
        rank trains on (``needed``; None: all)."""
        healer, adapter = self.healer, adapter_for(self.healer.student)
        blocks, batch = healer.cache.blocks["train"], healer.config.batch_size
        shared = healer.cache.layers[("train", self.shared - 1)] if self.shared else None
        if self.shared == self.start:
            self.owned = False
            return shared
        store = BlockStore(
            len(blocks),
            (blocks.shape[1], healer.student.config.hidden_size),
            torch.float32,
            healer.cache.spill_dir,
            healer.cache.limit,
        )
        if needed is None:
            for b in range(0, len(blocks), batch):
                healer.cache.progress("student prefix", b, len(blocks))
                ids = blocks[b : b + batch].to(device)
                inputs = adapter.prepare(ids, None)
                hidden = inputs.hidden if shared is None else shared[b : b + len(ids)].to(device, inputs.hidden.dtype)
                store[b : b + len(ids)] = adapter.run_layers(hidden, inputs, self.shared, self.start).float()
            return store
        needed = needed.unique()  # sorted; a window longer than the data names some blocks twice
        for b in range(0, len(needed), batch):
            healer.cache.progress("student prefix", b, len(needed))
            index = needed[b : b + batch]
            inputs = adapter.prepare(blocks[index].to(device), None)
            store[index.numpy()] = adapter.run_layers(inputs.hidden, inputs, 0, self.start).float()
        return store

    def inputs(self, picked, ids):
        hidden = self.prefix[picked].to(self.device) if self.prefix is not None else None
        teacher_hidden = self.healer._teacher_hiddens("train", picked, self.pairs, self.layer_map, self.device)
        return hidden, (self._target(picked), teacher_hidden)

    def _target(self, picked):
        return self.healer.cache.logits("train", picked, self.device)

    def close(self) -> None:
        if self.prefix is not None and self.owned:
            self.prefix.close()


class _FusedLoop(_CachedLoop):
    """As the cached loop, with the head and the KL fused and chunked against the teacher's cached
    final hidden state (exact) or its top-k tokens (a lower bound of the KL)."""

    fused = True

    def __init__(
        self,
        healer: Healer,
        pairs: list[int],
        layer_map: list[int],
        trainable: list[int],
        device,
        needed: torch.Tensor | None = None,
    ):
        super().__init__(healer, pairs, layer_map, trainable, device, needed)
        config = healer.config
        if config.teacher_topk:
            healer.cache.ensure_topk("train", config.teacher_topk, config.loss.temperature)

    def _target(self, picked):
        cache = self.healer.cache
        if self.healer.config.teacher_topk:
            return cache.topk_target("train", picked, self.device)
        return self.healer._exact_target("train", picked, self.device)

    def loss(self, out, student_hidden, target, mask):
        kl_target, teacher_hidden = target
        kl = self.healer._fused_kl(out, kl_target, mask, self.device)
        return total_loss(None, None, student_hidden, teacher_hidden, mask, self.healer.train_loss, kl=kl)


def loop_for(healer: Healer, pairs, layer_map, trainable, device, needed: torch.Tensor | None = None):
    if not healer.config.cached:
        return _PlainLoop(healer, pairs, layer_map, device)
    if healer._fused():
        return _FusedLoop(healer, pairs, layer_map, trainable, device, needed)
    return _CachedLoop(healer, pairs, layer_map, trainable, device, needed)
