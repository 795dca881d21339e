"""Helpers the tests share (plain functions; the shared fixtures are in conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from engine.runlog.events import EventWriter
from engine.runlog.layout import RunDir

ILD = str(Path(sys.executable).with_name("ild"))
ENGINE = [sys.executable, "-m", "engine.worker"]
# Healing small enough for a tiny model on two cores, with a checkpoint after every step (so that a
# kill or a stop always has a partial healing to resume from).
TINY_HEAL = {
    "train_tokens": 1536,
    "seq_len": 32,
    "batch_size": 4,
    "heldout_tokens": 256,
    "lr": 0.001,
    "checkpoint_every_s": 0.001,
}


def ild(*args, cwd=None) -> subprocess.CompletedProcess:
    """The ``ild`` console script, as a user runs it."""
    return subprocess.run([ILD, *args], capture_output=True, text=True, timeout=600, cwd=cwd)


def run_args(
    model: Path, suite: Path, runs: Path, name: str, *extra: str, strategy: str = "iterative-pruning"
) -> list[str]:
    """``ild run`` on a tiny model down to 4 layers, named ``name`` in ``runs``, plus ``extra``."""
    return [
        "run",
        "--model",
        str(model),
        "--strategy",
        strategy,
        "--target-layers",
        "4",
        "--suite",
        str(suite),
        "--runs-dir",
        str(runs),
        "--name",
        name,
        *extra,
    ]


@contextlib.contextmanager
def hold_lock(run_dir: Path):
    """Hold the run's engine lock like a live engine would (without rewriting the file)."""
    fd = os.open(RunDir(run_dir).lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def append_events(run_dir: Path, *events: dict) -> None:
    """Append events as the engine would (one writer at a time; fine while no engine runs)."""
    with EventWriter(RunDir(run_dir).events_file, fsync_interval=1e9) as w:
        for ev in events:
            ev = dict(ev)
            kind = ev.pop("type")
            w.emit(kind, **ev)


def commands(run_dir: Path) -> list[dict]:
    """The command files waiting in the run's inbox, oldest first."""
    return [json.loads(p.read_text()) for p in sorted(RunDir(run_dir).commands_dir.glob("*.json"))]


async def wait_for(pilot, predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await pilot.pause(0.02)
    await asyncio.sleep(0)


async def open_live(app, pilot):
    from ild_tui.live.screen import LiveScreen

    await wait_for(pilot, lambda: isinstance(app.screen, LiveScreen) and app.screen.painted)
    await pilot.pause()
    return app.screen


def burst(app, *keys: str) -> None:
    """Queue key presses all at once, as a fast typist, a paste or tmux send-keys delivers them:
    unlike ``pilot.press`` nothing waits between two keys (no repaint, no idle)."""
    from textual import events

    chars = {"slash": "/", "enter": "\r", "space": " ", "escape": "\x1b"}
    for key in keys:
        event = events.Key(key, chars.get(key, key if len(key) == 1 else None))
        event.set_sender(app)
        app._driver.send_message(event)


async def answer(app, pilot, key: str = "y") -> None:
    """Answer the dialog on top once it is on screen (it ignores keys typed before that)."""
    await wait_for(pilot, lambda: getattr(app.screen, "armed", False))
    await pilot.press(key)
