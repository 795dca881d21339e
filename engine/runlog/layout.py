"""The run directory: one place that names every path of the contract.

Engine, CLI and dashboard each build paths into ``runs/<run-id>/``; if each
spelled ``"events.jsonl"`` itself, a rename on one side would silently break
the other. Everything goes through ``RunDir`` instead.

A run directory and everything runlog creates in it are its owner's only
(directories 0700, files 0600).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from engine.runlog._fileio import FILE_MODE, make_private_dir
from engine.runlog.atomic import write_text_atomic
from engine.runlog.safefile import UnsafeFile, kind_of, open_regular, read_regular, require_dir

__all__ = [
    "EXPORT_MARKER",
    "RunDir",
    "create",
    "export_target_problem",
    "foreign_files",
    "is_run_dir",
    "list_runs",
    "make_private_dir",
]

CONFIG = "config.yaml"
EVENTS = "events.jsonl"
COMMANDS = "commands"
DONE = "done"
LOCK = "engine.lock"
STATE = "state.json"
CHECKPOINTS = "checkpoints"
LATEST = "LATEST"
PARTIAL = "PARTIAL"
EXPORT = "export"
ENGINE_LOG = "engine.log"
ENGINE_OUT = "engine.out"
CACHE = "cache"
# The files ild writes at the top of a run directory: each must be a regular file when present.
_OWN_FILES = (CONFIG, EVENTS, LOCK, STATE, LATEST, ENGINE_LOG, ENGINE_OUT)
# Written into every exported model directory: it marks a directory an earlier export may replace.
EXPORT_MARKER = "ild_export.json"


class RunDir(os.PathLike):
    """Paths of one run directory. Cheap: constructing it touches nothing.

    It is ``os.PathLike`` so every runlog function taking a run directory
    accepts either a ``RunDir`` or a plain path.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(os.fspath(path))
        self.config_file = self.path / CONFIG
        self.events_file = self.path / EVENTS
        self.commands_dir = self.path / COMMANDS
        self.done_dir = self.commands_dir / DONE
        self.lock_file = self.path / LOCK
        self.state_file = self.path / STATE
        self.checkpoints_dir = self.path / CHECKPOINTS
        self.latest_file = self.path / LATEST
        self.partial_file = self.checkpoints_dir / PARTIAL  # names the newest mid-healing checkpoint
        self.export_dir = self.path / EXPORT
        self.log_file = self.path / ENGINE_LOG
        self.out_file = self.path / ENGINE_OUT  # the engine process's stdout and stderr
        self.cache_dir = self.path / CACHE  # caches too large for memory

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunDir) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    @property
    def name(self) -> str:
        """The run id: the directory's own name."""
        return self.path.name

    def mtime(self) -> float | None:
        """When the directory last gained or lost an entry (near its creation for a new run), or None."""
        try:
            return self.path.stat().st_mtime
        except OSError:
            return None

    def problem(self) -> str | None:
        """Why no engine may write here, or None: an entry ild writes (``events.jsonl``,
        ``engine.lock``, ``commands/``...) that is a symbolic link, a FIFO or of the wrong kind.

        A run directory copied from elsewhere may hold such an entry; following it would make the
        engine write into (or move) files that are not the run's.
        """
        try:
            for name in _OWN_FILES:
                path = self.path / name
                try:
                    mode = os.lstat(path).st_mode
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(mode):
                    raise UnsafeFile(path, kind_of(mode))
            for path in (self.commands_dir, self.done_dir, self.checkpoints_dir, self.cache_dir, self.export_dir):
                require_dir(path)
        except UnsafeFile as exc:
            return str(exc)
        except OSError as exc:
            return f"{self.path}: {exc.strerror or exc}"
        return None

    def checkpoint_dir(self, name: str | int) -> Path:
        """``checkpoints/<name>/``; an int iteration ``k`` is named ``str(k)``."""
        name = _check_name(str(name))
        return self.checkpoints_dir / name

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint named by ``LATEST``, or None.

        None also when ``LATEST`` names a directory that is not there (deleted
        by hand): resuming from a path that does not exist helps nobody.
        """
        try:
            name = read_regular(self.latest_file, 4096).decode("utf-8").strip()
        except (OSError, UnicodeDecodeError):  # missing, a link, a FIFO...: names nothing
            return None
        if not name:
            return None
        try:
            path = self.checkpoint_dir(name)
        except ValueError:
            return None
        return path if path.is_dir() else None

    def set_latest(self, name: str | int) -> Path:
        """Point ``LATEST`` at ``checkpoints/<name>/`` atomically and durably.

        Call this only after the checkpoint is complete and fsynced: ``LATEST``
        is the promise that what it names is whole.
        """
        name = _check_name(str(name))
        write_text_atomic(self.latest_file, name + "\n")
        return self.checkpoints_dir / name

    def is_run_dir(self) -> bool:
        return is_run_dir(self.path)


def _check_name(name: str) -> str:
    """Refuse names that would escape ``checkpoints/`` or be hidden/temp files."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith(".") or "\0" in name:
        raise ValueError(f"invalid checkpoint name {name!r}")
    return name


