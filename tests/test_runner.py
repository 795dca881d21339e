"""The runner in this process, over a tiny random llama: the loop's order and events, resume, fixed
removals, the target depth, a person's override, and a metric registered by a test.

The scorer and the healing are small fakes where the real ones would only cost time (the fake
scorer proposes a fixed order, the fake healing logs what it was asked); the model, its removals,
the evaluation, the checkpoints and the controller are the real ones. No engine subprocess.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from engine import setup
from engine.config import ConfigError, validate_config
from engine.control import StopRequested
from engine.models.surgery import layer_map
from engine.runlog.inbox import send_command
from engine.runlog.layout import create
from engine.runlog.tailer import read_all
from engine.runner import Runner
from engine.scoring import Ranking

HEAL = {"train_tokens": 48, "seq_len": 24, "heldout_tokens": 48, "teacher_store_mb": 0}
SMALL_SUITE = """
name: small
tasks:
  - {name: lm, kind: language_modeling, source: {type: jsonl, path: text.jsonl}, metric: next_token_accuracy, samples: 4}
  - name: mc
    kind: multiple_choice
    source: {type: jsonl, path: mc.jsonl}
    fields: {question: q, choices: options, answer: label}
    prompt: "{question} ?"
    metric: accuracy
    samples: 4
"""


class FakeScorer:
    """Proposes the first layer of ``order`` still there; ``stop_at`` stops the run at that iteration."""

    cached = False  # as engine.scoring.Scorer: its rankings never come from the ranking cache

    def __init__(self, run, order, stop_at=None):
        self.run, self.order, self.stop_at = run, order, stop_at

    def score(self) -> Ranking:
        if self.run.iteration == self.stop_at:
            raise StopRequested()
        remaining = layer_map(self.run.model)
        first = next(layer for layer in self.order if layer in remaining)
        scores = {layer: (0.0 if layer == first else 1.0 + layer) for layer in remaining}
        ranked = sorted(scores.items(), key=lambda kv: (kv[1], kv[0]))
        return Ranking(ranked, {}, {"metric": "fake", "scores": {str(k): v for k, v in sorted(scores.items())}})


class FakeHealing:
    """Logs each healing it is asked for; ``stop_at`` leaves a partial healing there and stops."""

    def __init__(self, run, stop_at=None):
        self.run, self.stop_at, self.calls = run, stop_at, []
        self.heldout = {"before": {"loss": 2.0}, "after": {"loss": 1.0}}
        self.summary = {"tokens": 48, "start": 0, "data_tokens": 480, "epochs": 0.1}

    def after_removal(self, gaps, partial) -> None:
        run = self.run
        self.calls.append((run.iteration, gaps, partial.step if partial else None))
        if run.iteration == self.stop_at and partial is None:
            last = run.removed[-1]
            chosen = {"layer": last["layer"], "by": last["by"], "proposed": last["proposed"]}
            run.store.save_partial(run.iteration, 3, chosen, [0], {"step": 3})
            raise StopRequested()
        run.emit("log", level="info", message=f"fake healing of {gaps}", iteration=run.iteration)

    def final(self) -> None:
        self.calls.append((self.run.iteration, "final", None))


@pytest.fixture(scope="module")
def small(tiny):
    (tiny / "small.yaml").write_text(SMALL_SUITE)
    return tiny


def run(small, path, *, scorer=None, healing=None, resume=False, scorer_class=None, **settings):
    """One engine's run on ``path``; returns the runner, its events (all of the log) and the fakes."""
    config = dict(
        name=path.name,
        model=str(small / "model"),
        suite=str(small / "small.yaml"),
        start_layers=6,
        score_cache=False,
        strategy="iterative-distill",
        heal=HEAL,
    )
    config.update(settings)
    fakes = {}

    def prepare(runner):
        parts = setup.prepare(runner)
        if scorer is not None:
            parts.scorer = fakes["scorer"] = (scorer_class or FakeScorer)(runner, **scorer)
        if healing is not None:
            parts.healing = fakes["healing"] = FakeHealing(runner, **healing)
        return parts

    create(path, resume=resume)
    runner = Runner(path, validate_config(config), prepare=prepare)
    runner.reason = runner.run()
    return runner, read_all(path / "events.jsonl"), fakes


