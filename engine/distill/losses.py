"""The healing loss: ``KL(teacher || student) * kl_scale + MSE(hidden states) * mse_scale``.

Every Table 1 variant of the paper is a value of ``LossConfig``, not a code change:
  * ``kl_input``: ``log_probs`` (the KL of the two distributions) or ``logits`` (raw student
    logits fed where log-probabilities belong, as a naive ``kl_div(student_logits, p_t)`` does);
  * ``direction``: ``forward`` KL(teacher || student) or ``reverse`` KL(student || teacher);
  * ``temperature`` T (both distributions softened, the KL multiplied by T^2);
  * ``kl_scale`` (paper 1/100) and ``mse_scale``;
  * ``reduction``: ``token_mean`` (default: summed over the vocabulary, averaged over real tokens,
    so the scale does not depend on batch shape) or ``sum`` (the paper's code: summed over batch,
    sequence and vocabulary, so its weight grows with the batch);
  * ``kl_reference_tokens``: with ``token_mean``, the KL term is weighted ``kl_scale *
    kl_reference_tokens``. The paper's ``/100`` was meant for a KL summed over 2 x 2,048 tokens per
    device; with the token mean and a bare 1/100, the KL term was 0.04 % of the loss (KL 0.127 x
    0.01 against an MSE of 3.08) and healing was in effect the paper's "MSE only" row. The default
    4,096 keeps the paper's balance whatever the batch shape;
  * ``hidden``: which hidden states the MSE compares: the last trainable layer's output against the
    teacher's output of the same original layer plus the last layer (``last_trainable+last``,
    the paper's best), ``last_trainable``, ``last``, ``all_trainable``, ``all`` or ``none``; "the last
    layer" is the model's output, compared after the final norm when ``final_norm`` (the paper's code
    uses ``hidden_states[-1]``, which is post-norm);
  * ``mse_norm``: ``none`` (the paper: the raw MSE) or ``teacher``: each compared layer's MSE over
    the teacher's mean square at that layer (a relative error). The residual stream grows with depth
    (on the embedded model the raw MSE after removing layer 27 was 202 against 2.2 after layer 14), so
    with the raw MSE the KL's share of the loss swings from 0.9 to 0.2 with the layer removed; the
    relative error keeps one balance at every depth.
Padding is masked everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.config import heal_default

HIDDEN_CHOICES = ("last_trainable+last", "last_trainable", "last", "all_trainable", "all", "none")
MSE_NORMS = ("none", "teacher")


@dataclass(frozen=True)
class LossConfig:
    kl_scale: float = heal_default("kl_scale")
    mse_scale: float = heal_default("mse_scale")
    kl_input: str = heal_default("kl_input")  # "log_probs" | "logits"
    direction: str = heal_default("direction")  # "forward" | "reverse"
    temperature: float = heal_default("temperature")
    reduction: str = heal_default("reduction")  # "token_mean" | "sum"
    hidden: str = heal_default("hidden")
    # "last" compares the final hidden state after the final norm (the paper's code)
    final_norm: bool = heal_default("final_norm")
    # token_mean: the KL term weighs kl_scale * this (the paper's tokens per device)
    kl_reference_tokens: int = heal_default("kl_reference_tokens")
    mse_norm: str = heal_default("mse_norm")  # "none" | "teacher"

    @property
    def kl_weight(self) -> float:
        """What the reduced KL is multiplied by in the loss."""
        return self.kl_scale * (self.kl_reference_tokens if self.reduction == "token_mean" else 1)

    def __post_init__(self):
        checks = {
            "kl_input": ("log_probs", "logits"),
            "direction": ("forward", "reverse"),
            "reduction": ("token_mean", "sum"),
            "hidden": HIDDEN_CHOICES,
            "mse_norm": MSE_NORMS,
        }
        for name, allowed in checks.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"loss.{name} must be one of {', '.join(allowed)} (got {getattr(self, name)!r})")
        if self.temperature <= 0:
            raise ValueError("loss.temperature must be positive")
        if self.kl_reference_tokens < 1:
            raise ValueError("loss.kl_reference_tokens must be at least 1")


def kl_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, config: LossConfig
) -> torch.Tensor:
    """KL over the vocabulary at each real token, reduced as configured. Shapes (..., V) and (...)."""
    t = config.temperature
    s = student_logits.float() / t
    te = teacher_logits.float() / t
    teacher_logp = F.log_softmax(te, dim=-1)
    student_logp = F.log_softmax(s, dim=-1) if config.kl_input == "log_probs" else s
    if config.direction == "forward":
        per_token = (teacher_logp.exp() * (teacher_logp - student_logp)).sum(-1)
    else:
        # KL(student || teacher); with kl_input=logits the "student distribution" is exp(logits).
        per_token = (student_logp.exp() * (student_logp - teacher_logp)).sum(-1)
    per_token = per_token * (t * t)
    mask = mask.to(per_token.dtype)
    total = (per_token * mask).sum()
    if config.reduction == "sum":
        return total
    return total / mask.sum().clamp(min=1)


def mse_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, norm: str = "none") -> torch.Tensor:
    """Mean squared error over the hidden size and the real tokens. Shapes (B, T, D), (B, T).
    ``norm="teacher"``: over the teacher's mean square on the same tokens (a constant of the batch)."""
    mask = mask.to(torch.float32)
    teacher = teacher.float()
    per_token = ((student.float() - teacher) ** 2).mean(-1)
    count = mask.sum().clamp(min=1)
    mse = (per_token * mask).sum() / count
    if norm == "teacher":
        scale = ((teacher.detach() ** 2).mean(-1) * mask).sum() / count
        mse = mse / scale.clamp(min=torch.finfo(torch.float32).tiny)
    return mse


def hidden_pairs(config: LossConfig, trainable: list[int], num_layers: int) -> list[int]:
    """The current layer indices whose outputs the MSE compares with the teacher's."""
    if config.hidden == "none":
        return []
    last = num_layers - 1
    choice = {
        "last_trainable+last": [max(trainable), last] if trainable else [last],
        "last_trainable": [max(trainable)] if trainable else [],
        "last": [last],
        "all_trainable": sorted(trainable),
        "all": list(range(num_layers)),
    }[config.hidden]
    return sorted(set(choice))


def total_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    student_hidden: dict[int, torch.Tensor],
    teacher_hidden: dict[int, torch.Tensor],
    mask: torch.Tensor,
    config: LossConfig,
    kl: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, kl, mse); the MSE (relative where ``mse_norm``) is summed over the compared layers, as in
    the paper. ``kl`` given
    (the fused head + KL of ``fused_kl``) replaces the KL of the two logits, which are then unused."""
    if kl is None:
        kl = kl_loss(student_logits, teacher_logits, mask, config)
    mse = kl.new_zeros((), dtype=torch.float32)
    for key, value in student_hidden.items():
        mse = mse + mse_loss(value, teacher_hidden[key], mask, config.mse_norm)
    return kl * config.kl_weight + mse * config.mse_scale, kl.detach(), mse.detach()


def weighted_terms(kl: float, mse: float, config: LossConfig) -> dict[str, float]:
    """The two terms as they enter the loss: the balance a person needs to see."""
    return {"kl_term": float(kl) * config.kl_weight, "mse_term": float(mse) * config.mse_scale}
