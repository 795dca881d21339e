import pytest
import torch
import torch.nn.functional as F

from engine.config import LossSettings
from engine.distill.fused_kl import TAIL_LOGP_FLOOR, TopK, fused_head_kl, teacher_topk
from engine.distill.losses import kl_loss

N, D, V = 24, 16, 300


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(N, D, generator=g, dtype=torch.float64)
    th = h + 0.5 * torch.randn(N, D, generator=g, dtype=torch.float64)
    w = 0.4 * torch.randn(V, D, generator=g, dtype=torch.float64)
    mask = torch.ones(N, dtype=torch.long)
    mask[[0, 5, 6, 23]] = 0
    return h, th, w, mask


def _fused_value_and_grad(h, w, target, mask, **kw):
    h = h.clone().requires_grad_(True)
    loss = fused_head_kl(h, w, target, mask, **kw)
    loss.backward()
    return loss.detach(), h.grad


def _dense_value_and_grad(h, th, w, mask, temperature, reduction):
    h = h.clone().requires_grad_(True)
    config = LossSettings(temperature=temperature, reduction=reduction)
    loss = kl_loss(h @ w.T, th @ w.T, mask, config)
    loss.backward()
    return loss.detach(), h.grad


def _bucket_kl_dense(h, w, t_logits, mask, k, temperature, reduction):
    """The bucket formula written directly over the full vocabulary, differentiable by autograd."""
    s = (h @ w.T) / temperature
    p = F.softmax(t_logits / temperature, -1)
    logq = F.log_softmax(s, -1)
    index = p.topk(k, -1).indices
    in_k = torch.zeros_like(p, dtype=torch.bool).scatter(-1, index, True)
    p_k, logq_k = p.gather(-1, index), logq.gather(-1, index)
    p_tail = p.masked_fill(in_k, 0).sum(-1)
    logq_tail = s.masked_fill(in_k, -torch.inf).logsumexp(-1) - s.logsumexp(-1)
    per_token = (p_k * (p_k.log() - logq_k)).sum(-1) + p_tail * (p_tail.log() - logq_tail)
    per_token = per_token * temperature**2 * mask
    return per_token.sum() / (mask.sum() if reduction == "token_mean" else 1)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("reduction", ["token_mean", "sum"])