def steps(events, iteration):
    """What iteration ``iteration`` did, in order: event types (and stages of evaluations)."""
    keep = {"importance", "proposal", "decision", "layer_removed", "eval", "checkpoint", "log"}
    out = []
    for e in events:
        if e.get("iteration") != iteration or e["type"] not in keep:
            continue
        if e["type"] == "log":
            if e["message"].startswith("fake healing"):
                out.append("heal")
        else:
            out.append(f"eval {e['stage']} {e['part']}" if e["type"] == "eval" else e["type"])
    return out


ITERATION = [
    "importance",
    "proposal",
    "decision",
    "layer_removed",
    "eval after_removal select",
    "eval after_removal report",
    "heal",
    "eval after_healing select",
    "eval after_healing report",
    "checkpoint",
]


def test_the_loop_runs_score_decide_remove_evaluate_heal_evaluate_checkpoint_to_the_target(small, tmp_path):
    runner, events, fakes = run(small, tmp_path / "loop", scorer={"order": [3, 1, 0]}, healing={}, target_layers=4)
    assert runner.reason == "target"
    assert steps(events, 0) == ["eval teacher select", "eval teacher report", "checkpoint"]
    assert steps(events, 1) == ITERATION and steps(events, 2) == ITERATION
    assert fakes["healing"].calls == [(1, [3], None), (2, [1], None)]  # each removal's own gap
    removed = [e for e in events if e["type"] == "layer_removed"]
    assert [(e["layer"], e["remaining"], e["layers"]) for e in removed] == [
        (3, [0, 1, 2, 4, 5], 5),
        (1, [0, 2, 4, 5], 4),
    ]
    decisions = [(e["layer"], e["by"], e["proposed"]) for e in events if e["type"] == "decision"]
    assert decisions == [(3, "auto", 3), (1, "auto", 1)]
    # the target depth ends the loop: nothing is scored at 4 layers, and the export has 4 layers
    assert max(e.get("iteration", 0) for e in events) == 2
    assert events[-1]["type"] == "run_finished" and events[-1]["reason"] == "target"
    assert events[-1]["removed"] == [3, 1] and events[-1]["layers"] == 4
    exported = json.loads((tmp_path / "loop" / "export" / "config.json").read_text())
    assert exported["num_hidden_layers"] == 4 and exported["ild_layer_map"] == [0, 2, 4, 5]
    assert json.loads((tmp_path / "loop" / "state.json").read_text())["removed"] == [3, 1]
    assert [e["seq"] for e in events] == list(range(len(events)))


def test_fixed_removals_score_nothing_and_heal_once_after_the_last(small, tmp_path):
    runner, events, fakes = run(small, tmp_path / "fixed", healing={}, removals=[4, 1])
    assert not [e for e in events if e["type"] in ("importance", "proposal", "awaiting_decision")]
    assert [(e["layer"], e["by"]) for e in events if e["type"] == "decision"] == [(4, "fixed"), (1, "fixed")]
    assert fakes["healing"].calls == [(2, [4, 1], None)]
    assert steps(events, 1) == ["decision", "layer_removed", "checkpoint"]  # neither evaluated nor healed
    assert steps(events, 2) == ITERATION[2:]
    assert runner.removed_layers == [4, 1] and runner.depth == 4


def test_fixed_removals_each_healed_when_asked(small, tmp_path):
    each = {**HEAL, "each_removal": True}
    _, events, fakes = run(small, tmp_path / "each", healing={}, removals=[4, 1], heal=each)
    assert fakes["healing"].calls == [(1, [4], None), (2, [1], None)]
    assert steps(events, 1) == ITERATION[2:] and steps(events, 2) == ITERATION[2:]


def test_resume_from_the_checkpoint_of_iteration_one(small, tmp_path):
    path = tmp_path / "resume"
    first, events, _ = run(
        small, path, scorer={"order": [3, 1], "stop_at": 2}, strategy="iterative-pruning", target_layers=4
    )
    assert first.reason == "stopped" and events[-1]["type"] == "run_finished" and events[-1]["reason"] == "stopped"
    count = len(events)
    second, events, _ = run(
        small, path, scorer={"order": [3, 1]}, resume=True, strategy="iterative-pruning", target_layers=4
    )
    again = events[count:]
    assert again[0]["type"] == "engine_started" and again[0]["resumed_from"] == "1"
    assert not [e for e in again if e["type"] == "run_started" or e.get("stage") == "teacher"]
    assert [e["layer"] for e in again if e["type"] == "layer_removed"] == [1]
    assert second.reason == "target" and events[-1]["removed"] == [3, 1]
    # the resumed run ends as one that was never stopped: same evaluations, to the last digit
    _, whole, _ = run(
        small, tmp_path / "whole", scorer={"order": [3, 1]}, strategy="iterative-pruning", target_layers=4
    )
    scores = lambda log: [(e["iteration"], e["stage"], e["part"], e["tasks"]) for e in log if e["type"] == "eval"]
    assert scores(events) == scores(whole)


