"""The model card every export carries: ``README.md`` with the Hub's YAML front matter.

What a user of the student needs to know where they take it (the Hub, lm-evaluation-harness, vLLM,
llama.cpp): the base model, which original layers were removed and in what order, the retention of
each task on the report part (items never used to choose a layer) with the healing budget that
bought it, and the command that made it. Gemma 2/3 students get a warning: those runtimes derive the
sliding-window pattern from the layer index, so removing a layer shifts it there.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

# Families whose local/global attention pattern vLLM and llama.cpp derive from the layer index
# ((layer_idx + 1) % pattern, set_swa_pattern): transformers reads config.layer_types and is right.
INDEX_PATTERN_FAMILIES = {"gemma2", "gemma3", "gemma3_text"}

# Embedded model names and the Hub model they are a copy of (engine/models/loading.py).
EMBEDDED_BASES = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}


def base_model(spec: str) -> str | None:
    """The Hub id of the teacher, when it has one (a local path or a GGUF file has none)."""
    if spec in EMBEDDED_BASES:
        return EMBEDDED_BASES[spec]
    parts = spec.split("/")
    if len(parts) == 2 and all(parts) and not Path(spec).exists() and not spec.endswith(".gguf"):
        return spec
    return None


def sliding_window_warning(model_type: str | None, layer_types: list | None) -> str | None:
    """One paragraph for Gemma 2/3 students (None for every other family)."""
    if model_type not in INDEX_PATTERN_FAMILIES:
        return None
    pattern = (
        f" The student's per-layer pattern (config.layer_types): {', '.join(map(str, layer_types))}."
        if layer_types
        else ""
    )
    return (
        "**Sliding-window pattern.** transformers reads each layer's attention type from "
        "`config.layer_types`, so this student reloads correctly there. vLLM and llama.cpp instead derive "
        "it from the layer index (`(layer_idx + 1) % pattern`, `set_swa_pattern`), assuming the original "
        "alternation: with layers removed, some layers get the wrong (local or global) attention there "
        f"and quality drops silently.{pattern}"
    )


def export_warning(model_config) -> str | None:
    """The one-line warning an export of a Gemma 2/3 student prints."""
    if getattr(model_config, "model_type", None) not in INDEX_PATTERN_FAMILIES:
        return None
    return (
        "warning: vLLM and llama.cpp derive Gemma's sliding-window pattern from the layer index and assume "
        "the original one; this student is right in transformers (config.layer_types), not there (see its README.md)"
    )


def run_command(config) -> str:
    """The ``ild run`` command line that makes this run (its main options; the whole resolved
    configuration is in the run's config.yaml)."""
    args = ["ild", "run", "--model", config.model, "--strategy", config.strategy, "--suite", config.suite]
    if config.removals:
        args += ["--removals", ",".join(map(str, config.removals))]
    elif config.target_layers is not None:
        args += ["--target-layers", str(config.target_layers)]
    if config.report_suite:
        args += ["--report-suite", config.report_suite]
    if config.split_seed:
        args += ["--split-seed", str(config.split_seed)]
    return shlex.join(args)


def retention_rows(state, iteration: int | None) -> tuple[list[tuple], dict | None, dict | None]:
    """(rows of (task, teacher, student, retention), the teacher's report eval, the student's) from a
    folded run: the student is the final eval of the latest iteration up to ``iteration``."""
    teacher = state.teacher_eval("report")
    finals = {k: v for k, v in state.final_evals("report").items() if iteration is None or k <= iteration}
    student = finals[max(finals)] if finals else None
    rows = []
    if teacher and student:
        for task, before in teacher.get("tasks", {}).items():
            after = student.get("tasks", {}).get(task)
            ratio = after / before if before and after is not None else None
            rows.append((task, before, after, ratio))
        before, after = teacher.get("aggregate"), student.get("aggregate")
        rows.append(("aggregate", before, after, after / before if before and after is not None else None))
    return rows, teacher, student


def _number(value, percent: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f} %" if percent else f"{value:.4f}"


def build_card(record: dict, config=None, state=None, model_config=None, iteration: int | None = None) -> str:
    """The README.md text. ``record``: the export's ild_export.json content; ``config``: the run's
    RunConfig; ``state``: the folded run (engine.runlog); ``model_config``: the student's config."""
    teacher = record.get("teacher") or (config.model if config else None) or "unknown"
    model_type = getattr(model_config, "model_type", None)
    base = base_model(teacher)
    tags = ["ild", "layer-pruning", "depth-pruning", "text-generation"]
    if config is not None and config.heal and record.get("strategy", "").endswith(("distill", "bridge")):
        tags.append("distillation")
    if model_type:
        tags.append(model_type)
    front = {"library_name": "transformers", "pipeline_tag": "text-generation", "tags": tags}
    if base:
        front = {"base_model": base, **front}
    removed = record.get("removal_order") or record.get("removed") or []
    total = record.get("teacher_layers")
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip(),
        "---",
        "",
        f"# {Path(str(teacher)).name} with {len(removed)} of {total} decoder layers removed",
        "",
        f"Made with ild (Iterative Layer-wise Distillation, arXiv 2511.05085) from "
        f"`{teacher}`, strategy `{record.get('strategy', '?')}`"
        + (f", run `{record['run']}`" if record.get("run") else "")
        + (f", checkpoint `{record['checkpoint']}`" if record.get("checkpoint") else "")
        + ".",
        "",
        f"- Removed layers (original indices, in removal order): {', '.join(map(str, removed)) or 'none'}",
        f"- Kept layers (original index of each layer of this model): {record.get('layer_map')}",
        f"- Decoder layers: {total} -> {len(record.get('layer_map') or [])}; parameters: {record.get('parameters', '?'):,}"
        if isinstance(record.get("parameters"), int)
        else f"- Decoder layers: {total} -> {len(record.get('layer_map') or [])}",
    ]
    if config is not None:
        heal = config.heal
        lines.append(
            f"- Healing budget per removal: {heal.train_tokens:,} tokens at sequence length {heal.seq_len} "
            f"from `{heal.data.source}` (lr {heal.lr})"
        )
    rows = retention_rows(state, iteration)[0] if state is not None else []
    lines += ["", "## Retention on the report part", ""]
    if rows:
        lines += [
            "Scores on the report part of each task (items never used to choose a layer) and the report "
            f"suite, teacher against this student; suite `{config.suite if config else '?'}`.",
            "",
            "| task | teacher | student | retention |",
            "|---|---:|---:|---:|",
        ]
        lines += [f"| {t} | {_number(a)} | {_number(b)} | {_number(r, percent=True)} |" for t, a, b, r in rows]
    else:
        lines.append("No report-part evaluation of the teacher and this student was recorded.")
    warning = sliding_window_warning(model_type, getattr(model_config, "layer_types", None))
    if warning:
        lines += ["", "## Runtimes", "", warning]
    lines += ["", "## How it was made", ""]
    if config is not None:
        lines += ["```", run_command(config), "```", ""]
    lines += [
        "The exported directory also holds `ild_export.json` (the layer map, the removal order, the run) and",
        "`config.ild_layer_map`. Reload with `AutoModelForCausalLM.from_pretrained(PATH)`.",
        "",
    ]
    return "\n".join(lines)


def card_for_run(run_dir: str | Path | None, record: dict, model_config=None, iteration: int | None = None) -> str:
    """The card of an export of ``run_dir`` (its config.yaml and events), or of ``record`` alone."""
    config = state = None
    if run_dir is not None:
        run_dir = Path(run_dir)
        try:
            from engine.config import validate_config
            from engine.runlog.reader import read_run

            config = validate_config(yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")))
            state = read_run(run_dir)
        except Exception:  # a card with less in it beats no export
            config = state = None
    return build_card(record, config, state, model_config, iteration)
