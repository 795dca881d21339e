"""The runs directory's trash: a deleted run is moved, not removed, and can be brought back.

``<runs dir>/.trash/<entry>/`` is the run directory itself, renamed (one ``rename`` on the same
filesystem: nothing inside it is read, rewritten or followed), and ``<entry>.json`` beside it says
what it was (its directory name, where it came from, when it was deleted, its size). ``list_runs``
skips dot-directories, so a trashed run leaves every list. Entries older than the retention
(``trash_days`` in the dashboard's settings) are removed for good the next time a run is trashed;
``ild trash --empty`` removes them all at once. No Textual here: the CLI and the dashboard share it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from engine.runlog.layout import is_run_dir
from engine.runlog.lock import is_alive

TRASH = ".trash"


class TrashError(Exception):
    """A trash operation that cannot be done; the message is one line for the user."""


@dataclass(frozen=True)
class TrashEntry:
    entry: str  # its directory name inside the trash
    name: str  # the run directory's name before it was deleted
    deleted_at: float
    size: int
    path: Path

    def expires(self, days: float) -> float:
        return self.deleted_at + days * 86400


def trash_dir(runs_dir: str | os.PathLike) -> Path:
    return Path(runs_dir) / TRASH


def dir_size(path: Path) -> int:
    """Bytes in the regular files under ``path`` (symlinks are not followed)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                st = os.lstat(os.path.join(root, f))
            except OSError:
                continue
            total += st.st_size
    return total


def move_to_trash(run: str | os.PathLike, runs_dir: str | os.PathLike, now: float | None = None) -> TrashEntry:
    """Move the run directory ``run`` (directly under ``runs_dir``) into the trash."""
    run = Path(run)
    now = time.time() if now is None else now
    if run.is_symlink() or not is_run_dir(run) or run.resolve().parent != Path(runs_dir).resolve():
        raise TrashError(f"{run} is not a run directly under {runs_dir}")
    if is_alive(run):
        raise TrashError(f"{run.name} is running: stop it first")
    size = dir_size(run)
    trash = trash_dir(runs_dir)
    trash.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    entry = f"{run.name}~{stamp}"
    n = 1
    while (trash / entry).exists() or (trash / f"{entry}.json").exists():
        n += 1
        entry = f"{run.name}~{stamp}-{n}"
    info = {"name": run.name, "from": str(run.resolve()), "deleted_at": now, "size": size}
    tmp = trash / f".{entry}.json.tmp"
    tmp.write_text(json.dumps(info) + "\n", encoding="utf-8")
    os.replace(tmp, trash / f"{entry}.json")
    try:
        os.rename(run, trash / entry)
    except OSError as exc:
        (trash / f"{entry}.json").unlink(missing_ok=True)
        raise TrashError(f"could not move {run.name} to the trash: {exc.strerror or exc}") from None
    return TrashEntry(entry, run.name, now, size, trash / entry)


def list_trash(runs_dir: str | os.PathLike) -> list[TrashEntry]:
    """What the trash holds, oldest first (an entry without its note is listed by its mtime)."""
    trash = trash_dir(runs_dir)
    try:
        dirs = [p for p in trash.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")]
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for d in dirs:
        info: dict = {}
        try:
            info = json.loads((trash / f"{d.name}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            pass
        if not isinstance(info, dict):
            info = {}
        name = info.get("name") if isinstance(info.get("name"), str) else d.name.rsplit("~", 1)[0]
        t = info.get("deleted_at")
        if not isinstance(t, (int, float)) or isinstance(t, bool):
            t = d.lstat().st_mtime
        size = info.get("size")
        if not isinstance(size, int) or isinstance(size, bool):
            size = dir_size(d)
        out.append(TrashEntry(d.name, name, float(t), size, d))
    out.sort(key=lambda e: (e.deleted_at, e.entry))
    return out


def find_entry(runs_dir: str | os.PathLike, ref: str) -> TrashEntry:
    """An entry by its entry name, else the newest one of a run of that name."""
    entries = list_trash(runs_dir)
    for e in entries:
        if e.entry == ref:
            return e
    named = [e for e in entries if e.name == ref]
    if not named:
        raise TrashError(f"no run '{ref}' in the trash of {runs_dir} (`ild trash` lists it)")
    return named[-1]


def restore(runs_dir: str | os.PathLike, ref: str, as_name: str | None = None) -> Path:
    """Move a trashed run back into ``runs_dir`` (under ``as_name`` if given), unchanged."""
    entry = find_entry(runs_dir, ref)
    target = Path(runs_dir) / (as_name or entry.name)
    if target.exists() or target.is_symlink():
        raise TrashError(f"{target} exists: restore under another name with --as NAME")
    os.rename(entry.path, target)
    (trash_dir(runs_dir) / f"{entry.entry}.json").unlink(missing_ok=True)
    return target


def remove_entry(entry: TrashEntry) -> None:
    shutil.rmtree(entry.path, ignore_errors=True)
    (entry.path.parent / f"{entry.entry}.json").unlink(missing_ok=True)


def empty(
    runs_dir: str | os.PathLike, older_than_days: float | None = None, now: float | None = None
) -> tuple[int, int]:
    """Remove trashed runs for good (all, or those deleted more than ``older_than_days`` ago);
    returns (runs removed, bytes freed)."""
    now = time.time() if now is None else now
    count = freed = 0
    for e in list_trash(runs_dir):
        if older_than_days is not None and e.expires(older_than_days) > now:
            continue
        remove_entry(e)
        count += 1
        freed += e.size
    return count, freed


def fmt_bytes(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
