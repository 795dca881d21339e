"""The KL loss fused with the frozen LM head, chunked over tokens, with its gradient computed in the forward.

Why: on CPU, healing spends much of each step on the head (hidden 576 -> vocabulary 49,152 for
SmolLM2-135M) and on the full-vocabulary elementwise passes of the KL and its backward. The dense
path (``logits = h @ W.T`` then ``losses.kl_loss``) materialises the (N, V) student and teacher logits
and half a dozen (N, V) temporaries for autograd: for N = 1,024 tokens each one is 200 MB of float32,
far beyond the caches, so every pass runs at memory bandwidth. Here, in the style of Liger-Kernel's
fused linear cross-entropy, ``chunk`` tokens are processed at a time: their logits are computed, the
loss and the gradient with respect to the logits are computed in place, that gradient is pushed back
through the head at once (``grad_h = g @ W``), and the chunk is dropped. Nothing of size (N, V) is
ever kept, autograd stores only the (N, D) gradient of the hidden state, and backward is a multiply.

Two targets:
  * the teacher's final hidden state (N, D): the exact forward KL, the teacher's logits recomputed
    chunk by chunk through the same frozen head;
  * a ``TopK`` (``teacher_topk``): what a teacher cache would store per token instead of the whole
    distribution, the teacher's k most likely tokens and the log of its remaining mass. The loss is the
    KL of the two distributions "bucketed" to those k tokens plus one tail bucket; see
    ``fused_head_kl`` for its error.

``matmul_dtype=torch.bfloat16`` runs both matmuls in bfloat16 (about 4x faster than float32 on CPUs
with AVX512-BF16), the softmax and KL math staying in float32. CPU matmuls have no bfloat16 x bfloat16
-> float32 variant, so the logits themselves are rounded to bfloat16 (8 significant bits: an absolute
error of up to |logit| / 256) before the float32 math. The errors are unbiased and average out: on random
logits up to 19 in magnitude the loss moved by 2e-4 (relative) and the gradient kept a cosine of 0.9998.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

REDUCTIONS = ("token_mean", "sum")

# log p_tail when the teacher's tail is empty or underflows: finite (so a cache can store it, even in
# float16) yet exp() of it is exactly 0 in float32 and float64, so the tail bucket then contributes nothing.
TAIL_LOGP_FLOOR = -1.0e4


class TopK(NamedTuple):
    """The teacher's distribution at temperature T, kept to its k most likely tokens per row.

    ``logp`` (..., k): their log-probabilities; ``index`` (..., k): their token ids; ``tail_logp`` (...):
    log of the remaining mass, log(1 - sum exp(logp)), at least ``TAIL_LOGP_FLOOR``.
    """

    logp: torch.Tensor
    index: torch.Tensor
    tail_logp: torch.Tensor


def teacher_topk(teacher_logits: torch.Tensor, k: int, temperature: float = 1.0) -> TopK:
    """The teacher's top-k log-probabilities at ``temperature``, their ids and the log of the tail mass.

    Float32 (float64 kept for float64 logits). The tail is a difference of logsumexps, not
    log1p(-sum p), so it stays accurate when it is tiny (where 1 - sum p would cancel to noise).
    """
    vocab = teacher_logits.shape[-1]
    if not 1 <= k <= vocab:
        raise ValueError(f"k must be in [1, {vocab}] (got {k})")
    t = teacher_logits.to(_math_dtype(teacher_logits.dtype)) / temperature
    lse = t.logsumexp(-1, keepdim=True)
    top, index = t.topk(k, dim=-1)
    tail_lse = t.scatter(-1, index, -torch.inf).logsumexp(-1)
    tail_logp = (tail_lse - lse.squeeze(-1)).clamp(TAIL_LOGP_FLOOR, 0.0)
    return TopK(logp=top - lse, index=index, tail_logp=tail_logp)


def fused_head_kl(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor | TopK,
    mask: torch.Tensor | None,
    temperature: float = 1.0,
    reduction: str = "token_mean",
    chunk: int = 256,
    matmul_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Forward KL(teacher || student) of the student's logits ``hidden @ weight.T``, as ``losses.kl_loss``.

    Shapes: ``hidden`` (..., D), ``weight`` (V, D) (frozen: an error if it requires grad), ``mask`` (...)
    (None: every token real). Padded tokens contribute nothing to the loss or the gradient and are not
    computed at all. Both distributions are softened by ``temperature`` T and the KL multiplied by T^2;
    ``token_mean`` sums over the vocabulary and averages over real tokens, ``sum`` sums. Returns a float32
    scalar (float64 for float64 inputs) whose backward yields the gradient with respect to ``hidden``.

    ``target`` is either
      * the teacher's final hidden state (..., D): the exact KL, teacher logits ``target @ weight.T``;
      * a ``TopK`` from ``teacher_topk`` at the same temperature: the bucketed KL
            sum_{i in K} p_i (log p_i - log q_i) + p_tail (log p_tail - log q_tail),
        with q_tail the student's mass outside K. By the log-sum inequality it is a lower bound:
            full KL - bucket KL = p_tail * KL(p|tail || q|tail) >= 0,
        where p|tail and q|tail are the two distributions restricted to the tokens outside K and
        renormalised. It is exact when the teacher's tail is empty (k = V) or carries no mass, and the
        error is small when p_tail is. Its gradient moves the student's tail as one block: q_j - p_j on
        K, q_j (1 - p_tail / q_tail) outside it (the tail's shape within itself is not taught).

    ``chunk`` tokens are processed at a time (peak extra memory a few chunk x V floats instead of
    several N x V). ``matmul_dtype`` (e.g. torch.bfloat16) is the dtype of both matmuls' inputs, None
    keeping the input dtype; a ``weight`` already in that dtype saves casting all of it at every call.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)} (got {reduction!r})")
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    if chunk < 1:
        raise ValueError("chunk must be at least 1")
    if weight.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            "fused_head_kl treats the LM head as frozen: pass weight.detach(), or use the dense kl_loss to train it"
        )
    args = (hidden, weight, target, mask, temperature, reduction, chunk, matmul_dtype)
    if torch.is_grad_enabled() and hidden.requires_grad:
        return _FusedHeadKL.apply(*args)
    loss, _ = _loss_and_grad(*args, want_grad=False)
    return loss


class _FusedHeadKL(torch.autograd.Function):
    """The loss, with the gradient of ``hidden`` computed in the forward; backward only scales it."""

    @staticmethod
    def forward(ctx, hidden, weight, target, mask, temperature, reduction, chunk, matmul_dtype):
        loss, grad_hidden = _loss_and_grad(
            hidden, weight, target, mask, temperature, reduction, chunk, matmul_dtype, want_grad=True
        )
        ctx.save_for_backward(grad_hidden)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        (grad_hidden,) = ctx.saved_tensors
        return grad_output.to(grad_hidden.dtype) * grad_hidden, None, None, None, None, None, None, None


def _math_dtype(dtype: torch.dtype) -> torch.dtype:
    """Softmax and KL math: float32, or float64 for float64 inputs (so tests can be exact)."""
    return torch.promote_types(dtype, torch.float32)


def _real_rows(mask: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
    if mask is None:
        return torch.arange(n, device=device)
    return mask.reshape(-1).nonzero().squeeze(1)


def _loss_and_grad(hidden, weight, target, mask, temperature, reduction, chunk, matmul_dtype, want_grad):
    """(loss, gradient of the loss with respect to ``hidden`` or None), ``chunk`` real tokens at a time."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    rows = _real_rows(mask, flat.shape[0], flat.device)
    n = rows.numel()
    norm = max(n, 1) if reduction == "token_mean" else 1
    mm_dtype = matmul_dtype or torch.promote_types(hidden.dtype, weight.dtype)
    math_dtype = _math_dtype(mm_dtype)
    head = weight.detach().to(mm_dtype)  # cast once per call, not once per chunk
    # Scaling the (N, D) inputs by 1/T is the same as scaling the logits, without a pass over (N, V).
    student = _scaled_rows(hidden, rows, temperature, mm_dtype)
    if isinstance(target, TopK):
        topk = _topk_rows(target, rows, math_dtype)
    else:
        teacher = _scaled_rows(target.detach(), rows, temperature, mm_dtype)

    total = torch.zeros((), dtype=math_dtype, device=flat.device)
    grad_real = torch.empty((n, flat.shape[1]), dtype=math_dtype, device=flat.device) if want_grad else None
    for start in range(0, n, chunk):
        part = slice(start, start + chunk)
        if isinstance(target, TopK):
            chunk_target = TopK(topk.logp[part], topk.index[part], topk.tail_logp[part])
        else:
            chunk_target = teacher[part]
        kl_sum, grad_part = _chunk(student[part], head, chunk_target, math_dtype, want_grad)
        total += kl_sum
        if want_grad:
            grad_real[part] = grad_part

    t2 = temperature * temperature
    loss = total * (t2 / norm)
    if not want_grad:
        return loss, None
    # d(T^2 KL)/d(logits) = T (q - p): one factor T from the loss, 1/T from softening the logits.
    grad_real *= temperature / norm
    grad = torch.zeros_like(flat).index_copy_(0, rows, grad_real.to(flat.dtype))
    return loss, grad.reshape(hidden.shape)


