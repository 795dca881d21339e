"""The score cache: the same weights on the same items are scored once, across runs; other weights,
items, batching or code are never read from it."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from engine.evaluation import Evaluation
from engine.models.surgery import remove_layers
from engine.score_cache import ScoreCache
from tests.support import ild, run_args
from tests.tiny_models import tiny_model
from tests.tiny_suite import tiny_suite


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    root = tmp_path_factory.mktemp("suite")
    _, tokenizer = tiny_suite(root)
    return str(root / "suite.yaml"), tokenizer


def _evaluation(model, suite, cache, batch_tokens=4096):
    path, tokenizer = suite
    return Evaluation(model, tokenizer, path, None, batch_tokens, 0, cache=cache)


def _forwards(evaluation):
    return sum(e.forwards.layer_forwards for e in [evaluation.select, *evaluation.report])


def test_the_same_weights_on_the_same_items_are_scored_once(tmp_path, suite):
    cache = ScoreCache(tmp_path)
    model = tiny_model("llama")
    first = _evaluation(model, suite, cache)
    computed = {part: first.scores(part) for part in ("select", "report")}
    assert first.cached == {"select": False, "report": False} and _forwards(first) > 0
    # another run: the model loaded again, the suite prepared again
    again = _evaluation(copy.deepcopy(model), suite, cache)
    assert {part: again.scores(part) for part in ("select", "report")} == computed
    assert again.cached == {"select": True, "report": True} and _forwards(again) == 0
    assert list(again.scores("report")) == list(computed["report"])  # the tasks in the same order


def test_other_weights_items_or_batching_are_scored_afresh(tmp_path, suite):
    cache = ScoreCache(tmp_path)
    model = tiny_model("llama")
    base = _evaluation(model, suite, cache).scores("report")

    removed = copy.deepcopy(model)
    remove_layers(removed, [2])
    without_2 = _evaluation(removed, suite, cache)
    assert _scored_afresh(without_2)
    healed = copy.deepcopy(model)
    with torch.no_grad():  # what a healing step does to one layer
        healed.model.layers[3].self_attn.o_proj.weight.add_(1e-3)
    fresh = _evaluation(healed, suite, cache)
    assert _scored_afresh(fresh) and fresh.scores("report") != base
    assert _scored_afresh(_evaluation(model, suite, cache, batch_tokens=2048))
    path, tokenizer = suite
    other_split = Evaluation(model, tokenizer, path, None, 4096, 1, cache=cache)  # other items in the report part
    assert _scored_afresh(other_split)
    # the model changed in place (a run removes layers from the model it evaluates)
    live = _evaluation(copy.deepcopy(model), suite, cache)
    assert live.scores("report") == base and live.cached["report"]
    remove_layers(live.select.model, [2])  # the same weights as `removed`, however they got there
    assert live.scores("report") == without_2.scores("report") and live.cached["report"]
    remove_layers(live.select.model, [4])
    assert _scored_afresh(live)


def _scored_afresh(evaluation) -> bool:
    evaluation.scores("report")
    return evaluation.cached["report"] is False and _forwards(evaluation) > 0


def test_a_damaged_entry_is_scored_again(tmp_path, suite):
    cache = ScoreCache(tmp_path)
    model = tiny_model("llama")
    base = _evaluation(model, suite, cache).scores("select")
    (entry,) = tmp_path.glob("*.json")
    entry.write_text('{"lm": "high"')
    again = _evaluation(model, suite, cache)
    assert again.scores("select") == base and again.cached["select"] is False
    assert json.loads(entry.read_text()) == base  # written afresh


def test_it_keeps_the_newest_entries(tmp_path):
    cache = ScoreCache(tmp_path, max_entries=3)
    for n in range(5):
        cache.put(f"k{n}", {"t": n / 10})
    assert sorted(p.stem for p in tmp_path.glob("*.json")) == ["k2", "k3", "k4"]
    assert cache.get("k0") is None and cache.get("k4") == {"t": 0.4}


@pytest.mark.e2e
def test_a_second_run_reads_its_teachers_scores_from_the_cache(tiny, tmp_path):
    logs = []
    for name in ("first", "second"):
        done = ild(*run_args(tiny / "model", tiny / "suite.yaml", tmp_path / "runs", name, "--headless"))
        assert done.returncode == 0, done.stderr
        events = [json.loads(line) for line in (tmp_path / "runs" / name / "events.jsonl").read_text().splitlines()]
        logs.append(events)
    teachers = [
        [(e["part"], e["tasks"]) for e in log if e["type"] == "eval" and e["stage"] == "teacher"] for log in logs
    ]
    assert teachers[0] == teachers[1]
    said = [e.get("message", "") for e in logs[1] if e["type"] == "log"]
    assert any("teacher: select and report scores from the score cache" in m for m in said), said
    # the whole run is the same weights again: every ranking comes back, every removal is the same
    rankings = [
        [{k: v for k, v in e.items() if k not in ("seq", "t")} for e in log if e["type"] == "importance"]
        for log in logs
    ]
    assert rankings[0] == rankings[1] and len(rankings[1]) == 2
    assert sum("ranking from the score cache" in m for m in said) == 2, said
    off = ild(
        *run_args(
            tiny / "model", tiny / "suite.yaml", tmp_path / "runs", "off", "--headless", "--set", "score_cache=false"
        )
    )
    assert off.returncode == 0, off.stderr
    assert "score cache" not in (tmp_path / "runs" / "off" / "events.jsonl").read_text()


def test_weights_that_cannot_be_read_here_are_scored_without_the_cache(tmp_path, suite, monkeypatch):
    """Offloaded weights (accelerate's meta tensors) cannot be digested: the evaluation goes on uncached."""
    import engine.score_cache

    def offloaded(model):
        raise NotImplementedError("Cannot copy out of meta tensor; no data!")

    monkeypatch.setattr(engine.score_cache, "weights_digest", offloaded)
    evaluation = _evaluation(tiny_model("llama"), suite, ScoreCache(tmp_path))
    assert evaluation.scores("select") and evaluation.cache is None and not list(tmp_path.iterdir())
