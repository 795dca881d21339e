"""The event registry: one source for the writer, the readers, the event-log wording and the docs."""

from pathlib import Path

from engine.runlog import schema
from engine.runlog.events import EventWriter
from engine.runlog.reader import read_run
from engine.runlog.tailer import read_all
from tools.synthetic_runs import DEAD, FINISHED, FIXTURES, LIVE, SHORTGPT, synth_run

ROOT = Path(__file__).resolve().parent.parent


def test_docs_events_md_is_generated_from_the_registry():
    assert (ROOT / "docs" / "events.md").read_text() == schema.markdown(), (
        "docs/events.md is stale: python -m engine.runlog.schema > docs/events.md"
    )
    for name in schema.EVENTS:
        assert f"## `{name}`" in schema.markdown()


def test_every_canned_event_is_valid_and_described():
    for name in (FINISHED, LIVE, DEAD, SHORTGPT):
        for event in read_all(FIXTURES / name / "events.jsonl"):
            assert schema.problem(event) is None, (name, event)
            assert schema.is_valid(event)
            said = schema.describe(event)
            assert said is None or (said[0] in ("debug", "info", "notice", "warning", "error") and said[1])


def test_the_fields_newer_engines_log_round_trip(tmp_path):
    synth_run(tmp_path / "split", name="split", split=True, end="floor", end_iteration=2, steps_per_iter=3)
    events = read_all(tmp_path / "split" / "events.jsonl")
    assert all(schema.problem(e) is None for e in events)
    s = read_run(tmp_path / "split")
    assert s.skipped == 0 and s.finished["reason"] == "floor"
    assert s.importance[1]["partial"] and s.last_train["kl_term"] is not None


def test_wording_of_the_new_values():
    def said(**event):
        return schema.describe({"seq": 0, "t": 0.0, **event})[1]

    assert (
        said(type="decision", iteration=3, layer=12, by="fixed", proposed=None)
        == "[3] decision: remove layer 12 (by fixed)"
    )
    assert said(type="eval", iteration=2, stage="after_healing", part="select", aggregate=0.5, tasks={}) == (
        "[2] eval after_healing (select): aggregate 0.5000"
    )
    assert said(type="eval", iteration=2, stage="after_healing", part="report", aggregate=None, tasks={}) == (
        "[2] eval after_healing: aggregate -"
    )
    assert said(type="run_finished", reason="floor", layers=22) == "run finished (floor): 22 layers"


def test_a_shape_seen_valid_does_not_let_a_bad_value_through(tmp_path):
    ok = {"seq": 0, "t": 1.0, "type": "train_step", "iteration": 1, "step": 0, "loss": 1.0}
    assert schema.is_valid(ok) and schema.is_valid(dict(ok))  # the second comes from the shape cache
    assert not schema.is_valid({**ok, "step": 1.5})  # another shape: a float where an int belongs
    assert not schema.is_valid({**ok, "loss": "1.0"})
    tagged = {"seq": 0, "t": 1.0, "type": "decision", "iteration": 1, "layer": 2, "by": "auto"}
    assert schema.is_valid(tagged) and not schema.is_valid({**tagged, "by": "cat"})  # literals are checked by value
    with EventWriter(tmp_path / "e.jsonl") as w:
        w.emit("train_step", iteration=1, step=0, loss=1.0)
    assert schema.is_valid(read_all(tmp_path / "e.jsonl")[0])
