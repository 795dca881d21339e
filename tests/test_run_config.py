"""One config path: the config `ild run`, `ild demo` and `ild study` hand the engine, and the study's lock."""

import os

import pytest

from ild_tui.run_config import as_options, parse_settings, run_config
from ild_tui.study import Plan, StudyError, StudyLock


def test_a_run_config_holds_only_what_was_chosen_and_the_settings_win():
    config = run_config(
        "r",
        "m",
        "shortgpt",
        settings=parse_settings(["heal.lr=0.0003", "seed=7"]),
        processes=2,
        target_layers=4,
        suite=None,  # unset: the engine's default
        batch_tokens=None,
        importance="",
        seed=1,
    )
    assert config == {
        "name": "r",
        "model": "m",
        "strategy": "shortgpt",
        "target_layers": 4,
        "seed": 7,
        "distributed": {"processes": 2},
        "heal": {"lr": 0.0003},
    }


@pytest.mark.parametrize(
    "item, says",
    [("k", "KEY=VALUE"), ("a..b=1", "KEY=VALUE"), ("k=[1,", "--set k:"), ("k=!!python/object:os.system x", "--set k:")],
)
def test_bad_settings_are_one_line(item, says):
    with pytest.raises(ValueError, match=says.replace("[", r"\[")) as caught:
        parse_settings([item])
    assert "\n" not in str(caught.value)
    with pytest.raises(ValueError, match="'heal' is not a section"):
        parse_settings(["heal=5", "heal.lr=1"])


def test_the_engines_line_names_the_option_the_user_typed():
    assert as_options("config target_layers: Input should be greater than or equal to 1") == (
        "--target-layers: Input should be greater than or equal to 1"
    )
    assert as_options("config auto_after_seconds: Input should be a finite number").startswith("--auto-after: ")
    assert (
        as_options("config heal.lr: Input should be a valid number") == "config heal.lr: Input should be a valid number"
    )
    assert as_options("cannot load model 'x'") == "cannot load model 'x'"


def test_a_study_option_left_out_keeps_the_studys_value():
    stored = Plan(model="m", strategies=["shortgpt"], target_layers=4, seed=3, batch_tokens=8192)
    assert stored.differences(Plan(model="m", strategies=["shortgpt"], target_layers=4)) == []
    assert stored.differences(Plan(model="m", strategies=["shortgpt"], target_layers=4, seed=4)) == [
        "seed: 3 in the study, 4 given"
    ]
    unset = Plan(model="m", strategies=["shortgpt"], target_layers=4)
    assert unset.differences(stored) == [
        "seed: the engine's default in the study, 3 given",
        "batch_tokens: the engine's default in the study, 8192 given",
    ]
    config = unset.run_config("shortgpt")
    assert "seed" not in config and "batch_tokens" not in config and config["mode"] == "auto"


def test_one_process_runs_a_study_and_the_others_are_told_its_pid(tmp_path):
    assert StudyLock(tmp_path).holder() is None
    with StudyLock(tmp_path):
        assert StudyLock(tmp_path).holder() == str(os.getpid())
        again = f"a study is already running in {tmp_path} \\(pid {os.getpid()}\\)"
        with pytest.raises(StudyError, match=again), StudyLock(tmp_path):
            pass
    assert StudyLock(tmp_path).holder() is None
