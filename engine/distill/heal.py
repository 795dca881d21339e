"""Healing a student against the frozen teacher after a removal (accelerate, AdamW, warmup + cosine).

The cached loop (default) follows the performance principles of DESIGN.md:
  * the teacher's final hidden state on the distillation data is computed once per run, and its
    logits are recomputed through the frozen LM head at each step (a 576-float row instead of a
    49,152-float one per token for SmolLM2; exact, no top-k approximation);
  * the teacher's output of the original layers the MSE compares is computed once per iteration;
  * the student's frozen layers below the lowest trainable layer run once per iteration; each step
    starts from their cached output.
``cached=False`` is the plain loop (teacher and full student forward every step), kept for the
benchmark and as the reference the tests compare against.
"""

from __future__ import annotations

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
    cache_limit_mb: int = 1024
    checkpoint_every_s: float = 120.0


class NonFiniteLoss(Exception):
    pass


class HealInterrupted(Exception):
    """Asked to stop between steps; the state was handed to ``on_checkpoint`` first."""


class StudentFromPrefix(nn.Module):
    """Runs the student from a stored layer input upward: the module accelerate prepares (so that
    data-parallel wrappers see the real forward), returning logits and the compared hidden states."""

    def __init__(self, model: nn.Module, start: int, pairs: list[int], final_norm: bool = False):
        super().__init__()
        self.model = model
        self.start = start
        self.pairs = pairs
        self.final_norm = final_norm

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

    def logits(self, split: str, index: slice, device) -> torch.Tensor:
        with torch.no_grad():
            return self.adapter.head(self.final[split][index].to(device, self.adapter.lm_head.weight.dtype))

    def hidden(self, split: str, original: int, index: slice, device) -> torch.Tensor:
        return self.layers[(split, original)][index].to(device)

    def close(self) -> None:
        for store in [*self.final.values(), *self.layers.values()]:
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


class Healer:
    def __init__(self, student: nn.Module, teacher: nn.Module, cache: TeacherCache, config: HealConfig):
        self.student = student
        self.teacher = teacher
        self.cache = cache
        self.config = config

    def _teacher_targets(self, split: str, index, pairs: list[int], layer_map: list[int], device):
        with torch.no_grad():
            teacher_logits = self.cache.logits(split, index, device)
            teacher_hidden = {j: self._teacher_hidden(split, j, index, layer_map, device) for j in pairs}
        return teacher_logits, teacher_hidden

    def _teacher_hidden(self, split: str, j: int, index, layer_map: list[int], device) -> torch.Tensor:
        """The student's last layer is compared with the teacher's output (the model output); any
        other layer with the teacher's output of the same original layer."""
        if j == len(layer_map) - 1:
            final = self.cache.final[split][index].to(device)
            return self.cache.adapter.norm(final) if self.config.loss.final_norm else final
        return self.cache.hidden(split, layer_map[j], index, device)

    def _needed(self, pairs: list[int], layer_map: list[int]) -> set[int]:
        return {layer_map[j] for j in pairs if j != len(layer_map) - 1}

    @torch.no_grad()
    def heldout_loss(self, pairs: list[int]) -> dict[str, float]:
        adapter = adapter_for(self.student)
        layer_map = adapter.layer_map()
        self.cache.ensure(self._needed(pairs, layer_map), "heldout")
        blocks = self.cache.blocks["heldout"]
        device = next(self.student.parameters()).device
        runner = StudentFromPrefix(self.student, 0, pairs, self.config.loss.final_norm)
        totals = {"loss": 0.0, "kl": 0.0, "mse": 0.0}
        for b in range(0, len(blocks), self.config.batch_size):
            index = slice(b, b + self.config.batch_size)
            ids = blocks[index].to(device)
            logits, hidden = runner(None, ids)
            t_logits, t_hidden = self._teacher_targets("heldout", index, pairs, layer_map, device)
            loss, kl, mse = total_loss(logits, t_logits, hidden, t_hidden, torch.ones_like(ids), self.config.loss)
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

        if config.cached:
            self.cache.ensure(self._needed(pairs, layer_map), "train")
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

        runner = StudentFromPrefix(self.student, start, pairs, self.config.loss.final_norm)
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
                if config.cached:
                    teacher_logits, teacher_hidden = self._teacher_targets("train", picked, pairs, layer_map, device)
                else:
                    teacher_logits, teacher_hidden = self._plain_teacher(ids, pairs, layer_map)
                with accelerator.accumulate(runner), accelerator.autocast():
                    logits, student_hidden = runner(hidden, ids)
                    loss, kl, mse = total_loss(logits, teacher_logits, student_hidden, teacher_hidden, mask, config.loss)
                    if not torch.isfinite(loss):
                        raise NonFiniteLoss(f"loss became {float(loss)} at step {step + 1}")
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
