import copy

import pytest
import torch

from engine.config import HealSettings, TrainableSettings
from engine.distill.heal import Healer, NonFiniteLoss, TeacherCache
from engine.distill.trainable import choose_trainable
from engine.models.surgery import layer_map, remove_layers


def _setup(cached=True, lr=1e-3, seed=0, **heal):
    from transformers import AutoModelForCausalLM

    from tests.tiny_models import tiny_config

    config = tiny_config("llama")
    config.initializer_range = 0.1  # large enough that a missing layer costs something to heal
    torch.manual_seed(seed)
    teacher = AutoModelForCausalLM.from_config(config).eval()
    student = copy.deepcopy(teacher)
    remove_layers(student, 3)
    g = torch.Generator().manual_seed(5)
    train = torch.randint(3, 256, (16, 24), generator=g)
    heldout = torch.randint(3, 256, (4, 24), generator=g)
    heal.setdefault("head_matmul", "fp32")  # exact comparisons; bf16 has its own test
    heal.setdefault("early_stop", False)  # every step runs; early stopping has its own tests
    config = HealSettings(lr=lr, batch_size=4, cached=cached, seq_len=24, **heal)
    cache = TeacherCache(teacher, train, heldout, None, 1 << 30, 4)
    return teacher, student, Healer(student, cache, config)


def test_cached_loop_equals_plain_loop_and_trains_only_the_gap_neighbours():
    runs = {}
    for cached in (True, False):
        _teacher, student, healer = _setup(cached=cached)
        before = {k: v.clone() for k, v in student.state_dict().items()}
        trainable = choose_trainable(layer_map(student), 6, 3, TrainableSettings(choice="adjacent", k=1))
        steps = []
        healer.heal(trainable, iteration=1, seed=0, on_step=steps.append)
        after = student.state_dict()
        changed = {k for k in after if not torch.equal(before[k], after[k])}
        assert changed and all(k.startswith(("model.layers.2.", "model.layers.3.")) for k in changed)
        runs[cached] = (steps, after)
    for a, b in zip(runs[True][0], runs[False][0]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)
    # Adam turns float32 rounding of the (now weighty) KL gradient into weight noise of up to 5e-5 after
    # four steps of 1e-3: 1% of the distance the weights moved.
    for key in runs[True][1]:
        assert torch.allclose(runs[True][1][key], runs[False][1][key], atol=1e-4)
    assert [s["step"] for s in runs[True][0]] == [1, 2, 3, 4]
    first = runs[True][0][0]
    assert {"loss", "terms", "unweighted", "lr", "grad_norm", "tokens_per_s"} <= set(first)
    assert list(first["terms"]) == list(first["unweighted"]) == ["kl", "mse"]
    assert sum(first["terms"].values()) == pytest.approx(first["loss"], rel=1e-6)


@pytest.mark.parametrize("heal", [{"fused_head": False}, {"teacher_topk": 256}], ids=["dense-head", "topk-whole-vocab"])
def test_cached_variants_equal_the_plain_loop(heal):
    """The fused head is on by default; without it, or with a top-k cache as large as the vocabulary
    (an empty tail: the bucketed KL is then exact), the cached loop still trains as the plain loop."""
    runs = {}
    for cached in (True, False):
        _teacher, student, healer = _setup(cached=cached, **heal)
        assert healer._fused() == heal.get("fused_head", True)
        steps = []
        healer.heal([2, 3], iteration=1, seed=0, on_step=steps.append)
        runs[cached] = (steps, student.state_dict())
    for a, b in zip(runs[True][0], runs[False][0]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)
    for key in runs[True][1]:
        assert torch.allclose(runs[True][1][key], runs[False][1][key], atol=1e-4)


