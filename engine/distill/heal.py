"""Healing a student against the frozen teacher after a removal (accelerate, AdamW, warmup + cosine).

The cached loop (default) follows the performance principles of DESIGN.md:
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

import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from engine.models.adapters import adapter_for

from .cache import BlockStore
from .data import DataConfig
from .fused_kl import TopK, fused_head_kl, teacher_topk
from .losses import LossConfig, hidden_pairs, total_loss
from .trainable import TrainableConfig, freeze_except


@dataclass(frozen=True)
class HealConfig:
    loss: LossConfig = field(default_factory=LossConfig)
    trainable: TrainableConfig = field(default_factory=TrainableConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lr: float = 1e-4
    warmup_steps: int = 2
    min_lr_ratio: float = 0.1
    batch_size: int = 4
    grad_accum: int = 1
    clip: float = 1.0
    weight_decay: float = 0.0
    cached: bool = True
    fused_head: bool = True  # the cached loop's head + KL fused and chunked (where the loss allows it)
    head_matmul: str = "auto"  # the fused head's matmuls: "bf16", "fp32" or "auto" (bf16 on CUDA and on CPUs with native bf16)
    teacher_topk: int = 0  # > 0: store the teacher's top-k tokens instead of recomputing its logits
    cache_limit_mb: int = 1024
    checkpoint_every_s: float = 120.0


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

    def __init__(self, teacher: nn.Module, train: torch.Tensor, heldout: torch.Tensor, spill_dir: Path | None, limit_bytes: int, batch_size: int):
        self.teacher = teacher
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.adapter = adapter_for(teacher)
        self.blocks = {"train": train, "heldout": heldout}
        self.spill_dir, self.limit, self.batch_size = spill_dir, limit_bytes, batch_size
        self.final: dict[str, BlockStore] = {}
        self.layers: dict[tuple[str, int], BlockStore] = {}
        self.topk: dict[str, tuple[BlockStore, BlockStore, BlockStore]] = {}

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

    @torch.no_grad()
    def ensure_topk(self, split: str, k: int, temperature: float) -> None:
        """The teacher's top-k log-probabilities, their ids and its tail mass, once per run."""
        if split in self.topk:
            return
        self.ensure(set(), split)
        n, t = self.blocks[split].shape
        stores = (BlockStore(n, (t, k), torch.float32, self.spill_dir, self.limit),
                  BlockStore(n, (t, k), torch.int32, self.spill_dir, self.limit),
                  BlockStore(n, (t,), torch.float32, self.spill_dir, self.limit))
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
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


