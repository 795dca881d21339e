"""Which teacher a run started from, so that a resume or an export never applies the run's
checkpoints to other weights.

A checkpoint holds only what differs from the teacher (healed layers, a bridge, an untied head);
the student is the teacher's weights plus those. A teacher replaced at its path, or a relative
``--model`` that names another directory from another working directory, would give a student
that is neither model, with no error anywhere. So a run records, once, the teacher's absolute place
and a digest of its weight files (``teacher.json`` in the run directory), and every later start and
export compares.

The digest reads the size, the first and last MiB and 64 evenly spaced 64 KiB blocks of each weight
file (and the whole of files under 8 MiB): a 70B model is checked in well under a second, and
another model, another quantisation or another fine-tune of the same shape differs in every block.
An edit of a few bytes between the sampled blocks would go unnoticed; nothing else would.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from engine.runlog.atomic import write_json_atomic
from engine.runlog.safefile import read_regular

from .errors import ModelSpecError
from .loading import resolve_spec

IDENTITY_FILE = "teacher.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
WHOLE_BELOW = 8 << 20
EDGE, BLOCK, BLOCKS = 1 << 20, 64 << 10, 64


class TeacherChanged(Exception):
    """The run's teacher is not at its place any more, or its weights changed; one line."""


def absolute_spec(spec: str) -> str:
    """A local model spec (directory or .gguf file) as an absolute, resolved path; other specs (an
    embedded name, a Hub id) as they are. A run records this, so it means the same from anywhere."""
    try:
        kind, source = resolve_spec(spec)
    except ModelSpecError:
        return spec
    return str(Path(source).resolve()) if kind in ("local", "gguf") else spec


def file_digest(path: Path) -> str:
    """A digest of one weight file's size and sampled content (see the module's note)."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        digest.update(f"{size}".encode())
        if size <= WHOLE_BELOW:
            digest.update(f.read())
            return digest.hexdigest()
        offsets = [0, size - EDGE] + [EDGE + (size - 2 * EDGE - BLOCK) * i // (BLOCKS - 1) for i in range(BLOCKS)]
        for offset in offsets:
            f.seek(offset)
            digest.update(f.read(EDGE if offset in (0, size - EDGE) else BLOCK))
    return digest.hexdigest()


def _weight_files(kind: str, source: str) -> list[Path] | None:
    """The files the teacher's weights come from, or None where they are not on this machine yet
    (a Hub model not downloaded: the first engine start records it)."""
    if kind in ("embedded", "gguf"):
        return [Path(source)]
    if kind == "hub":
        try:
            from huggingface_hub import snapshot_download

            directory = Path(snapshot_download(source, local_files_only=True))
        except Exception:
            return None
    else:
        directory = Path(source)
    files = sorted(p for p in directory.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    return [directory / "config.json", *files] if (directory / "config.json").is_file() else files


def identify(spec: str) -> dict:
    """What a run records of its teacher: the spec, where it resolved to, and the digest."""
    kind, source = resolve_spec(spec)
    place = str(Path(source).resolve()) if kind in ("local", "gguf", "embedded") else source
    files = _weight_files(kind, source)
    digest = None
    if files:
        combined = hashlib.blake2b(digest_size=16)
        for f in files:
            combined.update(f"{f.name} {file_digest(f)}\n".encode())
        digest = combined.hexdigest()
    return {"model": spec, "kind": kind, "source": place, "digest": digest, "files": len(files or [])}


def check_teacher(run_dir: str | os.PathLike, spec: str) -> dict:
    """Compare the teacher at ``spec`` with the one the run recorded (record it if the run has none
    yet, or had no digest: a Hub model not downloaded when the run was created). ``TeacherChanged``
    with the reason in one line; the identity otherwise."""
    path = Path(run_dir) / IDENTITY_FILE
    try:
        now = identify(spec)
    except ModelSpecError as exc:
        raise TeacherChanged(f"the run's teacher cannot be found: {exc}") from None
    try:
        recorded = json.loads(read_regular(path))
    except FileNotFoundError:
        recorded = None
    except (OSError, ValueError) as exc:
        raise TeacherChanged(f"{path} is unreadable ({exc.__class__.__name__}): the run's teacher is unknown") from None
    if isinstance(recorded, dict) and recorded.get("digest"):
        # The weights decide, not the path: a moved model is the same teacher, another model at the
        # old path (or at a relative path read from elsewhere) is not.
        if now["digest"] != recorded["digest"]:
            where = (
                now["source"]
                if now["source"] == recorded.get("source")
                else f"{now['source']} (recorded: {recorded.get('source')})"
            )
            raise TeacherChanged(
                f"the weights at {where} are not those the run started from (their digest differs): "
                "put the run's teacher back, or start a new run"
            )
        return now
    if now["digest"]:
        write_json_atomic(path, now)
    return now