def test_bf16_head_matmul_trains_like_fp32():
    """The fused head in bfloat16 (auto on CUDA and AVX512-BF16 CPUs): same steps within bf16 noise."""
    runs = {}
    for head in ("fp32", "bf16"):
        _, student, healer = _setup(head_matmul=head)
        steps = []
        healer.heal([2, 3], iteration=1, seed=0, on_step=steps.append)
        runs[head] = (steps, student.state_dict())
    for a, b in zip(runs["fp32"][0], runs["bf16"][0]):
        assert b["unweighted"]["kl"] == pytest.approx(a["unweighted"]["kl"], rel=0.02, abs=1e-4)
    for key, value in runs["fp32"][1].items():
        assert torch.allclose(value, runs["bf16"][1][key], atol=2e-3), key


def test_topk_teacher_cache_heals_with_a_lower_bound_of_the_kl():
    _, _, exact = _setup()
    _, _student, healer = _setup(teacher_topk=8)
    steps, exact_steps = [], []
    healer.heal([2, 3], iteration=1, seed=0, on_step=steps.append)
    exact.heal([2, 3], iteration=1, seed=0, on_step=exact_steps.append)
    # Step 1 sees the same weights: the bucketed KL is at most the exact one.
    assert steps[0]["unweighted"]["kl"] <= exact_steps[0]["unweighted"]["kl"] + 1e-6
    logp, _ids, tail = healer.cache.topk["train"]
    assert logp[:].shape[-1] == 8 and torch.all(tail[:] <= 0)


def test_healing_lowers_the_heldout_distillation_loss():
    _teacher, student, healer = _setup()
    trainable = choose_trainable(layer_map(student), 6, 3, TrainableSettings(choice="adjacent", k=1))
    pairs = [max(trainable), 4]
    before = healer.heldout_loss(pairs)["loss"]
    for epoch in range(3):
        healer.heal(trainable, iteration=1, seed=epoch)
    assert healer.heldout_loss(pairs)["loss"] < 0.9 * before


def test_relative_mse_heals_and_reports_the_raw_mse_beside_it():
    *_, plain = _setup()
    _teacher, student, healer = _setup(mse_norm="teacher")
    trainable = choose_trainable(layer_map(student), 6, 3, TrainableSettings(choice="adjacent", k=1))
    pairs = [max(trainable), 4]
    raw, relative = plain.heldout_loss(pairs), healer.heldout_loss(pairs)
    # one model, two weightings: the raw MSE is the same figure; the relative one enters the loss
    assert relative["mse_raw"] == pytest.approx(raw["mse"], rel=1e-5) == pytest.approx(raw["mse_raw"], rel=1e-5)
    assert relative["mse"] != pytest.approx(raw["mse"], rel=1e-2)
    assert relative["loss"] == pytest.approx(relative["kl_term"] + relative["mse_term"], rel=1e-5)
    for epoch in range(3):
        healer.heal(trainable, iteration=1, seed=epoch)
    after = healer.heldout_loss(pairs)
    assert after["loss"] < 0.9 * relative["loss"] and after["mse_raw"] < relative["mse_raw"]


def test_non_finite_loss_restores_the_weights(monkeypatch):
    _teacher, student, healer = _setup()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    import engine.distill.loops as loops

    real = loops.total_loss
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        loss, values = real(*args, **kwargs)
        return (loss * float("nan"), values) if calls["n"] == 3 else (loss, values)

    monkeypatch.setattr(loops, "total_loss", flaky)
    with pytest.raises(NonFiniteLoss, match="step 3"):
        healer.heal([2, 3], iteration=1, seed=0)
    after = student.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_resume_mid_iteration_matches_an_uninterrupted_heal():
    from engine.distill.heal import HealState

    _, student_a, healer_a = _setup()
    healer_a.heal([2, 3], iteration=1, seed=0)

    _, _student_b, healer_b = _setup()
    saved = []

    class Killed(Exception):
        pass

    def save_then_die(state):
        saved.append(state)
        if state.step == 2:
            raise Killed  # the process dies right after its mid-iteration checkpoint

    healer_b.config = healer_b.config.model_copy(update={"checkpoint_every_s": 0.0})
    with pytest.raises(Killed):
        healer_b.heal([2, 3], iteration=1, seed=0, on_checkpoint=save_then_die)
    state: HealState = saved[-1]
    assert state.step == 2
    _, student_c, healer_c = _setup()
    healer_c.heal([2, 3], iteration=1, seed=0, resume=state)
    for key, value in student_a.state_dict().items():
        assert torch.allclose(value, student_c.state_dict()[key], atol=1e-6), key


