"""`ild attach` and bare `ild`: which run opens, bad input, and no Textual at import time."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.runlog.events import EventWriter
from engine.runlog.layout import RunDir, create
from ild_tui import cli
from ild_tui.cli import dashboard
from tests.support import append_events, hold_lock
from tools.synthetic_runs import DEAD, FINISHED, LIVE, copy_all

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def opened(monkeypatch):
    calls = []
    monkeypatch.setattr(
        dashboard, "open_dashboard", lambda runs_dir, run_dir, theme: calls.append((runs_dir, run_dir, theme))
    )
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
        "for args, code in ((['attach', '--help'], 0), ([], 2)):\n"
        "    try:\n        main(args)\n    except SystemExit as e:\n        assert (e.code or 0) == code, e.code\n"
        "print([m for m in ('torch', 'textual') if m in sys.modules], file=sys.stderr)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "[]"
    assert "--theme" in result.stdout and "latest live run" in result.stdout
    assert "Commands:" in result.stdout  # bare `ild` piped: the help, not a dashboard, and why (exit 2)
    assert "needs a terminal" in result.stderr


# -- bad input is one line, exit 2 --------------------------------------------------------------


def _run(*args, runs_dir):
    return CliRunner().invoke(
        cli.main, ["run", "--target-layers", "4", "--headless", "--runs-dir", str(runs_dir), *args]
    )


@pytest.mark.parametrize(
    "value, fragment",
    [
        ("k=!!python/object/apply:os.system ['touch /tmp/ild-pwned']", "--set k:"),
        ("k=[1,", "--set k:"),
        ("heal..lr=1", "KEY=VALUE"),
    ],
)
def test_set_with_bad_yaml_is_one_line(tmp_path, value, fragment):
    result = _run("--set", value, runs_dir=tmp_path / "runs")
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and fragment in result.output and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("", "empty"),
        ("x" * 300, "at most 100"),
        ("../escape", "letters, digits"),
        ("-flag", "letters, digits"),
    ],
)
def test_bad_run_names_are_refused(tmp_path, name, fragment):
    result = _run("--name", name, runs_dir=tmp_path / "runs")
    assert result.exit_code == 2 and fragment in result.output and result.output.count("\n") == 1, result.output
    assert not (tmp_path / "runs").exists()


@pytest.mark.e2e
def test_resume_that_the_engine_refuses_says_why(tmp_path):
    runs = copy_all(tmp_path / "runs")
    RunDir(runs / DEAD).config_file.write_text("model: [unclosed\n")
    result = CliRunner().invoke(cli.main, ["resume", DEAD, "--runs-dir", str(runs)])
    assert result.exit_code == 1
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("ild: run failed: ") and "config.yaml" in last and "exited with code" not in last


def test_export_refuses_a_foreign_non_empty_directory_even_when_forced(tmp_path, monkeypatch):
    runs = copy_all(tmp_path / "runs")
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "chapter1.tex").write_text("years of work")
    for force in ([], ["--force"]):
        result = CliRunner().invoke(cli.main, ["export", FINISHED, "--out", str(out), "--runs-dir", str(runs), *force])
        assert result.exit_code == 2 and "choose an empty or new directory" in result.output
    result = CliRunner().invoke(
        cli.main, ["export", FINISHED, "--out", str(runs / FINISHED), "--runs-dir", str(runs), "--force"]
    )
    assert result.exit_code == 2 and "run directory" in result.output
    # an empty directory goes to the engine, and so do --force and --from-checkpoint: a stand-in
    # engine process records its arguments
    from ild_tui import launch

    argv = tmp_path / "argv"
    stand_in = tmp_path / "engine.py"
    stand_in.write_text(f"import sys, json; open({str(argv)!r}, 'w').write(json.dumps(sys.argv[1:]))\n")
    monkeypatch.setattr(launch, "ENGINE", [sys.executable, str(stand_in)])
    (out / "chapter1.tex").unlink()
    result = CliRunner().invoke(cli.main, ["export", FINISHED, "--out", str(out), "--runs-dir", str(runs)])
    assert result.exit_code == 0 and json.loads(argv.read_text()) == [
        str(runs / FINISHED),
        "--export",
        "--out",
        str(out),
    ]
    args = ["export", FINISHED, "--out", str(out), "--runs-dir", str(runs), "--force", "--from-checkpoint", "1"]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 0, result.output
    assert json.loads(argv.read_text())[3:] == [str(out), "--force", "--from-checkpoint", "1"]


# -- one answer per fact --------------------------------------------------------------------------


def _write_run(path: Path, *events: dict) -> None:
    create(path)
    append_events(
        path,
        {
            "type": "run_started",
            "name": path.name,
            "model": "m",
            "strategy": "iterative-distill",
            "start_layers": 6,
            "target_layers": 4,
            "mode": "auto",
        },
        *events,
    )


def _ls(runs) -> list[list[str]]:
    result = CliRunner().invoke(cli.main, ["ls", "--runs-dir", str(runs)])
    assert result.exit_code == 0, result.output
    return [line.split() for line in result.output.splitlines()]


def test_best_aggregate_is_the_same_everywhere(tmp_path):
    """0.48 after removal, 0.47 after healing: the iteration ended at 0.47 - in `ild ls`, the runs
    screen and the compare screen alike (`ild ls` used to say 0.48)."""
    from ild_tui.runs import summarise
    from ild_tui.screens.compare import ComparedRun

    run = tmp_path / "runs" / "r"
    _write_run(
        run,
        {"type": "eval", "iteration": 0, "stage": "teacher", "aggregate": 0.5, "tasks": {"a": 0.5}},
        {"type": "eval", "iteration": 1, "stage": "after_removal", "aggregate": 0.48, "tasks": {"a": 0.48}},
        {"type": "eval", "iteration": 1, "stage": "after_healing", "aggregate": 0.47, "tasks": {"a": 0.47}},
    )
    header, row = _ls(tmp_path / "runs")
    assert row[header.index("best")] == "0.4700" and row[header.index("aggregate")] == "0.4700"
    screen_row, state = summarise(RunDir(run))  # what the runs screen shows for it
    assert screen_row.best == 0.47 and screen_row.last == 0.47
    assert ComparedRun(str(run), "r", state, "died").curve() == [(0, 0.5), (1, 0.47)]


def test_a_live_run_lasts_until_now_in_ls_as_on_the_runs_screen(tmp_path):
    run = tmp_path / "runs" / "r"
    create(run)
    started = time.time() - 3600
    with EventWriter(RunDir(run).events_file, clock=lambda: started) as w:
        w.emit(
            "run_started",
            name="r",
            model="m",
            strategy="iterative-distill",
            start_layers=6,
            target_layers=4,
            mode="auto",
        )
    with hold_lock(run):
        header, row = _ls(tmp_path / "runs")
    assert row[header.index("status")] == "running" and row[-1].startswith("1h00m")  # the duration, last


def test_one_badly_typed_event_breaks_nothing(tmp_path):
    runs = copy_all(tmp_path / "runs")
    with open(RunDir(runs / FINISHED).events_file, "ab") as f:  # as a hand edit or a buggy tool could
        f.write(
            b'{"seq": 9999, "t": 1.0, "type": "eval", "iteration": 3, "stage": "after_healing", '
            b'"aggregate": "oops", "tasks": {"lm": []}}\n'
        )
        f.write(b'{"seq": 10000, "t": 1.0, "type": "layer_removed", "iteration": "3", "layer": 7}\n')
    result = CliRunner().invoke(cli.main, ["ls", "--runs-dir", str(runs)])
    assert result.exit_code == 0, result.output
    assert all(name in result.output for name in (FINISHED, LIVE, DEAD)) and f"{FINISHED} (2)" in result.output
    result = CliRunner().invoke(cli.main, ["show", FINISHED, "--runs-dir", str(runs)])
    assert result.exit_code == 0 and "2 events skipped" in result.output, result.output


def test_show_leads_with_the_report_part_and_adds_the_select_aggregate(tmp_path):
    from tools.synthetic_runs import synth_run

    synth_run(tmp_path / "runs" / "split", name="split", split=True, end="floor", end_iteration=3, steps_per_iter=4)
    result = CliRunner().invoke(cli.main, ["show", "split", "--runs-dir", str(tmp_path / "runs")], terminal_width=250)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    header = next(line for line in lines if "aggregate" in line).split("┃")
    assert [c.strip() for c in header][7:9] == ["aggregate", "select"]
    teacher = next(line for line in lines if " teacher " in line).split("│")
    assert float(teacher[7]) < float(teacher[8])  # report first, then the flattering select part
    assert "finished at the floor" in result.output and "--min-retention" in result.output
    plain = CliRunner().invoke(cli.main, ["show", FINISHED, "--runs-dir", str(copy_all(tmp_path / "old"))])
    assert "select" not in plain.output  # an older run has no select part: no column for it


@pytest.mark.e2e
def test_resume_detach_returns_at_once_and_the_engine_goes_on_alone(tmp_path):
    import os
    import re
    import time

    runs = copy_all(tmp_path / "runs")
    RunDir(runs / DEAD).config_file.write_text("model: [unclosed\n")  # the engine ends quickly, alone
    started = time.monotonic()
    result = CliRunner().invoke(cli.main, ["resume", DEAD, "--detach", "--runs-dir", str(runs)])
    assert result.exit_code == 0, result.output
    assert f"resumed run {DEAD} in the background" in result.output and f"ild attach {DEAD}" in result.output
    assert time.monotonic() - started < 10
    pid = int(re.search(r"engine pid (\d+)", result.output).group(1))
    deadline = time.monotonic() + 120
    while os.waitpid(pid, os.WNOHANG) == (0, 0):  # reap it: nothing is left running
        assert time.monotonic() < deadline, "the detached engine never ended"
        time.sleep(0.1)


def test_every_way_a_run_ends_or_waits_has_words():
    from ild_tui.headless import command_words, finish_words, wait_words

    stopped_early = finish_words({"reason": "stopped", "iteration": None, "removed": []})
    assert "None" not in stopped_early and "before any layer was removed" in stopped_early
    assert "ild resume" in stopped_early
    assert "reached the target depth, 28 layers, removed 23, 25" in finish_words(
        {"reason": "target", "layers": 28, "removed": [23, 25]}
    )
    assert "quality floor" in finish_words({"reason": "floor", "layers": 27, "removed": [1, 2, 3]})
    assert "ild approve" in wait_words({"iteration": 2, "layer": 7, "mode": "manual"})
    assert "paused" in command_words({"type": "command_applied", "name": "pause", "args": {}, "by": "dashboard"})
    assert "rejected: no decision" in command_words(
        {"type": "command_rejected", "name": "approve", "reason": "no decision is awaited"}
    )