def _chunk(h: torch.Tensor, head: torch.Tensor, target: torch.Tensor | TopK, dtype: torch.dtype, want_grad: bool):
    """(summed KL, gradient of the rows ``h`` or None) of one chunk; its (chunk, V) tensors die on return."""
    logits = h @ head.T
    if isinstance(target, TopK):
        kl, g = _bucket_chunk(logits, target.logp, target.index, target.tail_logp, dtype, want_grad)
    else:
        kl, g = _exact_chunk(logits, target @ head.T, dtype, want_grad)
    return kl.sum(), (g @ head if want_grad else None)


def _scaled_rows(x: torch.Tensor, rows: torch.Tensor, temperature: float, dtype: torch.dtype) -> torch.Tensor:
    picked = x.reshape(-1, x.shape[-1]).index_select(0, rows)
    if temperature != 1.0:
        picked = picked.to(_math_dtype(picked.dtype)) / temperature
    return picked.to(dtype)


def _topk_rows(target: TopK, rows: torch.Tensor, dtype: torch.dtype) -> TopK:
    k = target.logp.shape[-1]
    return TopK(
        logp=target.logp.reshape(-1, k).index_select(0, rows).to(dtype),
        index=target.index.reshape(-1, k).index_select(0, rows).long(),
        tail_logp=target.tail_logp.reshape(-1, 1).index_select(0, rows).to(dtype),
    )


