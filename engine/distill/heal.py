"""Healing a student against the frozen teacher after a removal (accelerate, AdamW, warmup + cosine).

The cached loop (default) computes nothing twice that it can keep:
  * the teacher's final hidden state on the distillation data is computed once per run, and its
    logits are recomputed through the frozen LM head at each step (a 576-float row instead of a
    49,152-float one per token for SmolLM2; exact); or, with ``teacher_topk`` k > 0, its k most
    likely tokens and its tail mass are stored once and the KL is bucketed to them (a documented
    lower bound, see ``fused_kl``);
  * the LM head and the KL run fused and chunked (``fused_kl``): no (tokens x vocabulary) tensor is
    kept and the KL's gradient is computed in its forward;
  * the teacher's output of the original layers the MSE compares is computed once per iteration;
  * the student's frozen layers below the lowest trainable layer run once per iteration; each step
    starts from their cached output.
``cached=False`` is the plain loop (teacher and full student forward every step), kept for the
benchmark and as the reference the tests compare against.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from engine.config import heal_default
from engine.digests import weights_digest
from engine.distributed.ranks import SINGLE, Ranks
from engine.distributed.sharding import ShardedLayers, full, full_optimizer_state, shard_optimizer_state
from engine.models.adapters import adapter_for

from .cache import BlockStore
from .data import DataConfig
from .fused_kl import TopK, fused_head_kl, teacher_topk
from .losses import LossConfig, hidden_pairs, mse_loss, total_loss, weighted_terms
from .teacher_store import StoreEntry, TeacherStore
from .trainable import TrainableConfig, freeze_except


@dataclass(frozen=True)
class HealConfig:
    loss: LossConfig = field(default_factory=LossConfig)
    trainable: TrainableConfig = field(default_factory=TrainableConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lr: float = heal_default("lr")
    warmup_steps: int = heal_default("warmup_steps")
    min_lr_ratio: float = 0.1
    batch_size: int = heal_default("batch_size")
    grad_accum: int = heal_default("grad_accum")
    clip: float = heal_default("clip")
    weight_decay: float = 0.0
    cached: bool = heal_default("cached")
    # the cached loop's head + KL fused and chunked (where the loss allows it)
    fused_head: bool = heal_default("fused_head")
    # the fused head's matmuls: "bf16", "fp32" or "auto" (bf16 on CUDA and on CPUs with native bf16)
    head_matmul: str = heal_default("head_matmul")
    # > 0: store the teacher's top-k tokens instead of recomputing its logits
    teacher_topk: int = heal_default("teacher_topk")
    cache_limit_mb: int = heal_default("cache_limit_mb")
    checkpoint_every_s: float = heal_default("checkpoint_every_s")
    # Early stopping: the held-out distillation loss every ``eval_every`` steps (0: about eight checks
    # an iteration); stop after ``patience`` checks without a relative gain of ``min_delta``, and keep
    # the best weights seen (the weights from before healing when it never helped).
    early_stop: bool = heal_default("early_stop")
    eval_every: int = heal_default("eval_every")
    patience: int = heal_default("patience")
    min_delta: float = heal_default("min_delta")

    @classmethod
    def from_settings(cls, h) -> HealConfig:
        """The one conversion from the validated run config's ``heal`` section to the healing parts."""
        return cls(
            loss=LossConfig(
                kl_scale=h.kl_scale,
                mse_scale=h.mse_scale,
                kl_input=h.kl_input,
                direction=h.direction,
                temperature=h.temperature,
                reduction=h.reduction,
                hidden=h.hidden,
                final_norm=h.final_norm,
                kl_reference_tokens=h.kl_reference_tokens,
                mse_norm=h.mse_norm,
            ),
            trainable=TrainableConfig(
                choice=h.trainable,
                k=h.trainable_k,
                train_norm=h.train_norm,
                train_head=h.train_head,
                allow_tied=h.untie_head,
            ),
            data=DataConfig(
                source=h.data,
                text_field=h.text_field,
                seq_len=h.seq_len,
                train_tokens=h.train_tokens,
                heldout_tokens=h.heldout_tokens,
            ),
            lr=h.lr,
            warmup_steps=h.warmup_steps,
            batch_size=h.batch_size,
            grad_accum=h.grad_accum,
            clip=h.clip,
            cached=h.cached,
            fused_head=h.fused_head,
            head_matmul=h.head_matmul,
            teacher_topk=h.teacher_topk,
            cache_limit_mb=h.cache_limit_mb,
            checkpoint_every_s=h.checkpoint_every_s,
            early_stop=h.early_stop,
            eval_every=h.eval_every,
            patience=h.patience,
            min_delta=h.min_delta,
        )


