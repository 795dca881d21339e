import inspect
import json

import pytest
import torch

from engine.config import TrainableSettings
from engine.distill.trainable import choose_trainable, freeze_except
from engine.models.export import export_model
from engine.models.surgery import layer_map, parameter_count, remove_layers, reverse_order_candidates, untie_head
from tests.tiny_models import batch, tiny_config


def _tied_model(family: str = "llama"):
    from transformers import AutoModelForCausalLM

    config = tiny_config(family)
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    return model


def _logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits[mask.bool()]


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_untied_head_exports_and_reloads_with_its_own_weight(family, tmp_path):
    from transformers import AutoModelForCausalLM

    model = _tied_model(family)
    ids, mask = batch()
    before = _logits(model, ids, mask)
    tied_count = parameter_count(model)
    assert untie_head(model) is True
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    assert model.config.tie_word_embeddings is False
    assert parameter_count(model) == tied_count + model.lm_head.weight.numel()
    assert torch.equal(_logits(model, ids, mask), before)
    # What transformers does on its own at times (init_weights uses the tie map kept since construction).
    model.tie_weights()
    if "recompute_mapping" in inspect.signature(model.tie_weights).parameters:
        model.tie_weights(recompute_mapping=False)
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    assert untie_head(model) is False  # already untied

    with torch.no_grad():
        model.lm_head.weight.add_(0.05 * torch.randn_like(model.lm_head.weight))
    changed = _logits(model, ids, mask)
    remove_layers(model, 2)
    out = export_model(model, None, tmp_path / "export")
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    reloaded = AutoModelForCausalLM.from_pretrained(out, attn_implementation=model.config._attn_implementation).eval()
    assert reloaded.lm_head.weight is not reloaded.model.embed_tokens.weight
    assert torch.equal(reloaded.lm_head.weight, model.lm_head.weight)
    assert torch.equal(reloaded.model.embed_tokens.weight, model.model.embed_tokens.weight)
    assert torch.equal(_logits(reloaded, ids, mask), _logits(model, ids, mask))
    assert not torch.allclose(changed, before)


def test_training_the_untied_head_and_last_layers_leaves_the_embedding_alone():
    model = _tied_model()
    config = TrainableSettings(choice="last", k=3, train_head=True)
    trainable = choose_trainable(layer_map(model), 6, 5, config)
    assert trainable == [3, 4, 5]
    with pytest.raises(ValueError, match="tied"):
        freeze_except(model, trainable, config)
    # "untied": the head trains only where it is the student's own; tied, the layers alone train.
    freeze_except(model, trainable, TrainableSettings(choice="last", k=3, train_head="untied"))
    assert not model.lm_head.weight.requires_grad and any(p.requires_grad for p in model.model.layers[3].parameters())
    untie_head(model)
    params = freeze_except(model, trainable, config)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "lm_head.weight" in names and "model.embed_tokens.weight" not in names
    assert all(
        n == "lm_head.weight" or n.startswith(("model.layers.3.", "model.layers.4.", "model.layers.5.")) for n in names
    )

    embedding = model.model.embed_tokens.weight.detach().clone()
    head = model.lm_head.weight.detach().clone()
    optimizer = torch.optim.SGD(params, lr=0.5)
    ids, mask = batch()
    model.train()
    logits = model(input_ids=ids, attention_mask=mask).logits
    torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)).backward()
    optimizer.step()
    assert torch.equal(model.model.embed_tokens.weight, embedding)
    assert not torch.equal(model.lm_head.weight, head)


def test_reverse_order_walks_down_from_the_layer_before_the_final_one():
    assert reverse_order_candidates(list(range(6))) == [4, 3, 2, 1, 0]
    assert reverse_order_candidates(list(range(6)), keep_final=False) == [5, 4, 3, 2, 1, 0]
    assert reverse_order_candidates([0, 1, 2, 5, 7]) == [5, 2, 1, 0]

    from tests.tiny_models import tiny_model

    model = tiny_model("llama")
    removed = []
    for _ in range(3):  # one removal per iteration, re-reading the order each time
        first = reverse_order_candidates(layer_map(model))[0]
        remove_layers(model, first)
        removed.append(first)
    assert removed == [4, 3, 2] and layer_map(model) == [0, 1, 5]


