"""The dashboard steering an engine process through an approval and an override.

Two engines: a small fake one (a subprocess speaking only ``engine.runlog``: fast, and
independent of the model code), and the real one started by ``ild run --detach --mode manual``
on a tiny random model.
"""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.runlog.fold import fold
from engine.runlog.tailer import read_all
from ild_tui.live.decision import DecisionPanel
from ild_tui.live.heatmap import Heatmap
from ild_tui.screens.dialogs import ConfirmScreen
from tests.support import answer, ild, open_live, run_args, wait_for
from tools.synthetic_runs import make_app

pytestmark = pytest.mark.usefixtures("tui_env")
ROOT = Path(__file__).resolve().parent.parent

FAKE_ENGINE = r"""
import os, sys, time
from engine.runlog.events import EventWriter
from engine.runlog.inbox import CommandInbox
from engine.runlog.layout import create
from engine.runlog.lock import EngineLock

rd = create(sys.argv[1])
lock = EngineLock(rd).acquire()
w = EventWriter(rd.events_file)
inbox = CommandInbox(rd)
layers = list(range(6))
tasks = {"a": 0.6, "b": 0.4}
w.emit("engine_started", pid=os.getpid(), host="test", resumed_from=None)
w.emit("run_started", name="fake", model="tiny", strategy="iterative-pruning", importance="task_drop",
       start_layers=6, target_layers=4, mode="manual", params=600)
w.emit("eval", iteration=0, stage="teacher", aggregate=0.5, tasks=tasks, layers=6, params=600)
removed = []
for it in (1, 2):
    scores = {l: round(0.01 * ((l * 7) % 5) + 0.001 * l, 4) for l in layers}
    ranked = sorted(layers, key=lambda l: (scores[l], l))
    per_task = {t: {str(l): round(v - scores[l], 4) for l in layers} for t, v in tasks.items()}
    w.emit("importance", iteration=it, metric="task_drop", scores={str(l): s for l, s in scores.items()}, per_task=per_task)
    w.emit("proposal", iteration=it, layer=ranked[0], metric="task_drop",
           candidates=[{"layer": l, "score": scores[l], "tasks": {t: per_task[t][str(l)] for t in tasks}} for l in ranked])
    w.emit("awaiting_decision", iteration=it, layer=ranked[0], mode="manual", deadline=None, candidates=ranked)
    decided, give_up = None, time.time() + 60
    while decided is None and time.time() < give_up:
        for cmd in inbox.pending():
            reason = inbox.validate(cmd)
            layer = None
            if reason is None:
                if cmd.name == "approve":
                    layer = cmd.args.get("layer", ranked[0])
                    if layer != ranked[0]:
                        reason = f"approve names layer {layer}, but the proposal is {ranked[0]}"
                elif cmd.name == "override":
                    layer = cmd.args["layer"]
                    if layer not in layers:
                        reason = f"layer {layer} is not a remaining layer"
                else:
                    reason = f"{cmd.name} is not supported by this fake engine"
            if reason:
                w.emit("command_rejected", command_id=cmd.id, name=cmd.name, reason=reason)
            else:
                w.emit("command_applied", command_id=cmd.id, name=cmd.name, args=cmd.args, by=cmd.by)
                decided = (layer, cmd.id)
            inbox.done(cmd)
        time.sleep(0.05)
    if decided is None:
        w.emit("run_failed", error="nobody decided", hint="")
        sys.exit(1)
    layer, cid = decided
    w.emit("decision", iteration=it, layer=layer, by="user", proposed=ranked[0], command_id=cid)
    layers.remove(layer)
    removed.append(layer)
    w.emit("layer_removed", iteration=it, layer=layer, remaining=list(layers), layers=len(layers), params=100 * len(layers))
    tasks = {t: v - 0.02 for t, v in tasks.items()}
    w.emit("eval", iteration=it, stage="after_removal", aggregate=sum(tasks.values()) / 2, tasks=tasks,
           layers=len(layers), params=100 * len(layers))
w.emit("run_finished", reason="target", layers=len(layers), params=100 * len(layers), removed=removed, export=None,
       iteration=2)
"""


