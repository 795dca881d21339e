"""Racing task drop: the same proposal as full scoring with fewer layer-forwards, counted exactly."""

import json
import random

import pytest
import torch

from engine.importance.racing import RacingSettings, task_drop
from engine.importance.scores import task_drop_scores
from engine.tasks.evaluate import SuiteEvaluator
from engine.tasks.spec import load_suite
from tests.tiny_models import tiny_model
from tests.tiny_suite import WORDS
from tests.tiny_tokenizer import word_tokenizer


def _suite(tmp_path, n=48):
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 14))) for _ in range(n)]
    (tmp_path / "text.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    (tmp_path / "mc.jsonl").write_text(
        "".join(
            json.dumps({"q": t, "options": [rng.choice(WORDS) for _ in range(3)], "label": rng.randint(0, 2)}) + "\n"
            for t in texts
        )
    )
    (tmp_path / "suite.yaml").write_text("""
name: tiny
tasks:
  - {name: lm, kind: language_modeling, source: {type: jsonl, path: text.jsonl}, metric: next_token_probability, samples: 40}
  - {name: copy, kind: language_modeling, source: {type: jsonl, path: text.jsonl}, prompt: "{text} :", metric: next_token_probability, samples: 24}
  - {name: mc, kind: multiple_choice, source: {type: jsonl, path: mc.jsonl}, fields: {question: q, choices: options, answer: label}, prompt: "{question} ?", metric: choice_probability, samples: 24}
""")
    return load_suite(str(tmp_path / "suite.yaml")), word_tokenizer(texts + ["? :"])


def _model_with_a_weak_layer(weak: int):
    """A tiny model whose layer ``weak`` barely changes its input, so skipping it costs least."""
    model = tiny_model("llama")
    with torch.no_grad():
        layer = model.model.layers[weak]
        layer.self_attn.o_proj.weight.mul_(1e-3)
        layer.mlp.down_proj.weight.mul_(1e-3)
    return model


def test_layer_forwards_are_counted_exactly(tmp_path):
    suite, tok = _suite(tmp_path)
    model = tiny_model("llama")
    n = model.config.num_hidden_layers
    evaluator = SuiteEvaluator(model, tok, suite)
    sequences = sum(len(t.sequences) for t in evaluator.tasks)
    evaluator.evaluate([None, *range(n)], shared=True)
    # Shared: the prefix (n-1 layers), the model's last layer, n-1-i layers for candidate i, and for
    # the last candidate layer n-2 once more, read at the scored positions only.
    assert evaluator.forwards.layer_forwards == sequences * (n - 1 + 1 + sum(n - 1 - i for i in range(n - 1)) + 1)
    before = evaluator.forwards.copy()
    evaluator.evaluate([None, *range(n)], shared=False)
    assert (evaluator.forwards - before).layer_forwards == sequences * (n + n * (n - 1))
    before = evaluator.forwards.copy()
    evaluator.evaluate([None], shared=True)
    assert (evaluator.forwards - before).layer_forwards == sequences * n


def test_generation_decoding_is_counted(tmp_path):
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": f"the cat sat {w}"}) + "\n" for w in WORDS[:6]))
    (tmp_path / "t.yaml").write_text(
        "{name: g, kind: generation, source: {type: jsonl, path: d.jsonl}, fields: {input: text, target: text}, prompt: '{input} :', metric: lcs_ratio, samples: 6, max_new_tokens: 4, stop: []}"
    )
    tok = word_tokenizer(WORDS + ["the cat sat :"])
    evaluator = SuiteEvaluator(tiny_model("llama"), tok, load_suite(str(tmp_path / "t.yaml")))
    evaluator.evaluate([None])
    n = 6
    # At least the prompt pass and one decoding step per layer and sequence.
    assert evaluator.forwards.layer_forwards >= 2 * n * 6


def test_racing_disabled_is_full_scoring(tmp_path):
    suite, tok = _suite(tmp_path)
    model = tiny_model("llama")
    full = task_drop(SuiteEvaluator(model, tok, suite), racing=RacingSettings(enabled=False))
    drops, per_task, current = task_drop_scores(SuiteEvaluator(model, tok, suite))
    assert full.partial == set() and full.drops == drops and full.per_task == per_task and full.current == current
    assert full.proposal == min(drops, key=lambda i: (drops[i], i))
    assert full.items == dict.fromkeys(drops, full.total_items)


def test_racing_never_eliminating_equals_full_scoring(tmp_path):
    suite, tok = _suite(tmp_path)
    model = tiny_model("llama")
    full = task_drop(SuiteEvaluator(model, tok, suite), racing=None)
    raced = task_drop(SuiteEvaluator(model, tok, suite), racing=RacingSettings(z=1e9))
    assert raced.partial == set() and raced.proposal == full.proposal and len(raced.rounds) > 1
    for i in full.drops:
        assert raced.drops[i] == pytest.approx(full.drops[i], abs=1e-5)


def test_racing_finds_the_full_proposal_with_fewer_layer_forwards(tmp_path):
    suite, tok = _suite(tmp_path)
    model = _model_with_a_weak_layer(3)
    full = task_drop(SuiteEvaluator(model, tok, suite), racing=None)
    raced = task_drop(SuiteEvaluator(model, tok, suite), racing=RacingSettings())
    assert full.proposal == raced.proposal == 3
    assert raced.partial and 3 not in raced.partial
    assert raced.forwards.layer_forwards < full.forwards.layer_forwards
    # Every layer has a value; partial ones on fewer items, each eliminated beyond the bound.
    assert set(raced.drops) == set(range(model.config.num_hidden_layers))
    eliminated = {i: bound for r in raced.rounds for i, bound in r.eliminated.items()}
    assert set(eliminated) == raced.partial
    for i, (gap, se) in eliminated.items():
        assert raced.items[i] < raced.total_items and gap > RacingSettings().z * se
    # Complete layers match full scoring; the ranked list starts with the proposal.
    for i in set(full.drops) - raced.partial:
        assert raced.drops[i] == pytest.approx(full.drops[i], abs=1e-5)
    assert raced.ranked()[0][0] == 3 and [i for i, _ in raced.ranked()[-len(raced.partial) :]] == sorted(
        raced.partial, key=lambda i: (raced.drops[i], i)
    )
    assert json.dumps([r.as_dict() for r in raced.rounds])


def test_racing_settings_are_validated():
    for bad in (dict(first_fraction=0), dict(growth=1.0), dict(min_items=1), dict(z=0)):
        with pytest.raises(ValueError):
            RacingSettings(**bad)
