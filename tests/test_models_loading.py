import pytest
import torch

from engine.models.errors import ModelSpecError
from engine.models.loading import embedded_gguf_path, load_model, resolve_spec


def test_unknown_spec_names_what_was_tried(tmp_path):
    with pytest.raises(ModelSpecError) as err:
        resolve_spec("no-such-model")
    message = str(err.value)
    assert "smollm2-135m" in message and "local directory" in message and "Hub id" in message
    assert "\n" not in message


def test_missing_gguf_and_non_model_directory(tmp_path):
    with pytest.raises(ModelSpecError, match="no such GGUF"):
        resolve_spec(str(tmp_path / "x.gguf"))
    with pytest.raises(ModelSpecError, match=r"no config\.json"):
        resolve_spec(str(tmp_path))


def test_hub_id_offline_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_spec("Qwen/Qwen2.5-3B") == ("hub", "Qwen/Qwen2.5-3B")
    with pytest.raises(ModelSpecError) as err:
        load_model("ild-test/definitely-not-cached")
    assert "HF_HUB_OFFLINE" in str(err.value)


def test_local_directory_round_trip(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from tests.tiny_models import tiny_model

    model = tiny_model("qwen3")
    model.save_pretrained(tmp_path)
    vocab = {f"t{i}": i for i in range(256)}
    raw = Tokenizer(models.WordLevel(vocab=vocab, unk_token="t0"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="t2", unk_token="t0").save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), device="cpu")
    assert loaded.kind == "local"
    assert loaded.model.dtype == torch.float32
    assert loaded.tokenizer.pad_token is not None


def test_embedded_gguf_is_found_without_network():
    path = embedded_gguf_path("smollm2-135m")
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000


@pytest.mark.slow
def test_embedded_smollm2_loads_removes_exports_and_generates(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from engine.models.cpu_linear import use_onednn_linears
    from engine.models.export import export_model
    from engine.models.surgery import layer_map, remove_layers

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_model("smollm2-135m", device="cpu")
    model, tok = loaded.model, loaded.tokenizer
    assert model.config.num_hidden_layers == 30 and model.config.model_type == "llama"
    remove_layers(model, [15])
    assert layer_map(model) == [i for i in range(30) if i != 15]
    out = export_model(model, tok, tmp_path / "export", {"teacher": "smollm2-135m"})
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    theirs = reloaded.state_dict()
    assert all(torch.equal(tensor, theirs[name]) for name, tensor in model.state_dict().items())
    # load_model runs CPU linears through oneDNN; the same kernels give the same logits bit for bit.
    use_onednn_linears(reloaded)
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**ids).logits, reloaded(**ids).logits)
        text = tok.decode(reloaded.generate(**ids, max_new_tokens=8, do_sample=False)[0])
    assert text.startswith("The capital of France is") and len(text) > len("The capital of France is")


def test_gguf_conversion_is_keyed_by_content_not_path_or_mtime(tmp_path, monkeypatch):
    import os

    from engine.models import loading

    monkeypatch.setattr(loading, "cache_root", lambda: tmp_path / "cache")
    data = os.urandom(3 << 20)
    first, second = tmp_path / "a" / "m.gguf", tmp_path / "b" / "m.gguf"
    for path in (first, second):
        path.parent.mkdir()
        path.write_bytes(data)
    os.utime(second, (1, 1))  # a reinstall: same bytes, another place and time
    assert loading._gguf_cache_dir(first) == loading._gguf_cache_dir(second)
    second.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # other weights at the end
    assert loading._gguf_cache_dir(first) != loading._gguf_cache_dir(second)
