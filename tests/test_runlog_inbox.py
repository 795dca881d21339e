"""The command inbox: client writes, engine reads, validates and files away."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from engine.runlog.events import EventWriter
from engine.runlog.inbox import (
    MAX_COMMAND_BYTES,
    Command,
    CommandInbox,
    MalformedCommand,
    send_command,
    validate_command,
    wait_for_reply,
)
from engine.runlog.layout import create
from engine.runlog.tailer import read_all


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


# -- untrusted files in the inbox ---------------------------------------------------------------


def _only(rd) -> Command | MalformedCommand:
    (cmd,) = CommandInbox(rd).pending()
    return cmd


def test_a_symbolic_link_is_refused_and_never_read_through(rd, tmp_path):
    secret = tmp_path / "secret.json"
    secret.write_text('{"name": "stop", "args": {}, "password": "hunter2"}')
    (rd.commands_dir / "1-link.json").symlink_to(secret)
    cmd = _only(rd)
    assert isinstance(cmd, MalformedCommand) and "symbolic link" in cmd.reason
    assert "hunter2" not in cmd.reason and "stop" not in cmd.reason
    CommandInbox(rd).done(cmd)
    assert (rd.done_dir / "1-link.json").is_symlink() and secret.exists()  # the link moved, not its target


def test_a_directory_or_fifo_is_refused_without_blocking(rd):
    (rd.commands_dir / "1-dir.json").mkdir()
    os.mkfifo(rd.commands_dir / "2-fifo.json")  # opening it for reading would wait for a writer forever
    inbox = CommandInbox(rd)
    cmds = inbox.pending()
    assert [type(c) for c in cmds] == [MalformedCommand, MalformedCommand]
    assert all("not a regular file" in c.reason for c in cmds)
    for c in cmds:
        inbox.done(c)
    assert inbox.pending() == []


def test_a_refused_entry_that_cannot_take_its_name_in_done_is_still_moved(rd):
    (rd.done_dir / "1-dir.json").mkdir()
    (rd.done_dir / "1-dir.json" / "x").write_text("")  # a non-empty directory of that name is there already
    (rd.commands_dir / "1-dir.json").mkdir()
    inbox = CommandInbox(rd)
    (cmd,) = inbox.pending()
    assert inbox.done(cmd) is not None
    assert inbox.pending() == []


def test_a_file_over_the_size_cap_is_refused(rd):
    big = json.dumps({"name": "stop", "args": {}, "pad": "x" * MAX_COMMAND_BYTES}).encode()
    (rd.commands_dir / "1-big.json").write_bytes(big)
    cmd = _only(rd)
    assert isinstance(cmd, MalformedCommand) and str(MAX_COMMAND_BYTES) in cmd.reason and "xxxx" not in cmd.reason


def test_a_file_of_another_user_is_refused(rd):
    if os.getuid() != 0:
        pytest.skip("giving a file to another user needs root")
    path = rd.commands_dir / "1-theirs.json"
    path.write_text('{"name": "stop", "args": {}}')
    os.chown(path, 12345, 12345)
    cmd = _only(rd)
    assert isinstance(cmd, MalformedCommand) and "uid 12345" in cmd.reason


@pytest.mark.parametrize(
    "content", [b"[" * 30_000 + b"]" * 30_000, b'{"name": ' + b"[" * 60_000], ids=["closed", "open"]
)
def test_deeply_nested_json_is_malformed_not_a_crash(rd, content):
    (rd.commands_dir / "1-deep.json").write_bytes(content)
    cmd = _only(rd)
    assert isinstance(cmd, MalformedCommand) and "JSON" in cmd.reason


def test_reasons_quote_only_a_short_printable_excerpt(rd):
    huge = "A" * 5000 + "\n\x1b[31m"
    send_command(rd, huge, check=False)
    send_command(rd, "override", check=False, layer=huge)
    send_command(rd, "pause", check=False, **{huge: 1})
    (rd.commands_dir / f"9-{'B' * 150}.json").write_text("{not json")
    inbox = CommandInbox(rd)
    for cmd in inbox.pending():
        reason = inbox.validate(cmd)
        assert reason and len(reason) < 200 and "\x1b" not in reason and "\n" not in reason, reason
        assert len(cmd.id) <= 80 and len(cmd.name or "") <= 40


def test_seconds_the_engine_could_not_count_to_are_refused():
    assert "from 0 to" in validate_command("set_mode", {"mode": "auto-after", "seconds": 10**400})
    assert validate_command("set_mode", {"mode": "auto-after", "seconds": 3600}) is None


def test_the_engine_rejects_a_refused_file_and_goes_on(rd, tmp_path):
    from engine.control import Controller

    (rd.commands_dir / "0001-deep.json").write_bytes(b"[" * 60_000)
    (rd.commands_dir / "0002-link.json").symlink_to(tmp_path / "nowhere.json")
    send_command(rd, "pause", by="test")
    with EventWriter(rd.events_file) as w:
        control = Controller(rd.path, w.emit, "auto", None)
        control.poll()
        control.poll()  # nothing is answered twice
    events = read_all(rd.events_file)
    assert [(e["type"], e["command_id"][:9]) for e in events][:2] == [
        ("command_rejected", "0001-deep"),
        ("command_rejected", "0002-link"),
    ]
    assert events[2]["type"] == "command_applied" and events[2]["name"] == "pause" and len(events) == 3
    assert control.paused
