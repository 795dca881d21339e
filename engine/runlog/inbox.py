"""The command inbox: how a person steers a running engine.

A client (the dashboard, or ``ild approve`` from any shell, on any host that
sees the run directory) drops one JSON file per command into ``commands/``.
The engine polls the folder, answers each command with a
``command_applied``/``command_rejected`` event carrying its id, and moves the
file to ``commands/done/``, which is the audit trail.

Files rather than a socket because commands must outlive both sides: one sent
while the engine is restarting is applied when it comes back, and it works
across hosts on a shared filesystem. Delivery is at least once (the engine may
die between applying and moving); the id lets the engine apply it once.

This module checks only the *shape* of a command (known name, the right
arguments with the right types). Whether it makes sense now (is that layer
still there? is anything awaiting a decision?) is the engine's call.

Whatever lands in ``commands/`` is untrusted input to a long-running engine: a
file that is not a regular file of the engine's own user (a symbolic link, a
FIFO, another user's file), one over ``MAX_COMMAND_BYTES`` or one that does not
parse becomes a ``MalformedCommand`` - rejected with a reason, never a crash -
and no reason repeats more of the file than a short, printable excerpt.
"""

from __future__ import annotations

import getpass
import json
import math
import os
import re
import reprlib
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.runlog._fileio import make_private_dir
from engine.runlog.atomic import write_bytes_atomic
from engine.runlog.layout import RunDir
from engine.runlog.safefile import UnsafeFile, open_regular, require_dir
from engine.runlog.schema import MODES
from engine.runlog.tailer import EventTailer

__all__ = [
    "COMMANDS",
    "MAX_COMMAND_BYTES",
    "Command",
    "CommandInbox",
    "MalformedCommand",
    "send_command",
    "validate_command",
    "wait_for_reply",
]

MAX_COMMAND_BYTES = 64 * 1024
MAX_SECONDS = 1e9  # an auto-after wait; a bigger number would overflow the engine's clock arithmetic
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")

# name -> {arg: (kind, required)}; "set_mode"'s "seconds" is checked by hand
# because whether it is required depends on "mode".
COMMANDS: dict[str, dict[str, tuple[str, bool]]] = {
    "approve": {"layer": ("int", False)},
    "override": {"layer": ("int", True)},
    "set_mode": {"mode": ("mode", True), "seconds": ("number", False)},
    "pause": {},
    "resume": {},
    "stop": {},
}


@dataclass
class Command:
    """A well-formed command file (its arguments may still be invalid: see ``validate``)."""

    id: str
    name: str
    args: dict[str, Any]
    t: float | None
    by: str | None
    path: Path = field(repr=False)


@dataclass
class MalformedCommand:
    """A command file that could not be read as a command at all.

    The engine answers it with ``command_rejected`` (using ``id``, the file
    name without ``.json``) and moves it to ``done/`` like any other.
    """

    id: str
    reason: str
    path: Path = field(repr=False)
    name: str | None = None


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxdict, _SHORT.maxlist, _SHORT.maxtuple = 2, 4, 4, 4
_SHORT.maxstring = _SHORT.maxother = _SHORT.maxlong = 40


def _excerpt(value: Any, limit: int = 40) -> str:
    """A short, printable picture of ``value`` for a reason (never the whole of a big one)."""
    text = value if isinstance(value, str) else _SHORT.repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return "".join(c if c.isprintable() else "?" for c in text)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return _is_int(v) or (isinstance(v, float) and math.isfinite(v))


def validate_command(name: Any, args: Any) -> str | None:
    """Why ``name(**args)`` is not a valid command, or None if it is."""
    if not isinstance(name, str) or name not in COMMANDS:
        return f"unknown command '{_excerpt(name)}'; known: {', '.join(COMMANDS)}"
    if not isinstance(args, dict):
        return f"{name}: args must be an object, got {type(args).__name__}"
    spec = COMMANDS[name]
    extra = sorted(str(a) for a in set(args) - set(spec))
    if extra:
        shown = ", ".join(_excerpt(a) for a in extra[:4]) + (", ..." if len(extra) > 4 else "")
        return f"{name}: unexpected argument(s) {shown}"
    for arg, (kind, required) in spec.items():
        if arg not in args or args[arg] is None:
            if required:
                return f"{name}: missing required argument {arg!r}"
            continue
        v = args[arg]
        if kind == "int" and not (_is_int(v) and v >= 0):
            return f"{name}: {arg} must be a non-negative integer, got {_excerpt(v)}"
        if kind == "number" and not (_is_number(v) and 0 <= v <= MAX_SECONDS):
            return f"{name}: {arg} must be a number from 0 to {MAX_SECONDS:g}, got {_excerpt(v)}"
        if kind == "mode" and v not in MODES:
            return f"{name}: mode must be one of {', '.join(MODES)}, got {_excerpt(v)}"
    if name == "set_mode":
        has_seconds = args.get("seconds") is not None
        if args["mode"] == "auto-after" and not has_seconds:
            return "set_mode: mode auto-after needs 'seconds'"
        if args["mode"] != "auto-after" and has_seconds:
            return f"set_mode: 'seconds' applies only to auto-after, not {args['mode']}"
    return None


