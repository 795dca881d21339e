"""bench/demo_speed.py's reading of two runs: what counts as the same outcome, and the floor."""

from bench.demo_speed import compare, floor_seconds, side_settings


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


def test_settings_reach_the_run_as_set_options(tmp_path, monkeypatch):
    import subprocess

    import bench.demo_speed as demo_speed

    seen = {}

    def fake_run(cmd, **kwargs):
        seen["cmd"], seen["env"] = cmd, kwargs["env"]
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(demo_speed.subprocess, "run", fake_run)
    _, run_dir = demo_speed.run_demo(tmp_path, tmp_path, "old", 28, settings=("heal.trainable=adjacent", "seed=1"))
    cmd = seen["cmd"]
    assert cmd[cmd.index("--set") :] == ["--set", "heal.trainable=adjacent", "--set", "seed=1"]
    assert cmd[cmd.index("--target-layers") + 1] == "28" and run_dir == tmp_path / "runs-old" / "old"
    assert seen["env"]["ILD_STORE_DIR"] == str(tmp_path / "store-old")


def test_a_setting_the_old_code_lacks_goes_to_the_new_runs_only():
    old, new = side_settings(["heal.trainable=adjacent"], ["heal.early_stop_from=0"])
    assert old == ("heal.trainable=adjacent",)
    assert new == ("heal.trainable=adjacent", "heal.early_stop_from=0")
