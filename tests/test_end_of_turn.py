"""Generation stops at the end of a turn as the model's template writes it, not only at EOS."""

import json

import pytest

from engine.tasks.evaluate import SuiteEvaluator
from engine.tasks.layouts import end_of_turn, stop_token_ids
from engine.tasks.requests import prepare_task
from engine.tasks.spec import SuiteSpec, parse_task
from tests.chat_tokenizers import chat_tokenizer, successor_model


def _suite(tmp_path, **task):
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"input": "Say OK", "target": "OK"}) + "\n")
    spec = {
        "name": "say_ok",
        "kind": "generation",
        "source": {"type": "jsonl", "path": str(data)},
        "messages": [{"role": "user", "content": "{input}"}],
        "metric": "lcs_ratio",
        "layout": "chat",
        "stop": [],
        "max_new_tokens": 12,
        "samples": 1,
        **task,
    }
    return SuiteSpec(name="t", tasks=[parse_task(spec, "test")])


@pytest.mark.parametrize(
    ("family", "turn", "eos"),
    [("qwen2.5", "<|im_end|>", "<|endoftext|>"), ("llama3", "<|eot_id|>", "<|end_of_text|>")],
)
def test_the_end_of_turn_comes_from_the_template_not_eos(family, turn, eos):
    tok = chat_tokenizer(family)
    assert tok.eos_token == eos and end_of_turn(tok) == turn
    model = successor_model(tok, {"Ċ": "O"})
    assert stop_token_ids(tok, model) == [tok.eos_token_id, tok.convert_tokens_to_ids(turn)]


@pytest.mark.parametrize("family", ["qwen2.5", "llama3", "qwen3"])
def test_generation_stops_at_the_end_of_turn_and_trims_it(tmp_path, family):
    """The scripted model answers "OK", ends its turn, then would go on ("\\nOK" ...) until
    max_new_tokens: only EOS stopping it scores "OK\\nOK\\nOK..." against "OK"."""
    tok = chat_tokenizer(family)
    turn = end_of_turn(tok)
    model = successor_model(tok, {"Ċ": "O", "O": "K", "K": turn, turn: "Ċ"})
    evaluator = SuiteEvaluator(model, tok, _suite(tmp_path))
    scores = evaluator.evaluate_items([None])[None]["say_ok"]
    assert scores.predictions == ["OK"] and scores.values == [1.0]


def test_generation_config_eos_lists_stop_too(tmp_path):
    """A model whose generation_config names two EOS ids (Llama 3 instruct: end_of_text and eot)."""
    tok = chat_tokenizer("llama3")
    stop = "<|start_header_id|>"  # neither the tokenizer's EOS nor the end of turn
    model = successor_model(tok, {"Ċ": "O", "O": "K", "K": stop, stop: "Ċ"})
    model.generation_config.eos_token_id = [tok.eos_token_id, tok.convert_tokens_to_ids(stop)]
    scores = SuiteEvaluator(model, tok, _suite(tmp_path)).evaluate_items([None])[None]["say_ok"]
    assert scores.predictions == ["OK"]


def test_qwen3_templates_are_asked_without_thinking(tmp_path):
    tok = chat_tokenizer("qwen3")
    prepared = prepare_task(_suite(tmp_path).tasks[0], tok)
    prompt = tok.decode(prepared.generations[0].prompt_ids)
    assert prompt == "<|im_start|>user\nSay OK<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert prepared.generations[0].stop == ["<|im_end|>"]


def test_a_prompt_template_task_in_chat_layout_stops_at_the_end_of_turn(tmp_path):
    tok = chat_tokenizer("qwen2.5")
    model = successor_model(tok, {"Ċ": "O", "O": "K", "K": "<|im_end|>", "<|im_end|>": "Ċ"})
    suite = _suite(tmp_path, messages=None, prompt="{input}", chat=True, layout=None)
    scores = SuiteEvaluator(model, tok, suite).evaluate_items([None])[None]["say_ok"]
    assert scores.predictions == ["OK"]


def test_no_template_no_end_of_turn():
    tok = chat_tokenizer("qwen2.5")
    tok.chat_template = None
    assert end_of_turn(tok) is None and stop_token_ids(tok) == [tok.eos_token_id]