def _wait_file(run_dir: Path, predicate, timeout: float):
    deadline = time.time() + timeout
    while time.time() < deadline:
        events = read_all(run_dir / "events.jsonl")
        if any(predicate(e) for e in events):
            return events
        time.sleep(0.05)
    raise AssertionError(f"timed out; last events: {[e['type'] for e in read_all(run_dir / 'events.jsonl')][-6:]}")


async def _approve_then_override(app, pilot, timeout: float) -> tuple[int, int]:
    """Approve iteration 1's proposal with `a`; override iteration 2's with the heatmap cursor + `o`."""
    screen = await open_live(app, pilot)
    panel = screen.query_one(DecisionPanel)
    await wait_for(pilot, lambda: screen.alive and panel.display and panel.data is not None, timeout)
    first = panel.data
    assert first.iteration == 1
    await pilot.press("a")
    await answer(app, pilot, "y")
    await wait_for(pilot, lambda: 1 in screen.model.state.decisions, timeout)
    await wait_for(pilot, lambda: panel.display and panel.data.iteration == 2, timeout)  # never re-asks 1
    second = panel.data
    target = second.candidates[1].layer  # not the proposal
    hm = screen.query_one(Heatmap)
    hm.focus()
    for _ in range(40):
        if hm.cursor_layer == target:
            break
        await pilot.press("down" if hm.cursor_layer < target else "up")
    assert hm.cursor_layer == target
    await pilot.press("o")
    assert isinstance(app.screen, ConfirmScreen)
    await answer(app, pilot, "y")
    await wait_for(pilot, lambda: 2 in screen.model.state.decisions, timeout)
    await wait_for(pilot, lambda: not panel.display, timeout)
    return first.layer, target


async def test_dashboard_steers_a_fake_engine(tmp_path):
    runs = tmp_path / "runs"
    run = runs / "fake"
    engine = subprocess.Popen([sys.executable, "-c", FAKE_ENGINE, str(run)], cwd=ROOT)
    try:
        _wait_file(run, lambda e: e["type"] == "awaiting_decision", 30)
        app = make_app(runs, run, poll_interval=0.05, now=time.time())
        app.clock = time.time
        async with app.run_test(size=(160, 48)) as pilot:
            approved, overridden = await _approve_then_override(app, pilot, 20)
        assert engine.wait(20) == 0
    finally:
        engine.kill()
    state = fold(read_all(run / "events.jsonl"))
    assert state.outcome == "finished"
    d1, d2 = state.decisions[1], state.decisions[2]
    assert (d1["layer"], d1["by"]) == (approved, "user") and d1["proposed"] == approved
    assert (d2["layer"], d2["by"]) == (overridden, "user") and d2["proposed"] != overridden
    applied = [c for c in state.commands.values() if c["applied"]]
    assert sorted(c["name"] for c in applied) == ["approve", "override"]
    assert all(c["by"] == "dashboard" for c in applied)
    assert len(list((run / "commands" / "done").glob("*.json"))) == 2


def _kill_engine(run: Path) -> None:
    """Leave no engine behind when the test fails half way."""
    import os
    import signal

    from engine.runlog.lock import is_alive, read_holder

    if is_alive(run):
        pid = (read_holder(run) or {}).get("pid")
        if isinstance(pid, int):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.e2e
async def test_dashboard_steers_the_real_engine(tiny, tmp_path):
    runs = tmp_path / "runs"
    result = ild(*run_args(tiny / "model", tiny / "suite.yaml", runs, "real", "--detach", "--mode", "manual"))
    assert result.returncode == 0, result.stderr
    run = runs / "real"
    try:
        _wait_file(run, lambda e: e["type"] == "awaiting_decision", 180)
        app = make_app(runs, run, poll_interval=0.05, now=time.time())
        app.clock = time.time
        async with app.run_test(size=(160, 48)) as pilot:
            approved, overridden = await _approve_then_override(app, pilot, 120)
        _wait_file(run, lambda e: e["type"] in ("run_finished", "run_failed"), 180)
    finally:
        _kill_engine(run)
    state = fold(read_all(run / "events.jsonl"))
    assert state.outcome == "finished", state.failure
    assert state.decisions[1]["layer"] == approved and state.decisions[1]["by"] == "user"
    assert state.decisions[2]["layer"] == overridden and state.decisions[2]["proposed"] != overridden
    assert state.removed_layers == [approved, overridden]
