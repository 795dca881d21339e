"""Hostile and clumsy input, round two (issue 29), where a terminal is involved: no dashboard without
one, none left spinning after it goes away, and a foreground study that outlives it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from engine.runlog.layout import RunDir
from engine.runlog.tailer import read_all
from tests.support import ILD
from tests.test_hostile_inputs import ROOT, _ild, _one_line
from tools.synthetic_runs import DEAD, FINISHED, LIVE, copy_all

# -- the dashboard: a terminal or nothing ---------------------------------------------------------


def test_attach_and_bare_ild_without_a_terminal_say_so_in_one_line(tmp_path):
    runs = copy_all(tmp_path / "runs")
    for args in (["attach", FINISHED, "--runs-dir", str(runs)], []):
        result = _ild(*args)  # stdin /dev/null, stdout a pipe
        assert result.returncode == 2 and "needs a terminal" in _one_line(result.stderr), result.stderr
        assert "\x1b" not in result.stdout


@pytest.mark.parametrize("controlling", [True, False], ids=["sighup", "hangup-only"])
def test_the_dashboard_ends_when_its_terminal_goes_away(tmp_path, controlling):
    import fcntl
    import select
    import struct
    import termios
    import time

    runs = copy_all(tmp_path / "runs")
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))

    def as_terminal():
        if controlling:  # the pty is its controlling terminal: closing it sends SIGHUP
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    env = {**os.environ, "PYTHONPATH": str(ROOT), "TERM": "xterm-256color", "ILD_CONFIG_DIR": str(tmp_path / "cfg")}
    proc = subprocess.Popen(
        [ILD, "attach", FINISHED, "--runs-dir", str(runs)],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        start_new_session=True,
        preexec_fn=as_terminal,
    )
    os.close(slave)
    try:
        drawn, deadline = b"", time.monotonic() + 120
        while len(drawn) < 2000 and time.monotonic() < deadline and proc.poll() is None:
            if select.select([master], [], [], 0.5)[0]:
                drawn += os.read(master, 65536)
        assert len(drawn) >= 2000, drawn[-500:]  # the dashboard is up
        os.close(master)  # the SSH connection drops
        master = None
        assert proc.wait(timeout=30) is not None
    finally:
        if master is not None:
            os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.e2e
def test_a_foreground_study_survives_its_terminal_hanging_up(tiny, tmp_path):
    """An SSH drop: SIGHUP and a hung-up terminal. The remaining strategy and the report still run."""
    import fcntl
    import select
    import termios
    import time

    out = tmp_path / "study"
    master, slave = os.openpty()
    args = ["study", "--model", str(tiny / "model"), "--suite", str(tiny / "suite.yaml")]
    args += ["--strategies", "shortgpt,iterative-bi", "--target-layers", "4", "--out", str(out), "--no-measure"]
    proc = subprocess.Popen(
        [ILD, *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        start_new_session=True,
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
    )
    os.close(slave)
    first = out / "runs" / "shortgpt" / "events.jsonl"
    try:
        deadline = time.monotonic() + 300
        while not (first.is_file() and read_all(first)) and time.monotonic() < deadline and proc.poll() is None:
            if select.select([master], [], [], 0.2)[0]:
                os.read(master, 65536)
        assert read_all(first), "the study did not start its first run"
        os.close(master)  # hang up: SIGHUP to the study, EIO on every later write to the terminal
        master = None
        assert proc.wait(timeout=600) == 0
    finally:
        if master is not None:
            os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for strategy in ("shortgpt", "iterative-bi"):
        assert read_all(out / "runs" / strategy / "events.jsonl")[-1]["type"] == "run_finished", strategy
    assert (out / "report" / "report.html").is_file()


def test_the_dashboard_reaps_an_engine_it_started_once_that_ends(tmp_path):
    """No zombie while the dashboard stays open (its ``Watch`` polls the engines it started)."""
    import time

    from ild_tui import launch, terminal

    class App:
        def call_from_thread(self, fn):
            fn()

        def exit(self):
            pass

    master, slave = os.openpty()
    child = subprocess.Popen(["true"])
    launch._started.append(child)
    try:
        with terminal.Watch(App(), slave, launch.reap_started):
            deadline = time.monotonic() + 10
            while launch._started and time.monotonic() < deadline:
                time.sleep(0.1)
            assert child not in launch._started and child.returncode == 0
            assert not Path(f"/proc/{child.pid}").exists()  # reaped, not a zombie
    finally:
        os.close(master)
        os.close(slave)


@pytest.mark.usefixtures("tui_env")
async def test_the_runs_screen_lists_an_unreadable_run_beside_the_good_ones(tmp_path):
    from ild_tui.screens.runs import RunsScreen
    from tests.support import wait_for
    from tools.synthetic_runs import make_app

    runs = copy_all(tmp_path / "runs")
    events = RunDir(runs / DEAD).events_file
    events.unlink()
    os.mkfifo(events)
    app = make_app(runs)
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.scanned)
        rows = {r.name: r for r in app.screen.rows}
        assert {FINISHED, LIVE, DEAD} <= set(rows)
        assert rows[DEAD].status == "unreadable" and "a FIFO" in rows[DEAD].note
