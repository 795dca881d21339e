import json

import pytest
import torch

from engine.models.adapters import adapter_for, supported_architectures
from engine.models.errors import SurgeryError, UnsupportedArchitecture
from engine.models.export import export_model
from engine.models.surgery import layer_map, parameter_count, remove_layers
from tests.tiny_models import FAMILIES, batch, tiny_model


def _real(logits, mask):
    return logits[mask.bool()]


@pytest.mark.parametrize("family", FAMILIES)
def test_layerwise_forward_matches_model(family):
    model = tiny_model(family)
    ids, mask = batch()
    with torch.no_grad():
        ours = adapter_for(model).forward_logits(ids, mask)
        # The reference: each row alone, unpadded, through the model's own forward.
        for row in range(ids.shape[0]):
            real = mask[row].bool()
            theirs = model(input_ids=ids[row : row + 1, real]).logits[0]
            assert torch.allclose(ours[row, real], theirs, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_reading_some_positions_matches_the_whole_layer(family):
    from engine.models.adapters import PLAIN_RESIDUAL_LAYERS

    model = tiny_model(family)
    ids, mask = batch()
    adapter = adapter_for(model)
    rows = torch.tensor([0, 0, 1, 1, 1])
    cols = torch.tensor([2, 5, 0, 3, 7])
    trims = type(adapter.layers[0]).__name__ in PLAIN_RESIDUAL_LAYERS
    assert trims == (family not in ("gemma2", "gemma3_text"))
    with torch.no_grad():
        inputs = adapter.prepare(ids, mask)
        for skip in (None, 2, adapter.num_layers - 1):
            full = adapter.run_layers(inputs.hidden, inputs, skip=skip)
            read = adapter.run_layers(inputs.hidden, inputs, skip=skip, rows=rows, cols=cols)
            assert read.shape == (5, full.shape[-1])
            assert torch.allclose(read, full[rows, cols], atol=1e-5)
        # Nothing left to run: the given state, read at the positions.
        assert torch.equal(
            adapter.run_layers(inputs.hidden, inputs, start=adapter.num_layers, rows=rows, cols=cols),
            inputs.hidden[rows, cols],
        )


@pytest.mark.parametrize("family", FAMILIES)
def test_remove_layers_keeps_map_and_matches_skipping(family):
    model = tiny_model(family)
    ids, mask = batch()
    adapter = adapter_for(model)
    types_before = list(getattr(model.config, "layer_types", None) or [])
    with torch.no_grad():
        inputs = adapter.prepare(ids, mask)
        hidden = inputs.hidden
        for i in range(adapter.num_layers):
            if i not in (1, 4):
                hidden = adapter.run_layer(i, hidden, inputs)
        expected = adapter.head(hidden)

    assert remove_layers(model, 4) == [0, 1, 2, 3, 5]
    assert remove_layers(model, [1]) == [0, 2, 3, 5]

    assert model.config.num_hidden_layers == 4
    assert layer_map(model) == [0, 2, 3, 5]
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1, 2, 3]
    if types_before:
        assert model.config.layer_types == [types_before[i] for i in (0, 2, 3, 5)]
    with torch.no_grad():
        got = adapter_for(model).forward_logits(ids, mask)
        unpadded = model(input_ids=ids[:1]).logits
    assert torch.allclose(_real(got, mask), _real(expected, mask), atol=1e-5)
    assert torch.allclose(unpadded[0], expected[0], atol=1e-5)


def test_qwen2_max_window_layers_recomputed():
    model = tiny_model("qwen2")
    assert model.config.max_window_layers == 3
    assert model.config.layer_types == ["full_attention"] * 3 + ["sliding_attention"] * 3
    remove_layers(model, [0, 4])
    assert model.config.max_window_layers == 2
    assert model.config.layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 2


def test_bad_removals_are_clear():
    model = tiny_model("llama")
    remove_layers(model, 2)
    with pytest.raises(SurgeryError, match="already removed"):
        remove_layers(model, 2)
    with pytest.raises(SurgeryError, match="does not exist"):
        remove_layers(model, 17)
    with pytest.raises(SurgeryError, match="every layer"):
        remove_layers(model, [0, 1, 3, 4, 5])
    assert layer_map(model) == [0, 1, 3, 4, 5]  # a refused removal changes nothing


def test_parameter_count_drops_by_one_layer():
    model = tiny_model("llama")
    before = parameter_count(model)
    per_layer = sum(p.numel() for p in model.model.layers[0].parameters())
    remove_layers(model, 3)
    assert parameter_count(model) == before - per_layer


def test_unsupported_architecture_names_the_supported_ones():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(UnsupportedArchitecture) as err:
        adapter_for(model)
    assert "gpt2" in str(err.value)
    for name in supported_architectures():
        assert name in str(err.value)


@pytest.mark.parametrize("family", FAMILIES)
def test_export_reloads_with_identical_logits_and_generates_with_cache(family, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_model(family)
    remove_layers(model, [2, 5])
    out = export_model(model, None, tmp_path / "export", {"teacher": "tiny"})
    config = json.loads((out / "config.json").read_text())
    assert config["ild_layer_map"] == [0, 1, 3, 4]
    assert config["num_hidden_layers"] == 4
    record = json.loads((out / "ild_export.json").read_text())
    assert record["removed"] == [2, 5] and record["teacher"] == "tiny"
    assert list(out.glob("*.safetensors"))

    # Same attention kernel as the original, so equality is exact rather than within kernel noise.
    reloaded = AutoModelForCausalLM.from_pretrained(out, attn_implementation=model.config._attn_implementation)
    reloaded.eval()
    ids, mask = batch()
    with torch.no_grad():
        a = model(input_ids=ids, attention_mask=mask).logits
        b = reloaded(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(_real(a, mask), _real(b, mask))
    assert layer_map(reloaded) == [0, 1, 3, 4]

    prompt = ids[:1, 3:]
    with torch.no_grad():
        cached = reloaded.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
        plain = reloaded.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False, pad_token_id=0)
    assert cached.shape[1] == prompt.shape[1] + 6
    assert torch.equal(cached, plain)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3_text"])
def test_skipping_generates_like_removal_and_restores(family):
    from engine.models.surgery import skipping

    model = tiny_model(family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config_before = model.config.to_dict()
    prompt, _ = batch()
    with torch.no_grad(), skipping(model, 2):
        assert layer_map(model) == [0, 1, 3, 4, 5]
        inside = model.generate(prompt[:1], max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert layer_map(model) == list(range(6)) and model.config.to_dict() == config_before
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    removed = tiny_model(family)
    remove_layers(removed, 2)
    with torch.no_grad():
        assert torch.equal(inside, removed.generate(prompt[:1], max_new_tokens=5, do_sample=False, pad_token_id=0))
