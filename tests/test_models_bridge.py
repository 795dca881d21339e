import copy
import math

import pytest
import torch
from torch import nn

from engine.models.adapters import adapter_for
from engine.models.bridge import block_distances, estimate_bridge, fuse_bridge, remove_with_bridge
from engine.models.errors import SurgeryError
from engine.models.export import export_model
from engine.models.surgery import layer_map, parameter_count, remove_layers
from tests.tiny_models import batch, tiny_model


def _calibration(seed: int = 0, count: int = 24) -> list[list[int]]:
    """Sequences of different lengths, so batches carry padding."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(6, 40, (count,), generator=g)
    return [torch.randint(3, 256, (int(n),), generator=g).tolist() for n in lengths]


def _logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits[mask.bool()]


class _MapMlpOutput:
    """The unfused form: a forward hook that multiplies a layer's MLP output by T."""

    def __init__(self, module: nn.Module, transform: torch.Tensor):
        t = transform.to(torch.float32)
        self.handle = module.register_forward_hook(lambda m, args, out: out @ t)

    def remove(self):
        self.handle.remove()


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_fused_bridge_equals_removed_layers_plus_explicit_map(family):
    model = tiny_model(family)
    fit = estimate_bridge(model, [3, 4], _calibration(), pad_id=0, batch_tokens=256)
    assert fit.removed == [3, 4] and fit.into == 2 and fit.transform.shape == (64, 64)

    unfused = copy.deepcopy(model)
    remove_layers(unfused, [3, 4])
    hook = _MapMlpOutput(unfused.model.layers[2].mlp, fit.transform)
    remove_layers(model, [3, 4])
    fuse_bridge(model, 2, fit.transform)
    ids, mask = batch()
    expected = _logits(unfused, ids, mask)
    hook.remove()
    assert not torch.allclose(expected, _logits(unfused, ids, mask), atol=1e-3)  # the map matters
    assert torch.allclose(_logits(model, ids, mask), expected, atol=1e-5)


def test_fuse_carries_a_down_projection_bias():
    from transformers import AutoModelForCausalLM

    from tests.tiny_models import tiny_config

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        tiny_config("llama").__class__(**{**tiny_config("llama").to_dict(), "mlp_bias": True})
    ).eval()
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.bias.normal_()
    transform = torch.eye(64, dtype=torch.float64) + 0.1 * torch.randn(64, 64, dtype=torch.float64)
    unfused = copy.deepcopy(model)
    hook = _MapMlpOutput(unfused.model.layers[1].mlp, transform)
    fuse_bridge(model, 1, transform)
    ids, mask = batch()
    assert torch.allclose(_logits(model, ids, mask), _logits(unfused, ids, mask), atol=1e-5)
    hook.remove()


def test_bridged_model_has_the_architecture_of_plain_removal(tmp_path):
    from transformers import AutoModelForCausalLM

    bridged, plain = tiny_model("llama"), tiny_model("llama")
    fit = remove_with_bridge(bridged, [2, 3], _calibration(), pad_id=0, batch_tokens=256)
    remove_layers(plain, [2, 3])
    assert layer_map(bridged) == layer_map(plain) == [0, 1, 4, 5]
    assert bridged.config.to_dict() == plain.config.to_dict()
    assert parameter_count(bridged) == parameter_count(plain)
    assert [type(m) for m in bridged.modules()] == [type(m) for m in plain.modules()]
    a, b = bridged.state_dict(), plain.state_dict()
    assert list(a) == list(b) and all(a[k].shape == b[k].shape for k in a)
    changed = [k for k in a if not torch.equal(a[k], b[k])]
    assert changed == ["model.layers.1.mlp.down_proj.weight"] and fit.into == 1

    out = export_model(bridged, None, tmp_path / "export")
    reloaded = AutoModelForCausalLM.from_pretrained(out, attn_implementation=bridged.config._attn_implementation).eval()
    ids, mask = batch()
    assert torch.equal(_logits(reloaded, ids, mask), _logits(bridged, ids, mask))
    assert layer_map(reloaded) == [0, 1, 4, 5]


