"""`ild attach` and bare `ild`: which run opens, bad input, and no Textual at import time."""

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ild_tui import cli
from tests.support import hold_lock
from tools.synthetic_runs import DEAD, FINISHED, LIVE, copy_all

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def opened(monkeypatch):
    calls = []
    monkeypatch.setattr(cli, "_open_dashboard", lambda runs_dir, run_dir, theme: calls.append((runs_dir, run_dir, theme)))
    return calls


def test_attach_picks_the_latest_live_run_else_the_latest(tmp_path, opened):
    runs = copy_all(tmp_path / "runs")
    result = CliRunner().invoke(cli.main, ["attach", "--runs-dir", str(runs)])
    assert result.exit_code == 0, result.output
    assert opened[-1][1].name == LIVE  # the most recently active run (nothing is alive)
    (runs / LIVE / "events.jsonl").touch()
    import os

    os.utime(runs / DEAD / "events.jsonl", (4e9, 4e9))  # DEAD is now the latest ...
    with hold_lock(runs / FINISHED):  # ... but FINISHED's engine is alive
        result = CliRunner().invoke(cli.main, ["attach", "--runs-dir", str(runs)])
    assert opened[-1][1].name == FINISHED
    result = CliRunner().invoke(cli.main, ["attach", "--runs-dir", str(runs)])
    assert opened[-1][1].name == DEAD


def test_attach_by_name_path_and_theme(tmp_path, opened):
    runs = copy_all(tmp_path / "runs")
    result = CliRunner().invoke(cli.main, ["attach", FINISHED, "--runs-dir", str(runs), "--theme", "ild-light"])
    assert result.exit_code == 0, result.output
    runs_dir, run_dir, theme = opened[-1]
    assert run_dir.name == FINISHED and theme == "ild-light" and Path(runs_dir) == runs
    # a path: the runs screen then lists the run's neighbours
    result = CliRunner().invoke(cli.main, ["attach", str(runs / DEAD)])
    assert result.exit_code == 0, result.output
    assert Path(opened[-1][0]) == runs and opened[-1][1].name == DEAD


def test_attach_bad_input(tmp_path, opened):
    runs = copy_all(tmp_path / "runs")
    result = CliRunner().invoke(cli.main, ["attach", "nope", "--runs-dir", str(runs)])
    assert result.exit_code == 2 and "no run 'nope'" in result.output
    result = CliRunner().invoke(cli.main, ["attach", "--runs-dir", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "no runs in" in result.output
    result = CliRunner().invoke(cli.main, ["attach", FINISHED, "--runs-dir", str(runs), "--theme", "nope"])
    assert result.exit_code == 2 and "ild-colorblind" in result.output
    assert opened == []


def test_attach_help_and_bare_ild_without_a_terminal_stay_light():
    code = (
        "import sys; from ild_tui.cli import main\n"
        "for args in (['attach', '--help'], []):\n"
        "    try:\n        main(args)\n    except SystemExit as e:\n        assert e.code in (0, None), e.code\n"
        "print([m for m in ('torch', 'textual') if m in sys.modules], file=sys.stderr)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "[]"
    assert "--theme" in result.stdout and "latest live run" in result.stdout
    assert "Commands:" in result.stdout  # bare `ild` piped: the help, not a dashboard
