"""The command inbox: client writes, engine reads, validates and files away."""

from __future__ import annotations

import json
import threading
import time

import pytest

from engine.runlog.events import EventWriter
from engine.runlog.inbox import (
    Command,
    CommandInbox,
    MalformedCommand,
    send_command,
    validate_command,
    wait_for_reply,
)
from engine.runlog.layout import create


@pytest.fixture
def rd(tmp_path):
    return create(tmp_path / "run")


def test_send_command_atomic_and_ordered(rd):
    ids = [
        send_command(rd, "approve"),
        send_command(rd, "override", layer=12),
        send_command(rd, "set_mode", mode="auto-after", seconds=30),
        send_command(rd.path, "pause", by="tester"),
    ]
    names = sorted(p.name for p in rd.commands_dir.iterdir() if p.is_file())
    assert names == [f"{i}.json" for i in ids]  # no temp files remain; order = send order
    body = json.loads((rd.commands_dir / f"{ids[1]}.json").read_text())
    assert body["id"] == ids[1] and body["name"] == "override" and body["args"] == {"layer": 12}
    assert isinstance(body["t"], float) and body["by"]

    inbox = CommandInbox(rd)
    pending = inbox.pending()
    assert [c.id for c in pending] == ids
    assert [c.name for c in pending] == ["approve", "override", "set_mode", "pause"]
    assert pending[3].by == "tester"
    assert all(isinstance(c, Command) and inbox.validate(c) is None for c in pending)


def test_pending_ignores_temp_and_foreign_files(rd):
    (rd.commands_dir / ".tmp-123.json-1-abcd").write_text('{"half')
    (rd.commands_dir / "notes.txt").write_text("hi")
    assert CommandInbox(rd).pending() == []


def test_client_refuses_bad_shape(rd):
    with pytest.raises(ValueError, match="unknown command"):
        send_command(rd, "approv")
    with pytest.raises(ValueError, match="missing"):
        send_command(rd, "override")
    assert list(rd.commands_dir.glob("*.json")) == []
    with pytest.raises(FileNotFoundError):
        send_command(rd.path / "nope", "stop")


@pytest.mark.parametrize(
    "name,args,fragment",
    [
        ("explode", {}, "unknown command"),
        ("override", {}, "missing"),
        ("override", {"layer": "3"}, "integer"),
        ("override", {"layer": 3.0}, "integer"),
        ("override", {"layer": True}, "integer"),
        ("override", {"layer": -1}, "integer"),
        ("approve", {"layer": "x"}, "integer"),
        ("approve", {"layers": 3}, "unexpected"),
        ("pause", {"now": True}, "unexpected"),
        ("set_mode", {}, "missing"),
        ("set_mode", {"mode": "yolo"}, "mode must be"),
        ("set_mode", {"mode": "auto-after"}, "needs 'seconds'"),
        ("set_mode", {"mode": "auto-after", "seconds": "5"}, "number"),
        ("set_mode", {"mode": "manual", "seconds": 5}, "only to auto-after"),
    ],
)
def test_validate_rejects(rd, name, args, fragment):
    send_command(rd, name, check=False, **args)
    (cmd,) = CommandInbox(rd).pending()
    reason = CommandInbox(rd).validate(cmd)
    assert reason is not None and fragment in reason
    assert validate_command(name, args) == reason


@pytest.mark.parametrize(
    "name,args",
    [
        ("approve", {}),
        ("approve", {"layer": 0}),
        ("approve", {"layer": None}),
        ("override", {"layer": 17}),
        ("set_mode", {"mode": "manual"}),
        ("set_mode", {"mode": "auto"}),
        ("set_mode", {"mode": "auto-after", "seconds": 2.5}),
        ("resume", {}),
        ("stop", {}),
    ],
)
def test_validate_accepts(name, args):
    assert validate_command(name, args) is None


@pytest.mark.parametrize(
    "content,fragment",
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"args": {}}', "name"),
        (b'{"name": "override", "args": [3]}', "args"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_malformed_file(rd, content, fragment):
    path = rd.commands_dir / "1-deadbeef.json"
    path.write_bytes(content)
    inbox = CommandInbox(rd)
    (cmd,) = inbox.pending()
    assert isinstance(cmd, MalformedCommand)
    assert cmd.id == "1-deadbeef"
    assert fragment in cmd.reason and inbox.validate(cmd) == cmd.reason
    inbox.done(cmd)
    assert (rd.done_dir / "1-deadbeef.json").read_bytes() == content


def test_done_moves_and_overwrites(rd):
    cid = send_command(rd, "stop")
    inbox = CommandInbox(rd)
    (cmd,) = inbox.pending()
    dest = inbox.done(cmd)
    assert dest == rd.done_dir / f"{cid}.json" and dest.exists()
    assert inbox.pending() == []
    assert inbox.done(cmd) is None  # already moved: harmless
    # the same file name arriving again (at-least-once retry) overwrites
    (rd.commands_dir / f"{cid}.json").write_text(json.dumps({"id": cid, "name": "stop", "args": {}}))
    (cmd2,) = inbox.pending()
    inbox.done(cmd2)
    assert [p.name for p in rd.done_dir.iterdir()] == [f"{cid}.json"]


def test_wait_for_reply(rd):
    cid = send_command(rd, "approve", layer=3)
    other = send_command(rd, "pause")
    assert wait_for_reply(rd, cid, timeout=0.2, poll_interval=0.02) is None

    def engine():
        time.sleep(0.1)
        with EventWriter(rd.events_file) as w:
            w.emit("command_rejected", command_id=other, name="pause", reason="nope")
            w.emit("command_applied", command_id=cid, name="approve", args={"layer": 3})

    th = threading.Thread(target=engine)
    th.start()
    ev = wait_for_reply(rd, cid, timeout=5, poll_interval=0.02)
    th.join()
    assert ev["type"] == "command_applied" and ev["command_id"] == cid
    assert wait_for_reply(rd, other, timeout=0)["type"] == "command_rejected"