def _linear_block_model():
    """A tiny Llama whose layer 2 is, on any input, an exact linear function of layer 1's MLP output.

    The residual stream before layer 1's MLP lives in the first half of the hidden coordinates (the
    embedding and every write before it are zero in the second half), layer 1's MLP writes only the
    second half, and layer 2 is x -> x + x F with F reading only the second half. So layer 2's output
    is Y + M (I + F): the bridge T = I + F reproduces it, plain removal (T = I) does not.
    """
    model = tiny_model("llama")
    d, half = 64, 32
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, half:] = 0
        for j in (0, 1):
            model.model.layers[j].self_attn.o_proj.weight[half:] = 0
        model.model.layers[0].mlp.down_proj.weight[half:] = 0
        model.model.layers[1].mlp.down_proj.weight[:half] = 0
        removed = model.model.layers[2]
        removed.self_attn.o_proj.weight.zero_()
        removed.post_attention_layernorm = nn.Identity()
        linear = nn.Linear(d, d, bias=False)
        linear.weight.copy_(torch.randn(d, d, generator=g) * 0.3)
        linear.weight[:, :half] = 0  # F = weight^T has zero rows for the first half
        removed.mlp = linear
    return model


def test_bridge_recovers_a_block_that_is_linear_on_the_data():
    model = _linear_block_model()
    ids, mask = batch()
    original = _logits(model, ids, mask)
    plain = copy.deepcopy(model)
    remove_layers(plain, 2)
    fit = remove_with_bridge(model, [2], _calibration(), pad_id=0, batch_tokens=256, ridge=1e-10)
    assert fit.relative_residual < 1e-5 < 0.1 < fit.plain_relative_residual
    assert fit.cosine == pytest.approx(1.0, abs=1e-9) and fit.plain_cosine < 0.999
    assert torch.allclose(_logits(model, ids, mask), original, atol=1e-4)
    assert not torch.allclose(_logits(plain, ids, mask), original, atol=1e-2)


def test_fit_figures_match_a_direct_computation_and_padding_is_left_out():
    from engine.models.bridge import _batches, _block_activations, _rows

    model = tiny_model("qwen2")
    calibration = _calibration(seed=3)
    packed = estimate_bridge(model, [3], calibration, pad_id=0, batch_tokens=512)
    alone = estimate_bridge(model, [3], calibration, pad_id=0, batch_tokens=1)  # one sequence per batch, no padding
    assert packed.tokens == alone.tokens == sum(len(s) for s in calibration)
    assert torch.allclose(packed.transform, alone.transform, atol=1e-6)
    assert packed.cosine == pytest.approx(alone.cosine, abs=1e-6)

    # The figures from the accumulated matrices equal those from every activation kept.
    ms, outs, targets = [], [], []
    with torch.no_grad():
        for ids, mask in _batches(_rows(calibration), 0, 512, "cpu"):
            m, out, target, _ = _block_activations(adapter_for(model), 3, 3, ids, mask)
            ms.append(m.double()), outs.append(out.double()), targets.append(target.double())
    m, out, target = torch.cat(ms), torch.cat(outs), torch.cat(targets)
    r = target - out + m
    t = packed.transform
    assert packed.relative_residual == pytest.approx(float((m @ t - r).norm() / r.norm()), rel=1e-6)
    assert packed.plain_relative_residual == pytest.approx(float((m - r).norm() / r.norm()), rel=1e-6)
    cos = torch.nn.functional.cosine_similarity(out - m + m @ t, target, dim=-1).mean()
    assert packed.cosine == pytest.approx(float(cos), abs=1e-9)
    assert packed.plain_cosine == pytest.approx(
        float(torch.nn.functional.cosine_similarity(out, target, dim=-1).mean()), abs=1e-9
    )
    # Least squares beats the identity on the data it was fit on.
    assert packed.relative_residual < packed.plain_relative_residual and packed.cosine > packed.plain_cosine


def test_a_token_tensor_and_objects_with_ids_are_calibration_too():
    from engine.tasks.requests import ScoredSequence

    model = tiny_model("llama")
    g = torch.Generator().manual_seed(2)
    blocks = torch.randint(3, 256, (6, 16), generator=g)
    from_tensor = estimate_bridge(model, [4], blocks, pad_id=0, batch_tokens=64, measure=False)
    as_objects = [ScoredSequence(row, [], [], item=i) for i, row in enumerate(blocks.tolist())]
    from_objects = estimate_bridge(model, [4], as_objects, pad_id=0, batch_tokens=64, measure=False)
    assert from_tensor.tokens == 96 and from_tensor.cosine is None
    assert torch.allclose(from_tensor.transform, from_objects.transform, atol=1e-9)


