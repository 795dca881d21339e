"""Per-item scores of a run's students, kept in the run directory so that ``ild paired`` compares
them again without re-scoring, and without the weights once a checkpoint is gone.

``RUN/paired-items/<student>-<part>.json.xz``, where ``<student>`` is a checkpoint's name or
``teacher``: each task's per-item results (``ItemScores``) and what identifies them: the
checkpoint's manifest digest as the run's log records it (the teacher: the model's digest), the
part, the suite, the report suite, the split seed, the batch size in tokens, and the digest of the
scoring code (with torch's version). A file is used only when all of these but the code match; one
scored by other code is used only when the checkpoint's weights are gone (the caller says so), and
is otherwise scored again.
"""

from __future__ import annotations

import dataclasses
import json
import lzma
from pathlib import Path

from engine.runlog.atomic import write_bytes_atomic
from engine.runlog.safefile import read_regular
from engine.tasks.item_scores import ItemScores

ITEMS = "paired-items"
FORMAT = 1


@dataclasses.dataclass(frozen=True)
class StudentKey:
    """Which student's scores, on which items, by which code."""

    student: str  # a checkpoint's name, or "teacher"
    digest: str  # the checkpoint's manifest SHA-256 as logged (the teacher: the model's digest)
    part: str
    suite: str
    report_suite: str | None
    split_seed: int
    batch_tokens: int
    code: str

    def same_items(self, other: StudentKey) -> bool:
        """The same student on the same items, whatever the code that scored it."""
        mine, theirs = dataclasses.asdict(self), dataclasses.asdict(other)
        return all(mine[k] == theirs[k] for k in mine if k != "code")


def path_for(run_dir: Path, key: StudentKey) -> Path:
    return Path(run_dir) / ITEMS / f"{key.student}-{key.part}.json.xz"


def save(run_dir: Path, key: StudentKey, scores: dict[str, ItemScores]) -> Path:
    body = {
        "format": FORMAT,
        "key": dataclasses.asdict(key),
        "tasks": {name: dataclasses.asdict(s) for name, s in scores.items()},
    }
    path = path_for(run_dir, key)
    path.parent.mkdir(mode=0o700, exist_ok=True)  # the run directory's own, as engine.runlog makes them
    return write_bytes_atomic(path, lzma.compress(json.dumps(body).encode()))


def load(run_dir: Path, key: StudentKey, any_code: bool = False) -> tuple[dict[str, ItemScores] | None, bool]:
    """(the stored scores of ``key``'s student, whether they were scored by other code), or (None,
    False) where none are stored for it; other code counts only with ``any_code``."""
    path = path_for(run_dir, key)
    try:
        body = json.loads(lzma.decompress(read_regular(path, 64 << 20)))  # never through a link
        stored = StudentKey(**body["key"])
        tasks = {name: ItemScores(**columns) for name, columns in body["tasks"].items()}
    except (OSError, lzma.LZMAError, ValueError, KeyError, TypeError):
        return None, False  # none, or unreadable: scored again where the weights allow
    if body.get("format") != FORMAT or not stored.same_items(key):
        return None, False
    other_code = stored.code != key.code
    if other_code and not any_code:
        return None, False
    return tasks, other_code