def create(path: str | os.PathLike, *, resume: bool = False) -> RunDir:
    """Make the skeleton of a run directory and return its ``RunDir``.

    Refuses (``FileExistsError``) when ``events.jsonl`` already holds events
    and ``resume`` is false: starting a second run on top of a first would
    interleave two histories in one log. An empty ``events.jsonl`` is created
    so that a dashboard can start tailing before the engine's first event.
    Directories it makes (the runs directory above included) are 0700 and
    ``events.jsonl`` is 0600.
    """
    rd = RunDir(path)
    try:
        has_events = rd.events_file.stat().st_size > 0
    except FileNotFoundError:
        has_events = False
    if has_events and not resume:
        raise FileExistsError(
            f"{rd.path} already holds a run ({EVENTS} is not empty); resume it or choose another directory"
        )
    make_private_dir(rd.path)
    for d in (rd.commands_dir, rd.done_dir, rd.checkpoints_dir):
        if not require_dir(d):  # never a link planted where a folder of the run belongs
            make_private_dir(d)
    os.close(open_regular(rd.events_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE))
    return rd


def is_run_dir(path: str | os.PathLike) -> bool:
    """True for a directory holding ``events.jsonl`` or ``config.yaml``."""
    p = Path(os.fspath(path))
    return p.is_dir() and ((p / EVENTS).is_file() or (p / CONFIG).is_file())


def _sort_key(rd: RunDir) -> tuple[float, str]:
    for p in (rd.events_file, rd.path):
        try:
            return (p.stat().st_mtime, rd.name)
        except FileNotFoundError:
            continue
    return (0.0, rd.name)


def list_runs(root: str | os.PathLike) -> list[RunDir]:
    """Run directories directly under ``root``, oldest first.

    Ordered by the mtime of ``events.jsonl`` (last activity), falling back to
    the directory's own mtime, so the most recently active run is last.
    A missing ``root`` is simply no runs.
    """
    root = Path(os.fspath(root))
    try:
        entries = list(root.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    runs = [RunDir(p) for p in entries if not p.name.startswith(".") and is_run_dir(p)]
    runs.sort(key=_sort_key)
    return runs


def export_target_problem(run_dir: str | os.PathLike | None, out: str | os.PathLike, force: bool = False) -> str | None:
    """Why a run may not be exported into ``out``, or None.

    An export replaces its target, so the target is never: the run directory or a directory above
    it; anything inside a run directory (this run's checkpoints, another run), except the run's own
    ``export/``; a directory that holds runs; the home directory, a directory above it, or the
    filesystem root. ``--force`` does not change that. Otherwise: a missing or empty directory, or an
    earlier export (it holds ``EXPORT_MARKER``). An earlier export to which someone added files is
    replaced only with ``force``, and those files are kept (``export_model`` carries them over):
    an export deletes nothing it did not write. Any other non-empty directory is refused.
    """
    target = Path(os.path.realpath(out))
    run = Path(os.path.realpath(run_dir)) if run_dir is not None else None
    if run is not None and (target == run or target in run.parents):
        return f"{out} is the run directory or holds it; choose another --out"
    home = Path(os.path.realpath(Path.home()))
    if target == Path(target.anchor):
        return f"{out} is the filesystem root; choose another --out"
    if target == home or target in home.parents:
        return (
            f"{out} is {'your home directory' if target == home else 'above your home directory'}; choose another --out"
        )
    own_export = run is not None and target == run / EXPORT
    for above in [target, *target.parents]:
        if is_run_dir(above) and not own_export:
            return f"{out} is inside the run directory {above}; choose a directory outside every run"
    if target.exists() and not target.is_dir():
        return f"{out} exists and is not a directory"
    if not target.is_dir():
        return None
    try:
        entries = sorted(p.name for p in target.iterdir())
    except OSError as exc:
        return f"{out} cannot be read ({exc.strerror or exc})"
    if any(is_run_dir(target / name) for name in entries):
        return f"{out} holds run directories; choose another --out"
    if not entries:
        return None
    if not (target / EXPORT_MARKER).is_file():
        return f"{out} is not empty and holds no earlier ild export; choose an empty or new directory"
    foreign = foreign_files(target)
    if foreign and not force:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        return f"{out} holds files no export wrote ({shown}); pass --force to replace the export and keep them"
    return None


def foreign_files(export_dir: str | os.PathLike, written: list[str] | None = None) -> list[str]:
    """Entries of an earlier export that it did not write: those not in its marker's file list
    (or in ``written``, the new export's, for a marker from before the list was kept)."""
    import json

    directory = Path(os.fspath(export_dir))
    try:
        record = json.loads((directory / EXPORT_MARKER).read_bytes())
    except (OSError, ValueError):
        record = {}
    ours = record.get("files") if isinstance(record, dict) else None
    if not isinstance(ours, list):
        if written is None:
            return []  # an old marker: decided once the new export's file names are known
        ours = written
    ours = {*(str(n) for n in ours), EXPORT_MARKER}
    return sorted(p.name for p in directory.iterdir() if p.name not in ours)