def test_exact_matches_dense_kl_loss(data, temperature, reduction):
    h, th, w, mask = data
    want, want_grad = _dense_value_and_grad(h, th, w, mask, temperature, reduction)
    # chunk 5 neither divides N nor the 20 real tokens
    got, got_grad = _fused_value_and_grad(h, w, th, mask, temperature=temperature, reduction=reduction, chunk=5)
    # kl_loss computes in float32
    torch.testing.assert_close(got, want.double(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-4, atol=1e-6)
    assert got_grad[mask == 0].abs().max() == 0


def test_leading_dims_and_padding_content_ignored(data):
    h, th, w, mask = data
    want, want_grad = _fused_value_and_grad(h, w, th, mask, chunk=7)
    garbage = h.clone()
    garbage[mask == 0] = torch.nan
    got, got_grad = _fused_value_and_grad(
        garbage.reshape(2, N // 2, D), w, th.reshape(2, N // 2, D), mask.reshape(2, N // 2), chunk=7
    )
    torch.testing.assert_close(got, want)
    assert got_grad.shape == (2, N // 2, D)
    torch.testing.assert_close(got_grad.reshape(N, D), want_grad.nan_to_num(0.0))


def test_no_real_tokens_gives_zero(data):
    h, th, w, mask = data
    loss, grad = _fused_value_and_grad(h, w, th, torch.zeros_like(mask))
    assert loss.item() == 0 and grad.abs().max() == 0


def test_teacher_topk_fields():
    t = torch.randn(5, 40, dtype=torch.float64) * 3
    top = teacher_topk(t, 6, temperature=2.0)
    logp = F.log_softmax(t / 2.0, -1)
    torch.testing.assert_close(top.logp, logp.gather(-1, top.index))
    torch.testing.assert_close(top.logp, logp.topk(6, -1).values)
    torch.testing.assert_close(top.tail_logp, torch.log1p(-top.logp.exp().sum(-1)))
    full = teacher_topk(t, 40)
    assert torch.all(full.tail_logp == TAIL_LOGP_FLOOR)
    assert teacher_topk(t.float(), 6).logp.dtype == torch.float32
    with pytest.raises(ValueError):
        teacher_topk(t, 41)


def test_teacher_topk_tiny_tail_is_accurate():
    # the tail holds e^-30 of the mass: 1 - sum p cancels to 0 in float32, a logsumexp does not
    t = torch.tensor([[30.0, 30.0, 0.0, 0.0]])
    tail = teacher_topk(t, 2).tail_logp
    assert tail.item() == pytest.approx(-30.0, abs=1e-5)  # log(2 / (2 e^30 + 2))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("reduction", ["token_mean", "sum"])
def test_topk_with_full_vocab_equals_full_kl(data, temperature, reduction):
    h, th, w, mask = data
    top = teacher_topk(th @ w.T, V, temperature=temperature)
    want, want_grad = _fused_value_and_grad(h, w, th, mask, temperature=temperature, reduction=reduction, chunk=5)
    got, got_grad = _fused_value_and_grad(h, w, top, mask, temperature=temperature, reduction=reduction, chunk=5)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_grad, want_grad)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("reduction", ["token_mean", "sum"])
@pytest.mark.parametrize("k", [1, 10])
def test_small_k_bucket_kl(data, temperature, reduction, k):
    h, th, w, mask = data
    t_logits = th @ w.T
    top = teacher_topk(t_logits, k, temperature=temperature)
    got, got_grad = _fused_value_and_grad(h, w, top, mask, temperature=temperature, reduction=reduction, chunk=5)
    full, _ = _fused_value_and_grad(h, w, th, mask, temperature=temperature, reduction=reduction)
    assert got < full

    hd = h.clone().requires_grad_(True)
    want = _bucket_kl_dense(hd, w, t_logits, mask, k, temperature, reduction)
    want.backward()
    torch.testing.assert_close(got, want.detach())
    torch.testing.assert_close(got_grad, hd.grad)


def test_bucket_error_is_tail_kl(data):
    """full KL - bucket KL = p_tail * KL(p | tail, renormalised || q | tail, renormalised), per token."""
    h, th, w, _ = data
    one = torch.ones(1, dtype=torch.long)
    for i in range(4):
        s, t = h[i : i + 1] @ w.T, th[i : i + 1] @ w.T
        top = teacher_topk(t, 10)
        gap = fused_head_kl(h[i : i + 1], w, th[i : i + 1], one) - fused_head_kl(h[i : i + 1], w, top, one)
        tail = torch.ones(V, dtype=torch.bool)
        tail[top.index[0]] = False
        p_rest, logq_rest = F.softmax(t[0, tail], -1), F.log_softmax(s[0, tail], -1)
        tail_kl = (p_rest * (p_rest.log() - logq_rest)).sum()
        assert gap.item() == pytest.approx((top.tail_logp.exp() * tail_kl).item(), rel=1e-8)


def test_bfloat16_matmuls_close_to_float32(data):
    h, th, w, mask = (x.float() if x.is_floating_point() else x for x in data)
    top = teacher_topk(th @ w.T, 10)
    for target in (th, top):
        want, want_grad = _fused_value_and_grad(h, w, target, mask, chunk=8)
        got, got_grad = _fused_value_and_grad(h, w, target, mask, chunk=8, matmul_dtype=torch.bfloat16)
        assert got.dtype == torch.float32 and got_grad.dtype == torch.float32
        assert got.item() == pytest.approx(want.item(), rel=3e-2)
        cosine = F.cosine_similarity(got_grad.flatten(), want_grad.flatten(), dim=0)
        assert cosine > 0.99
        assert (got_grad - want_grad).norm() < 0.1 * want_grad.norm()


def test_bfloat16_inputs_keep_float32_math(data):
    h, th, w, mask = data
    want, _ = _fused_value_and_grad(h.float(), w.float(), th.float(), mask)
    got, grad = _fused_value_and_grad(h.bfloat16(), w.bfloat16(), th.bfloat16(), mask)
    assert got.dtype == torch.float32 and grad.dtype == torch.bfloat16
    assert got.item() == pytest.approx(want.item(), rel=3e-2)


def test_backward_scales_with_grad_output(data):
    h, th, w, mask = data
    _, grad = _fused_value_and_grad(h, w, th, mask)
    hg = h.clone().requires_grad_(True)
    (3.0 * fused_head_kl(hg, w, th, mask)).backward()
    torch.testing.assert_close(hg.grad, 3.0 * grad)
    hg = h.clone().requires_grad_(True)
    (scaled,) = torch.autograd.grad(
        fused_head_kl(hg, w, th, mask), hg, grad_outputs=torch.tensor(-0.5, dtype=torch.float64)
    )
    torch.testing.assert_close(scaled, -0.5 * grad)


def test_gradcheck_exact_and_topk():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    th = torch.randn(5, 4, generator=g, dtype=torch.float64)
    w = torch.randn(30, 4, generator=g, dtype=torch.float64)
    mask = torch.tensor([1, 1, 0, 1, 1])
    top = teacher_topk(th @ w.T, 5, temperature=2.0)
    assert torch.autograd.gradcheck(lambda x: fused_head_kl(x, w, th, mask, temperature=2.0, chunk=2), (h,))
    assert torch.autograd.gradcheck(lambda x: fused_head_kl(x, w, top, mask, temperature=2.0, chunk=2), (h,))


def test_no_grad_and_frozen_weight(data):
    h, th, w, mask = data
    with torch.no_grad():
        value = fused_head_kl(h.requires_grad_(True), w, th, mask)
    assert not value.requires_grad
    assert value.item() == pytest.approx(fused_head_kl(h.detach(), w, th, mask).item())
    with pytest.raises(ValueError, match="frozen"):
        fused_head_kl(h, w.clone().requires_grad_(True), th, mask)
    assert isinstance(teacher_topk(th @ w.T, 3), TopK)
