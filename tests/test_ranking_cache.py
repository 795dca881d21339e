"""The ranking cache: a model ranked once by a metric on some items is not ranked again, across runs;
other weights, layers, items, calibration, teacher or racing settings are ranked afresh."""

from __future__ import annotations

import copy
import dataclasses
import importlib
import sys

import pytest
import torch

from engine.importance.racing import RacingSettings
from engine.models.surgery import remove_layers
from engine.ranking_cache import RankingCache
from engine.scoring import Scorer
from engine.tasks.evaluate import SuiteEvaluator
from tests.test_racing import _suite, _trained_model
from tests.test_scoring import _calibration
from tests.tiny_models import tiny_model

RACING = RacingSettings()


@pytest.fixture(scope="module")
def raced(tmp_path_factory):
    """A trained tiny model whose race drops layers early (partial items to keep), and its suite."""
    root = tmp_path_factory.mktemp("racing")
    suite, tok = _suite(root)
    return _trained_model(root, tok), suite, tok


def _task_drop(model, suite, tok, cache, racing=None):
    evaluator = SuiteEvaluator(model, tok, suite)  # prepared afresh, as a new run does
    scorer = Scorer("task_drop", model, evaluator, [], tok.pad_token_id or 0, 4096, racing=racing, cache=cache)
    return scorer, evaluator


def test_a_raced_ranking_comes_back_whole_without_a_forward(tmp_path, raced):
    model, suite, tok = raced
    cache = RankingCache(tmp_path)
    first, evaluator = _task_drop(model, suite, tok, cache, RacingSettings())
    computed = first.score()
    assert not first.cached and evaluator.forwards.layer_forwards > 0
    assert computed.partial_items, "the race should drop some layers early here"

    again, evaluator = _task_drop(copy.deepcopy(model), suite, tok, cache, RacingSettings())
    stored = again.score()
    assert again.cached and evaluator.forwards.layer_forwards == 0
    assert stored == computed  # every field; floats through JSON come back to the bit
    assert all(type(layer) is int for layer, _ in stored.ranked) and stored.proposal == computed.proposal


def test_other_weights_layers_or_racing_are_ranked_afresh(tmp_path, raced):
    model, suite, tok = raced
    cache = RankingCache(tmp_path)
    base, _ = _task_drop(model, suite, tok, cache, RacingSettings())
    base.score()

    def fresh(model, racing=RACING) -> bool:
        scorer, evaluator = _task_drop(model, suite, tok, cache, racing)
        scorer.score()
        return not scorer.cached and evaluator.forwards.layer_forwards > 0

    nudged = copy.deepcopy(model)
    with torch.no_grad():  # what a healing step does to one layer
        nudged.model.layers[3].self_attn.o_proj.weight.add_(1e-3)
    assert fresh(nudged)
    removed = copy.deepcopy(model)
    remove_layers(removed, [2])
    assert fresh(removed)
    assert fresh(model, dataclasses.replace(RACING, seed=1))
    assert fresh(model, None)  # full scoring ranks on every item: another ranking


def test_calibration_teacher_and_metric_are_part_of_the_key(tmp_path):
    cache = RankingCache(tmp_path)
    student, teacher = tiny_model("llama"), tiny_model("llama")
    remove_layers(student, 2)
    calibration = _calibration()

    def kl(calibration, teacher):
        scorer = Scorer("loss_kl", student, None, calibration, 0, 4096, teacher=teacher, cache=cache)
        return scorer.score(), scorer.cached

    computed, cached = kl(calibration, teacher)
    assert not cached and kl(calibration, teacher) == (computed, True)
    assert kl(calibration[:3], teacher)[1] is False
    other_teacher = copy.deepcopy(teacher)
    with torch.no_grad():
        other_teacher.model.layers[0].mlp.down_proj.weight.mul_(1.01)
    assert kl(calibration, other_teacher)[1] is False
    bi = Scorer("bi", student, None, calibration, 0, 4096, cache=cache)
    assert bi.score().event["metric"] == "bi" and not bi.cached


def test_a_damaged_entry_is_ranked_again(tmp_path):
    cache = RankingCache(tmp_path)
    student = tiny_model("llama")
    calibration = _calibration()
    computed = Scorer("bi", student, None, calibration, 0, 4096, cache=cache).score()
    (entry,) = tmp_path.glob("*.json")
    for damage in ('{"ranked": [[1, 0.5]', '{"ranked": [], "per_task": {}, "event": {}, "partial_items": {}}', "[]"):
        entry.write_text(damage)
        again = Scorer("bi", student, None, calibration, 0, 4096, cache=cache)
        assert again.score().ranked == computed.ranked and not again.cached
    assert Scorer("bi", student, None, calibration, 0, 4096, cache=cache).score().ranked == computed.ranked


def test_weights_that_cannot_be_read_here_are_ranked_without_the_cache(tmp_path, monkeypatch):
    import engine.ranking_cache

    def offloaded(model):
        raise NotImplementedError("Cannot copy out of meta tensor; no data!")

    monkeypatch.setattr(engine.ranking_cache, "weights_digest", offloaded)
    scorer = Scorer("bi", tiny_model("llama"), None, _calibration(), 0, 4096, cache=RankingCache(tmp_path))
    assert scorer.score().ranked and scorer.cache is None and not list(tmp_path.iterdir())


def test_what_a_metric_does_not_read_is_not_in_the_key(tmp_path, raced):
    """A bridge makes a task-drop preset load the calibration text, which task drop never reads:
    the study's presets still share the teacher's ranking."""
    model, suite, tok = raced
    cache = RankingCache(tmp_path)
    plain, _ = _task_drop(model, suite, tok, cache, RACING)
    plain.score()
    bridged, evaluator = _task_drop(model, suite, tok, cache, RACING)
    bridged.calibration = _calibration()
    bridged.score()
    assert bridged.cached and evaluator.forwards.layer_forwards == 0


def test_a_metric_registered_from_outside_is_ranked_again_when_its_code_changes(tmp_path, monkeypatch):
    from engine.runlog.strategies import METRICS, Metric

    module = tmp_path / "my_metric.py"
    code = "def score(scorer):\n    return scorer.ranking({o: {sign} * o for o in range(len(scorer.model.model.layers))})\n"
    module.write_text(code.replace("{sign}", "1.0"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(METRICS, "mine", Metric("mine", "my_metric:score", "a user's metric"))
    cache = RankingCache(tmp_path / "store")
    model = tiny_model("llama")
    first = Scorer("mine", model, None, [], 0, 4096, cache=cache)
    assert first.score().proposal == 0 and not first.cached
    module.write_text(code.replace("{sign}", "-1.0"))  # the user edits their metric
    importlib.reload(sys.modules["my_metric"])
    monkeypatch.delitem(sys.modules, "my_metric")
    edited = Scorer("mine", model, None, [], 0, 4096, cache=cache)
    assert edited.score().proposal == 5 and not edited.cached
