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
from engine.runlog.layout import EXPORT_MARKER, export_target_problem, foreign_files

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
    An earlier export at ``out_dir`` is replaced only after the new one is complete; files someone
    added to it are refused, or with ``force`` carried over into the new one; any other target is
    refused (``ExportRefused``, see ``layout.export_target_problem``). The marker lists the files
    written, so the next export knows what is its own.
    """
    out_dir = check_export_target(out_dir, force, run_dir=run_dir)
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
        (tmp / "README.md").write_text(card_for_run(run_dir, record, model.config, iteration), encoding="utf-8")
        # Written last, listing every file of this export: the next export deletes only these.
        record["files"] = sorted([*(p.name for p in tmp.iterdir()), EXPORT_MARKER])
        (tmp / EXPORT_MARKER).write_text(json.dumps(record, indent=2) + "\n")
        faults.point("export_write")
        if out_dir.exists():
            foreign = foreign_files(out_dir, written=record["files"])
            if foreign and not force:
                shown = ", ".join(foreign[:3])
                raise ExportRefused(f"{out_dir} holds files no export wrote ({shown}); pass --force to keep them")
            clash = [name for name in foreign if (tmp / name).exists()]
            if clash:
                raise ExportRefused(f"{out_dir}/{clash[0]} was not written by an export and would be replaced")
            aside = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(out_dir, aside)
            try:
                os.replace(tmp, out_dir)
            except BaseException:
                os.replace(aside, out_dir)
                raise
            # The user's files move into the new export; a kill here leaves them in the aside
            # directory, never deleted.
            for name in foreign:
                os.replace(aside / name, out_dir / name)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
