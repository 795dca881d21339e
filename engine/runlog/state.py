"""``state.json``: the engine's snapshot, so attaching is fast.

Folding a long events.jsonl is the source of truth, but ``ild ls`` over many
runs wants iteration, removed layers, mapping, last checkpoint and mode
without replaying each log. The engine rewrites this snapshot atomically
after each step; a reader therefore sees a whole snapshot or the previous one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from engine.runlog.atomic import read_json, write_json_atomic
from engine.runlog.layout import RunDir

__all__ = ["read_state", "write_state"]


def write_state(run_dir: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Atomically replace ``state.json`` with ``state`` (strict JSON, NaN -> null)."""
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    return write_json_atomic(RunDir(run_dir).state_file, state)


def read_state(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The last snapshot, or None when there is none (or it is not a JSON object)."""
    obj = read_json(RunDir(run_dir).state_file, None)
    return obj if isinstance(obj, dict) else None
