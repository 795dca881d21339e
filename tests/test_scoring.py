"""engine.scoring on its own: the Scorer dispatches through the registry and ranks by original index."""

from __future__ import annotations

import pytest
import torch

from engine.importance.scores import loss_drop_scores, similarity_scores
from engine.models.surgery import remove_layers
from engine.runlog.strategies import IMPORTANCE_METRICS, METRICS, get_metric
from engine.scoring import Ranking, Scorer, keyed, reuse, scoring_function
from engine.tasks.requests import ScoredSequence
from tests.tiny_models import tiny_model


def _calibration(n: int = 4, length: int = 10) -> list[ScoredSequence]:
    g = torch.Generator().manual_seed(3)
    out = []
    for i in range(n):
        ids = torch.randint(3, 256, (length - i,), generator=g).tolist()
        out.append(ScoredSequence(ids, list(range(len(ids) - 1)), ids[1:], item=i))
    return out


@pytest.fixture(scope="module")
def student():
    """A tiny llama without its layer 2: current indices 0-4 are the original 0, 1, 3, 4, 5."""
    model = tiny_model("llama")
    remove_layers(model, 2)
    return model


def test_every_builtin_metric_resolves_to_a_function():
    assert set(IMPORTANCE_METRICS) <= set(METRICS)
    for name in IMPORTANCE_METRICS:
        assert callable(scoring_function(name)), name
    assert get_metric("task_drop").suite and get_metric("loss_kl").teacher and get_metric("bi").calibration
    with pytest.raises(ValueError, match="unknown importance metric 'nope'"):
        get_metric("nope")


def test_block_influence_ranks_original_layers_by_the_similarity_scores(student):
    calibration = _calibration()
    ranking = Scorer("bi", student, None, calibration, 0, 4096).score()
    both = similarity_scores(student, calibration, 0, 4096)
    original = [0, 1, 3, 4, 5]
    expected = sorted(((original[i], v) for i, v in both["bi"].items()), key=lambda kv: (kv[1], kv[0]))
    assert ranking.ranked == expected  # the same computation, so exactly equal
    assert ranking.proposal == expected[0][0]
    assert ranking.event["metric"] == "bi"
    assert list(ranking.event["scores"]) == ["0", "1", "3", "4", "5"]
    assert ranking.event["also"]["angular"] == keyed({original[i]: v for i, v in both["angular"].items()})


def test_loss_kl_against_the_teacher_it_was_given(student):
    calibration = _calibration()
    teacher = tiny_model("llama")
    ranking = Scorer("loss_kl", student, None, calibration, 0, 4096, teacher=teacher).score()
    drops = loss_drop_scores(student, calibration, 0, kind="kl", teacher=teacher)
    assert dict(ranking.ranked) == {[0, 1, 3, 4, 5][i]: v for i, v in drops.items()}
    with pytest.raises(ValueError, match="needs the teacher"):
        Scorer("loss_kl", student, None, calibration, 0, 4096).score()


def test_position_proposes_the_last_layers_before_the_final_one(student):
    ranking = Scorer("position", student, None, [], 0, 4096).score()
    assert [layer for layer, _ in ranking.ranked][:2] == [4, 3]  # 5 is the final layer: kept for last


def test_ties_rank_by_layer_and_reuse_keeps_the_layers_still_there():
    scorer = Scorer("bi", None, None, [], 0, 4096)
    ranking = scorer.ranking({5: 0.5, 2: 0.1, 3: 0.1}, extra=1)
    assert ranking.ranked == [(2, 0.1), (3, 0.1), (5, 0.5)]
    assert ranking.event == {"metric": "bi", "scores": {"2": 0.1, "3": 0.1, "5": 0.5}, "extra": 1}
    reused = reuse({2: 0.1, 3: 0.1, 5: 0.5}, [0, 3, 5], "bi")
    assert reused == Ranking([(3, 0.1), (5, 0.5)], {}, {"metric": "bi", "scores": {"3": 0.1, "5": 0.5}, "reused": True})


def test_an_unknown_metric_fails_in_one_line():
    with pytest.raises(ValueError, match="unknown importance metric 'made_up'"):
        Scorer("made_up", None, None, [], 0, 4096).score()
