"""Run-directory layout, atomic writes and state snapshots."""

from __future__ import annotations

import math
import os
import stat
import time

import pytest

from engine.runlog.atomic import read_json, write_json_atomic, write_text_atomic
from engine.runlog.events import EventWriter
from engine.runlog.inbox import send_command
from engine.runlog.layout import EXPORT_MARKER, RunDir, create, export_target_problem, is_run_dir, list_runs
from engine.runlog.lock import EngineLock
from engine.runlog.state import read_state, write_state


def no_temp_files(d):
    return [p.name for p in d.iterdir() if p.name.startswith(".tmp-")] == []


def test_rundir_names_every_path(tmp_path):
    rd = RunDir(tmp_path / "r1")
    rel = {
        k: str(getattr(rd, k).relative_to(rd.path))
        for k in (
            "config_file",
            "events_file",
            "commands_dir",
            "done_dir",
            "lock_file",
            "state_file",
            "checkpoints_dir",
            "latest_file",
            "partial_file",
            "export_dir",
            "log_file",
            "out_file",
            "cache_dir",
        )
    }
    assert rel == {
        "config_file": "config.yaml",
        "events_file": "events.jsonl",
        "commands_dir": "commands",
        "done_dir": "commands/done",
        "lock_file": "engine.lock",
        "state_file": "state.json",
        "checkpoints_dir": "checkpoints",
        "latest_file": "LATEST",
        "partial_file": "checkpoints/PARTIAL",
        "export_dir": "export",
        "log_file": "engine.log",
        "out_file": "engine.out",
        "cache_dir": "cache",
    }
    assert rd.checkpoint_dir(3) == rd.path / "checkpoints" / "3"
    assert os.fspath(rd) == str(tmp_path / "r1") and rd.name == "r1"
    assert not (tmp_path / "r1").exists()  # constructing touches nothing


def test_create_refuses_existing_run_unless_resume(tmp_path):
    rd = create(tmp_path / "r")
    assert rd.commands_dir.is_dir() and rd.done_dir.is_dir() and rd.checkpoints_dir.is_dir()
    assert is_run_dir(rd) and rd.events_file.read_bytes() == b""
    create(tmp_path / "r")  # nothing logged yet: harmless
    with EventWriter(rd.events_file) as w:
        w.emit("log", message="the run's first words")
    with pytest.raises(FileExistsError):
        create(tmp_path / "r")
    assert create(tmp_path / "r", resume=True) == rd
    assert not is_run_dir(tmp_path) and not is_run_dir(tmp_path / "missing")


def test_list_runs_sorted_by_activity(tmp_path):
    a, b, c = (create(tmp_path / n) for n in ("a", "b", "c"))
    (tmp_path / "not-a-run").mkdir()
    now = time.time()
    os.utime(a.events_file, (now, now - 10))
    os.utime(b.events_file, (now, now - 30))
    os.utime(c.events_file, (now, now - 20))
    assert [r.name for r in list_runs(tmp_path)] == ["b", "c", "a"]
    assert list_runs(tmp_path / "nope") == []


def test_latest_checkpoint(tmp_path):
    rd = create(tmp_path / "r")
    assert rd.latest_checkpoint() is None
    rd.checkpoint_dir(2).mkdir()
    assert rd.set_latest(2) == rd.checkpoint_dir(2)
    assert rd.latest_file.read_text().strip() == "2"
    assert rd.latest_checkpoint() == rd.checkpoint_dir(2)
    rd.set_latest("7")  # names a directory that does not exist
    assert rd.latest_checkpoint() is None
    with pytest.raises(ValueError):
        rd.set_latest("../evil")
    assert no_temp_files(rd.path)


def test_atomic_writes_leave_no_temp_files(tmp_path):
    p = tmp_path / "x.json"
    for i in range(20):
        write_json_atomic(p, {"i": i, "loss": math.nan})
    assert read_json(p) == {"i": 19, "loss": None}
    write_text_atomic(tmp_path / "t.txt", "hello")
    assert (tmp_path / "t.txt").read_text() == "hello"
    with pytest.raises(TypeError):
        write_json_atomic(p, {"bad": object()})
    assert read_json(p) == {"i": 19, "loss": None}  # old content intact
    assert no_temp_files(tmp_path)
    assert sorted(q.name for q in tmp_path.iterdir()) == ["t.txt", "x.json"]


def test_read_json_default(tmp_path):
    assert read_json(tmp_path / "missing", default={}) == {}
    (tmp_path / "bad.json").write_text("{nope")
    assert read_json(tmp_path / "bad.json", default=42) == 42


def test_state_round_trip(tmp_path):
    rd = create(tmp_path / "r")
    assert read_state(rd) is None
    write_state(rd, {"iteration": 3, "removed": [25, 26], "mode": "manual", "score": math.inf})
    assert read_state(rd.path) == {"iteration": 3, "removed": [25, 26], "mode": "manual", "score": None}
    assert no_temp_files(rd.path)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_what_runlog_creates_is_its_owners_only(tmp_path):
    old = os.umask(0o022)  # a shared machine's usual umask would leave everything world-readable
    try:
        rd = create(tmp_path / "runs" / "r")
        for d in (tmp_path / "runs", rd.path, rd.commands_dir, rd.done_dir, rd.checkpoints_dir):
            assert _mode(d) == 0o700, d
        with EventWriter(rd.events_file) as w:
            w.emit("log", message="x")
        write_state(rd, {"iteration": 1})
        rd.checkpoint_dir(1).mkdir()
        rd.set_latest(1)
        cid = send_command(rd, "pause")
        with EngineLock(rd):
            pass
        for f in (rd.events_file, rd.state_file, rd.latest_file, rd.commands_dir / f"{cid}.json", rd.lock_file):
            assert _mode(f) == 0o600, f
        (tmp_path / "mine").mkdir(mode=0o755)
        create(tmp_path / "mine" / "r2")
        assert _mode(tmp_path / "mine") == 0o755  # an existing directory above is left as it is
    finally:
        os.umask(old)


def test_export_target_rule(tmp_path):
    rd = create(tmp_path / "runs" / "r")
    assert export_target_problem(rd, tmp_path / "new") is None
    (tmp_path / "empty").mkdir()
    assert export_target_problem(rd, tmp_path / "empty") is None
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "thesis.tex").write_text("years of work")
    # --force never reaches a directory no export wrote: it would delete the thesis.
    assert "choose an empty or new directory" in export_target_problem(rd, tmp_path / "full")
    assert "choose an empty or new directory" in export_target_problem(rd, tmp_path / "full", force=True)
    (tmp_path / "earlier").mkdir()
    (tmp_path / "earlier" / EXPORT_MARKER).write_text("{}")
    (tmp_path / "earlier" / "model.safetensors").write_text("")
    assert export_target_problem(rd, tmp_path / "earlier") is None
    for never in (rd.path, tmp_path / "runs", tmp_path):
        assert "run directory" in export_target_problem(rd, never, force=True)
    assert export_target_problem(rd, rd.export_dir) is None
    (tmp_path / "file").write_text("")
    assert "not a directory" in export_target_problem(rd, tmp_path / "file", force=True)