def _default_sender() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def send_command(
    run_dir: str | os.PathLike,
    name: str,
    /,
    *,
    by: str | None = None,
    check: bool = True,
    **args: Any,
) -> str:
    """Drop command ``name(**args)`` into the run's inbox; return its id.

    ``check`` refuses (``ValueError``) a command the engine would reject for
    its shape, so a CLI typo fails at once instead of as a later event;
    ``check=False`` exists for tests of the engine's side. ``by`` defaults to
    ``user@host``. The file appears whole or not at all (temp + rename), and
    only its owner can read it.
    """
    if check:
        reason = validate_command(name, args)
        if reason:
            raise ValueError(reason)
    rd = RunDir(run_dir)
    if not require_dir(rd.commands_dir):  # UnsafeFile for a link: the command would land elsewhere
        if not rd.is_run_dir():
            raise FileNotFoundError(f"{rd.path} is not a run directory (no commands/ folder)")
        make_private_dir(rd.commands_dir)  # deleted by hand: the engine reads it again once it is back
    command_id = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}"
    payload = {"id": command_id, "name": name, "args": args, "t": time.time(), "by": by or _default_sender()}
    data = json.dumps(payload, allow_nan=False, ensure_ascii=False).encode("utf-8")
    write_bytes_atomic(rd.commands_dir / f"{command_id}.json", data)
    return command_id


def _read_own_file(path: Path) -> bytes:
    """The bytes of ``path`` if it is a small regular file of this process's user.

    Never through a symbolic link (``O_NOFOLLOW``), never blocking on a FIFO (``O_NONBLOCK``);
    raises ``ValueError`` with the reason otherwise.
    """
    try:
        fd = open_regular(path)
    except UnsafeFile as e:
        raise ValueError(f"{e.what}, not a regular file") from None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.getuid():
            raise ValueError(f"owned by uid {st.st_uid}, not by the engine's user (uid {os.getuid()})")
        if st.st_size > MAX_COMMAND_BYTES:
            raise ValueError(f"{st.st_size} bytes; a command file holds at most {MAX_COMMAND_BYTES}")
        data = os.read(fd, MAX_COMMAND_BYTES + 1)
        if len(data) > MAX_COMMAND_BYTES:  # grew after the fstat
            raise ValueError(f"over {MAX_COMMAND_BYTES} bytes")
        return data
    finally:
        os.close(fd)


def _load(path: Path) -> Command | MalformedCommand | None:
    stem = path.name[: -len(".json")]
    safe_stem = stem if _SAFE_ID.fullmatch(stem) else _excerpt(stem)
    try:
        raw = _read_own_file(path)
    except FileNotFoundError:
        return None  # moved to done/ by a concurrent pass
    except ValueError as e:
        return MalformedCommand(safe_stem, f"refused: {e}", path)
    except OSError as e:
        return MalformedCommand(safe_stem, f"unreadable: {e.strerror or type(e).__name__}", path)
    try:
        obj = json.loads(raw)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError; messages hold no content
        return MalformedCommand(safe_stem, f"not valid JSON: {_excerpt(str(e))}", path)
    except RecursionError:
        return MalformedCommand(safe_stem, "not valid JSON: nested too deeply", path)
    if not isinstance(obj, dict):
        return MalformedCommand(safe_stem, f"expected a JSON object, got {type(obj).__name__}", path)
    cid = obj.get("id", stem)
    if not isinstance(cid, str) or not _SAFE_ID.fullmatch(cid):
        cid = safe_stem
    name = obj.get("name")
    if not isinstance(name, str):
        return MalformedCommand(cid, "missing or non-string 'name'", path)
    args = obj.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return MalformedCommand(cid, f"'args' must be an object, got {type(args).__name__}", path, _excerpt(name))
    t = obj.get("t")
    by = obj.get("by")
    return Command(
        id=cid,
        name=name if name in COMMANDS else _excerpt(name),  # the engine echoes it in its answer
        args=args,
        t=t if _is_number(t) else None,
        by=_excerpt(by, 80) if isinstance(by, str) else None,
        path=path,
    )