# Besides the matmuls, the time goes into the chunk functions below: each full-vocabulary pass streams
# chunk x V floats through memory. So they cast bfloat16 logits to float32 within the first subtraction,
# keep exponentials unnormalised (dividing per-row scalars rather than (chunk, V) tensors), work in place
# (their logits arguments are fresh matmul outputs) and write the gradient straight in the matmul dtype.


def _exact_chunk(s_logits: torch.Tensor, t_logits: torch.Tensor, dtype: torch.dtype, want_grad: bool):
    """Per-token KL(p || q) of softened student and teacher logits, and d/ds = q - p (in the logits' dtype)."""
    s, _ = _minus_rowmax(s_logits, dtype)
    t, _ = _minus_rowmax(t_logits, dtype)
    ep = t.exp()  # p * zp
    zp = ep.sum(-1, keepdim=True)
    # sum_j p_j (log p_j - log q_j) = sum_j p_j (t_j - s_j) + log zq - log zp, as sum_j p_j = 1
    cross = _rowdot(ep, t.sub_(s)) / zp.squeeze(-1)
    eq = s.exp_()  # q * zq
    zq = eq.sum(-1, keepdim=True)
    kl = cross + (zq.log() - zp.log()).squeeze(-1)
    if not want_grad:
        return kl, None
    minus_p = ep.mul_(-1.0 / zp)
    return kl, _into(s_logits.dtype, torch.addcmul, minus_p, eq, 1.0 / zq)


