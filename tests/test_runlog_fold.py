"""Folding events into RunState: idempotent under resume, proposals open/closed."""

from __future__ import annotations

import copy

from engine.runlog.events import EventWriter
from engine.runlog.fold import RunState, derive_status, fold
from engine.runlog.tailer import read_all


def ev(type, t, **fields):
    return {"t": t, "type": type, **fields}


def iteration(k, layer, t, by="user", aggregate=0.5):
    return [
        ev("phase", t, iteration=k, phase="scoring"),
        ev("importance", t + 1, iteration=k, metric="task_drop", scores={str(layer): 0.01, "0": 0.9}),
        ev("proposal", t + 2, iteration=k, layer=layer, candidates=[{"layer": layer, "score": 0.01}]),
        ev("awaiting_decision", t + 3, iteration=k, layer=layer, mode="manual", deadline=None),
        ev("decision", t + 4, iteration=k, layer=layer, by=by, proposed=layer),
        ev("layer_removed", t + 5, iteration=k, layer=layer, params=1000 - 10 * k),
        ev("train_step", t + 6, iteration=k, step=0, loss=2.0),
        ev("train_step", t + 7, iteration=k, step=1, loss=1.5),
        ev("eval", t + 8, iteration=k, stage="after_healing", aggregate=aggregate, tasks={"a": aggregate}),
        ev("checkpoint", t + 9, iteration=k, name=str(k)),
    ]


START = [
    ev("run_started", 0, name="demo", model="smollm2", strategy="iterative-distill", start_layers=6,
       target_layers=3, mode="manual", params=1000, extra_field={"kept": True}),
    ev("eval", 0.5, iteration=None, stage="teacher", aggregate=0.7, tasks={"a": 0.7}),
]


def with_seq(events):
    return [{"seq": i, **e} for i, e in enumerate(events)]


def test_fold_basic_fields():
    events = with_seq(START + iteration(1, 4, 10) + iteration(2, 2, 20, by="auto", aggregate=0.4))
    s = fold(events)
    assert isinstance(s, RunState)
    assert (s.name, s.model, s.strategy, s.mode, s.status) == ("demo", "smollm2", "iterative-distill", "manual", "running")
    assert s.start_layers == 6 and s.target_layers == 3 and s.iteration == 2
    assert s.layers == [0, 1, 3, 5]
    assert s.removed_layers == [4, 2]
    assert [(r["layer"], r["by"]) for r in s.removed] == [(4, "user"), (2, "auto")]
    assert s.params == 980 and s.start_params == 1000
    assert s.eval_series("after_healing") == [(1, 0.5), (2, 0.4)]
    assert s.teacher_eval["aggregate"] == 0.7
    assert s.evals[(2, "after_healing")]["tasks"] == {"a": 0.4}
    assert s.scores(2) == {2: 0.01, 0: 0.9} and s.scores() == s.scores(2)
    assert s.last_train["loss"] == 1.5 and len(s.train) == 4
    assert s.last_checkpoint["name"] == "2"
    assert s.run_info["extra_field"] == {"kept": True}  # unknown fields kept
    assert s.pending_proposal is None
    assert s.last_seq == len(events) - 1
    assert derive_status(s, alive=True) == "running"
    assert derive_status(s, alive=False) == "died"


def test_resume_with_reemitted_events_folds_to_same_state():
    plain = START + iteration(1, 4, 10) + iteration(2, 2, 20) + iteration(3, 1, 30)
    # the engine died during iteration 3, resumed from checkpoint 2 and re-emitted iteration 2's tail
    # and all of iteration 3 (identical content, new seq numbers)
    crashed = START + iteration(1, 4, 10) + iteration(2, 2, 20) + iteration(3, 1, 30)[:6]
    resumed = (
        crashed
        + [ev("engine_started", 35, resumed_from="2", pid=2)]
        + copy.deepcopy(iteration(2, 2, 20)[5:])
        + copy.deepcopy(iteration(3, 1, 30))
    )
    a, b = fold(with_seq(plain)), fold(with_seq(resumed))
    assert a == b
    assert a.layers == b.layers == [0, 3, 5]
    assert a.last_seq != b.last_seq  # bookkeeping differs, state does not
    # folding everything twice (a dashboard replaying) changes nothing either
    assert fold(with_seq(plain), fold(with_seq(plain))) == a


