"""The Rich progress of a headless run in a terminal: each phase starts its own count."""

import itertools

from rich.console import Console

from ild_tui.headless import HeadlessView

_seq = itertools.count()


def _phase(**fields) -> dict:
    return {"seq": next(_seq), "t": 1.0, "type": "phase", **fields}


def _bar(view: HeadlessView):
    return view.progress.tasks[0]


def test_a_new_phase_does_not_keep_the_last_phase_count(tmp_path):
    with open(tmp_path / "out", "w") as out, HeadlessView(Console(file=out, force_terminal=True, width=100)) as view:
        view.handle(_phase(iteration=1, phase="importance", detail="bi"))
        view.handle(_phase(iteration=1, phase="importance", detail="calibration", done=1, total=1))
        assert (_bar(view).completed, _bar(view).total) == (1, 1)
        view.handle(_phase(iteration=1, phase="evaluating", detail="after removal"))
        bar = _bar(view)
        assert bar.description == "[1] evaluating: after removal"
        assert bar.total is None and bar.completed == 0  # not "0/1", the count of the phase before
        view.handle(_phase(iteration=1, phase="evaluating", detail="lm_en (1/2)", done=1, total=2))
        assert (_bar(view).completed, _bar(view).total, _bar(view).description) == (1, 2, "[1] evaluating: lm_en (1/2)")


def test_events_with_wrong_field_types_are_skipped_not_fatal(tmp_path):
    with open(tmp_path / "out", "w") as out:
        view = HeadlessView(Console(file=out, width=100))
        view.handle(
            {
                "seq": 0,
                "t": 1.0,
                "type": "eval",
                "iteration": 1,
                "stage": "after_removal",
                "aggregate": "high",
                "tasks": {},
            }
        )
        view.handle({"seq": 1, "t": 1.0, "type": "importance", "iteration": 1, "metric": "bi", "scores": [3, 1]})
        view.handle(
            {
                "seq": 2,
                "t": 1.0,
                "type": "eval",
                "iteration": 1,
                "stage": "after_removal",
                "aggregate": None,
                "tasks": {"a": None},
            }
        )
    assert view.skipped == 2
    assert "aggregate - (a -)" in (tmp_path / "out").read_text()
