"""The files of a checkpoint: what each one's manifest records of them, and the check on reading.

Every file's size and SHA-256 go into the manifest when it is written, and reading verifies them:
a truncated, altered or swapped file is an error that names it. Nothing here follows a link.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from engine.runlog.safefile import open_regular


class CheckpointError(Exception):
    """No usable checkpoint where one was promised; the message is one line."""


def reason(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__


def plain_name(name: str) -> bool:
    """A file name inside its directory: no path separators, not hidden, not '.' or '..'."""
    return bool(name) and not name.startswith(".") and not any(c in name for c in "/\\\0")


def describe(path: Path) -> dict:
    size, sha = sha256(path)
    return {"bytes": size, "sha256": sha}


def sha256(path: Path) -> tuple[int, str]:
    """(size, SHA-256) of a regular file reached without following a link."""
    digest = hashlib.sha256()
    with os.fdopen(open_regular(path), "rb") as f:
        size = os.fstat(f.fileno()).st_size
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return size, digest.hexdigest()


def verify_files(path: Path, manifest: dict, what: str) -> None:
    files = manifest.get("files")
    if files is None:
        return  # format 1 recorded no digests: nothing more to check
    if not isinstance(files, dict):
        raise CheckpointError(f"{what}: its manifest's file list is malformed")
    for name, expected in files.items():
        if not plain_name(name) or not isinstance(expected, dict):
            raise CheckpointError(f"{what}: its manifest names an invalid file")
        try:
            size, sha = sha256(path / name)
        except FileNotFoundError:
            raise CheckpointError(f"{what}: {name} is missing") from None
        except OSError as exc:
            raise CheckpointError(f"{what}: {name} is not a regular file of the run ({reason(exc)})") from None
        if size != expected.get("bytes"):
            raise CheckpointError(f"{what}: {name} is truncated ({size} of {expected.get('bytes')} bytes)")
        if sha != expected.get("sha256"):
            raise CheckpointError(f"{what}: {name} does not match its checksum")


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
