"""The teacher's outputs on the distillation data, computed once (or read back from the teacher
store, across windows and runs): its final hidden state, the outputs of the original layers the MSE
compares, and with ``teacher_topk`` its top-k tokens."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engine.digests import weights_digest
from engine.models.adapters import adapter_for

from .cache import BlockStore
from .fused_kl import TopK, teacher_topk
from .teacher_store import StoreEntry, TeacherStore


class TeacherCache:
    """The teacher's outputs on the training and held-out blocks, computed once per run."""

    def __init__(
        self,
        teacher: nn.Module,
        train: torch.Tensor,
        heldout: torch.Tensor,
        spill_dir: Path | None,
        limit_bytes: int,
        batch_size: int,
        store: TeacherStore | None = None,
    ):
        self.teacher = teacher
        self.store = store  # across runs: the outputs of this teacher on these blocks, once computed
        self._entries: dict[str, StoreEntry] = {}
        self._digest: str | None = None
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.adapter = adapter_for(teacher)
        self.blocks = {"train": train, "heldout": heldout}
        # each step's batch is drawn from these positions, each naming a row of the train blocks
        # (a window longer than the data names some rows more than once)
        self.train_index = torch.arange(len(train))
        self.spill_dir, self.limit, self.batch_size = spill_dir, limit_bytes, batch_size
        self.final: dict[str, BlockStore] = {}
        self.layers: dict[tuple[str, int], BlockStore] = {}
        self.topk: dict[str, tuple[BlockStore, BlockStore, BlockStore]] = {}
        # The data stream the training blocks are cut from, and each block's row of it (None: the
        # blocks stand alone and the teacher runs them batch_size at a time in their own order).
        self.stream: torch.Tensor | None = None
        self.rows: torch.Tensor | None = None
        # (what, done, total) as batches are computed or read back: a large budget's teacher pass
        # takes many minutes, which the stall watchdog would otherwise report as a hang
        self.progress: Callable[[str, int, int], None] = lambda what, done, total: None
        self.say: Callable[[str], None] = lambda text: None  # a warning for the run's log
        self._said_too_large = False

    def set_train(
        self,
        blocks: torch.Tensor,
        index: torch.Tensor | None = None,
        rows: torch.Tensor | None = None,
        stream: torch.Tensor | None = None,
    ) -> None:
        """Train on other blocks from now on (the next healing's window): the teacher's outputs on
        the old ones are dropped, those on the new ones computed when first asked for.

        ``rows``: each block's row of ``stream`` (the run's whole training data). The teacher then
        runs the stream's own batches (rows kB .. kB+B-1 for B = batch_size), whatever window a
        block falls in, and keeps each batch's outputs as one entry of the teacher store: a block
        is computed once across every window of a run (a second pass over the data repeats none)
        and every later run on the same stream, however it cuts its windows (with the store on,
        the default; without it, each window computes its own)."""
        if index is None:
            index = torch.arange(len(blocks))
        self.stream, self.rows = (stream, rows) if rows is not None and stream is not None else (None, None)
        if torch.equal(blocks, self.blocks["train"]) and torch.equal(index, self.train_index):
            return
        for key in [k for k in self.layers if k[0] == "train"]:
            self.layers.pop(key).close()
        for store in [self.final.pop("train", None), *self.topk.pop("train", ())]:
            if store is not None:
                store.close()
        self._entries.pop("train", None)
        self.blocks["train"], self.train_index = blocks, index

    @torch.no_grad()
    def ensure(self, originals: set[int], split: str) -> None:
        """Compute the final hidden state and the outputs of the given original layers, if missing."""
        missing = [o for o in sorted(originals) if (split, o) not in self.layers]
        if split in self.final and not missing:
            return
        if split == "train" and self.rows is not None:
            return self._ensure_by_stream_batch(missing)
        blocks = self.blocks[split]
        n, t = blocks.shape
        d = self.teacher.config.hidden_size
        entry = self._entry(split)
        if entry is not None:  # what an earlier run of this teacher on these blocks computed
            if split not in self.final and (array := entry.load("final", (n, t, d))) is not None:
                self.final[split] = BlockStore.over(array)
            for o in list(missing):
                if (array := entry.load(f"layer-{o}", (n, t, d))) is not None:
                    self.layers[(split, o)] = BlockStore.over(array)
                    missing.remove(o)
            if split in self.final and not missing:
                return
        if split not in self.final:
            self.final[split] = BlockStore(n, (t, d), torch.float32, self.spill_dir, self.limit)
            todo_final = True
        else:
            todo_final = False
        for o in missing:
            self.layers[(split, o)] = BlockStore(n, (t, d), torch.float32, self.spill_dir, self.limit)
        names = {o: f"layer-{o}" for o in missing}
        for b in range(0, n, self.batch_size):
            self.progress("teacher outputs" if split == "train" else "held-out loss", b, n)
            ids = blocks[b : b + self.batch_size]
            outputs = self._forward(ids, names, todo_final)
            for o, name in names.items():
                self.layers[(split, o)][b : b + len(ids)] = outputs[name]
            if todo_final:
                self.final[split][b : b + len(ids)] = outputs["final"]
        if entry is not None and self._fits(n * t * d * 4 * (len(missing) + todo_final)):
            if todo_final:
                entry.save("final", (n, t, d), self.final[split])
            for o in missing:
                entry.save(f"layer-{o}", (n, t, d), self.layers[(split, o)])

    def batches_match(self) -> bool:
        """Whether the teacher ran the training blocks in the batches the blocks' own order gives
        (what the student's prefix runs: ``batch_size`` blocks at a time), so that a layer both
        run gives bit-identical outputs (``teacher_prefix``)."""
        if self.rows is None:
            return True
        rows, size, n = self.rows.tolist(), self.batch_size, len(self.stream)
        for b in range(0, len(rows), size):
            first = rows[b] - rows[b] % size
            if rows[b : b + size] != list(range(first, min(first + size, n))):
                return False
        return True

    def _ensure_by_stream_batch(self, missing: list[int]) -> None:
        """``ensure`` for training blocks cut from a stream: batch by batch of the stream, each read
        from the teacher store when some run computed it before, else computed (and stored)."""
        n, t = self.blocks["train"].shape
        d = self.teacher.config.hidden_size
        new: dict[str, BlockStore] = {}
        if "train" not in self.final:
            self.final["train"] = new["final"] = BlockStore(n, (t, d), torch.float32, self.spill_dir, self.limit)
        for o in missing:
            self.layers[("train", o)] = new[f"layer-{o}"] = BlockStore(
                n, (t, d), torch.float32, self.spill_dir, self.limit
            )
        size, total = self.batch_size, len(self.stream)
        places: dict[int, list[tuple[int, int]]] = {}  # stream batch -> [(block, its place in the batch)]
        for block, row in enumerate(self.rows.tolist()):
            places.setdefault(row // size, []).append((block, row % size))
        keep = self._fits(len(places) * size * t * d * 4 * len(new))
        for done, k in enumerate(sorted(places)):
            self.progress("teacher outputs", done, len(places))
            outputs = self._batch_outputs(self.stream[k * size : min((k + 1) * size, total)], list(new), keep)
            for block, place in places[k]:
                for name, store in new.items():
                    store[block] = outputs[name][place]

    def _fits(self, nbytes: int) -> bool:
        """Whether outputs of ``nbytes`` are worth storing: more than the whole store holds would
        only evict each other (and every other run's entries) while being written, so they are not
        written at all, and the run's log says so once."""
        if self.store is None or nbytes <= self.store.limit:
            return True
        if not self._said_too_large:
            self._said_too_large = True
            self.say(
                f"the teacher's outputs on this healing's data ({nbytes / 2**20:,.0f} MiB) exceed the teacher store "
                f"({self.store.limit / 2**20:,.0f} MiB, heal.teacher_store_mb): they are computed for this run "
                "and not stored for later ones; raise heal.teacher_store_mb to keep them"
            )
        return False

    def _batch_outputs(self, ids: torch.Tensor, names: list[str], keep: bool = True) -> dict[str, torch.Tensor]:
        """The teacher's outputs ``names`` ("final", "layer-<o>") on one batch of the stream (read
        from the store where an earlier run computed them; stored when computed if ``keep``)."""
        shape = (*ids.shape, self.teacher.config.hidden_size)
        entry = self._entry_for(ids)
        out: dict[str, torch.Tensor] = {}
        if entry is not None:
            for name in names:
                if (array := entry.load(name, shape)) is not None:
                    out[name] = torch.from_numpy(np.array(array))
        todo = [name for name in names if name not in out]
        if not todo:
            return out
        wanted = {int(name.split("-")[1]): name for name in todo if name != "final"}
        out.update(self._forward(ids, wanted, "final" in todo))
        if entry is not None and keep:
            for name in todo:
                entry.save(name, shape, out[name])
        return out

    def _forward(self, ids: torch.Tensor, layers: dict[int, str], final: bool) -> dict[str, torch.Tensor]:
        """The teacher on one batch, as deep as asked: the outputs of ``layers`` (original index ->
        name) and with ``final`` its final hidden state ("final"), float32 on the CPU."""
        stop = self.adapter.num_layers if final else max(layers) + 1
        inputs = self.adapter.prepare(ids.to(next(self.teacher.parameters()).device), None)
        hidden, out = inputs.hidden, {}
        for j in range(stop):
            hidden = self.adapter.run_layer(j, hidden, inputs)
            if j in layers:
                out[layers[j]] = hidden.float().cpu()
        if final:
            out["final"] = hidden.float().cpu()
        return out

    def _entry_for(self, blocks: torch.Tensor) -> StoreEntry | None:
        if self.store is None or not self._digest_ready():
            return None
        return self.store.entry(self._digest, blocks, self.batch_size)

    def _digest_ready(self) -> bool:
        if self._digest is None:
            try:
                self._digest = weights_digest(self.teacher)
            except (RuntimeError, NotImplementedError):  # weights not all readable here (offloaded)
                self.store = None
                return False
        return True

    def _entry(self, split: str) -> StoreEntry | None:
        if self.store is None:
            return None
        if split not in self._entries:
            if not self._digest_ready():
                return None
            self._entries[split] = self.store.entry(self._digest, self.blocks[split], self.batch_size)
        return self._entries[split]

    @torch.no_grad()
    def ensure_topk(self, split: str, k: int, temperature: float) -> None:
        """The teacher's top-k log-probabilities, their ids and its tail mass, once per run."""
        if split in self.topk:
            return
        self.ensure(set(), split)
        n, t = self.blocks[split].shape
        stores = (
            BlockStore(n, (t, k), torch.float32, self.spill_dir, self.limit),
            BlockStore(n, (t, k), torch.int32, self.spill_dir, self.limit),
            BlockStore(n, (t,), torch.float32, self.spill_dir, self.limit),
        )
        device = next(self.teacher.parameters()).device
        for b in range(0, n, self.batch_size):
            index = slice(b, b + self.batch_size)
            top = teacher_topk(self.logits(split, index, device), k, temperature)
            stores[0][index], stores[1][index], stores[2][index] = top.logp, top.index.int(), top.tail_logp
        self.topk[split] = stores

    def topk_target(self, split: str, index, device) -> TopK:
        logp, ids, tail = self.topk[split]
        return TopK(logp[index].to(device), ids[index].to(device).long(), tail[index].to(device))

    def logits(self, split: str, index: slice, device) -> torch.Tensor:
        with torch.no_grad():
            return self.adapter.head(self.final[split][index].to(device, self.adapter.lm_head.weight.dtype))

    @torch.no_grad()
    def normed_final(self, split: str, index, device, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The teacher's final hidden state after the final norm (what its LM head reads)."""
        return self.adapter.norm(self.final[split][index].to(device, dtype))

    def hidden(self, split: str, original: int, index: slice, device) -> torch.Tensor:
        return self.layers[(split, original)][index].to(device)

    def close(self) -> None:
        for store in [*self.final.values(), *self.layers.values(), *(s for t in self.topk.values() for s in t)]:
            store.close()
