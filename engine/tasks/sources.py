"""Reading a task's rows from embedded data, local JSONL/CSV/JSON, or Hugging Face datasets, and
splitting each task's items into a selection part and a report part.

The split (``in_selection_part``) is decided per row from a stable hash of the split seed, the
task's name and the row's own content: it does not depend on row order, on how many rows are
read, or on rows added to the source later, and identical rows always land in the same part.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Literal

from .spec import EmbeddedSource, FileSource, HubSource, TaskFileError, TaskSpec, embedded_path

Part = Literal["select", "report"] | None
PARTS = ("select", "report")


def read_rows(task: TaskSpec, limit: int | None = None) -> list[dict]:
    """The raw source rows (at most ``limit``), in file order."""
    return read_source(task, limit)[0]


def read_source(task: TaskSpec, limit: int | None = None, split: str | None = None) -> tuple[list[dict], list[str]]:
    """(raw rows, where each row is) with at most ``limit`` rows, in source order. ``where`` names
    the file and line (or dataset and row), for error messages. ``split``: another split of an hf
    source (few-shot rows)."""
    source = task.source
    if isinstance(source, EmbeddedSource):
        return _read_file(embedded_path(source.path), "jsonl" if source.path.endswith(".jsonl") else None, task, limit)
    if isinstance(source, FileSource):
        return _read_file(Path(source.path), source.type, task, limit)
    if isinstance(source, HubSource):
        return _read_hub(source, task, limit, split)
    raise TaskFileError(f"task '{task.name}': unknown source")


def _read_file(path: Path, kind: str | None, task: TaskSpec, limit: int | None) -> tuple[list[dict], list[str]]:
    if not path.is_file():
        raise TaskFileError(f"task '{task.name}': data file {path} not found")
    kind = kind or path.suffix.lstrip(".")
    rows: list[dict] = []
    where: list[str] = []
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            if kind == "jsonl":
                for number, line in enumerate(handle, 1):
                    if not line.strip():
                        continue
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise TaskFileError(f"task '{task.name}': {path}:{number}: bad JSON ({exc.msg})") from None
                    where.append(f"{path}:{number}")
                    if limit is not None and len(rows) >= limit:
                        break
            elif kind == "csv":
                for row in csv.DictReader(handle):
                    rows.append(row)
                    where.append(f"{path}:{len(rows) + 1}")  # line 1 is the header
                    if limit is not None and len(rows) >= limit:
                        break
            elif kind == "json":
                try:
                    data = json.load(handle)
                except json.JSONDecodeError as exc:
                    raise TaskFileError(f"task '{task.name}': {path}:{exc.lineno}: bad JSON ({exc.msg})") from None
                rows = (
                    data
                    if isinstance(data, list)
                    else data.get("examples", data.get("data", []))
                    if isinstance(data, dict)
                    else []
                )
                rows = rows[:limit] if limit is not None else rows
                where = [f"{path} row {i}" for i in range(len(rows))]
            else:
                raise TaskFileError(f"task '{task.name}': cannot read {path} (use .jsonl, .csv or .json)")
    except UnicodeDecodeError:
        raise TaskFileError(f"task '{task.name}': {path} is not UTF-8 text") from None
    for row, label in zip(rows, where):
        if not isinstance(row, dict):
            raise TaskFileError(f"task '{task.name}': {label}: a row must be a JSON object, got {type(row).__name__}")
    return rows, where


def _read_hub(
    source: HubSource, task: TaskSpec, limit: int | None, split: str | None = None
) -> tuple[list[dict], list[str]]:
    split = split or source.split
    try:
        import datasets

        selected = split if limit is None else f"{split}[:{limit}]"
        data = datasets.load_dataset(
            source.name, source.config, split=selected, revision=source.revision, **_data_files(source)
        )
    except Exception as exc:  # offline, unknown id, unknown config: one line, not a traceback
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TaskFileError(f"task '{task.name}': cannot load dataset '{source.name}': {first}") from None
    label = f"{source.name}" + (f"/{source.config}" if source.config else "") + f" {split}"
    return [dict(row) for row in data], [f"{label} row {i}" for i in range(len(data))]


def _data_files(source: HubSource) -> dict:
    return {"data_files": source.data_files} if getattr(source, "data_files", None) else {}


def in_selection_part(task_name: str, row: dict, fraction: float, seed: int = 0) -> bool:
    """Whether a source row belongs to the selection part of its task (else the report part).

    A stable hash (BLAKE2b of seed, task name and the row's canonical JSON) mapped to [0, 1) and
    compared with ``fraction``: the same row always goes to the same part, whatever else the
    source holds and in whatever order.
    """
    content = json.dumps(row, sort_keys=True, ensure_ascii=False, default=str)
    digest = hashlib.blake2b(f"{seed}\x1f{task_name}\x1f{content}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


def task_rows(task: TaskSpec, part: Part = None, fraction: float = 0.5, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(evaluation rows, few-shot rows), each mapped to the task's field names.

    Few-shot examples come first in the source (or from ``few_shot_split``, a split of the same
    dataset); evaluation rows follow ``offset`` and them. With ``part`` ("select" or "report")
    only the rows of that part (``in_selection_part``) are evaluated, and ``samples`` counts rows
    *of that part*: each part gets up to ``samples`` items, the first ones in source order, so a
    split suite reads about twice the rows of an unsplit one. ``part=None`` is the whole source as
    before (the first ``samples`` rows). With ``group`` (a field), the items are spread over its
    values as LLMTF does for MMLU (``samples // groups + 1`` of each, in source order) and the
    few-shot rows are every candidate shot (``shots_for`` picks a row's own).
    """
    if part not in (None, *PARTS):
        raise ValueError(f"unknown part {part!r} (select, report or None)")
    in_source = 0 if task.few_shot_split else task.few_shot
    start = task.offset + in_source
    whole = part is not None or task.group is not None
    raw, where = read_source(task, limit=None if whole else start + task.samples)
    if task.few_shot_split:
        shot_raw, shot_where = read_source(task, limit=None if task.group else task.few_shot, split=task.few_shot_split)
        shots = [map_fields(task, row, label) for row, label in zip(shot_raw, shot_where)]
    else:
        shots = [map_fields(task, row, where[i]) for i, row in enumerate(raw[task.offset : start], task.offset)]
    pool = list(enumerate(raw[start:], start))
    if part is not None:
        pool = [(i, row) for i, row in pool if in_selection_part(task.name, row, fraction, seed) == (part == "select")]
    if task.group:
        mapped = [(i, map_fields(task, row, where[i])) for i, row in pool]
        groups = {_group_of(task, map_fields(task, row, where[i])) for i, row in enumerate(raw[start:], start)}
        each = task.samples // max(1, len(groups)) + 1
        taken: dict[str, int] = {}
        rows = []
        for _, row in mapped:
            key = _group_of(task, row)
            if taken.get(key, 0) < each:
                taken[key] = taken.get(key, 0) + 1
                rows.append(row)
    else:
        rows = [map_fields(task, row, where[i]) for i, row in pool[: task.samples]]
    if not rows:
        which = f" in the {part} part" if part else ""
        raise TaskFileError(f"task '{task.name}': the source has no rows left to evaluate{which}")
    return rows, shots


def _group_of(task: TaskSpec, row: dict) -> str:
    if task.group not in row:
        raise TaskFileError(
            f"task '{task.name}': {row.get('_where', 'a row')}: no field '{task.group}' (the task's group)"
        )
    return str(row[task.group])


def shots_for(task: TaskSpec, row: dict, shots: list[dict]) -> list[dict]:
    """The few-shot examples of one evaluation row: the first ``few_shot`` (of the row's group)."""
    if task.group:
        shots = [s for s in shots if str(s.get(task.group)) == str(row.get(task.group))]
    return shots[: task.few_shot]


def lookup(row: dict, path: str):
    """A column of ``row``; ``a.b`` reads key ``b`` of the mapping in column ``a`` (a column named
    ``a.b`` itself wins). Raises KeyError(path) when it is not there."""
    if path in row:
        return row[path]
    value = row
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(path)
        value = value[part]
    return value


def map_fields(task: TaskSpec, row: dict, where: str | int) -> dict:
    """The row with each task field set from its source column. ``where`` names the row (file and
    line) in errors."""
    out = dict(row)
    out["_where"] = where if isinstance(where, str) else f"row {where}"
    for field, column in task.fields.items():
        try:
            out[field] = [lookup(row, c) for c in column] if isinstance(column, list) else lookup(row, column)
        except KeyError as exc:
            known = ", ".join(sorted(row))
            raise TaskFileError(
                f"task '{task.name}': {out['_where']}: no column '{exc.args[0]}' (for field '{field}'; columns: {known})"
            ) from None
    return out
