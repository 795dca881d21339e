"""The controller: one emit path, signals as stop, notifications that never stop a run."""

import os
import signal
import time

import pytest

from engine.config import ConfigError, validate_config
from engine.control import Controller, StopRequested
from engine.runlog.layout import create
from engine.runlog.tailer import read_all


def _controller(tmp_path, **kw):
    create(tmp_path / "run")
    return Controller(tmp_path / "run", kw.pop("mode", "auto"), None, **kw)


def test_sigterm_stops_at_the_next_safe_point_and_says_why(tmp_path):
    control = _controller(tmp_path)
    with control:
        control.safe_point()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        with pytest.raises(StopRequested):
            control.safe_point()
    events = read_all(tmp_path / "run" / "events.jsonl")
    assert events[-1]["type"] == "log" and "SIGTERM" in events[-1]["message"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # put back when the run ends


def test_notify_runs_through_the_shell_after_the_event_and_a_broken_notifier_is_harmless(tmp_path):
    marker = tmp_path / "said"
    control = _controller(tmp_path, notify_cmd=f'printf "%s|%s" "$ILD_EVENT" "$ILD_MESSAGE" > {marker}')
    with control:
        control.notify("finished", "all done")
        deadline = time.time() + 10
        # the shell creates the file (the redirection) before printf writes to it: wait for the words
        while (not marker.exists() or not marker.read_text()) and time.time() < deadline:
            time.sleep(0.02)
        assert marker.read_text() == "finished|all done"
    broken = _controller(tmp_path / "b", notify_cmd="/nonexistent/notifier --flag")
    with broken:
        broken.notify("failed", "x")  # the shell reports the missing program; the run goes on


def test_an_unsplittable_notify_command_is_refused_when_the_run_is_created():
    base = {"name": "n", "model": "m", "strategy": "iterative-pruning", "target_layers": 4, "start_layers": 6}
    with pytest.raises(ConfigError, match="notify command"):
        validate_config({**base, "notify_cmd": 'a "b'})
    assert validate_config({**base, "notify_cmd": 'notify-send ild "$ILD_MESSAGE"'}).notify_cmd


def test_no_false_stall_alert_on_a_busy_run(tmp_path):
    """Every event goes out through the controller, so a run that keeps emitting never looks stalled."""
    control = _controller(tmp_path, stall_seconds=0.4)
    with control:
        end = time.time() + 1.5
        while time.time() < end:
            control.emit("phase", iteration=1, phase="healing", detail="busy")
            time.sleep(0.05)
        assert not [e for e in read_all(tmp_path / "run" / "events.jsonl") if e["type"] == "alert"]
        time.sleep(1.0)  # now silent for longer than stall_seconds
    alerts = [e for e in read_all(tmp_path / "run" / "events.jsonl") if e["type"] == "alert"]
    assert len(alerts) == 1 and alerts[0]["kind"] == "stall"


@pytest.mark.parametrize(
    "name, message",
    [
        ("", "name"),
        ("x" * 300, "name"),
        ("../up", "name"),
        ("a b", "name"),
    ],
)
def test_run_names_are_checked_with_one_line(name, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(
            {"name": name, "model": "m", "strategy": "iterative-pruning", "target_layers": 4, "start_layers": 6}
        )


def test_fixed_removals_set_the_target_and_are_checked():
    base = {"name": "n", "model": "m", "strategy": "iterative-distill", "start_layers": 6}
    assert validate_config({**base, "removals": [3, 1]}).target_layers == 4
    for removals, message in (([3, 3], "twice"), ([9], "does not exist"), ([], "at least one")):
        with pytest.raises(ConfigError, match=message):
            validate_config({**base, "removals": removals})
    with pytest.raises(ConfigError, match="disagrees"):
        validate_config({**base, "removals": [3], "target_layers": 4})


def test_one_stop_delivered_twice_at_once_is_still_a_clean_stop(tmp_path):
    """`timeout` and SLURM signal the process group while the CLI passes the signal on: the engine
    gets SIGTERM twice within milliseconds, which must not count as the second, killing, request."""
    control = _controller(tmp_path)
    with control:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        with pytest.raises(StopRequested):
            control.safe_point()
    assert read_all(tmp_path / "run" / "events.jsonl")[-1]["message"].startswith("received SIGTERM")
