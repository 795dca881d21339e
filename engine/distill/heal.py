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

import functools
import math
import time
from collections.abc import Callable

import torch
from torch import nn

from engine.config import HealSettings
from engine.distributed.ranks import SINGLE, Ranks
from engine.distributed.sharding import ShardedLayers, full, full_optimizer_state, shard_optimizer_state
from engine.models.adapters import adapter_for

from .early_stop import EarlyStop, HealState
from .fused_kl import fused_head_kl
from .loops import StudentFromPrefix, loop_for
from .losses import hidden_pairs, mse_loss, total_loss, weighted_terms
from .teacher_cache import TeacherCache
from .terms import TERMS
from .trainable import freeze_except

__all__ = ["EarlyStop", "HealInterrupted", "HealState", "Healer", "NonFiniteLoss", "StudentFromPrefix", "TeacherCache"]


class NonFiniteLoss(Exception):
    pass


class HealInterrupted(Exception):
    """Asked to stop between steps; the state was handed to ``on_checkpoint`` first."""


def lr_at(step: int, total: int, config: HealSettings) -> float:
    """Linear warmup, then cosine down to ``min_lr_ratio`` of the peak."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
    return config.lr * (
        config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
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
        config: HealSettings,
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
        self.stage: Callable[[str], None] = lambda what: None  # told as each part of the preparation starts
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
        rows = []  # (batch start, loss, {term: value}, raw MSE), each weighted by the batch's blocks
        for b in starts[self.ranks.rank :: self.ranks.size] if split else starts:
            index = slice(b, b + self.config.batch_size)
            ids = blocks[index].to(device)
            mask = torch.ones_like(ids)
            out, hidden = runner(None, ids)
            t_hidden = self._teacher_hiddens("heldout", index, pairs, layer_map, device)
            if fused:
                kl = self._fused_kl(out, self._exact_target("heldout", index, device), mask, device, exact=True)
                loss, values = total_loss(None, None, hidden, t_hidden, mask, self.config.loss, kl=kl)
            else:
                loss, values = total_loss(
                    out, self.cache.logits("heldout", index, device), hidden, t_hidden, mask, self.config.loss
                )
            # the raw MSE too, so that runs with and without mse_norm compare on one scale
            raw = values["mse"]
            if self.config.loss.mse_norm != "none":
                raw = sum(float(mse_loss(h, t_hidden[k], mask)) for k, h in hidden.items())
            weigh = len(ids)
            rows.append((b, float(loss) * weigh, {k: float(v) * weigh for k, v in values.items()}, float(raw) * weigh))
        if split:
            rows = sorted((row for part in self.ranks.gather(rows) for row in part), key=lambda row: row[0])
        loss_sum, sums, raw_sum = 0.0, {}, 0.0
        for _, loss, values, raw in rows:  # summed in one process's order, so every rank gets one process's number
            loss_sum += loss
            for key, value in values.items():
                sums[key] = sums.get(key, 0.0) + value
            raw_sum += raw
        n = len(blocks)
        result = {"loss": loss_sum / n, **{k: v / n for k, v in sums.items()}, "mse_raw": raw_sum / n}
        weighted = weighted_terms({k: result[k] for k in sums}, self.config.loss)
        return {**result, **{f"{k}_term": v for k, v in weighted.items()}}

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
        share = config.batch_size // size  # this rank's slice of every step's batch (config.check_processes)

        def my_slice(step: int) -> torch.Tensor:
            return order[step * config.batch_size + rank * share : step * config.batch_size + (rank + 1) * share]

        # A summed KL over a slice is 1/size of the summed KL over the batch once DDP averages.
        scaled = size > 1 and config.loss.reduction == "sum"
        self.train_loss = (
            config.loss.model_copy(update={"kl_scale": config.loss.kl_scale * size}) if scaled else config.loss
        )
        needed = torch.cat([my_slice(s) for s in range(total_steps)]) if size > 1 else None
        loop = loop_for(self, pairs, layer_map, trainable, device, needed)

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
        if self.shard:  # the layers only: config.check_processes refuses fsdp with train_norm/train_head
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
                    loss, values = loop.loss(out, student_hidden, target, mask)
                    loss_value, values = self._step_figures(loss, values)
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
                    "terms": weighted_terms(values, config.loss),  # they add up to the loss
                    "unweighted": values,
                    "lr": lr,
                    "grad_norm": float(grad_norm),
                    "tokens_per_s": tokens / max(elapsed, 1e-9),
                }
                if early is not None and (step % every == 0 or step == total_steps):
                    held = self.heldout_loss(pairs)["loss"]
                    last["heldout_loss"] = held
                    early.update(step, held, weights, config.min_delta)
                    stopped_early = (
                        early.misses >= config.patience and config.early_stop_from * total_steps <= step < total_steps
                    )
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
        if early is not None and early.checks and early.checks[-1][0] != early.best_step:
            # The last check was no gain (it did not beat the best by min_delta, the rule that stops
            # healing): keep the best weights (those from before healing when no check beat them),
            # so healing never leaves weights that a check did not show better. A last check lower
            # than the best by less than min_delta is within the noise: keeping its weights once
            # cost 1.8 points of the suite (a final healing of every layer, 20.3144 -> 20.3058).
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

    def _step_figures(self, loss: torch.Tensor, values: dict[str, torch.Tensor]) -> tuple[float, dict[str, float]]:
        """The step's loss and terms over the whole batch: one process's own, or the ranks' mean (a
        summed term: their sum). Every rank gets the same numbers, so a non-finite loss stops all."""
        if not self.ranks.distributed:
            return float(loss.detach()), {k: float(v) for k, v in values.items()}
        figures = self.ranks.reduce_mean(torch.stack([loss.detach().float(), *(v.float() for v in values.values())]))
        loss_value, *rest = (float(v) for v in figures.cpu())
        out = {}
        for (name, _), value in zip(values.items(), rest):
            out[name] = value * self.ranks.size if TERMS[name].summed(self.config.loss) else value
        return loss_value, out


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
