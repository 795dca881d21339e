"""bench/phases.py: the time of each piece of work, read from a run's events."""

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("bench_phases", Path(__file__).parent.parent / "bench" / "phases.py")
profile = importlib.util.module_from_spec(spec)
spec.loader.exec_module(profile)


def _e(t, type_, iteration=None, **fields):
    return {"t": t, "type": type_, **({"iteration": iteration} if iteration is not None else {}), **fields}


def test_each_piece_of_work_is_timed_per_iteration_and_a_dead_engine_ends_its_piece():
    events = [
        _e(0, "engine_started", 0),
        _e(1, "phase", 0, phase="loading"),
        _e(3, "phase", 0, phase="evaluating", detail="teacher"),
        _e(4, "phase", 0, phase="evaluating", detail="teacher", done=1, total=2),  # progress: same piece
        _e(10, "phase", 1, phase="scoring", detail="task_drop"),
        _e(30, "awaiting_decision", 1),
        _e(35, "decision", 1),
        _e(36, "phase", 1, phase="evaluating", detail="after removal"),
        _e(46, "phase", 1, phase="healing"),
        _e(50, "train_step", 1, step=1),
        _e(60, "train_step", 1, step=2),
        _e(70, "phase", 1, phase="evaluating", detail="after healing"),
        _e(80, "run_failed", 1),  # the piece ends where the engine died, not at its next start
        _e(500, "engine_started", 1),
        _e(501, "phase", 2, phase="scoring", detail="task_drop"),
        _e(511, "run_finished", 2),
    ]
    labels, iterations, cells = profile.table(events)
    assert iterations == [0, 1, 2]
    assert cells[("loading", 0)] == 2
    assert cells[("evaluation teacher", 0)] == 7
    assert cells[("scoring (task drop)", 1)] == 20 and cells[("scoring (task drop)", 2)] == 10
    assert cells[("waiting for a decision", 1)] == 5 and cells[("removal", 1)] == 1
    assert cells[("evaluation after removal", 1)] == 10
    assert cells[("healing: before the first step", 1)] == 4 and cells[("healing: steps", 1)] == 20
    assert cells[("evaluation after healing", 1)] == 10
    assert sum(cells.values()) == 80 - 0 + 511 - 500
    assert labels.index("loading") < labels.index("healing: steps")


def test_a_healings_preparation_is_split_where_the_engine_marked_its_parts():
    events = [
        _e(0, "engine_started", 0),
        _e(10, "phase", 1, phase="healing", detail="layers [13, 14] (original)"),
        _e(11, "phase", 1, phase="healing", detail="held-out loss", done=0, total=1),
        _e(14, "phase", 1, phase="healing", detail="teacher outputs", done=0, total=1),
        _e(74, "phase", 1, phase="healing", detail="student prefix", done=0, total=1),
        _e(94, "train_step", 1, step=1),
        _e(100, "phase", 1, phase="evaluating", detail="after healing"),
        _e(110, "run_finished", 1),
    ]
    _, _, cells = profile.table(events)
    assert cells[("healing: before the first step", 1)] == 1
    assert cells[("healing: held-out loss", 1)] == 3
    assert cells[("healing: teacher outputs", 1)] == 60 and cells[("healing: student prefix", 1)] == 20
    assert cells[("healing: steps", 1)] == 6
