"""bench/demo_speed.py's reading of two runs: what counts as the same outcome, and the floor."""

from bench.demo_speed import compare, floor_seconds


def _outcome(removals, aggregate):
    return {"removals": removals, "evals": {"1 after_healing report": {"aggregate": aggregate, "tasks": {}}}}


def test_the_same_outcome_has_no_differences_and_any_change_is_named():
    assert compare(_outcome([14, 25], 0.4069), _outcome([14, 25], 0.4069)) == []
    changed = compare(_outcome([14, 25], 0.4069), _outcome([14, 24], 0.40690001))
    assert changed == [
        "removals differ: [14, 25] vs [14, 24]",
        "1 after_healing report: aggregate 0.4069 vs 0.40690001",
    ]


def test_the_floor_is_the_healing_steps_and_the_teacher_outputs_only():
    phases = {"healing: steps": 343.0, "healing: teacher outputs": 147.0, "scoring (task drop)": 191.0}
    assert floor_seconds(phases) == 490.0
    assert floor_seconds({"scoring (task drop)": 5.0}) == 0.0  # an old run that never split its preparation
