"""Task and suite files: what a user writes to add an evaluation without code.

A task file (YAML or JSON) names its source, how source columns map to the task's fields, the
prompt template, the metric and the sample count. A suite file lists tasks (paths relative to the
suite file, names of embedded tasks, or inline task mappings). Validation is strict: an unknown
key, field, metric or kind is one clear error that names the file.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SUITES_DIR = Path(__file__).parent / "suites"
DATA_DIR = Path(__file__).parent / "data"

# The fields each kind of task understands; templates may use these names.
KIND_FIELDS = {
    "multiple_choice": {"question", "choices", "answer", "subject"},
    "generation": {"input", "target", "source", "reference", "document", "summary", "text"},
    "language_modeling": {"text"},
}
METRICS = {
    "multiple_choice": {"accuracy", "choice_probability", "mmlu_category_mean"},
    "generation": {"lcs_ratio", "rouge_l", "chrf", "bleu", "copy_match", "rouge_l_lemmas", "rouge_12_lemmas"},
    "language_modeling": {"next_token_accuracy", "next_token_probability", "perplexity_score"},
}


def embedded_path(path: str) -> Path:
    """Where an embedded source's file is, symbolic links and '..' resolved."""
    return (DATA_DIR / path).resolve()


class TaskFileError(Exception):
    """A task or suite file that cannot be used; the message is one line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EmbeddedSource(_Strict):
    type: Literal["embedded"]
    path: str  # a file under engine/tasks/data

    @field_validator("path")
    @classmethod
    def _inside_the_package(cls, value):
        # Embedded means shipped with ild: a path that leaves the data folder would read any file.
        if not embedded_path(value).is_relative_to(DATA_DIR.resolve()):
            raise ValueError(f"embedded data must be a file inside engine/tasks/data ('{value}' is outside)")
        return value


class FileSource(_Strict):
    type: Literal["jsonl", "csv", "json"]
    path: str  # relative to the task file, or absolute


class HubSource(_Strict):
    type: Literal["hf"]
    name: str  # a Hub dataset id, or a local path that datasets.load_dataset understands
    config: str | None = None
    split: str = "test"
    revision: str | None = None
    # Local files for a packaged builder (name: json, csv or parquet): split -> file path (relative
    # to the task file). Loads rows of the Hub's schema through the same datasets code path.
    data_files: dict[str, str] | None = None


Source = Annotated[EmbeddedSource | FileSource | HubSource, Field(discriminator="type")]


class Message(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str  # a template


class LookupVar(_Strict):
    """A name whose value is looked up from a field: ``map`` first (a missing key keeps the value),
    then each ``replace`` pair applied (e.g. MMLU's subject ``high_school_physics`` -> ``high school physics``)."""

    field: str
    map: dict[str, str] = Field(default_factory=dict)
    replace: dict[str, str] = Field(default_factory=dict)


class TaskSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    kind: Literal["multiple_choice", "generation", "language_modeling"]
    source: Source
    # task field -> source column (or a list of columns, for choices spread over columns)
    fields: dict[str, str | list[str]] = Field(default_factory=dict)
    prompt: str = ""
    target: str = "{target}"
    metric: str
    samples: int = Field(default=50, ge=1)
    offset: int = Field(default=0, ge=0)  # skip the first rows (e.g. kept for few-shot examples)
    few_shot: int = Field(default=0, ge=0)
    # multiple choice
    scoring: Literal["cloze", "letter"] = "cloze"
    normalize: Literal["length", "none"] = "length"
    # generation
    max_new_tokens: int = Field(default=64, ge=1, le=8192)
    # How the prompt is laid out (engine/tasks/layouts.py): chat (the tokenizer's template), plain
    # (LLMTF's non_instruct_simple) or foundational (LLMTF's <start_of_turn> layout). Unset: chat
    # when ``chat: true``, else foundational for messages and plain text for a prompt template.
    layout: Literal["chat", "plain", "foundational"] | None = None
    chat: bool = False
    stop: list[str] = Field(default_factory=lambda: ["\n\n"])
    # language modelling
    max_tokens: int = Field(default=256, ge=8)
    context_tokens: int = Field(default=0, ge=0)  # leading tokens of the text that are read, not scored
    # The share of the items that choose layers (the selection part); the rest is the report part.
    # Unset: the suite's select_fraction. See sources.in_selection_part.
    select_fraction: float | None = Field(default=None, gt=0, lt=1)
    # --- conversations (the LLMTF way: a list of messages rendered by the tokenizer's chat template,
    # or LLMTF's layout for models without one; a final assistant message is continued)
    messages: list[Message] | None = None  # inline message templates
    messages_field: str | None = None  # or the row's own list of {role, content} templates (a field)
    message_inputs: str | None = None  # a mapping field whose keys the message templates may use
    header: str = ""  # a template put before the first user message of the prompt (MMLU's headline)
    shot_answer: str = " {target}"  # appended to a few-shot example's last assistant message
    shot_order: Literal["source", "reversed"] = "source"  # reversed: the first shot nearest the query
    max_prompt_tokens: int | None = Field(default=None, ge=1)  # shots are added while the prompt stays below
    # --- rows
    vars: dict[str, str | LookupVar] = Field(default_factory=dict)  # extra template names
    join: str = " "  # how a list-valued field (other than choices) is written into a template
    few_shot_split: str | None = None  # shots from this split of the same dataset (hf sources)
    group: str | None = None  # a field: items spread evenly over its values, shots from the same value
    description: str = ""

    @field_validator("fields")
    @classmethod
    def _columns_named(cls, value):
        for key, column in value.items():
            if isinstance(column, list) and not all(isinstance(c, str) for c in column):
                raise ValueError(f"field '{key}' must map to a column name or a list of column names")
        return value

    @model_validator(mode="after")
    def _consistent(self):
        allowed = KIND_FIELDS[self.kind] | set(self.vars)
        unknown = sorted(set(self.fields) - KIND_FIELDS[self.kind])
        if unknown:
            raise ValueError(
                f"unknown task field '{unknown[0]}' for kind {self.kind} (known: {', '.join(sorted(allowed))})"
            )
        if self.metric not in METRICS[self.kind]:
            raise ValueError(
                f"unknown metric '{self.metric}' for kind {self.kind} (known: {', '.join(sorted(METRICS[self.kind]))})"
            )
        for template_name in ("prompt", "target") if self.kind == "generation" else ("prompt",):
            for name in _placeholders(getattr(self, template_name)):
                if name not in allowed and name not in ("choices_lettered", "letters"):
                    raise ValueError(f"{template_name} template uses unknown field '{{{name}}}'")
        if self.context_tokens and (self.kind != "language_modeling" or self.context_tokens >= self.max_tokens):
            raise ValueError("context_tokens is for language_modeling tasks and must be below max_tokens")
        conversation = self.messages is not None or self.messages_field is not None
        if self.chat and self.layout not in (None, "chat"):
            raise ValueError(f"chat: true contradicts layout: {self.layout} (give one of them)")
        if self.messages is not None and self.messages_field is not None:
            raise ValueError("give either messages or messages_field, not both")
        if self.kind == "generation" and not self.prompt and not conversation:
            raise ValueError("a generation task needs a prompt template (or messages)")
        if conversation and self.kind == "language_modeling":
            raise ValueError("messages are for multiple_choice and generation tasks")
        if self.few_shot_split and not isinstance(self.source, HubSource):
            raise ValueError("few_shot_split needs an hf source (shots from another split of the same dataset)")
        if self.metric == "mmlu_category_mean" and not self.group:
            raise ValueError("metric mmlu_category_mean needs group: (the field naming each item's subject)")
        return self


def layout_of(task: TaskSpec) -> str:
    """The task's layout as written, or the one its older fields imply (see ``TaskSpec.layout``)."""
    if task.layout is not None:
        return task.layout
    if task.chat:
        return "chat"
    return "foundational" if task.messages is not None or task.messages_field is not None else "plain"


def _placeholders(template: str) -> list[str]:
    try:
        return [name for _, name, _, _ in string.Formatter().parse(template) if name]
    except ValueError as exc:
        raise ValueError(f"bad template {template!r}: {exc}") from None


class SuiteSpec(_Strict):
    name: str
    description: str = ""
    tasks: list[TaskSpec]
    # Default share of each task's items in the selection part (task drop, proposals).
    select_fraction: float = Field(default=0.5, gt=0, lt=1)
    # A suite evaluated after every iteration and never used to choose layers (a name or a path
    # relative to this file); see load_report_suite.
    report: str | None = None
    base_dir: str = ""  # where relative file sources resolve; set by the loader

    def fraction_for(self, task: TaskSpec) -> float:
        return task.select_fraction if task.select_fraction is not None else self.select_fraction

    @model_validator(mode="after")
    def _unique(self):
        names = [t.name for t in self.tasks]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"task '{duplicates[0]}' appears twice")
        if not self.tasks:
            raise ValueError("a suite needs at least one task")
        return self