def test_resume_in_the_middle_of_a_healing_redoes_the_removal_and_continues_it(small, tmp_path):
    path = tmp_path / "partial"
    first, events, fakes = run(small, path, scorer={"order": [3, 1]}, healing={"stop_at": 2}, target_layers=4)
    assert first.reason == "stopped" and fakes["healing"].calls == [(1, [3], None), (2, [1], None)]
    count = len(events)
    second, events, fakes = run(small, path, scorer={"order": [0]}, healing={}, resume=True, target_layers=4)
    again = events[count:]
    assert fakes["healing"].calls == [(2, [1], 3)]  # the same gap, from the partial healing's step
    assert not [e for e in again if e["type"] in ("importance", "decision", "layer_removed")]
    assert any(e["type"] == "log" and "resuming iteration 2 at healing step 3" in e["message"] for e in again)
    assert steps(again, 2) == ITERATION[6:]
    assert second.reason == "target" and second.removed[-1] == {"iteration": 2, "layer": 1, "by": "auto", "proposed": 1}


def test_a_person_overrides_the_proposal(small, tmp_path):
    path = tmp_path / "manual"

    def override():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            log = path / "events.jsonl"
            if log.exists() and any(e["type"] == "awaiting_decision" for e in read_all(log)):
                send_command(path, "override", layer=2)
                return
            time.sleep(0.05)

    person = threading.Thread(target=override, daemon=True)
    person.start()
    runner, events, _ = run(
        small, path, scorer={"order": [3]}, strategy="iterative-pruning", mode="manual", target_layers=5
    )
    person.join()
    awaited = [e for e in events if e["type"] == "awaiting_decision"]
    assert len(awaited) == 1 and awaited[0]["layer"] == 3
    decision = next(e for e in events if e["type"] == "decision")
    assert (decision["layer"], decision["by"], decision["proposed"]) == (2, "user", 3)
    assert decision["command_id"]
    assert next(e for e in events if e["type"] == "layer_removed")["layer"] == 2
    assert runner.removed == [{"iteration": 1, "layer": 2, "by": "user", "proposed": 3}]
    # the evaluation after removal is of the model the person chose (nothing scored it)
    assert steps(events, 1)[3:6] == ["layer_removed", "eval after_removal select", "eval after_removal report"]


def test_a_metric_registered_by_a_test_runs_in_the_runner(small, tmp_path):
    from tests import example_metric

    example_metric.SEEN.clear()
    runner, events, _ = run(
        small, tmp_path / "metric", strategy="iterative-pruning", importance="deepest_first", target_layers=4
    )
    assert runner.reason == "target" and runner.removed_layers == [5, 4]
    assert next(e for e in events if e["type"] == "run_started")["importance"] == "deepest_first"
    importance = [e for e in events if e["type"] == "importance"]
    assert [(e["metric"], e["scores"]["0"]) for e in importance] == [("deepest_first", 0.0)] * 2
    # the setup built what the metric declared (calibration text) and nothing it did not
    assert [s["remaining"] for s in example_metric.SEEN] == [[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4]]
    assert all(s["calibration"] > 0 and not s["teacher"] and not s["suite"] for s in example_metric.SEEN)
    assert runner.teacher is None


def test_an_unregistered_metric_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match=r"^unknown importance metric 'nope' \(known: task_drop, bi,"):
        validate_config(
            dict(name="x", model="m", strategy="iterative-pruning", start_layers=6, target_layers=4, importance="nope")
        )


