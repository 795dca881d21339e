"""Write a student as a plain Hugging Face directory that reloads anywhere."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from torch import nn

from engine import faults
from engine.runlog.layout import EXPORT_MARKER, export_target_problem

from .adapters import adapter_for
from .model_card import card_for_run
from .surgery import parameter_count


class ExportRefused(Exception):
    """The output directory holds something ``ild`` did not write; the message is one line."""


def check_export_target(out_dir: str | Path, force: bool = False, run_dir: str | Path | None = None) -> Path:
    """The resolved target, or ``ExportRefused`` with the reason (``layout.export_target_problem``)."""
    problem = export_target_problem(run_dir, out_dir, force)
    if problem:
        raise ExportRefused(problem)
    return Path(out_dir).expanduser().resolve()


def export_model(
    model: nn.Module,
    tokenizer,
    out_dir: str | Path,
    metadata: dict | None = None,
    force: bool = False,
    run_dir: str | Path | None = None,
    iteration: int | None = None,
) -> Path:
    """Save safetensors + config (with the original-layer map) + tokenizer + a model card
    (README.md, from ``run_dir``'s config and events up to ``iteration``), atomically.

    The directory appears only once it is whole: it is written next to its final place and renamed.
    An earlier export at ``out_dir`` is replaced only after the new one is complete; anything else
    there is refused (``ExportRefused``) unless ``force``.
    """
    out_dir = check_export_target(out_dir, force)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    adapter = adapter_for(model)
    model.config.ild_layer_map = adapter.layer_map()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        teacher_layers = getattr(model.config, "ild_teacher_layers", adapter.num_layers)
        record = {
            "layer_map": adapter.layer_map(),
            "teacher_layers": teacher_layers,
            "removed": sorted(set(range(teacher_layers)) - set(adapter.layer_map())),
            "parameters": parameter_count(model),
            **(metadata or {}),
        }
        (tmp / EXPORT_MARKER).write_text(json.dumps(record, indent=2) + "\n")
        (tmp / "README.md").write_text(card_for_run(run_dir, record, model.config, iteration), encoding="utf-8")
        faults.point("export_write")
        if out_dir.exists():
            aside = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(out_dir, aside)
            try:
                os.replace(tmp, out_dir)
            except BaseException:
                os.replace(aside, out_dir)
                raise
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
