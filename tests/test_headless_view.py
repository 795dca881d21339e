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


def _step(step: int, steps: int = 64) -> dict:
    return {
        "seq": next(_seq),
        "t": 1.0,
        "type": "train_step",
        "iteration": 3,
        "step": step,
        "steps": steps,
        "loss": 2.0,
        "kl_term": 1.5,
        "mse_term": 0.5,
    }


def test_healing_counts_its_steps_not_the_teacher_cache(tmp_path):
    with open(tmp_path / "out", "w") as out, HeadlessView(Console(file=out, force_terminal=True, width=100)) as view:
        view.handle(_phase(iteration=3, phase="healing", detail="layers [10, 11] (original)"))
        view.handle(_phase(iteration=3, phase="healing", detail="teacher cache", done=0, total=1))
        view.handle(_step(29))
        assert (_bar(view).completed, _bar(view).total, _bar(view).description) == (29, 64, "[3] healing: step")


def test_piped_healing_prints_a_line_a_quarter(tmp_path):
    with open(tmp_path / "out", "w") as out:
        view = HeadlessView(Console(file=out, width=200))
        for step in range(1, 65):
            view.handle(_step(step))
    lines = [line for line in (tmp_path / "out").read_text().splitlines() if "healing step" in line]
    assert [line.split("healing step ")[1].split(":")[0] for line in lines] == [
        "1/64",
        "16/64",
        "32/64",
        "48/64",
        "64/64",
    ]
    assert lines[0].endswith("loss 2.0000 (kl term 1.5000, mse term 0.5000)")
