"""Folding events into RunState: idempotent under resume, proposals open/closed, one answer per fact."""

from __future__ import annotations

import copy

from engine.runlog import fold as fold_module
from engine.runlog.events import EventWriter
from engine.runlog.fold import STARTING_GRACE_S, RunState, fold
from engine.runlog.schema import EVENTS
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
    ev(
        "run_started",
        0,
        name="demo",
        model="smollm2",
        strategy="iterative-distill",
        start_layers=6,
        target_layers=3,
        mode="manual",
        params=1000,
        extra_field={"kept": True},
    ),
    ev("eval", 0.5, iteration=0, stage="teacher", aggregate=0.7, tasks={"a": 0.7}),
]


def with_seq(events):
    return [{"seq": i, **e} for i, e in enumerate(events)]


def test_every_registered_event_type_has_a_place_in_the_fold():
    assert set(fold_module._HANDLERS) == set(EVENTS)


def test_fold_basic_fields():
    events = with_seq(START + iteration(1, 4, 10) + iteration(2, 2, 20, by="auto", aggregate=0.4))
    s = fold(events)
    assert isinstance(s, RunState)
    assert (s.name, s.model, s.strategy, s.mode, s.outcome) == ("demo", "smollm2", "iterative-distill", "manual", None)
    assert s.start_layers == 6 and s.target_layers == 3 and s.iteration == 2
    assert s.layers == [0, 1, 3, 5] and s.layers_now == 4
    assert s.removed_layers == [4, 2]
    assert [(r["layer"], r["by"]) for r in s.removed] == [(4, "user"), (2, "auto")]
    assert s.params == 980 and s.start_params == 1000
    assert {it: rec["aggregate"] for it, rec in s.final_evals().items()} == {1: 0.5, 2: 0.4}
    assert s.teacher_eval()["aggregate"] == 0.7
    assert s.evals[(2, "after_healing", "report")]["tasks"] == {"a": 0.4}
    assert s.scores(2) == {2: 0.01, 0: 0.9} and s.scores() == s.scores(2)
    assert s.last_train["loss"] == 1.5
    assert s.last_checkpoint["name"] == "2"
    assert s.run_info["extra_field"] == {"kept": True}  # unknown fields kept
    assert s.pending_proposal is None
    assert s.last_seq == len(events) - 1 and s.skipped == 0
    assert s.status(alive=True, now=100.0) == "running"
    assert s.status(alive=False, now=100.0) == "died"
    assert s.status(alive=None, now=100.0) == "unknown"


