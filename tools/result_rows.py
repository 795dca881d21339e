"""A results table the measurement tools grow one row at a time: rows keyed by variant, merged with
the rows measured earlier (a new machine keeps the committed CSV, not the run directories) and
rewritten whole after every run, beside the table and renamed: never half a table."""

from __future__ import annotations

import csv
from pathlib import Path


def earlier_rows(path: Path) -> dict[str, dict]:
    """The rows a table already holds, by variant ({} when there is no table yet)."""
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        return {r["variant"]: r for r in csv.DictReader(f)}


def write_rows(path: Path, ranked: list[dict], fieldnames: list[str], extrasaction: str = "raise") -> None:
    """Replace the table at ``path`` with ``ranked`` in that order, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames, extrasaction=extrasaction)
        writer.writeheader()
        writer.writerows(ranked)
    tmp.replace(path)