def test_block_distill_removes_the_block_and_heals_it_once(small, tmp_path):
    """The prune-then-heal preset: ReplaceMe's block chosen once on the teacher, its layers removed
    one after another with nothing evaluated or healed between, one healing of every gap at the end."""
    runner, events, fakes = run(small, tmp_path / "block", healing={}, strategy="block-distill", target_layers=4)
    assert runner.reason == "target"
    removed = runner.removed_layers
    assert len(removed) == 2 and abs(removed[0] - removed[1]) == 1  # one contiguous block
    importance = [e for e in events if e["type"] == "importance"]
    assert importance[0]["metric"] == "block_distance"
    assert all(e.get("reused") for e in importance[1:])  # chosen once, on the teacher
    assert steps(events, 1) == ["importance", "proposal", "decision", "layer_removed", "checkpoint"]
    assert steps(events, 2) == ITERATION
    assert fakes["healing"].calls == [(2, removed, None)]


def test_block_distill_heals_each_removal_when_asked(small, tmp_path):
    each = {**HEAL, "each_removal": True}
    _, events, fakes = run(
        small, tmp_path / "block-each", healing={}, strategy="block-distill", target_layers=4, heal=each
    )
    assert [c[0] for c in fakes["healing"].calls] == [1, 2]
    assert steps(events, 1)[-6:] == ITERATION[-6:]


def test_evaluations_from_the_lowest_changed_layer_equal_full_passes(small, tmp_path):
    """eval_cache_mb: the run's evaluations start above the layers that did not change; every score
    equals the one of a run that evaluates from the embeddings (eval_cache_mb=0), to the bit."""

    def scores(events):
        return [
            (e["iteration"], e["stage"], e["part"], e["tasks"], e["aggregate"]) for e in events if e["type"] == "eval"
        ]

    runs = {}
    for mb in (0, 64):
        runner, events, _ = run(
            small, tmp_path / f"cache{mb}", scorer={"order": [3, 1]}, target_layers=4, eval_cache_mb=mb
        )
        runs[mb] = (runner, events)
    assert scores(runs[64][1]) == scores(runs[0][1])
    cached = [e.depth_cache for e in (runs[64][0].evaluation.select, *runs[64][0].evaluation.report)]
    assert all(c is not None for c in cached)
    assert all(e.depth_cache is None for e in (runs[0][0].evaluation.select, *runs[0][0].evaluation.report))
    assert runs[64][0].evaluation.select.forwards.layer_forwards < runs[0][0].evaluation.select.forwards.layer_forwards


class PartialScorer(FakeScorer):
    """As FakeScorer, with what a race that dropped the proposal early hands over: its per-item
    results on the first half of each task's items, scored with the layer skipped."""

    def score(self) -> Ranking:
        ranking = super().score()
        layer = ranking.proposal
        evaluator = self.run.evaluation.select
        self.half = {t: items[: len(items) // 2] for t, items in evaluator.items().items()}
        skipped = layer_map(self.run.model).index(layer)
        ranking.partial_items = {layer: evaluator.evaluate_items([skipped], items=self.half)[skipped]}
        return ranking


def test_a_layer_raced_out_early_is_evaluated_only_on_the_items_the_race_left(small, tmp_path, monkeypatch):
    from engine.tasks.evaluate import SuiteEvaluator

    _, events, _ = run(small, tmp_path / "whole", scorer={"order": [3]}, strategy="iterative-pruning", target_layers=5)
    asked = []
    real = SuiteEvaluator.evaluate_items

    def spy(self, candidates=(None,), shared=True, progress=None, items=None):
        if self.part == "select" and list(candidates) == [None]:
            asked.append(None if items is None else {t: list(v) for t, v in items.items()})
        return real(self, candidates, shared, progress, items)

    monkeypatch.setattr(SuiteEvaluator, "evaluate_items", spy)
    _, raced, fakes = run(
        small,
        tmp_path / "raced",
        scorer={"order": [3]},
        scorer_class=PartialScorer,
        strategy="iterative-pruning",
        target_layers=5,
    )
    half = fakes["scorer"].half
    everything = fakes["scorer"].run.evaluation.select.items()
    rest = {t: [i for i in items if i not in half[t]] for t, items in everything.items()}
    assert asked == [None, {t: v for t, v in rest.items() if v}]  # the teacher's whole part, then the rest only
    pick = lambda log: next(
        e for e in log if e["type"] == "eval" and e["stage"] == "after_removal" and e["part"] == "select"
    )
    whole, completed = pick(events), pick(raced)
    # the same per-item values (float32 forwards batched differently), summed in the same order
    assert completed["tasks"] == pytest.approx(whole["tasks"], abs=1e-6)
    assert completed["aggregate"] == pytest.approx(whole["aggregate"], abs=1e-6)