def _read_mapping(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TaskFileError(f"{path}: no such file") from None
    except yaml.YAMLError as exc:
        raise TaskFileError(f"{path}: not valid YAML/JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise TaskFileError(f"{path}: expected a mapping at the top level")
    return data


def _one_line(exc: ValidationError, where: str) -> str:
    first = exc.errors()[0]
    location = ".".join(str(p) for p in first["loc"] if p not in ("function-after[_consistent()]",))
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = f"unknown key '{first['loc'][-1]}'"
        location = ".".join(str(p) for p in first["loc"][:-1])
    elif first["type"] == "literal_error":
        message = f"{message} (got {first.get('input')!r})"
    elif first["type"] == "union_tag_invalid":
        message = (
            f"unknown source type {first.get('input', {}).get('type')!r} (known: embedded, jsonl, csv, json, hf)"
            if isinstance(first.get("input"), dict)
            else message
        )
    return f"{where}: {location + ': ' if location else ''}{message}"


def parse_task(data: dict, where: str) -> TaskSpec:
    try:
        return TaskSpec.model_validate(data)
    except ValidationError as exc:
        raise TaskFileError(_one_line(exc, where)) from None


def load_task_file(path: str | Path) -> TaskSpec:
    path = Path(path)
    task = parse_task(_read_mapping(path), str(path))
    return _anchor(task, path.parent)


def _anchor(task: TaskSpec, base: Path) -> TaskSpec:
    """Make a relative file source absolute, so the task means the same from anywhere."""
    if isinstance(task.source, FileSource) and not Path(task.source.path).is_absolute():
        source = task.source.model_copy(update={"path": str((base / task.source.path).resolve())})
        return task.model_copy(update={"source": source})
    if isinstance(task.source, HubSource) and task.source.data_files:
        files = {split: str((base / path).resolve()) for split, path in task.source.data_files.items()}
        return task.model_copy(update={"source": task.source.model_copy(update={"data_files": files})})
    return task


def embedded_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def load_suite(name_or_path: str) -> SuiteSpec:
    """An embedded suite by name (``default``, ``paper``, ...) or a suite/task file path."""
    path = Path(name_or_path)
    if not path.suffix and (SUITES_DIR / f"{name_or_path}.yaml").is_file():
        path = SUITES_DIR / f"{name_or_path}.yaml"
    elif not path.is_file():
        known = ", ".join(embedded_suites())
        raise TaskFileError(f"unknown suite '{name_or_path}': not an embedded suite ({known}) and no such file")
    data = _read_mapping(path)
    if "tasks" not in data:  # a single task file is a suite of one
        task = parse_task(data, str(path))
        return SuiteSpec(name=task.name, tasks=[_anchor(task, path.parent)], base_dir=str(path.parent))
    tasks = []
    entries = data.get("tasks")
    if not isinstance(entries, list):
        raise TaskFileError(f"{path}: 'tasks' must be a list")
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            task_path = (path.parent / entry).resolve()
            tasks.append(load_task_file(task_path))
        elif isinstance(entry, dict):
            tasks.append(_anchor(parse_task(entry, f"{path}: tasks[{i}]"), path.parent))
        else:
            raise TaskFileError(f"{path}: tasks[{i}] must be a file path or a task mapping")
    extra = sorted(set(data) - {"name", "description", "tasks", "select_fraction", "report"})
    if extra:
        raise TaskFileError(f"{path}: unknown key '{extra[0]}'")
    settings = {key: data[key] for key in ("select_fraction", "report") if key in data}
    try:
        return SuiteSpec(
            name=data.get("name", path.stem),
            description=data.get("description", ""),
            tasks=tasks,
            base_dir=str(path.parent),
            **settings,
        )
    except ValidationError as exc:
        raise TaskFileError(_one_line(exc, str(path))) from None


def load_report_suite(suite: SuiteSpec, override: str | None = None) -> SuiteSpec | None:
    """The report suite of ``suite``: ``override`` (an embedded name or a path) if given, else the
    suite's own ``report:`` entry (an embedded name, or a path relative to the suite file), else
    None. Raises TaskFileError when it cannot be loaded or a task name is in both suites."""
    name = override if override is not None else suite.report
    if not name:
        return None
    candidate = Path(name)
    if override is None and suite.base_dir and not candidate.is_absolute() and candidate.suffix:
        candidate = Path(suite.base_dir) / candidate
    report = load_suite(str(candidate) if candidate.suffix else name)
    check_disjoint(suite, report)
    return report


def check_disjoint(suite: SuiteSpec, report: SuiteSpec) -> None:
    """Both suites' scores share one namespace in ``eval`` events: a task name in both is an error."""
    shared = sorted({t.name for t in suite.tasks} & {t.name for t in report.tasks})
    if shared:
        raise TaskFileError(
            f"task '{shared[0]}' is in both the suite '{suite.name}' and its report suite '{report.name}': rename one of them"
        )