def test_neighbours_after_an_earlier_removal_are_contiguous():
    model = tiny_model("llama")
    remove_layers(model, 3)
    fit = remove_with_bridge(model, [2, 4], _calibration(), pad_id=0, batch_tokens=256)
    assert fit.removed == [2, 4] and fit.into == 1 and layer_map(model) == [0, 1, 5]


@pytest.mark.parametrize(
    "family, originals, message",
    [
        ("llama", [2, 4], "not neighbours"),
        ("llama", [0, 1], "first remaining layer"),
        ("llama", [2, 2], "duplicate"),
        ("llama", [9], "does not exist"),
        ("gemma2", [3], "normalises it first"),
        ("gemma3_text", [2, 3], "normalises it first"),
    ],
)
def test_refusals_are_clear_and_change_nothing(family, originals, message):
    model = tiny_model(family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(SurgeryError, match=message):
        remove_with_bridge(model, originals, _calibration(), pad_id=0, batch_tokens=256)
    assert layer_map(model) == list(range(6))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fuse_refuses_a_normalised_mlp_output_and_a_wrong_shape():
    with pytest.raises(SurgeryError, match="does not add its MLP output"):
        fuse_bridge(tiny_model("gemma2"), 1, torch.eye(64, dtype=torch.float64))
    with pytest.raises(SurgeryError, match="does not fit hidden size 64"):
        fuse_bridge(tiny_model("llama"), 1, torch.eye(32, dtype=torch.float64))


def test_block_distances_match_running_the_stack_and_use_original_indices():
    model = tiny_model("llama")
    calibration = _calibration(seed=4)
    adapter = adapter_for(model)
    n = 2
    got = block_distances(model, n, calibration, pad_id=0, batch_tokens=256)
    assert list(got) == [1, 2, 3, 4]
    with_first = block_distances(model, n, calibration, pad_id=0, batch_tokens=256, include_first=True, metric="cosine")
    assert list(with_first) == [0, 1, 2, 3, 4]

    sums = {"angular": [0.0] * 5, "cosine": [0.0] * 5}
    tokens = 0
    with torch.no_grad():
        for row in calibration:  # one sequence at a time: no padding at all
            ids = torch.tensor([row])
            inputs = adapter.prepare(ids)
            for s in range(5):
                a = adapter.run_layers(inputs.hidden, inputs, stop=s)[0].double()
                b = adapter.run_layers(inputs.hidden, inputs, stop=s + n)[0].double()
                cos = torch.nn.functional.cosine_similarity(a, b, dim=-1).clamp(-1, 1)
                sums["angular"][s] += float((torch.arccos(cos) / math.pi).sum())
                sums["cosine"][s] += float((1 - cos).sum())
            tokens += len(row)
    for s in range(1, 5):
        assert got[s] == pytest.approx(sums["angular"][s] / tokens, rel=1e-6)
    for s in range(5):
        assert with_first[s] == pytest.approx(sums["cosine"][s] / tokens, rel=1e-6)

    remove_layers(model, 2)  # current map [0, 1, 3, 4, 5]: blocks named by their first original layer
    assert list(block_distances(model, n, calibration, pad_id=0, batch_tokens=256)) == [1, 3, 4]
    with pytest.raises(SurgeryError, match="does not fit"):
        block_distances(model, 5, calibration, pad_id=0)


@pytest.mark.slow
def test_bridge_beats_plain_removal_on_held_out_text_of_the_real_model():
    from engine.config import DataSettings
    from engine.distill.data import distill_blocks
    from engine.models.loading import load_model

    loaded = load_model("smollm2-135m", device="cpu")
    model = loaded.model
    calibration, heldout = distill_blocks(
        DataSettings(seq_len=128, train_tokens=16 * 128, heldout_tokens=4 * 128), loaded.tokenizer
    )
    heldout = heldout[:4]
    with torch.no_grad():
        reference = torch.log_softmax(model(heldout).logits, -1)

    def kl(pruned):
        with torch.no_grad():
            logp = torch.log_softmax(pruned(heldout).logits, -1)
        return float((reference.exp() * (reference - logp)).sum(-1).mean())

    plain = copy.deepcopy(model)
    remove_layers(plain, 20)
    fit = remove_with_bridge(model, [20], calibration, loaded.tokenizer.pad_token_id, batch_tokens=1024)
    assert fit.relative_residual < fit.plain_relative_residual and fit.cosine > fit.plain_cosine
    assert kl(model) < kl(plain)
