"""The healing loss: ``KL(teacher || student) * kl_scale + MSE(hidden states) * mse_scale``.

The loss is the sum of the registered terms of ``engine.distill.terms`` (here: ``kl`` and ``mse``),
each weighted; ``total_loss`` returns every term's value by name, and each healing step logs them
(``train_step.terms``). Every Table 1 variant of the paper is a value of ``LossSettings``
(``engine.config``; the user sets ``heal.<name>``), not a code change:
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

import torch
import torch.nn.functional as F

from engine.config import LossSettings

from .terms import TERMS, LossTerm, TermBatch, register


def kl_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, config: LossSettings
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


def hidden_pairs(config: LossSettings, trainable: list[int], num_layers: int) -> list[int]:
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


def _kl_value(batch: TermBatch, config: LossSettings) -> torch.Tensor:
    if batch.kl is not None:  # the fused head + KL of ``fused_kl``
        return batch.kl
    return kl_loss(batch.student_logits, batch.teacher_logits, batch.mask, config)


def _mse_value(batch: TermBatch, config: LossSettings) -> torch.Tensor:
    """Summed over the compared layers, as in the paper (relative where ``mse_norm``)."""
    mse = torch.zeros((), dtype=torch.float32, device=batch.mask.device)
    for key, value in batch.student_hidden.items():
        mse = mse + mse_loss(value, batch.teacher_hidden[key], batch.mask, config.mse_norm)
    return mse


register(
    LossTerm(
        "kl",
        _kl_value,
        lambda c: c.kl_weight,
        "KL(teacher || student) on the logits (heal.kl_scale, heal.kl_reference_tokens, heal.kl_input, ...)",
        always=True,
        summed=lambda c: c.reduction == "sum",
        order=0,
    )
)
register(
    LossTerm(
        "mse",
        _mse_value,
        lambda c: c.mse_scale,
        "the hidden-state MSE of the compared layers (heal.mse_scale, heal.hidden, heal.mse_norm)",
        always=True,
        order=1,
    )
)


def active_terms(config: LossSettings) -> list[LossTerm]:
    """The registered terms that enter this loss, in their order (kl, mse first)."""
    return sorted((term for term in TERMS.values() if term.active(config)), key=lambda term: term.order)


def total_loss(
    student_logits: torch.Tensor | None,
    teacher_logits: torch.Tensor | None,
    student_hidden: dict[int, torch.Tensor],
    teacher_hidden: dict[int, torch.Tensor],
    mask: torch.Tensor,
    config: LossSettings,
    kl: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(total, {term: its unweighted value, detached}): the total is each active term's value times
    its weight, summed in registration order. ``kl`` given (the fused head + KL of ``fused_kl``)
    replaces the KL of the two logits, which are then unused."""
    batch = TermBatch(student_logits, teacher_logits, student_hidden, teacher_hidden, mask, kl)
    total, values = None, {}
    for term in active_terms(config):
        value = term.value(batch, config)
        part = value * term.weight(config)
        total = part if total is None else total + part
        values[term.name] = value.detach()
    return total, values


def weighted_terms(values: dict[str, float], config: LossSettings) -> dict[str, float]:
    """Each term as it enters the loss (they add up to it): the balance a person needs to see."""
    return {name: float(value) * TERMS[name].weight(config) for name, value in values.items()}