@dataclass
class HealState:
    """What a mid-iteration checkpoint holds to continue exactly where it stopped."""

    step: int = 0
    optimizer: dict | None = None
    trainable: dict[str, torch.Tensor] | None = None


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
    def __init__(self, student: nn.Module, teacher: nn.Module, cache: TeacherCache, config: HealConfig):
        self.student = student
        self.teacher = teacher
        self.cache = cache
        self.config = config
        self._head_cast: tuple[torch.Tensor, torch.Tensor] | None = None

    def _teacher_targets(self, split: str, index, pairs: list[int], layer_map: list[int], device):
        return self.cache.logits(split, index, device), self._teacher_hiddens(split, index, pairs, layer_map, device)

    @torch.no_grad()
    def _teacher_hiddens(self, split: str, index, pairs: list[int], layer_map: list[int], device) -> dict[int, torch.Tensor]:
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
        )

    def _fused_kl(self, student_normed: torch.Tensor, target, mask: torch.Tensor, device, exact: bool = False) -> torch.Tensor:
        loss = self.config.loss
        weight = self.cache.adapter.lm_head.weight.detach()
        matmul_dtype = torch.bfloat16 if not exact and _bf16_head(self.config.head_matmul, device) else None
        if matmul_dtype is not None and weight.dtype != matmul_dtype:
            if self._head_cast is None or self._head_cast[0] is not weight:
                self._head_cast = (weight, weight.to(matmul_dtype))  # cast once, not at every step
            weight = self._head_cast[1]
        return fused_head_kl(student_normed, weight, target, mask, loss.temperature, loss.reduction, matmul_dtype=matmul_dtype)

    def _exact_target(self, split: str, index, device) -> torch.Tensor:
        """The exact KL's target: the fused loss recomputes the teacher's logits from it chunk by chunk."""
        return self.cache.normed_final(split, index, device, self.cache.adapter.lm_head.weight.dtype)

    def _needed(self, pairs: list[int], layer_map: list[int]) -> set[int]:
        return {layer_map[j] for j in pairs if j != len(layer_map) - 1}

    @torch.no_grad()
    def heldout_loss(self, pairs: list[int]) -> dict[str, float]:
        adapter = adapter_for(self.student)
        layer_map = adapter.layer_map()
        self.cache.ensure(self._needed(pairs, layer_map), "heldout")
        blocks = self.cache.blocks["heldout"]
        device = next(self.student.parameters()).device
        fused = self._fused()
        runner = StudentFromPrefix(self.student, 0, pairs, self.config.loss.final_norm, fused=fused)
        totals = {"loss": 0.0, "kl": 0.0, "mse": 0.0}
        for b in range(0, len(blocks), self.config.batch_size):
            index = slice(b, b + self.config.batch_size)
            ids = blocks[index].to(device)
            mask = torch.ones_like(ids)
            out, hidden = runner(None, ids)
            if fused:
                # Always the exact KL here, whatever the training target: the figure users compare.
                t_hidden = self._teacher_hiddens("heldout", index, pairs, layer_map, device)
                kl = self._fused_kl(out, self._exact_target("heldout", index, device), mask, device, exact=True)
                loss, kl, mse = total_loss(None, None, hidden, t_hidden, mask, self.config.loss, kl=kl)
            else:
                t_logits, t_hidden = self._teacher_targets("heldout", index, pairs, layer_map, device)
                loss, kl, mse = total_loss(out, t_logits, hidden, t_hidden, mask, self.config.loss)
            for key, value in (("loss", loss), ("kl", kl), ("mse", mse)):
                totals[key] += float(value) * len(ids)
        return {k: v / len(blocks) for k, v in totals.items()}

    def heal(
        self,
        trainable: list[int],
        iteration: int,
        seed: int,
        on_step: Callable[[dict], None] | None = None,
        on_checkpoint: Callable[[HealState], None] | None = None,
        resume: HealState | None = None,
        max_steps: int | None = None,
        interrupt: Callable[[], bool] | None = None,
    ) -> dict:
        """Train the chosen layers; returns a summary. Raises NonFiniteLoss after restoring weights."""
        from accelerate import Accelerator

        config = self.config
        adapter = adapter_for(self.student)
        layer_map = adapter.layer_map()
        pairs = hidden_pairs(config.loss, trainable, adapter.num_layers)
        params = freeze_except(self.student, trainable, config.trainable)
        names = {id(p): n for n, p in self.student.named_parameters()}
        snapshot = {names[id(p)]: p.detach().clone() for p in params}
        device = next(self.student.parameters()).device
        accelerator = Accelerator(
            cpu=device.type == "cpu",
            mixed_precision="bf16" if device.type == "cuda" else "no",
            gradient_accumulation_steps=config.grad_accum,
        )
        blocks = self.cache.blocks["train"]
        n = len(blocks)
        steps_per_epoch = max(1, n // config.batch_size)
        total_steps = steps_per_epoch
        if max_steps is not None:
            total_steps = min(total_steps, max_steps)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + iteration))

        fused = config.cached and self._fused()
        if config.cached:
            self.cache.ensure(self._needed(pairs, layer_map), "train")
            if fused and config.teacher_topk:
                self.cache.ensure_topk("train", config.teacher_topk, config.loss.temperature)
        start = min(trainable) if config.cached else 0
        prefix = None
        if config.cached and start > 0:
            # The frozen layers below the lowest trainable one: once per iteration.
            prefix = BlockStore(n, (blocks.shape[1], self.student.config.hidden_size), torch.float32,
                                self.cache.spill_dir, self.cache.limit)
            with torch.no_grad():
                for b in range(0, n, config.batch_size):
                    ids = blocks[b : b + config.batch_size].to(device)
                    inputs = adapter.prepare(ids, None)
                    prefix[b : b + len(ids)] = adapter.run_layers(inputs.hidden, inputs, 0, start).float()

        runner = StudentFromPrefix(self.student, start, pairs, self.config.loss.final_norm, fused=fused)
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        step = 0
        if resume is not None:
            step = resume.step
            if resume.trainable:
                with torch.no_grad():
                    for p in params:
                        p.copy_(resume.trainable[names[id(p)]])
            if resume.optimizer:
                optimizer.load_state_dict(resume.optimizer)
        runner, optimizer = accelerator.prepare(runner, optimizer)

        last_save = time.monotonic()
        tokens = 0
        started = time.perf_counter()
        last = {}
        try:
            while step < total_steps:
                lr = lr_at(step, total_steps, config)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                picked = order[step * config.batch_size : (step + 1) * config.batch_size]
                ids = blocks[picked].to(device)
                mask = torch.ones_like(ids)
                hidden = prefix[picked].to(device) if prefix is not None else None
                if fused:
                    teacher_hidden = self._teacher_hiddens("train", picked, pairs, layer_map, device)
                    target = (self.cache.topk_target("train", picked, device) if config.teacher_topk
                              else self._exact_target("train", picked, device))
                elif config.cached:
                    teacher_logits, teacher_hidden = self._teacher_targets("train", picked, pairs, layer_map, device)
                else:
                    teacher_logits, teacher_hidden = self._plain_teacher(ids, pairs, layer_map)
                with accelerator.accumulate(runner), accelerator.autocast():
                    out, student_hidden = runner(hidden, ids)
                    if fused:
                        kl_value = self._fused_kl(out, target, mask, device)
                        loss, kl, mse = total_loss(None, None, student_hidden, teacher_hidden, mask, config.loss, kl=kl_value)
                    else:
                        loss, kl, mse = total_loss(out, teacher_logits, student_hidden, teacher_hidden, mask, config.loss)
                    if not torch.isfinite(loss):
                        raise NonFiniteLoss(f"loss became {float(loss.detach())} at step {step + 1}")
                    accelerator.backward(loss)
                    grad_norm = accelerator.clip_grad_norm_(params, config.clip) if config.clip else torch.tensor(0.0)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                step += 1
                tokens += ids.numel()
                elapsed = time.perf_counter() - started
                last = {
                    "iteration": iteration, "step": step, "steps": total_steps, "loss": float(loss.detach()), "kl": float(kl),
                    "mse": float(mse), "lr": lr, "grad_norm": float(grad_norm), "tokens_per_s": tokens / max(elapsed, 1e-9),
                }
                if on_step:
                    on_step(last)
                if interrupt is not None and step < total_steps and interrupt():
                    if on_checkpoint:
                        on_checkpoint(HealState(step, optimizer.state_dict(), {names[id(p)]: p.detach().clone() for p in params}))
                    raise HealInterrupted(f"stopped at step {step}")
                if on_checkpoint and time.monotonic() - last_save > config.checkpoint_every_s and step < total_steps:
                    on_checkpoint(HealState(step, optimizer.state_dict(), {names[id(p)]: p.detach().clone() for p in params}))
                    last_save = time.monotonic()
        except NonFiniteLoss:
            with torch.no_grad():
                for p in params:
                    p.copy_(snapshot[names[id(p)]])
            raise
        finally:
            if prefix is not None:
                prefix.close()
            for p in self.student.parameters():
                p.requires_grad_(False)
        return {"steps": step, "tokens": tokens, "seconds": time.perf_counter() - started, "last": last, "pairs": pairs}

    @torch.no_grad()
    def _plain_teacher(self, ids, pairs, layer_map):
        adapter = self.cache.adapter
        inputs = adapter.prepare(ids, None)
        hidden = inputs.hidden
        last = len(layer_map) - 1
        wanted = {layer_map[j]: j for j in pairs if j != last}
        out = {}
        for o in range(adapter.num_layers):
            hidden = adapter.run_layer(o, hidden, inputs)
            if o in wanted:
                out[wanted[o]] = hidden
        if last in pairs:
            out[last] = adapter.norm(hidden) if self.config.loss.final_norm else hidden
        return adapter.head(hidden), out