class NonFiniteLoss(Exception):
    pass


class HealInterrupted(Exception):
    """Asked to stop between steps; the state was handed to ``on_checkpoint`` first."""


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

    def set_train(self, blocks: torch.Tensor, index: torch.Tensor | None = None) -> None:
        """Train on other blocks from now on (the next healing's window): the teacher's outputs on
        the old ones are dropped, those on the new ones computed when first asked for."""
        if index is None:
            index = torch.arange(len(blocks))
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
        blocks = self.blocks[split]
        device = next(self.teacher.parameters()).device
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
        stop = self.adapter.num_layers if todo_final else max(missing) + 1
        for b in range(0, n, self.batch_size):
            ids = blocks[b : b + self.batch_size].to(device)
            inputs = self.adapter.prepare(ids, None)
            hidden = inputs.hidden
            for j in range(stop):
                hidden = self.adapter.run_layer(j, hidden, inputs)
                if j in missing:
                    self.layers[(split, j)][b : b + len(ids)] = hidden.float()
            if todo_final:
                self.final[split][b : b + len(ids)] = hidden.float()
        if entry is not None:
            if todo_final:
                entry.save("final", (n, t, d), self.final[split])
            for o in missing:
                entry.save(f"layer-{o}", (n, t, d), self.layers[(split, o)])

    def _entry(self, split: str) -> StoreEntry | None:
        if self.store is None:
            return None
        if split not in self._entries:
            if self._digest is None:
                try:
                    self._digest = weights_digest(self.teacher)
                except (RuntimeError, NotImplementedError):  # weights not all readable here (offloaded)
                    self.store = None
                    return None
            self._entries[split] = self.store.entry(self._digest, self.blocks[split])
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


def lr_at(step: int, total: int, config: HealConfig) -> float:
    """Linear warmup, then cosine down to ``min_lr_ratio`` of the peak."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
    return config.lr * (
        config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    )


@dataclass
class HealState:
    """What a mid-iteration checkpoint holds to continue exactly where it stopped."""

    step: int = 0
    optimizer: dict | None = None
    trainable: dict[str, torch.Tensor] | None = None
    early: EarlyStop | None = None

    def to_saved(self) -> dict:
        """Tensors, numbers and lists only: loadable with ``torch.load(weights_only=True)``."""
        return {
            "step": self.step,
            "optimizer": self.optimizer,
            "trainable": self.trainable,
            "early": self.early.to_saved() if self.early is not None else None,
        }

    @classmethod
    def from_saved(cls, saved: dict) -> HealState:
        early = saved.get("early")
        return cls(
            step=int(saved["step"]),
            optimizer=saved.get("optimizer"),
            trainable=saved.get("trainable"),
            early=EarlyStop.from_saved(early) if early else None,
        )


@dataclass
class EarlyStop:
    """The held-out checks of one iteration's healing: the best loss, its weights, the misses since."""

    best_loss: float
    best_step: int = 0
    misses: int = 0
    best: dict[str, torch.Tensor] | None = None  # trainable weights at the best check (None: from before healing)
    checks: list[tuple[int, float]] = field(default_factory=list)

    def update(self, step: int, loss: float, weights: Callable[[], dict[str, torch.Tensor]], min_delta: float) -> bool:
        """Record a check; True when it improved on the best by at least ``min_delta`` (relative)."""
        self.checks.append((step, loss))
        if loss < self.best_loss * (1 - min_delta):
            self.best_loss, self.best_step, self.misses, self.best = loss, step, 0, weights()
            return True
        self.misses += 1
        return False

    def to_saved(self) -> dict:
        return {
            "best_loss": self.best_loss,
            "best_step": self.best_step,
            "misses": self.misses,
            "best": self.best,
            "checks": [[s, v] for s, v in self.checks],
        }

    @classmethod
    def from_saved(cls, saved: dict) -> EarlyStop:
        return cls(
            best_loss=float(saved["best_loss"]),
            best_step=int(saved["best_step"]),
            misses=int(saved["misses"]),
            best=saved.get("best"),
            checks=[(int(s), float(v)) for s, v in saved.get("checks", [])],
        )


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bfloat16 matmuls run about 4x faster than float32 there (0.08 s against
    0.32 s for SmolLM2's head on 1,024 tokens, 2-core EPYC); elsewhere they are emulated, and slower."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _bf16_head(choice: str, device: torch.device) -> bool:
    if choice == "bf16":
        return True
    if choice == "fp32":
        return False
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())


