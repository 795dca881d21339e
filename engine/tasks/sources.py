"""Reading a task's rows from embedded data, local JSONL/CSV/JSON, or Hugging Face datasets."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from .spec import DATA_DIR, EmbeddedSource, FileSource, HubSource, TaskFileError, TaskSpec


def read_rows(task: TaskSpec, limit: int | None = None) -> list[dict]:
    """The raw source rows (at most ``limit``), in file order."""
    source = task.source
    if isinstance(source, EmbeddedSource):
        return _read_file(DATA_DIR / source.path, "jsonl" if source.path.endswith(".jsonl") else None, task, limit)
    if isinstance(source, FileSource):
        return _read_file(Path(source.path), source.type, task, limit)
    if isinstance(source, HubSource):
        return _read_hub(source, task, limit)
    raise TaskFileError(f"task '{task.name}': unknown source")


def _read_file(path: Path, kind: str | None, task: TaskSpec, limit: int | None) -> list[dict]:
    if not path.is_file():
        raise TaskFileError(f"task '{task.name}': data file {path} not found")
    kind = kind or path.suffix.lstrip(".")
    rows: list[dict] = []
    with path.open(encoding="utf-8", newline="") as handle:
        if kind == "jsonl":
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise TaskFileError(f"task '{task.name}': {path}:{number}: bad JSON ({exc.msg})") from None
                if limit is not None and len(rows) >= limit:
                    break
        elif kind == "csv":
            for row in csv.DictReader(handle):
                rows.append(row)
                if limit is not None and len(rows) >= limit:
                    break
        elif kind == "json":
            data = json.load(handle)
            rows = data if isinstance(data, list) else data.get("examples", data.get("data", []))
            rows = rows[:limit] if limit is not None else rows
        else:
            raise TaskFileError(f"task '{task.name}': cannot read {path} (use .jsonl, .csv or .json)")
    return rows


def _read_hub(source: HubSource, task: TaskSpec, limit: int | None) -> list[dict]:
    try:
        import datasets

        split = source.split if limit is None else f"{source.split}[:{limit}]"
        data = datasets.load_dataset(source.name, source.config, split=split, revision=source.revision)
    except Exception as exc:  # offline, unknown id, unknown config: one line, not a traceback
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TaskFileError(f"task '{task.name}': cannot load dataset '{source.name}': {first}") from None
    return [dict(row) for row in data]


def task_rows(task: TaskSpec) -> tuple[list[dict], list[dict]]:
    """(evaluation rows, few-shot rows), each mapped to the task's field names.

    Few-shot examples come first in the source; evaluation rows follow ``offset`` and them.
    """
    need = task.offset + task.few_shot + task.samples
    raw = read_rows(task, limit=need)
    mapped = [map_fields(task, row, i) for i, row in enumerate(raw)]
    shots = mapped[task.offset : task.offset + task.few_shot]
    rows = mapped[task.offset + task.few_shot : need]
    if not rows:
        raise TaskFileError(f"task '{task.name}': the source has no rows left to evaluate")
    return rows, shots


def map_fields(task: TaskSpec, row: dict, index: int) -> dict:
    out = dict(row)
    for field, column in task.fields.items():
        if isinstance(column, list):
            missing = [c for c in column if c not in row]
            if missing:
                raise TaskFileError(f"task '{task.name}': row {index} has no column '{missing[0]}' (for field '{field}')")
            out[field] = [row[c] for c in column]
        else:
            if column not in row:
                known = ", ".join(sorted(row))
                raise TaskFileError(f"task '{task.name}': row {index} has no column '{column}' (for field '{field}'; columns: {known})")
            out[field] = row[column]
    return out