def _bucket_chunk(s_logits, logp_k, index, tail_logp, dtype: torch.dtype, want_grad: bool):
    """Per-token bucketed KL (top-k tokens + one tail bucket) of softened student logits, and d/ds.

    Only the student's tail is exponentiated over the vocabulary, shifted by its own maximum: its sum is
    then at least 1, so log q_tail stays accurate however little mass the student leaves outside K, and
    the top-k tokens join the normaliser through k-sized logsumexps.
    """
    flat = _flat_positions(index, s_logits.shape[-1])
    s_k = s_logits.gather(-1, index).to(dtype)
    e, tail_max = _minus_rowmax(_fill_(s_logits, flat, -torch.inf), dtype)
    e.exp_()  # student's tail, exp(s_j - tail_max); 0 on K
    z_tail = e.sum(-1, keepdim=True)  # >= 1 unless the tail is empty (k = V): then 0
    tail_lse = tail_max + z_tail.log()
    lse = torch.logaddexp(tail_lse, s_k.logsumexp(-1, keepdim=True))
    logq_k, logq_tail = s_k - lse, tail_lse - lse
    p_k, p_tail = logp_k.exp(), tail_logp.exp()
    # A massless teacher tail contributes 0, not 0 * inf when the student's tail is empty too.
    tail_term = torch.where(p_tail > 0, p_tail * (tail_logp - logq_tail), 0.0)
    kl = (p_k * (logp_k - logq_k)).sum(-1) + tail_term.squeeze(-1)
    if not want_grad:
        return kl, None
    # mass = sum p_K + p_tail is 1 up to rounding; keeping it makes this the exact derivative of kl.
    # On the tail, mass q_j - p_tail q_j / q_tail = (mass q_tail - p_tail) e_j / z_tail.
    mass = p_k.sum(-1, keepdim=True) + p_tail
    coef = (mass * logq_tail.exp() - p_tail) / z_tail.clamp(min=1.0)
    g = _into(s_logits.dtype, torch.mul, e, coef)
    g.view(-1).index_copy_(0, flat, (mass * logq_k.exp() - p_k).to(g.dtype).reshape(-1))
    return kl, g


def _minus_rowmax(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(x - its row maximum, in ``dtype``; that maximum); a row of -inf is shifted by 0, not turned to nan."""
    top = x.amax(-1, keepdim=True).to(dtype)
    top = torch.where(top.isfinite(), top, 0.0)
    return (x.sub_(top) if x.dtype == dtype else torch.sub(x, top)), top


def _flat_positions(index: torch.Tensor, vocab: int) -> torch.Tensor:
    """Positions of a (rows, k) index in its flattened (rows, vocab) tensor.

    For indexing through ``view(-1)``: scatter_ on bfloat16 CPU tensors is about 1000x slower than on
    float32 (milliseconds for a few thousand entries, torch 2.13), index_fill_ and index_copy_ are not.
    """
    rows = torch.arange(index.shape[0], device=index.device).unsqueeze(1)
    return (index + rows * vocab).reshape(-1)


def _fill_(x: torch.Tensor, flat: torch.Tensor, value: float) -> torch.Tensor:
    x.view(-1).index_fill_(0, flat, value)
    return x


def _into(dtype: torch.dtype, op, first: torch.Tensor, *rest) -> torch.Tensor:
    """``op(first, *rest)`` written into a ``dtype`` tensor: in place in ``first`` if it has that dtype."""
    if first.dtype == dtype:
        return op(first, *rest, out=first)
    return op(first, *rest, out=torch.empty_like(first, dtype=dtype))


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot product as a batched matmul: one pass, no (rows, V) product temporary."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).reshape(a.shape[0])