def test_redone_iteration_last_writer_wins():
    events = START + iteration(1, 4, 10) + iteration(2, 2, 20)[:6]
    events += [ev("engine_started", 30)] + iteration(2, 3, 31, aggregate=0.45)  # user chose differently
    s = fold(with_seq(events))
    assert s.removed_layers == [4, 3] and s.layers == [0, 1, 2, 5]
    assert s.eval_series("after_healing") == [(1, 0.5), (2, 0.45)]


def test_pending_proposal_open_and_closed():
    s = fold(with_seq(START + iteration(1, 4, 10)[:3]))
    assert s.pending_proposal["layer"] == 4 and s.pending_proposal["iteration"] == 1
    s.apply(ev("awaiting_decision", 14, iteration=1, layer=4, mode="auto-after", deadline=99.0))
    assert s.pending_proposal["deadline"] == 99.0 and s.mode == "auto-after"
    s.apply(ev("decision", 15, iteration=1, layer=4, by="user"))
    assert s.pending_proposal is None
    # a resumed engine asks again for the same iteration: open again until answered
    s.apply(ev("engine_started", 16))
    s.apply(ev("proposal", 17, iteration=1, layer=4))
    assert s.pending_proposal is not None
    s.apply(ev("layer_removed", 18, iteration=1, layer=4))
    assert s.pending_proposal is None
    # a proposal in a run that failed is not pending
    s.apply(ev("proposal", 19, iteration=2, layer=1))
    assert s.pending_proposal["iteration"] == 2
    s.apply(ev("run_failed", 20, error="OOM", hint="lower batch size"))
    assert s.pending_proposal is None
    assert derive_status(s, alive=False) == "failed"


def test_status_mode_and_commands():
    s = fold(with_seq(START))
    s.apply(ev("command_applied", 1, command_id="c1", name="set_mode", args={"mode": "auto-after", "seconds": 30}))
    assert (s.mode, s.mode_seconds) == ("auto-after", 30)
    s.apply(ev("command_applied", 2, command_id="c2", name="pause", args={}))
    assert s.paused
    s.apply(ev("command_rejected", 3, command_id="c3", name="override", reason="layer 4 already removed"))
    assert s.commands["c3"]["applied"] is False and s.commands["c1"]["applied"] is True
    s.apply(ev("command_applied", 4, command_id="c4", name="resume", args={}))
    assert not s.paused
    s.apply(ev("run_finished", 5, reason="stopped"))
    assert s.status == "stopped" and derive_status(s, alive=True) == "stopped"
    s.apply(ev("engine_started", 6))
    assert s.status == "running"
    s.apply(ev("run_finished", 7, reason="done"))
    assert derive_status(s, alive=False) == "finished"


def test_unknown_events_and_junk_ignored():
    s = fold(with_seq(START))
    before = copy.deepcopy(s)
    for junk in [ev("from_the_future", 1, iteration=7, x=1), {"no": "type"}, "not a dict", ev("log", 2, message="m")]:
        s.apply(junk)
    assert s == before and s.logs[-1]["message"] == "m"
    assert fold([]).status == "running" and fold([]).layers == []


def test_fold_from_real_log(tmp_path):
    p = tmp_path / "events.jsonl"
    with EventWriter(p) as w:
        for e in START + iteration(1, 4, 10):
            fields = {k: v for k, v in e.items() if k not in ("t", "type")}
            w.emit(e["type"], **fields)
    s = fold(read_all(p))
    assert s.layers == [0, 1, 2, 3, 5] and s.last_seq == 11 and isinstance(s.last_event_t, float)
