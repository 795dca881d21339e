"""Checking a suite's data before anything is loaded: no tokenizer, no model, no run directory.

``check_suite_data`` reads every task's rows (both parts of the split and the few-shot rows),
maps their fields and renders every template, so a missing file, a broken JSONL line, a row
without a mapped column or a template naming a field the rows lack is one line naming the task,
the file and the line (or the field) — before a model is loaded. Hugging Face sources are read
only when ``network`` is true or they are local (a dataset directory, or a packaged builder such
as ``json`` with ``data_files``): offline, a Hub dataset is skipped, never waited for.
"""

from __future__ import annotations

from pathlib import Path

from .requests import LETTERS, _answer_index, _format, _mc_context, conversation_messages, render_messages
from .sources import PARTS, map_fields, read_source, shots_for, task_rows
from .spec import EmbeddedSource, FileSource, HubSource, SuiteSpec, TaskFileError, TaskSpec, embedded_path, layout_of

LOCAL_BUILDERS = {"json", "csv", "parquet", "text", "arrow"}


def check_suite_data(suite: SuiteSpec, network: bool = False, split_seed: int = 0) -> None:
    """Raise TaskFileError (one line: task, file, line or field) if a task's data cannot be used."""
    describe_suite_data(suite, network=network, split_seed=split_seed)


def describe_suite_data(suite: SuiteSpec, network: bool = False, split_seed: int = 0, split: bool = True) -> list[str]:
    """``check_suite_data``, returning one line per task: what it loads and how many items each
    part gets (``split=False``: a report suite, evaluated whole), or why it was not checked."""
    lines = []
    for task in suite.tasks:
        source = describe_source(task)
        if not will_read(task, network):
            lines.append(f"{task.name}: {source} (Hub, not read offline)")
            continue
        raw, where = read_source(task)
        for row, label in zip(raw, where):
            render_row(task, map_fields(task, row, label))
        counts = []
        for part in PARTS if split else (None,):
            rows, shots = task_rows(task, part, suite.fraction_for(task), split_seed)
            for row in shots + rows:
                render_row(task, row)
            if task.messages is not None or task.messages_field is not None:
                for row in rows:
                    render_messages(
                        conversation_messages(task, row, shots_for(task, row, shots)), layout=layout_of(task)
                    )
            counts.append(f"{part} {len(rows)}" if part else f"{len(rows)} (whole)")
        shots_note = f", {task.few_shot} shots" if task.few_shot else ""
        lines.append(f"{task.name}: {source}, {task.kind}, {task.metric}: items {', '.join(counts)}{shots_note}")
    return lines


def describe_source(task: TaskSpec) -> str:
    source = task.source
    if isinstance(source, EmbeddedSource):
        return f"embedded {source.path}"
    if isinstance(source, FileSource):
        return f"{source.type} {source.path}"
    config = f" config {source.config}" if source.config else ""
    files = f" files {source.data_files}" if source.data_files else ""
    return f"hf {source.name}{config} split {source.split}{files}"


def will_read(task: TaskSpec, network: bool) -> bool:
    """Whether the check reads the task's data: always, except a Hub dataset with no network."""
    return network or not isinstance(task.source, HubSource) or _local(task.source)


def _local(source: HubSource) -> bool:
    return source.name in LOCAL_BUILDERS or Path(source.name).exists()


def render_row(task: TaskSpec, row: dict) -> None:
    """Render every template the task applies to ``row`` (as prepare_task does, without tokens)."""
    if task.kind == "multiple_choice":
        choices = row.get("choices")
        if not isinstance(choices, (list, tuple)) or len(choices) < 2:
            raise TaskFileError(
                f"task '{task.name}': {row.get('_where', 'a row')}: field 'choices' must be a list of at least two choices"
            )
        if len(choices) > len(LETTERS):
            raise TaskFileError(f"task '{task.name}': {row.get('_where', 'a row')}: more than {len(LETTERS)} choices")
        _answer_index(row, len(choices), task, -1)
        _mc_context(task, row)
        return
    if task.kind == "language_modeling":
        text = _format("{text}", row, task)
        if not isinstance(row.get("text"), str) or not text.strip():
            raise TaskFileError(f"task '{task.name}': {row.get('_where', 'a row')}: field 'text' is empty or not text")
        if task.prompt:
            _format(task.prompt, row, task)
        return
    _format(task.prompt, row, task)
    _format(task.target, row, task)


__all__ = ["check_suite_data", "describe_source", "describe_suite_data", "embedded_path", "render_row"]
