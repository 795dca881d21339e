"""Hostile and clumsy input, round two (issue 29): a run directory copied from elsewhere with links
and FIFOs in it, broken logs beside good ones, commands that must be applied exactly once, and bad
values on the command line. Each case ends in one line and an exit code, never a traceback, a hang
or a write outside the run's own files. None of these tests starts a model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.runlog.layout import RunDir, create
from engine.runlog.tailer import read_all
from ild_tui import cli
from ild_tui.cli import start
from ild_tui.cli.common import Failure
from ild_tui.cli.control import send_and_report
from tests.support import ILD, append_events, hold_lock
from tools.synthetic_runs import DEAD, FINISHED, LIVE, copy_all

ROOT = Path(__file__).resolve().parent.parent


def _one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def _ild(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """The console script in a child process: a hang fails the test instead of stalling the suite."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [ILD, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, env=env
    )


# -- the run directory writes only its own files ---------------------------------------------------


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.json").write_text('{"mine": true}')
    (victim / "diary.txt").write_text("dear diary\n")
    return victim


@pytest.mark.e2e
@pytest.mark.parametrize("entry", ["events.jsonl", "engine.lock", "engine.log", "engine.out", "commands"])
def test_resume_refuses_a_run_directory_whose_own_file_is_a_link(tmp_path, entry):
    runs = copy_all(tmp_path / "runs")
    run = runs / DEAD
    victim = _victim(tmp_path)
    target = victim if entry == "commands" else victim / "diary.txt"
    if (run / entry).is_dir():
        shutil.rmtree(run / entry)
    else:
        (run / entry).unlink(missing_ok=True)
    (run / entry).symlink_to(target)
    before = {p.name: p.read_bytes() for p in victim.iterdir()}
    result = CliRunner().invoke(cli.main, ["resume", DEAD, "--runs-dir", str(runs)])
    assert result.exit_code == 2, result.output
    assert "symbolic link" in _one_line(result.output) and entry in result.output
    # The engine itself refuses too (a scheduler may start it without the CLI), before any import of torch.
    engine = subprocess.run([sys.executable, "-m", "engine.worker", str(run)], capture_output=True, text=True)
    assert engine.returncode == 2 and "symbolic link" in _one_line(engine.stderr)
    assert {p.name: p.read_bytes() for p in victim.iterdir()} == before


def test_runlog_writers_never_follow_a_link(tmp_path):
    from engine.runlog.events import EventWriter
    from engine.runlog.inbox import CommandInbox, send_command
    from engine.runlog.lock import EngineLock, is_alive
    from engine.runlog.safefile import UnsafeFile

    victim = _victim(tmp_path)
    rd = create(tmp_path / "run")
    rd.events_file.unlink()
    rd.events_file.symlink_to(victim / "diary.txt")
    with pytest.raises(UnsafeFile, match="symbolic link"):
        EventWriter(rd.events_file)
    rd.lock_file.symlink_to(victim / "diary.txt")
    with pytest.raises(UnsafeFile, match="symbolic link"):
        EngineLock(rd).acquire()
    assert not is_alive(rd)
    os.rename(rd.commands_dir, tmp_path / "old-commands")
    rd.commands_dir.symlink_to(victim)
    with pytest.raises(UnsafeFile, match="symbolic link"):
        send_command(rd, "pause")
    with pytest.raises(UnsafeFile):
        CommandInbox(rd).pending()  # the user's *.json are never read, let alone moved into done/
    assert sorted(p.name for p in victim.iterdir()) == ["diary.txt", "notes.json"]
    assert (victim / "diary.txt").read_text() == "dear diary\n"


def test_open_regular_refuses_fifos_directories_and_links_at_once(tmp_path):
    from engine.runlog.safefile import UnsafeFile, open_regular

    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "file")
    for name, flags, what in (
        ("fifo", os.O_RDONLY, "a FIFO"),
        ("fifo", os.O_WRONLY | os.O_APPEND, "a FIFO"),
        ("dir", os.O_RDONLY, "a directory"),
        ("dir", os.O_RDWR | os.O_CREAT, "a directory"),
        ("link", os.O_RDONLY, "a symbolic link"),
    ):
        with pytest.raises(UnsafeFile, match=what):
            open_regular(tmp_path / name, flags)
    os.close(open_regular(tmp_path / "file"))


# -- no hang --------------------------------------------------------------------------------------


