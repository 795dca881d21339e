"""The detached engine and the person in the loop, driven from the shell as a user would."""

import os
import signal
import subprocess
import sys
import time

import pytest

from engine.control import Controller
from engine.runlog.fold import fold
from engine.runlog.inbox import send_command
from engine.runlog.layout import create
from engine.runlog.lock import is_alive
from engine.runlog.tailer import read_all
from tests.support import ILD, ild, run_args


def _start(tiny_root, runs, name, *extra):
    result = ild(*run_args(tiny_root / "model", tiny_root / "suite.yaml", runs, name, "--detach", *extra))
    assert result.returncode == 0, result.stderr
    assert f"ild attach {name}" in result.stdout
    return runs / name


def _wait_for(run_dir, predicate, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        events = read_all(run_dir / "events.jsonl")
        hit = [e for e in events if predicate(e)]
        if hit:
            return hit[-1]
        time.sleep(0.1)
    raise AssertionError(f"timed out; last events: {[e['type'] for e in read_all(run_dir / 'events.jsonl')][-5:]}")


def _wait_finished(run_dir, timeout=180):
    _wait_for(run_dir, lambda e: e["type"] in ("run_finished", "run_failed"), timeout)
    deadline = time.time() + 10
    while is_alive(run_dir) and time.time() < deadline:
        time.sleep(0.05)


@pytest.mark.e2e
def test_engine_survives_the_hangup_of_the_session_that_started_it(tiny, tmp_path):
    runs = tmp_path / "runs"
    # The starting process runs in a session of its own, like a terminal's; it exits, then the
    # whole session is hung up, as an SSH drop does.
    starter = subprocess.Popen(
        [ILD, *run_args(tiny / "model", tiny / "suite.yaml", runs, "hup", "--detach")],
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = starter.communicate(timeout=120)
    assert starter.returncode == 0, err
    try:
        os.killpg(starter.pid, signal.SIGHUP)
    except ProcessLookupError:
        pass  # the session's last process is gone already: nothing left in it to hang up
    pid = int(out.split("engine pid ")[1].split(",")[0])
    os.kill(pid, signal.SIGHUP)  # and even a hang-up sent straight to the engine is ignored
    run_dir = runs / "hup"
    _wait_finished(run_dir)
    events = read_all(run_dir / "events.jsonl")
    assert events[-1]["type"] == "run_finished"
    assert len(fold(events).removed_layers) == 2

    # A second client sees the whole history: `ild show` rebuilds it from the log alone.
    shown = ild("show", "hup", "--runs-dir", str(runs))
    assert shown.stdout.count("after_removal") == 2 and "teacher" in shown.stdout
    listed = ild("ls", "--runs-dir", str(runs))
    assert "finished" in listed.stdout


@pytest.mark.e2e
def test_manual_run_driven_from_the_shell(tiny, tmp_path):
    runs = tmp_path / "runs"
    run_dir = _start(tiny, runs, "manual", "--mode", "manual")

    first = _wait_for(run_dir, lambda e: e["type"] == "awaiting_decision" and e["iteration"] == 1)
    assert first["mode"] == "manual"
    # Rejected: an unknown layer, a malformed command file; the run goes on.
    assert ild("override", "manual", "--layer", "99", "--runs-dir", str(runs)).returncode == 1
    (run_dir / "commands" / "0000-garbage.json").write_text("{not json")
    _wait_for(
        run_dir,
        lambda e: e["type"] == "command_rejected" and "garbage" in str(e.get("command_id")) + str(e.get("reason")),
    )
    approved = ild("approve", "manual", "--runs-dir", str(runs))
    assert approved.returncode == 0, approved.stderr
    assert "approve applied" in approved.stdout

    second = _wait_for(run_dir, lambda e: e["type"] == "awaiting_decision" and e["iteration"] == 2)
    removed_first = first["layer"]
    already = ild("override", "manual", "--layer", str(removed_first), "--runs-dir", str(runs))
    assert already.returncode == 1 and "not a remaining layer" in already.stderr
    choice = next(layer for layer in second["remaining"] if layer != second["layer"])
    overridden = ild("override", "manual", "--layer", str(choice), "--runs-dir", str(runs))
    assert overridden.returncode == 0, overridden.stderr
    _wait_finished(run_dir)

    events = read_all(run_dir / "events.jsonl")
    state = fold(events)
    assert state.removed_layers == [removed_first, choice]
    decisions = [e for e in events if e["type"] == "decision"]
    assert [(d["by"], d["proposed"]) for d in decisions] == [("user", first["layer"]), ("user", second["layer"])]
    rejected = [e for e in events if e["type"] == "command_rejected"]
    assert len(rejected) == 3
    assert any("99" in r["reason"] for r in rejected) and any(str(removed_first) in r["reason"] for r in rejected)
    assert any("garbage" in str(r.get("command_id")) or "JSON" in r["reason"] for r in rejected)


@pytest.mark.e2e
def test_auto_after_takes_the_proposal_by_timeout_and_commands_need_a_live_engine(tiny, tmp_path):
    runs = tmp_path / "runs"
    run_dir = _start(tiny, runs, "timeout", "--mode", "auto-after", "--auto-after", "0.5")
    awaiting = _wait_for(run_dir, lambda e: e["type"] == "awaiting_decision")
    assert awaiting["deadline"] is not None
    _wait_finished(run_dir)
    decisions = [e for e in read_all(run_dir / "events.jsonl") if e["type"] == "decision"]
    assert [d["by"] for d in decisions] == ["timeout", "timeout"]
    dead = ild("approve", "timeout", "--runs-dir", str(runs))
    assert dead.returncode == 1 and "no live engine" in dead.stderr


@pytest.mark.e2e
def test_pause_resume_and_stop_from_the_shell(tiny, tmp_path):
    runs = tmp_path / "runs"
    run_dir = _start(tiny, runs, "stopper", "--mode", "manual")
    _wait_for(run_dir, lambda e: e["type"] == "awaiting_decision")
    assert ild("pause", "stopper", "--runs-dir", str(runs)).returncode == 0
    assert ild("pause", "stopper", "--runs-dir", str(runs)).returncode == 1  # already paused: rejected
    assert ild("resume", "stopper", "--runs-dir", str(runs)).returncode == 0
    assert ild("mode", "stopper", "manual", "--runs-dir", str(runs)).returncode == 0
    stopped = ild("stop", "stopper", "--runs-dir", str(runs))
    assert stopped.returncode == 0, stopped.stderr
    _wait_finished(run_dir)
    events = read_all(run_dir / "events.jsonl")
    assert events[-1]["type"] == "run_finished" and events[-1]["reason"] == "stopped"
    assert "stopped" in ild("ls", "--runs-dir", str(runs)).stdout


def test_approve_when_nothing_is_awaited_is_rejected(tmp_path):
    create(tmp_path)
    control = Controller(tmp_path, "manual", None)
    send_command(tmp_path, "approve", by="test")
    control.poll()
    event = read_all(tmp_path / "events.jsonl")[-1]
    assert event["type"] == "command_rejected" and event["reason"] == "no decision is awaited"
    assert list((tmp_path / "commands" / "done").iterdir())


def test_notify_command_runs_on_awaited_decision(tmp_path):
    marker = tmp_path / "notified"
    create(tmp_path)
    control = Controller(
        tmp_path,
        "auto-after",
        0.2,
        notify_cmd=f"{sys.executable} -c \"import os; open('{marker}', 'a').write(os.environ['ILD_EVENT'] + '\\n')\"",
    )
    decision = control.decide(1, 3, [0, 1, 2, 3], [{"layer": 3, "score": 0.1}])
    assert decision.by == "timeout" and decision.layer == 3
    deadline = time.time() + 10
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert marker.read_text().split() == ["awaiting_decision"]
