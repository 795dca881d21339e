import pytest
import torch
import torch.nn.functional as F

from engine.config import LossSettings
from engine.distill.losses import hidden_pairs, kl_loss, mse_loss, total_loss


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 5, 11, generator=g)
    t = torch.randn(2, 5, 11, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    return s, t, mask


def _direct_forward_kl(s, t, mask, temp=1.0):
    total, n = 0.0, 0
    for b in range(s.shape[0]):
        for i in range(s.shape[1]):
            if mask[b, i]:
                p = torch.softmax(t[b, i] / temp, -1).double()
                q = torch.softmax(s[b, i] / temp, -1).double()
                total += float((p * (p / q).log()).sum())
                n += 1
    return total * temp * temp, n


def test_forward_kl_token_mean_and_sum(batch):
    s, t, mask = batch
    direct, n = _direct_forward_kl(s, t, mask)
    assert float(kl_loss(s, t, mask, LossSettings())) == pytest.approx(direct / n, rel=1e-5)
    assert float(kl_loss(s, t, mask, LossSettings(reduction="sum"))) == pytest.approx(direct, rel=1e-5)


def test_padding_is_ignored(batch):
    s, t, mask = batch
    s2 = s.clone()
    s2[1, :2] = 1000.0  # garbage where the mask is 0
    assert torch.allclose(kl_loss(s, t, mask, LossSettings()), kl_loss(s2, t, mask, LossSettings()))


def test_reverse_kl(batch):
    s, t, mask = batch
    direct, n = _direct_forward_kl(t, s, mask)  # KL(student || teacher) swaps the roles
    assert float(kl_loss(s, t, mask, LossSettings(direction="reverse"))) == pytest.approx(direct / n, rel=1e-5)


def test_temperature_scales_by_t_squared(batch):
    s, t, mask = batch
    direct, n = _direct_forward_kl(s, t, mask, temp=2.0)
    assert float(kl_loss(s, t, mask, LossSettings(temperature=2.0))) == pytest.approx(direct / n, rel=1e-5)


def test_kl_on_raw_logits_matches_torch_kl_div(batch):
    s, t, mask = batch
    real = mask.bool()
    expected = F.kl_div(s[real], F.softmax(t[real], -1), reduction="sum")
    got = kl_loss(s, t, mask, LossSettings(kl_input="logits", reduction="sum"))
    assert float(got) == pytest.approx(float(expected), rel=1e-5)


def test_mse_masks_padding_and_averages_hidden():
    a = torch.zeros(1, 3, 4)
    b = torch.ones(1, 3, 4) * 2
    b[0, 0] = 100  # masked out
    mask = torch.tensor([[0, 1, 1]])
    assert float(mse_loss(a, b, mask)) == pytest.approx(4.0)


def test_total_combines_scales(batch):
    s, t, mask = batch
    h_s = {3: torch.zeros(2, 5, 4)}
    h_t = {3: torch.ones(2, 5, 4)}
    config = LossSettings(kl_scale=0.5, mse_scale=2.0, kl_reference_tokens=10)
    total, values = total_loss(s, t, h_s, h_t, mask, config)
    kl, mse = values["kl"], values["mse"]
    assert list(values) == ["kl", "mse"] and float(mse) == pytest.approx(1.0)
    assert float(total) == pytest.approx(0.5 * 10 * float(kl) + 2.0)
    # The paper's summed form carries its own token count: no reference tokens.
    summed = LossSettings(kl_scale=0.5, mse_scale=2.0, reduction="sum", kl_reference_tokens=10)
    total, values = total_loss(s, t, h_s, h_t, mask, summed)
    kl = values["kl"]
    assert float(total) == pytest.approx(0.5 * float(kl) + 2.0)


def test_mse_normalised_by_the_teacher_is_scale_free(batch):
    """mse_norm="teacher": each compared layer's MSE over the teacher's mean square there, so a deep
    layer whose residual stream is 40x larger weighs what a shallow one does against the KL."""
    s, t, mask = batch
    g = torch.Generator().manual_seed(1)
    student_h, teacher_h = torch.randn(2, 5, 4, generator=g), torch.randn(2, 5, 4, generator=g)
    config = LossSettings(mse_norm="teacher")
    small = total_loss(s, t, {3: student_h}, {3: teacher_h}, mask, config)[1]["mse"]
    large = total_loss(s, t, {3: student_h * 40}, {3: teacher_h * 40}, mask, config)[1]["mse"]
    assert float(small) == pytest.approx(float(large), rel=1e-5)
    # relative error: the masked MSE over the masked mean square of the teacher
    m = mask.bool()
    expected = ((student_h - teacher_h) ** 2).mean(-1)[m].mean() / (teacher_h**2).mean(-1)[m].mean()
    assert float(small) == pytest.approx(float(expected), rel=1e-5)
    # summed over the compared layers, each on its own scale
    two = total_loss(s, t, {3: student_h, 7: student_h * 40}, {3: teacher_h, 7: teacher_h * 40}, mask, config)[1]["mse"]
    assert float(two) == pytest.approx(2 * float(expected), rel=1e-5)
    # the plain MSE is unchanged by the option's existence
    raw = total_loss(s, t, {3: student_h * 40}, {3: teacher_h * 40}, mask, LossSettings())[1]["mse"]
    assert float(raw) == pytest.approx(1600 * float(mse_loss(student_h, teacher_h, mask)), rel=1e-5)
    with pytest.raises(ValueError, match=r"mse_norm"):
        LossSettings(mse_norm="layer")


def test_default_keeps_the_papers_balance_whatever_the_batch_shape():
    """The paper: KL summed over 2 x 2,048 tokens per device, / 100. Token-mean KL weighted
    kl_scale * kl_reference_tokens is the same loss for that batch and the same balance for any other."""
    torch.manual_seed(0)
    for batch, seq in ((2, 2048), (4, 256), (1, 64)):
        s, t = torch.randn(batch, seq, 11), torch.randn(batch, seq, 11)
        mask = torch.ones(batch, seq)
        mean = LossSettings()
        ours = float(kl_loss(s, t, mask, mean)) * mean.kl_weight
        per_token_paper = float(kl_loss(s, t, mask, LossSettings(reduction="sum"))) / 100 / (batch * seq) * 4096
        assert ours == pytest.approx(per_token_paper, rel=1e-4)


def test_hidden_choices():
    assert hidden_pairs(LossSettings(), [4, 5], 10) == [5, 9]
    assert hidden_pairs(LossSettings(hidden="last"), [4, 5], 10) == [9]
    assert hidden_pairs(LossSettings(hidden="all_trainable"), [5, 4], 10) == [4, 5]
    assert hidden_pairs(LossSettings(hidden="all"), [4], 3) == [0, 1, 2]
    assert hidden_pairs(LossSettings(hidden="none"), [4], 10) == []
    with pytest.raises(ValueError, match=r"hidden"):
        LossSettings(hidden="middle")