def test_resume_with_reemitted_events_folds_to_same_state():
    plain = START + iteration(1, 4, 10) + iteration(2, 2, 20) + iteration(3, 1, 30)
    # the engine died during iteration 3, resumed from checkpoint 2 and re-emitted iteration 2's tail
    # and all of iteration 3 (identical content, new seq numbers)
    crashed = START + iteration(1, 4, 10) + iteration(2, 2, 20) + iteration(3, 1, 30)[:6]
    resumed = (
        crashed
        + [ev("engine_started", 35, resumed_from="2", pid=2, host="h")]
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
    events += [ev("engine_started", 30, pid=2, host="h")] + iteration(2, 3, 31, aggregate=0.45)  # chosen differently
    s = fold(with_seq(events))
    assert s.removed_layers == [4, 3] and s.layers == [0, 1, 2, 5]
    assert {it: rec["aggregate"] for it, rec in s.final_evals().items()} == {1: 0.5, 2: 0.45}


def test_pending_proposal_open_and_closed():
    s = fold(with_seq(START + iteration(1, 4, 10)[:3]))
    assert s.pending_proposal["layer"] == 4 and s.pending_proposal["iteration"] == 1
    n = 100
    for e in [
        ev("awaiting_decision", 14, iteration=1, layer=4, mode="auto-after", deadline=99.0),
    ]:
        s.apply({"seq": n, **e})
    assert s.pending_proposal["deadline"] == 99.0 and s.mode == "auto-after"
    s.apply({"seq": 101, **ev("decision", 15, iteration=1, layer=4, by="user")})
    assert s.pending_proposal is None
    # a resumed engine asks again for the same iteration: open again until answered
    s.apply({"seq": 102, **ev("engine_started", 16, pid=3, host="h")})
    s.apply({"seq": 103, **ev("proposal", 17, iteration=1, layer=4)})
    assert s.pending_proposal is not None
    s.apply({"seq": 104, **ev("layer_removed", 18, iteration=1, layer=4)})
    assert s.pending_proposal is None
    # a proposal in a run that failed is not pending
    s.apply({"seq": 105, **ev("proposal", 19, iteration=2, layer=1)})
    assert s.pending_proposal["iteration"] == 2
    s.apply({"seq": 106, **ev("run_failed", 20, error="OOM", hint="lower batch size")})
    assert s.pending_proposal is None
    assert s.status(alive=False, now=0.0) == "failed"


def test_status_mode_and_commands():
    s = fold(with_seq(START))
    more = [
        ev("command_applied", 1, command_id="c1", name="set_mode", args={"mode": "auto-after", "seconds": 30}),
        ev("command_applied", 2, command_id="c2", name="pause", args={}),
        ev("command_rejected", 3, command_id="c3", name="override", reason="layer 4 already removed"),
    ]
    fold(with_seq(START + more)[len(START) :], s)
    assert (s.mode, s.mode_seconds) == ("auto-after", 30)
    assert s.paused
    assert s.commands["c3"]["applied"] is False and s.commands["c1"]["applied"] is True
    s.apply({"seq": 10, **ev("command_applied", 4, command_id="c4", name="resume", args={})})
    assert not s.paused
    s.apply({"seq": 11, **ev("run_finished", 5, reason="stopped")})
    assert s.outcome == "stopped" and s.status(alive=True, now=0.0) == "stopped"
    s.apply({"seq": 12, **ev("engine_started", 6, pid=1, host="h")})
    assert s.outcome is None
    s.apply({"seq": 13, **ev("run_finished", 7, reason="floor")})
    assert s.status(alive=False, now=0.0) == "finished" and s.finished["reason"] == "floor"


def test_unknown_events_ignored_and_junk_counted():
    s = fold(with_seq(START))
    before = copy.deepcopy(s)
    s.apply({"seq": 2, **ev("from_the_future", 1, iteration=7, x=1)})  # a newer engine's event
    assert s == before and s.skipped == 0
    for junk in [{"no": "type"}, "not a dict", None, [1, 2], {"type": 3}]:
        assert s.apply(junk) is False
    assert s == before and s.skipped == 5
    assert s.apply({"seq": 3, **ev("log", 2, message="m")}) is True
    assert s.logs[-1]["message"] == "m"
    assert fold([]).outcome is None and fold([]).layers == []


def test_an_event_with_a_wrongly_typed_field_is_skipped_and_counted():
    bad = [
        ev("eval", 1, iteration=1, stage="after_removal", aggregate="0.5", tasks={"a": 0.5}),
        ev("layer_removed", 2, iteration="1", layer=4),
        ev("importance", 3, iteration=1, metric="bi", scores=[0.1, 0.2]),
        ev("decision", 4, iteration=1, layer=4, by="the cat"),
        ev("train_step", 5, iteration=1, step=2, loss="low"),
        ev("run_started", 6, name="x", model="m", strategy="s", start_layers="many", target_layers=3, mode="auto"),
        ev("log", 7),  # missing its message
    ]
    s = fold(with_seq(START + bad))
    assert s.skipped == len(bad)
    assert s.removed_layers == [] and s.final_evals() == {} and s.importance == {} and s.start_layers == 6


def test_best_and_final_aggregate_take_each_iterations_last_stage():
    """0.48 after removal then 0.47 after healing: the iteration ended at 0.47, and that is the best."""
    events = START + [
        ev("eval", 1, iteration=1, stage="after_removal", aggregate=0.48, tasks={"a": 0.48}),
        ev("eval", 2, iteration=1, stage="after_healing", aggregate=0.47, tasks={"a": 0.47}),
        ev("eval", 3, iteration=2, stage="after_removal", aggregate=0.46, tasks={"a": 0.46}),
    ]
    s = fold(with_seq(events))
    assert {it: rec["stage"] for it, rec in s.final_evals().items()} == {1: "after_healing", 2: "after_removal"}
    assert s.best_aggregate() == 0.47
    assert s.eval_before(2)["aggregate"] == 0.47 and s.eval_before(1)["stage"] == "teacher"
    assert s.eval_before(None)["aggregate"] == 0.46
    # the teacher is no iteration: it is the best only while there is no iteration yet
    assert fold(with_seq(START)).best_aggregate() == 0.7
    assert fold([]).best_aggregate() is None


def test_report_and_select_parts():
    events = START + [  # START's teacher eval has no part: an older run's, counted as report
        ev("eval", 1, iteration=0, stage="teacher", part="select", aggregate=0.75, tasks={"a": 0.75}),
        ev("eval", 2, iteration=1, stage="after_removal", part="report", aggregate=0.6, tasks={"a": 0.6}),
        ev("eval", 3, iteration=1, stage="after_removal", part="select", aggregate=0.68, tasks={"a": 0.68}),
    ]
    s = fold(with_seq(events))
    assert s.teacher_eval()["aggregate"] == 0.7 and s.teacher_eval("select")["aggregate"] == 0.75
    assert s.best_aggregate() == 0.6 and s.best_aggregate("select") == 0.68
    assert s.final_evals("select")[1]["aggregate"] == 0.68


def test_a_young_empty_run_is_starting_then_died():
    s = RunState(dir_mtime=1000.0)
    assert s.status(alive=False, now=1000.0 + STARTING_GRACE_S - 1) == "starting"
    assert s.status(alive=False, now=1000.0 + STARTING_GRACE_S + 1) == "died"
    assert s.status(alive=True, now=1000.0) == "running"
    s.apply({"seq": 0, **ev("engine_started", 1000.0, pid=1, host="h")})
    assert s.status(alive=False, now=1001.0) == "died"  # it said something, then nothing: dead


def test_duration_counts_to_now_while_live_else_to_the_last_event():
    s = fold(with_seq(START + iteration(1, 4, 10)))
    assert s.started == 0 and s.last_event_t == 19
    assert s.duration(now=500.0, alive=True) == 500.0
    assert s.duration(now=500.0, alive=False) == 19
    s.apply({"seq": 99, **ev("run_finished", 25, reason="target")})
    assert s.duration(now=500.0, alive=True) == 25  # ended: the lock being held a moment longer changes nothing
    assert RunState().duration(now=5.0, alive=True) is None


def test_fold_from_real_log(tmp_path):
    p = tmp_path / "events.jsonl"
    with EventWriter(p) as w:
        for e in START + iteration(1, 4, 10):
            fields = {
                k: v for k, v in e.items() if k not in ("t", "type", "extra_field")
            }  # the writer knows no such field
            w.emit(e["type"], **fields)
    s = fold(read_all(p))
    assert s.layers == [0, 1, 2, 3, 5] and s.last_seq == 11 and isinstance(s.last_event_t, float)


def test_a_floor_finish_leaves_the_rejected_iteration_out_of_the_student():
    events = (
        START
        + iteration(1, 3, 10, aggregate=0.66)
        + iteration(2, 4, 20, aggregate=0.55)
        + [
            ev(
                "run_finished",
                30,
                reason="floor",
                iteration=1,
                removed=[3],
                layers=5,
                rejected={"iteration": 2, "layer": 4, "aggregate": 0.55},
            ),
        ]
    )
    s = fold(with_seq(events))
    assert s.removed_layers == [3] and s.layers_now == 5
    assert list(s.final_evals()) == [1] and s.best_aggregate() == 0.66
    assert s.rejected["iteration"] == 2 and s.rejected["removal"]["layer"] == 4
    assert s.status(alive=False, now=31) == "finished"


def test_final_eval_retention_and_curve():
    events = with_seq(START + iteration(1, 4, 10, aggregate=0.56) + iteration(2, 2, 20, aggregate=0.35))
    events.insert(
        8,
        {
            "seq": 8,
            **ev(
                "eval", 17.5, iteration=1, stage="after_removal", aggregate=0.3, tasks={"a": 0.3}, layers=5, params=990
            ),
        },
    )
    s = fold([{**e, "seq": i} for i, e in enumerate(events)])
    assert s.final_eval()["aggregate"] == 0.35
    assert abs(s.retention() - 0.35 / 0.7) < 1e-12
    assert s.retention("select") is None and s.final_eval("select") is None
    # layers removed: from the eval's layers when given, else the count of removals so far
    assert [(p["removed"], p["aggregate"]) for p in s.curve()] == [(0, 0.7), (1, 0.56), (2, 0.35)]
    assert s.curve()[0]["params"] == 1000 and s.curve()[0]["iteration"] == 0
    assert fold(with_seq(START)).curve() == [
        {"removed": 0, "iteration": 0, "layers": 6, "params": 1000, "aggregate": 0.7}
    ]


def test_train_steps_are_kept_only_when_asked_and_a_resume_replaces_them():
    events = with_seq(START + iteration(1, 4, 10) + [ev("train_step", 30, iteration=1, step=1, loss=1.25)])
    assert fold(events).train_curve() == [] and fold(events).last_train["loss"] == 1.25
    s = fold(events, RunState(keep_train_steps=True))
    assert [(r["iteration"], r["step"], r["loss"]) for r in s.train_curve()] == [(1, 0, 2.0), (1, 1, 1.25)]


def test_partial_layers():
    racing = ev("importance", 5, iteration=1, metric="task_drop", scores={"0": 0.9, "1": 0.1, "2": 0.5}, partial=[0, 2])
    s = fold(with_seq(START + [racing]))
    assert s.partial_layers(1) == [0, 2] and s.partial_layers(2) == []


def test_the_teachers_size_is_run_starteds_even_where_its_eval_row_counted_an_untied_head():
    """Runs before the fix logged the reverse-order student's size (its head untied) in the teacher's
    eval row; the curve (and the report's % of parameters) take run_started's count."""
    teacher = ev("eval", 0.5, iteration=0, stage="teacher", aggregate=0.7, tasks={"a": 0.7}, layers=6, params=1300)
    healed = ev("eval", 1, iteration=1, stage="after_healing", aggregate=0.6, tasks={"a": 0.6}, layers=5, params=1200)
    s = fold(with_seq([START[0], teacher, healed]))
    assert [p["params"] for p in s.curve()] == [1000, 1200]  # the student is bigger than its teacher


def test_engine_time_leaves_out_the_time_between_a_stop_and_a_resume():
    s = fold(with_seq(START + iteration(1, 4, 10)))  # one session, 0 .. 19
    assert s.engine_time(now=500.0, alive=False) == 19 == s.duration(now=500.0, alive=False)
    # Stopped at 19, resumed at 1,000 (a night later), worked until 1,030.
    s.apply({"seq": 50, **ev("engine_started", 1000.0, pid=2, host="h")})
    s.apply({"seq": 51, **ev("phase", 1030.0, iteration=2, phase="scoring", detail="")})
    assert s.duration(now=2000.0, alive=False) == 1030
    assert s.engine_time(now=2000.0, alive=False) == 19 + 30
    assert s.engine_time(now=1100.0, alive=True) == 19 + 100  # live: the current session runs to now
    s.apply({"seq": 52, **ev("run_finished", 1040.0, reason="target")})
    assert s.engine_time(now=5000.0, alive=True) == 19 + 40
    assert RunState().engine_time(now=5.0, alive=True) is None


def test_a_decision_taken_while_paused_settles_the_question():
    """Paused, then approved: the engine applies the approve (command_applied) and removes the layer
    only when resumed. The question is answered at once: not pending, nobody asks again."""
    s = fold(with_seq(START + iteration(1, 4, 10)[:4]))
    assert s.status(alive=True, now=0.0) == "awaiting decision"
    cmd = {"args": {}, "by": "cli"}
    s.apply({"seq": 100, **ev("command_applied", 14, command_id="p", name="pause", **cmd)})
    assert s.status(alive=True, now=0.0) == "paused" and s.pending_proposal is not None
    s.apply({"seq": 101, **ev("command_applied", 15, command_id="a", name="approve", **cmd)})
    assert s.pending_proposal is None and s.status(alive=True, now=0.0) == "paused"
    assert s.decision_queued == {"iteration": 1, "layer": 4, "name": "approve", "by": "cli"}
    s.apply({"seq": 102, **ev("command_applied", 16, command_id="r", name="resume", **cmd)})
    s.apply({"seq": 103, **ev("decision", 17, iteration=1, layer=4, by="user", proposed=4)})
    assert s.decision_queued is None and s.status(alive=True, now=0.0) == "running"
    # a dead engine's applied-but-not-done decision: a resume asks again, and the question is open
    s.apply({"seq": 104, **ev("proposal", 18, iteration=2, layer=3)})
    s.apply({"seq": 105, **ev("command_applied", 19, command_id="o", name="override", args={"layer": 2}, by="x")})
    assert s.decision_queued["layer"] == 2 and s.pending_proposal is None
    s.apply({"seq": 106, **ev("engine_started", 20, pid=4, host="h")})
    s.apply({"seq": 107, **ev("proposal", 21, iteration=2, layer=3)})
    assert s.decision_queued is None and s.pending_proposal["iteration"] == 2