class Healer:
    """Heals the student; with several ranks, data-parallel (DDP through accelerate).

    Data parallelism keeps what one process computes: the global batch stays ``batch_size`` and the
    data order stays the seeded permutation whatever the number of ranks; each rank takes an equal
    slice of every step's batch, so DDP's averaged gradient is one process's gradient (a summed KL
    is scaled by the number of ranks to stay a sum). Losses are reported averaged over the ranks,
    the held-out loss is shared out by batch and summed in one process's order, and every rank
    takes the same early-stopping decision. A partial checkpoint holds no rank's state: one written
    by N processes resumes on M.
    """

    def __init__(
        self,
        student: nn.Module,
        cache: TeacherCache,
        config: HealConfig,
        ranks: Ranks | None = None,
        shard: bool = False,
    ):
        self.student = student
        self.cache = cache
        self.config = config
        self.ranks = ranks or SINGLE
        self.shard = shard and self.ranks.distributed  # FSDP2 over the trainable layers (engine.distributed.sharding)
        self._sharded_now = False
        self.train_loss = config.loss  # the loss the steps minimise (see heal)
        self._head_cast: tuple[torch.Tensor, torch.Tensor] | None = None

    # --- what the student is compared with ------------------------------------------------------
    @torch.no_grad()
    def _teacher_hiddens(
        self, split: str, index, pairs: list[int], layer_map: list[int], device
    ) -> dict[int, torch.Tensor]:
        """What each compared student layer is compared with: the student's last layer with the
        teacher's output (the model output), any other with the teacher's output of the same original layer."""
        last = len(layer_map) - 1
        out = {}
        for j in pairs:
            if j != last:
                out[j] = self.cache.hidden(split, layer_map[j], index, device)
            elif self.config.loss.final_norm:
                out[j] = self.cache.normed_final(split, index, device)
            else:
                out[j] = self.cache.final[split][index].to(device)
        return out

    def _fused(self) -> bool:
        """Whether the loss is one the fused head + KL computes: forward KL of log-probabilities
        through a frozen, bias-free head without soft-capping."""
        loss, adapter = self.config.loss, self.cache.adapter
        return (
            self.config.fused_head
            and loss.kl_input == "log_probs"
            and loss.direction == "forward"
            and not self.config.trainable.train_head
            and getattr(adapter.lm_head, "bias", None) is None
            and not getattr(adapter.config, "final_logit_softcapping", None)
            # One head serves both sides of the fused KL: not after an earlier iteration trained the student's.
            and torch.equal(adapter_for(self.student).lm_head.weight, adapter.lm_head.weight)
        )

    def _fused_kl(
        self, student_normed: torch.Tensor, target, mask: torch.Tensor, device, exact: bool = False
    ) -> torch.Tensor:
        loss = self.config.loss
        weight = self.cache.adapter.lm_head.weight.detach()
        matmul_dtype = torch.bfloat16 if not exact and _bf16_head(self.config.head_matmul, device) else None
        if matmul_dtype is not None and weight.dtype != matmul_dtype:
            if self._head_cast is None or self._head_cast[0] is not weight:
                self._head_cast = (weight, weight.to(matmul_dtype))  # cast once, not at every step
            weight = self._head_cast[1]
        return fused_head_kl(
            student_normed, weight, target, mask, loss.temperature, loss.reduction, matmul_dtype=matmul_dtype
        )

    def _exact_target(self, split: str, index, device) -> torch.Tensor:
        """The exact KL's target: the fused loss recomputes the teacher's logits from it chunk by chunk."""
        return self.cache.normed_final(split, index, device, self.cache.adapter.lm_head.weight.dtype)

    def _needed(self, pairs: list[int], layer_map: list[int]) -> set[int]:
        return {layer_map[j] for j in pairs if j != len(layer_map) - 1}

    @torch.no_grad()
    def heldout_loss(self, pairs: list[int]) -> dict[str, float]:
        """The distillation loss on held-out text (the exact KL, whatever the training target), its
        terms weighted as in the loss, and the raw hidden-state MSE (``mse_raw``) whatever ``mse_norm``."""
        adapter = adapter_for(self.student)
        layer_map = adapter.layer_map()
        self.cache.ensure(self._needed(pairs, layer_map), "heldout")
        blocks = self.cache.blocks["heldout"]
        device = next(self.student.parameters()).device
        fused = self._fused()
        runner = StudentFromPrefix(self.student, 0, pairs, self.config.loss.final_norm, fused=fused)
        starts = list(range(0, len(blocks), self.config.batch_size))
        # Shared out by batch; not while layers are sharded: their forwards are collectives then,
        # and every rank must run the same ones.
        split = self.ranks.distributed and not self._sharded_now
        rows = []  # (batch start, loss, kl, mse weighted by the batch's blocks)
        for b in starts[self.ranks.rank :: self.ranks.size] if split else starts:
            index = slice(b, b + self.config.batch_size)
            ids = blocks[index].to(device)
            mask = torch.ones_like(ids)
            out, hidden = runner(None, ids)
            t_hidden = self._teacher_hiddens("heldout", index, pairs, layer_map, device)
            if fused:
                kl = self._fused_kl(out, self._exact_target("heldout", index, device), mask, device, exact=True)
                loss, kl, mse = total_loss(None, None, hidden, t_hidden, mask, self.config.loss, kl=kl)
            else:
                loss, kl, mse = total_loss(
                    out, self.cache.logits("heldout", index, device), hidden, t_hidden, mask, self.config.loss
                )
            # the raw MSE too, so that runs with and without mse_norm compare on one scale
            raw = mse
            if self.config.loss.mse_norm != "none":
                raw = sum(float(mse_loss(h, t_hidden[k], mask)) for k, h in hidden.items())
            rows.append((b, *(float(v) * len(ids) for v in (loss, kl, mse, raw))))
        if split:
            rows = sorted(row for part in self.ranks.gather(rows) for row in part)
        totals = {"loss": 0.0, "kl": 0.0, "mse": 0.0, "mse_raw": 0.0}
        for _, *values in rows:  # summed in one process's order, so every rank gets one process's number
            for key, value in zip(totals, values):
                totals[key] += value
        result = {k: v / len(blocks) for k, v in totals.items()}
        return {**result, **weighted_terms(result["kl"], result["mse"], self.config.loss)}

    # --- one iteration of healing ---------------------------------------------------------------
    def heal(
        self,
        trainable: list[int],
        iteration: int,
        seed: int,
        on_step: Callable[[dict], None] | None = None,
        on_checkpoint: Callable[[HealState], None] | None = None,
        resume: HealState | None = None,
        interrupt: Callable[[], bool] | None = None,
        baseline: float | None = None,
        salt: int = 0,
    ) -> dict:
        """Train the chosen layers; returns a summary. Raises NonFiniteLoss after restoring weights.

        ``baseline``: the held-out loss before healing, the first mark early stopping must beat
        (computed here when not given). ``salt``: varies the data order of healings that share an
        iteration number (the final healing).
        """
        from accelerate import Accelerator

        config = self.config
        adapter = adapter_for(self.student)
        layer_map = adapter.layer_map()
        pairs = hidden_pairs(config.loss, trainable, adapter.num_layers)
        params = freeze_except(self.student, trainable, config.trainable)
        names = {id(p): n for n, p in self.student.named_parameters()}
        # Full tensors, gathered when sharded (every rank at once: a collective then).
        weights = lambda: {names[id(p)]: full(p.detach()).clone() for p in params}
        snapshot = weights()
        device = next(self.student.parameters()).device
        accelerator = Accelerator(
            cpu=device.type == "cpu",
            mixed_precision="bf16" if device.type == "cuda" else "no",
            gradient_accumulation_steps=config.grad_accum,
        )
        blocks = self.cache.blocks["train"]
        n = len(self.cache.train_index)
        total_steps = max(1, n // config.batch_size)
        order = self.cache.train_index[
            torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + iteration + salt))
        ]
        size, rank = self.ranks.size, self.ranks.rank
        if config.batch_size % size:
            raise ValueError(f"heal.batch_size {config.batch_size} does not divide among {size} processes")
        share = config.batch_size // size  # this rank's slice of every step's batch

        def my_slice(step: int) -> torch.Tensor:
            return order[step * config.batch_size + rank * share : step * config.batch_size + (rank + 1) * share]

        # A summed KL over a slice is 1/size of the summed KL over the batch once DDP averages.
        scaled = size > 1 and config.loss.reduction == "sum"
        self.train_loss = (
            dataclasses.replace(config.loss, kl_scale=config.loss.kl_scale * size) if scaled else config.loss
        )
        needed = torch.cat([my_slice(s) for s in range(total_steps)]) if size > 1 else None
        loop = _loop_for(self, pairs, layer_map, trainable, device, needed)

        step, early = 0, None
        if resume is not None:
            step, early = resume.step, resume.early
            if resume.trainable:
                with torch.no_grad():
                    for p in params:
                        p.copy_(resume.trainable[names[id(p)]])
        if config.early_stop and early is None:
            early = EarlyStop(best_loss=baseline if baseline is not None else self.heldout_loss(pairs)["loss"])
        shards, plain = None, params
        if self.shard:
            if config.trainable.train_norm or config.trainable.train_head:
                raise ValueError(
                    "distributed.heal=fsdp shards the trainable decoder layers; train_norm and train_head "
                    "need distributed.heal=ddp"
                )
            shards = ShardedLayers(self.student, trainable, self.ranks)
            params = shards.parameters()
            names.update({id(p): n for n, p in self.student.named_parameters()})
            self._sharded_now = True
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        if resume is not None and resume.optimizer:
            optimizer.load_state_dict(shard_optimizer_state(resume.optimizer, params) if shards else resume.optimizer)
        every = config.eval_every or max(1, total_steps // 8)
        if shards is not None:  # FSDP2 reduces the gradients itself
            runner, optimizer = loop.runner, accelerator.prepare(optimizer)
        else:
            if self.ranks.distributed:
                _ddp_ignore_frozen(loop.runner)
            runner, optimizer = accelerator.prepare(loop.runner, optimizer)

        def state() -> HealState:
            return HealState(
                step, full_optimizer_state(optimizer) if shards else optimizer.state_dict(), weights(), early
            )

        last_save = time.monotonic()
        tokens = 0
        started = time.perf_counter()
        last: dict = {}
        stopped_early = failed = False
        try:
            while step < total_steps:
                lr = lr_at(step, total_steps, config)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                picked = my_slice(step)
                ids = blocks[picked].to(device)
                mask = torch.ones_like(ids)
                hidden, target = loop.inputs(picked, ids)
                with accelerator.accumulate(runner), accelerator.autocast():
                    out, student_hidden = runner(hidden, ids)
                    loss, kl, mse = loop.loss(out, student_hidden, target, mask)
                    loss_value, kl, mse = self._step_figures(loss, kl, mse)
                    if not math.isfinite(loss_value):
                        raise NonFiniteLoss(f"loss became {loss_value} at step {step + 1}")
                    accelerator.backward(loss)
                    grad_norm = accelerator.clip_grad_norm_(params, config.clip) if config.clip else torch.tensor(0.0)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                step += 1
                tokens += len(picked) * size * blocks.shape[1]
                elapsed = time.perf_counter() - started
                last = {
                    "iteration": iteration,
                    "step": step,
                    "steps": total_steps,
                    "loss": loss_value,
                    "kl": float(kl),
                    "mse": float(mse),
                    **weighted_terms(kl, mse, config.loss),
                    "lr": lr,
                    "grad_norm": float(grad_norm),
                    "tokens_per_s": tokens / max(elapsed, 1e-9),
                }
                if early is not None and (step % every == 0 or step == total_steps):
                    held = self.heldout_loss(pairs)["loss"]
                    last["heldout_loss"] = held
                    early.update(step, held, weights, config.min_delta)
                    stopped_early = early.misses >= config.patience and step < total_steps
                if on_step:
                    on_step(last)
                if stopped_early:
                    break
                if interrupt is not None and step < total_steps and interrupt():
                    if on_checkpoint:
                        on_checkpoint(state())
                    raise HealInterrupted(f"stopped at step {step}")
                due = (
                    on_checkpoint is not None
                    and time.monotonic() - last_save > config.checkpoint_every_s
                    and step < total_steps
                )
                if shards is not None:  # gathering the sharded state takes every rank: rank 0's clock decides
                    due = self.ranks.broadcast(due)
                if due:
                    on_checkpoint(state())
                    last_save = time.monotonic()
        except NonFiniteLoss:
            failed = True
            raise
        finally:
            loop.close()
            if shards is not None:
                shards.restore()
                params, self._sharded_now = plain, False
            if failed:
                _put(params, names, snapshot)
            for p in self.student.parameters():
                p.requires_grad_(False)
            # Drop the DDP wrapper now: its gradient hooks must not outlive this iteration.
            del runner
            accelerator.free_memory()
        kept = step
        if early is not None and early.checks and early.checks[-1][1] > early.best_loss:
            # The last check is not the best one: keep the best weights (those from before healing
            # when no check beat them), so healing never leaves the held-out loss worse.
            _put(params, names, early.best if early.best is not None else snapshot)
            kept = early.best_step
        return {
            "steps": step,
            "tokens": tokens,
            "seconds": time.perf_counter() - started,
            "last": last,
            "pairs": pairs,
            "stopped_early": stopped_early,
            "kept_step": kept,
            "checks": list(early.checks) if early is not None else [],
        }

    def _step_figures(self, loss: torch.Tensor, kl: torch.Tensor, mse: torch.Tensor) -> tuple[float, float, float]:
        """The step's (loss, KL, MSE) over the whole batch: one process's own, or the ranks' mean
        (a summed KL: their sum). Every rank gets the same numbers, so a non-finite loss stops all."""
        if not self.ranks.distributed:
            return float(loss.detach()), float(kl), float(mse)
        figures = self.ranks.reduce_mean(
            torch.stack([loss.detach().float(), kl.detach().float(), mse.detach().float()])
        )
        loss_value, kl_value, mse_value = (float(v) for v in figures.cpu())
        if self.config.loss.reduction == "sum":
            kl_value *= self.ranks.size
        return loss_value, kl_value, mse_value


def _ddp_ignore_frozen(module: nn.Module) -> None:
    """DDP broadcasts every parameter and buffer at construction and the buffers at every forward;
    the frozen ones are the same on every rank already (same weights, same surgery), so only the
    trainable ones are its business."""
    from torch.nn.parallel import DistributedDataParallel

    frozen = [n for n, p in module.named_parameters() if not p.requires_grad] + [n for n, _ in module.named_buffers()]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, frozen)