class CommandInbox:
    """The engine's view of ``commands/``."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = RunDir(run_dir)
        self._stuck: set[str] = set()  # refused entries that could not be moved away

    def pending(self) -> list[Command | MalformedCommand]:
        """Unprocessed commands, oldest first (file names start with time_ns).

        Dot-files are temp files still being written and are skipped, as is
        anything not ending in ``.json``. Every other entry is a command or a
        ``MalformedCommand`` (a link, a directory, a FIFO are refused, not skipped).
        """
        try:
            if not require_dir(self.run_dir.commands_dir):  # a link is UnsafeFile: never read through
                return []
            names = sorted(
                e.name
                for e in os.scandir(self.run_dir.commands_dir)
                if e.name.endswith(".json") and not e.name.startswith(".") and e.name not in self._stuck
            )
        except FileNotFoundError:
            return []
        unfiled = self._done_problem()
        out = []
        for n in names:
            cmd = _load(self.run_dir.commands_dir / n)
            if cmd is not None and unfiled:
                # Nowhere to file it once answered: refuse it rather than apply it with no audit
                # trail (and again on every poll).
                cmd = MalformedCommand(cmd.id, f"refused: {unfiled}", cmd.path, getattr(cmd, "name", None))
            if cmd is not None:
                out.append(cmd)
        return out

    def _done_problem(self) -> str | None:
        """Why answered commands cannot be moved to ``commands/done/``, or None (made if missing)."""
        try:
            if not require_dir(self.run_dir.done_dir):
                make_private_dir(self.run_dir.done_dir)
        except OSError as exc:
            return str(exc) if isinstance(exc, UnsafeFile) else f"{self.run_dir.done_dir}: {exc.strerror or exc}"
        return None

    def validate(self, cmd: Command | MalformedCommand) -> str | None:
        """Why ``cmd`` must be rejected for its shape, or None."""
        if isinstance(cmd, MalformedCommand):
            return cmd.reason
        return validate_command(cmd.name, cmd.args)

    def done(self, cmd: Command | MalformedCommand) -> Path | None:
        """Move the command's file to ``commands/done/``; return the new path.

        Replaces a same-named file already there, and is a no-op (None) if
        the file is already gone, so a command handled twice after a crash
        does not make the engine fail. A refused entry that cannot take that
        name (a directory) gets a unique one; one that cannot be moved at all
        is left where it is and not offered again by this inbox.
        """
        if self._done_problem():
            self._stuck.add(cmd.path.name)  # answered already; left in place, not offered again
            return None
        dest = self.run_dir.done_dir / cmd.path.name
        try:
            os.replace(cmd.path, dest)
            return dest
        except FileNotFoundError:
            return None
        except OSError:
            pass
        dest = self.run_dir.done_dir / f"{cmd.path.name}.{uuid.uuid4().hex[:8]}"
        try:
            os.rename(cmd.path, dest)
            return dest
        except FileNotFoundError:
            return None
        except OSError:
            self._stuck.add(cmd.path.name)
            return None


def wait_for_reply(
    run_dir: str | os.PathLike,
    command_id: str,
    timeout: float,
    *,
    poll_interval: float = 0.1,
    offset: int = 0,
) -> dict | None:
    """Block until the engine answers ``command_id``; return that event or None.

    The answer is a ``command_applied`` or ``command_rejected`` event with
    ``command_id == command_id``. Reads from ``offset`` (default: the whole
    log, since a quick engine may answer before the client starts looking).
    """
    tailer = EventTailer(RunDir(run_dir).events_file, offset=offset)
    deadline = time.monotonic() + timeout
    while True:
        for ev in tailer.poll():
            if ev.get("type") in ("command_applied", "command_rejected") and ev.get("command_id") == command_id:
                return ev
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        time.sleep(min(poll_interval, remaining))