def test_a_fifo_log_latest_or_manifest_blocks_nothing(tmp_path):
    runs = copy_all(tmp_path / "runs")
    events = RunDir(runs / DEAD).events_file
    events.unlink()
    os.mkfifo(events)
    os.mkfifo(runs / FINISHED / "LATEST")
    listed = _ild("ls", "--runs-dir", str(runs), timeout=90)
    assert listed.returncode == 0 and FINISHED in listed.stdout and LIVE in listed.stdout, listed.stderr
    assert DEAD in listed.stdout and "a FIFO" in listed.stderr
    shown = _ild("show", DEAD, "--runs-dir", str(runs), timeout=90)
    assert shown.returncode == 1 and "a FIFO" in _one_line(shown.stderr)
    assert _ild("show", FINISHED, "--runs-dir", str(runs), timeout=90).returncode == 0
    # LATEST and a checkpoint manifest as FIFOs: readers refuse them at once (export verifies with these).
    from engine.runlog.atomic import read_json

    assert RunDir(runs / FINISHED).latest_checkpoint() is None
    (runs / FINISHED / "checkpoints" / "3").mkdir(parents=True)
    os.mkfifo(runs / FINISHED / "checkpoints" / "3" / "checkpoint.json")
    assert read_json(runs / FINISHED / "checkpoints" / "3" / "checkpoint.json", "refused") == "refused"
    probe = (
        "from engine.checkpoints import CheckpointStore, CheckpointError\n"
        f"try:\n    CheckpointStore({str(runs / FINISHED)!r}).latest()\n"
        "except CheckpointError as e:\n    print('refused:', e)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert "refused:" in done.stdout and "FIFO" in done.stdout, done.stderr


# -- every bad input one line ---------------------------------------------------------------------


def test_one_run_whose_log_is_a_directory_hides_no_other(tmp_path):
    runs = copy_all(tmp_path / "runs")
    events = RunDir(runs / DEAD).events_file
    events.unlink()
    events.mkdir()
    result = CliRunner().invoke(cli.main, ["ls", "--runs-dir", str(runs)])
    assert result.exit_code == 0, result.output
    assert all(name in result.output for name in (FINISHED, LIVE, DEAD))
    row = next(line for line in result.output.splitlines() if DEAD in line and "ild:" not in line)
    assert "unreadable" in row and "is a directory" in result.output
    shown = CliRunner().invoke(cli.main, ["show", DEAD, "--runs-dir", str(runs)])
    assert shown.exit_code == 1 and "a directory" in _one_line(shown.output)


def test_garbage_binary_and_bad_utf8_lines_are_counted_as_skipped(tmp_path):
    runs = copy_all(tmp_path / "runs")
    with open(RunDir(runs / FINISHED).events_file, "ab") as f:
        f.write(b"garbage\n\x00\x01\x02binary\n" + b'{"seq": 1, "type": "log", "message": "' + b'\xff\xfe"}\n')
        f.write(b'{"seq": 9999, "t": 1.0, "type": "layer_removed", "iteration": "3", "layer": 7}\n')
    result = CliRunner().invoke(cli.main, ["ls", "--runs-dir", str(runs)])
    assert result.exit_code == 0 and f"{FINISHED} (4)" in result.output, result.output
    shown = CliRunner().invoke(cli.main, ["show", FINISHED, "--runs-dir", str(runs)])
    assert shown.exit_code == 0 and "4 events skipped" in shown.output, shown.output


def test_escape_sequences_in_a_run_name_never_reach_the_terminal(tmp_path):
    runs = copy_all(tmp_path / "runs")
    evil = "evil\x1b]0;pwned\x07\x1b[2J\x9b31m"
    os.rename(runs / DEAD, runs / evil)
    RunDir(runs / evil).events_file.write_bytes(b"")  # no run_started: the list shows the directory's name
    events = read_all(RunDir(runs / FINISHED).events_file)
    started = next(e for e in events if e["type"] == "run_started")
    lines = RunDir(runs / FINISHED).events_file.read_bytes().splitlines(keepends=True)
    started_line = json.dumps({**started, "name": "named\x1b[31m[red]red"}).encode() + b"\n"
    RunDir(runs / FINISHED).events_file.write_bytes(
        b"".join(started_line if json.loads(line).get("type") == "run_started" else line for line in lines)
    )
    result = _ild("ls", "--runs-dir", str(runs))
    assert result.returncode == 0, result.stderr
    for bad in ("\x1b", "\x07", "\x9b"):
        assert bad not in result.stdout + result.stderr
    assert "evil\\x1b]0;pwned\\x07" in result.stdout and "named\\x1b[31m[red]red" in result.stdout
    shown = _ild("show", str(runs / FINISHED))
    assert shown.returncode == 0 and "\x1b" not in shown.stdout and "named\\x1b[31m[red]red" in shown.stdout


def test_pause_when_commands_was_deleted_recreates_the_inbox(tmp_path):
    runs = copy_all(tmp_path / "runs")
    rd = RunDir(runs / LIVE)
    for p in rd.done_dir.iterdir():
        p.unlink()
    rd.done_dir.rmdir()
    for p in rd.commands_dir.iterdir():
        p.unlink()
    rd.commands_dir.rmdir()
    with hold_lock(rd.path), pytest.raises(Failure, match="did not answer"):
        send_and_report(rd, "pause", {}, timeout=0.2)
    assert [json.loads(p.read_text())["name"] for p in rd.commands_dir.glob("*.json")] == ["pause"]
    assert rd.commands_dir.stat().st_mode & 0o777 == 0o700


# -- commands: exactly once, and a clear answer when they cannot be filed -------------------------


def _controller(rd):
    from engine.control import Controller

    return Controller(rd, "auto", None, poll_interval=0.0)


def test_a_command_answered_before_a_death_is_not_applied_again(tmp_path):
    from engine.runlog.inbox import send_command

    rd = create(tmp_path / "run")
    command_id = send_command(rd, "pause", by="test")
    # The engine applied it and died before moving the file to done/.
    append_events(rd.path, {"type": "command_applied", "command_id": command_id, "name": "pause", "args": {}})
    controller = _controller(rd)
    try:
        controller.poll()
        assert not controller.paused
        assert len(read_all(rd.events_file)) == 1  # no second answer
        assert not list(rd.commands_dir.glob("*.json")) and (rd.done_dir / f"{command_id}.json").is_file()
        fresh = send_command(rd, "pause", by="test")  # a new command with a new id is applied as ever
        controller.poll()
        assert controller.paused and read_all(rd.events_file)[-1]["command_id"] == fresh
    finally:
        controller.writer.close()


def test_commands_done_replaced_by_a_file_rejects_the_command_in_one_line(tmp_path):
    from engine.runlog.inbox import send_command

    rd = create(tmp_path / "run")
    rd.done_dir.rmdir()
    rd.done_dir.write_text("not a folder")
    command_id = send_command(rd, "pause", by="test")
    controller = _controller(rd)
    try:
        controller.poll()
        controller.poll()  # not answered twice, and the engine goes on
        answers = [e for e in read_all(rd.events_file) if e.get("command_id") == command_id]
        assert [e["type"] for e in answers] == ["command_rejected"] and not controller.paused
        assert "done" in answers[0]["reason"] and "a regular file" in answers[0]["reason"]
        assert "\n" not in answers[0]["reason"]
    finally:
        controller.writer.close()
    controller = _controller(rd)  # a resumed engine does not answer it again either
    try:
        controller.poll()
        assert len([e for e in read_all(rd.events_file) if e.get("command_id") == command_id]) == 1
    finally:
        controller.writer.close()


def test_report_over_a_deeply_nested_manifest_and_of_an_unreadable_run_is_one_line(tmp_path):
    runs = copy_all(tmp_path / "runs")
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.json").write_text("[" * 100_000 + "]" * 100_000)
    result = CliRunner().invoke(
        cli.main, ["report", FINISHED, "--runs-dir", str(runs), "--out", str(out), "--no-measure"]
    )
    assert result.exit_code == 0, result.output
    assert (out / "report.html").is_file()
    events = RunDir(runs / DEAD).events_file
    events.unlink()
    events.mkdir()
    again = CliRunner().invoke(cli.main, ["report", DEAD, "--runs-dir", str(runs), "--out", str(tmp_path / "r2")])
    assert again.exit_code == 2 and "a directory" in _one_line(again.output) and not (tmp_path / "r2").exists()


# -- bad values on the command line: one line, exit 2, nothing created ------------------------------


def _gpt2(tmp_path: Path) -> Path:
    model = tmp_path / "gpt2"
    model.mkdir()
    config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": 4, "n_embd": 8, "n_head": 2}
    (model / "config.json").write_text(json.dumps(config))
    return model


@pytest.mark.e2e
@pytest.mark.parametrize(
    "extra, says",
    [
        (["--model", "GPT2"], "unsupported architecture 'gpt2' (GPT2LMHeadModel)"),
        (["--set", "heal=5"], "heal is a section of settings"),
        (["--mode", "auto-after", "--auto-after", "nan"], "--auto-after"),
        (["--mode", "auto-after", "--auto-after", "inf"], "--auto-after"),
        (["--mode", "auto-after", "--auto-after", "-5"], "--auto-after"),
        (["--threads", "1000000"], "--threads"),
        (["--processes", "1000000"], "--processes"),
        (["--device", "bogus"], "not a device"),
        (["--device", "cuda:x"], "not a device"),
    ],
)
def test_bad_values_are_one_line_and_create_nothing(tmp_path, extra, says):
    runs = tmp_path / "runs"
    extra = [str(_gpt2(tmp_path)) if x == "GPT2" else x for x in extra]
    result = _ild("run", "--target-layers", "2", "--runs-dir", str(runs), "--name", "r", "--detach", *extra)
    assert result.returncode == 2, result.stdout + result.stderr
    # One line of ild's, or click's usage error (whose last line says what is wrong).
    assert "Traceback" not in result.stderr and says in result.stderr.strip().splitlines()[-1], result.stderr
    assert not (runs / "r").exists()


def test_the_cli_bounds_are_the_configs():
    from engine.config import MAX_PROCESSES, MAX_THREADS

    assert (start.MAX_THREADS, start.MAX_PROCESSES) == (MAX_THREADS, MAX_PROCESSES)


@pytest.mark.e2e
def test_a_gpu_that_is_not_there_is_refused_at_creation_and_at_start(tiny, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this host has a GPU")
    runs = tmp_path / "runs"
    common = ["--model", str(tiny / "model"), "--target-layers", "4", "--runs-dir", str(runs), "--device", "cuda"]
    refused = _ild("run", *common, "--name", "now", "--detach")
    assert refused.returncode == 2 and "no CUDA GPU" in _one_line(refused.stderr) and not (runs / "now").exists()
    # Made for a GPU host (a scheduler starts it there); started here, it ends with its last word in the log.
    made = _ild("run", *common, "--name", "later", "--create-only")
    assert made.returncode == 0, made.stderr
    engine = subprocess.run(
        [sys.executable, "-m", "engine.worker", str(runs / "later")], capture_output=True, text=True
    )
    assert engine.returncode == 1 and "no CUDA GPU" in _one_line(engine.stderr)
    events = read_all(runs / "later" / "events.jsonl")
    assert events[-1]["type"] == "run_failed" and "no CUDA GPU" in events[-1]["error"]


# -- a full disk: an error with a name, never a SIGBUS --------------------------------------------


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB file system (tmpfs; needs the right to mount, as root in a container has)."""
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


FULL_DISK_PROBE = """
import sys, torch
from pathlib import Path
from engine.distill.cache import BlockStore
from engine.distill.teacher_store import TeacherStore
from engine.failures import describe

root = Path(sys.argv[1])
rows = torch.ones(64, 1024)  # 256 KiB on a 64 KiB disk
entry = TeacherStore(root / "teacher", 1 << 30).entry("teacher", rows, 8)
entry.save("final", (64, 1024), rows)  # costs the next run the computation, nothing else
print("store:", sorted(p.name for p in (root / "teacher").rglob("*.bin")))
try:
    store = BlockStore(64, (1024,), torch.float32, root / "spill", limit_bytes=0)
    for i in range(64):
        store[i] = rows[i]
    print("spill: written")
except OSError as exc:
    print("spill:", describe(exc))
try:
    torch.save(rows, root / "state.pt")
except Exception as exc:
    print("save:", describe(exc))
"""


def test_a_full_disk_under_the_store_and_the_healing_cache_is_an_error_not_a_sigbus(full_disk):
    probe = subprocess.run(
        [sys.executable, "-c", FULL_DISK_PROBE, str(full_disk)], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert probe.returncode == 0, f"exit {probe.returncode}: {probe.stderr[-2000:]}"
    lines = dict(line.split(": ", 1) for line in probe.stdout.splitlines())
    assert lines["store"] == "[]"
    assert lines["spill"].startswith("disk full writing ") and "No space left" in lines["spill"]
    assert lines["save"].startswith("disk full")