def _put(params: list[nn.Parameter], names: dict[int, str], values: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for p in params:
            p.copy_(values[names[id(p)]])


# --- the three loops: what each step starts from and what it is compared with ---------------------
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
        cache.ensure(healer._needed(pairs, layer_map), "train")
        self.start = min(trainable)
        self.prefix = self._prefix(device, needed) if self.start > 0 else None
        self.runner = StudentFromPrefix(healer.student, self.start, pairs, config.loss.final_norm, fused=self.fused)

    fused = False

    @torch.no_grad()
    def _prefix(self, device, needed: torch.Tensor | None = None) -> BlockStore:
        """The frozen layers below the lowest trainable one: once per iteration, on the blocks this
        rank trains on (``needed``; None: all)."""
        healer, adapter = self.healer, adapter_for(self.healer.student)
        blocks, batch = healer.cache.blocks["train"], healer.config.batch_size
        store = BlockStore(
            len(blocks),
            (blocks.shape[1], healer.student.config.hidden_size),
            torch.float32,
            healer.cache.spill_dir,
            healer.cache.limit,
        )
        if needed is None:
            for b in range(0, len(blocks), batch):
                ids = blocks[b : b + batch].to(device)
                inputs = adapter.prepare(ids, None)
                store[b : b + len(ids)] = adapter.run_layers(inputs.hidden, inputs, 0, self.start).float()
            return store
        needed = needed.unique()  # sorted; a window longer than the data names some blocks twice
        for b in range(0, len(needed), batch):
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
        if self.prefix is not None:
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


def _loop_for(healer: Healer, pairs, layer_map, trainable, device, needed: torch.Tensor | None = None):
    if not healer.config.cached:
        return _PlainLoop(healer, pairs, layer_map, device)
    if healer._fused():
        return _FusedLoop(healer, pairs, layer_map, trainable, device, needed)
    return _CachedLoop(healer, pairs, layer_map, trainable, device, needed)
