"""Write a student as a plain Hugging Face directory that reloads anywhere."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from torch import nn

from .adapters import adapter_for
from .surgery import parameter_count


def export_model(model: nn.Module, tokenizer, out_dir: str | Path, metadata: dict | None = None) -> Path:
    """Save safetensors + config (with the original-layer map) + tokenizer, atomically.

    The directory appears only once it is whole: it is written next to its final place and renamed.
    An existing directory at ``out_dir`` is replaced.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    adapter = adapter_for(model)
    model.config.ild_layer_map = adapter.layer_map()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        record = {
            "layer_map": adapter.layer_map(),
            "teacher_layers": getattr(model.config, "ild_teacher_layers", adapter.num_layers),
            "removed": sorted(set(range(getattr(model.config, "ild_teacher_layers", adapter.num_layers))) - set(adapter.layer_map())),
            "parameters": parameter_count(model),
            **(metadata or {}),
        }
        (tmp / "ild_export.json").write_text(json.dumps(record, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