@pytest.mark.e2e
def test_the_teacher_row_counts_the_teachers_parameters_not_the_untied_students(tiny, tmp_path):
    """reverse-order unties the student's tied head before the teacher is evaluated: the teacher's row
    (and run_started) must say the teacher's size, and the students theirs (their own head included)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.runlog.tailer import read_all
    from tests.support import ild, run_args

    config = tiny_config("llama")
    config.tie_word_embeddings = True  # as SmolLM2's
    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_config(config).eval()
    assert teacher.lm_head.weight is teacher.model.embed_tokens.weight
    teacher.save_pretrained(tmp_path / "tied")
    AutoTokenizer.from_pretrained(tiny / "model").save_pretrained(tmp_path / "tied")
    args = run_args(
        tmp_path / "tied", tiny / "suite.yaml", tmp_path / "runs", "rev", "--headless", strategy="reverse-order"
    )
    done = ild(*args, "--set", "heal.train_tokens=96", "--set", "heal.seq_len=16", "--set", "heal.untie_head=true")
    assert done.returncode == 0, done.stderr
    events = read_all(tmp_path / "runs" / "rev" / "events.jsonl")
    rows = {(e["stage"], e["layers"]): e["params"] for e in events if e["type"] == "eval"}
    assert rows[("teacher", 6)] == parameter_count(teacher)
    assert next(e for e in events if e["type"] == "run_started")["params"] == parameter_count(teacher)
    head, layer = teacher.lm_head.weight.numel(), parameter_count(teacher.model.layers[0])
    assert rows[("after_healing", 5)] == parameter_count(teacher) + head - layer  # its own head now


@pytest.mark.e2e
@pytest.mark.parametrize("tied", [True, False])
def test_reverse_order_trains_the_head_only_where_the_student_has_its_own(tiny, tmp_path, tied):
    """The preset's default (heal.train_head=untied): a tied head stays tied and untrained, so the
    student never outweighs the teacher (the healing ablation measured untying: more healing, +21 %
    parameters on SmolLM2); a model with its own head trains it with the last three layers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.runlog.tailer import read_all
    from tests.support import ild, run_args

    config = tiny_config("llama")
    config.tie_word_embeddings = tied
    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_config(config).eval()
    teacher.save_pretrained(tmp_path / "teacher")
    AutoTokenizer.from_pretrained(tiny / "model").save_pretrained(tmp_path / "teacher")
    args = run_args(
        tmp_path / "teacher", tiny / "suite.yaml", tmp_path / "runs", "rev", "--headless", strategy="reverse-order"
    )
    done = ild(*args, "--set", "heal.train_tokens=96", "--set", "heal.seq_len=16")
    assert done.returncode == 0, done.stderr
    events = read_all(tmp_path / "runs" / "rev" / "events.jsonl")
    rows = {(e["stage"], e["layers"]): e["params"] for e in events if e["type"] == "eval"}
    assert rows[("after_healing", 5)] == parameter_count(teacher) - parameter_count(teacher.model.layers[0])
    said = [e["message"] for e in events if e["type"] == "log" and "tied to the input embedding" in e["message"]]
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "runs" / "rev" / "export")
    if tied:
        assert said and "heal.untie_head=true" in said[0]
        assert student.lm_head.weight.data_ptr() == student.model.embed_tokens.weight.data_ptr()
        assert torch.equal(student.lm_head.weight, teacher.lm_head.weight)
    else:
        assert not said
        assert not torch.equal(student.lm_head.weight, teacher.lm_head.weight)  # trained
        assert torch.equal(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight)