@pytest.mark.parametrize("start", [0.0, 0.75])
def test_early_stopping_waits_for_its_share_of_the_steps(start, monkeypatch):
    """A held-out loss that first rises, then falls (every layer trainable, measured on make demo's
    first healing): from the start, patience 2 stops at the second check and keeps the weights from
    before healing; with early_stop_from no stop comes before that share of the steps (the default:
    half), and the best check's weights are kept."""
    assert HealSettings().early_stop_from == 0.5
    _teacher, student, healer = _setup(
        early_stop=True, eval_every=1, patience=2, early_stop_from=start, trainable="all", lr=1e-3
    )
    script = iter([10.0, 11.0, 11.5, 9.0, 8.0, 8.5, 8.6, 8.7])  # before healing, then one per step
    monkeypatch.setattr(healer, "heldout_loss", lambda pairs: {"loss": next(script)})
    before = {k: v.clone() for k, v in student.state_dict().items()}
    trainable = list(range(len(layer_map(student))))
    result = healer.heal(trainable, iteration=1, seed=0)
    assert healer.cache.train_index.numel() // 4 == 4  # four steps: checks at 1, 2, 3, 4
    if start == 0.0:
        assert result["stopped_early"] and result["steps"] == 2 and result["kept_step"] == 0
        assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())
    else:
        # steps 1 and 2 missed (before 3 of 4: no stop), 3 and 4 improved: all four ran, 4 kept
        assert not result["stopped_early"] and result["steps"] == 4 and result["kept_step"] == 4
        assert [loss for _, loss in result["checks"]] == [11.0, 11.5, 9.0, 8.0]


def test_a_last_check_below_the_min_delta_gain_keeps_the_best_weights(monkeypatch):
    """Stopping says "no held-out gain" when a check beats the best by less than min_delta (relative);
    the weights kept follow the same rule: a last check 0.04 % below the loss before healing is no
    gain, so the weights from before healing come back, not the last ones."""
    _teacher, student, healer = _setup(early_stop=True, eval_every=1, patience=2, early_stop_from=0.0, min_delta=0.002)
    script = iter([20.3144, 20.397, 20.3058])  # before healing, then steps 1 and 2 (as measured)
    monkeypatch.setattr(healer, "heldout_loss", lambda pairs: {"loss": next(script)})
    before = {k: v.clone() for k, v in student.state_dict().items()}
    result = healer.heal([2, 3], iteration=1, seed=0)
    assert result["stopped_early"] and result["steps"] == 2 and result["kept_step"] == 0
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())


def test_a_last_check_that_gains_min_delta_keeps_its_own_weights(monkeypatch):
    _teacher, student, healer = _setup(early_stop=True, eval_every=1, patience=2, early_stop_from=0.0, min_delta=0.002)
    script = iter([10.0, 10.5, 9.9, 9.0, 8.0])  # every check after the first beats the best by >= 0.2 %
    monkeypatch.setattr(healer, "heldout_loss", lambda pairs: {"loss": next(script)})
    before = {k: v.clone() for k, v in student.state_dict().items()}
    result = healer.heal([2, 3], iteration=1, seed=0)
    assert not result["stopped_early"] and result["kept_step"] == result["steps"] == 4
    assert not all(torch.equal(before[k], v) for k, v in student.state_dict().items())
