"""Turning task rows into token-level requests.

Two request shapes cover every task:
  * ``ScoredSequence``: one forward pass; the task reads the log-probabilities (or argmax) of
    given target tokens at given positions. Multiple choice (cloze: one sequence per choice;
    letter: one sequence, the targets are the letter tokens) and language modelling.
  * ``GenerationRequest``: a prompt to continue greedily, and the reference text to score.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .sources import Part, task_rows
from .spec import TaskFileError, TaskSpec

LETTERS = "ABCDEFGHIJ"


@dataclass
class ScoredSequence:
    ids: list[int]
    positions: list[int]  # logits at position p predict targets[k] (the token at p + 1)
    targets: list[int]
    item: int  # which question / passage this belongs to
    choice: int = 0  # which choice (cloze)
    letter_ids: list[int] = field(default_factory=list)  # letter scoring: compare these at positions[-1]
    chars: int = 0  # characters of the scored continuation, for per-character normalisation


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    reference: str
    item: int


@dataclass
class PreparedTask:
    spec: TaskSpec
    sequences: list[ScoredSequence] = field(default_factory=list)
    generations: list[GenerationRequest] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)  # multiple choice: the right choice per item
    n_choices: list[int] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)  # per item, for metrics averaged by group (may be empty)


def _format(template: str, row: dict, task: TaskSpec) -> str:
    try:
        return template.format(**row)
    except KeyError as exc:
        where = row.get("_where", "a row")
        raise TaskFileError(f"task '{task.name}': {where}: template field {exc} missing in the data") from None


def _encode(tokenizer, text: str, special: bool) -> list[int]:
    return tokenizer(text, add_special_tokens=special)["input_ids"]


def _chat(tokenizer, text: str) -> list[int]:
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    return _encode(tokenizer, rendered, special=False)


def _answer_index(row: dict, n: int, task: TaskSpec, index: int) -> int:
    answer = row.get("answer")
    if isinstance(answer, bool):
        answer = None
    if isinstance(answer, int) and 0 <= answer < n:
        return answer
    if isinstance(answer, str):
        text = answer.strip()
        if text.isdigit() and 0 <= int(text) < n:
            return int(text)
        if len(text) == 1 and text.upper() in LETTERS[:n]:
            return LETTERS.index(text.upper())
        if text in row["choices"]:
            return list(row["choices"]).index(text)
    raise TaskFileError(f"task '{task.name}': {row.get('_where', f'row {index}')}: answer {answer!r} is not a choice index, letter or choice text")


def _lm_sequence(task: TaskSpec, row: dict, tokenizer, item: int) -> ScoredSequence | None:
    """Score the tokens of the text; with a ``prompt``, the prompt is context that is not scored
    (teacher-forced copying: the prompt holds the passage, the text is scored as its copy). The first
    ``context_tokens`` of the text are read but not scored (the next token given some context)."""
    text = _format("{text}", row, task)
    if not task.prompt:
        ids = _encode(tokenizer, text, special=True)[: task.max_tokens]
        first = max(task.context_tokens, 1)
        if len(ids) <= first:
            return None
        return ScoredSequence(ids, list(range(first - 1, len(ids) - 1)), ids[first:], item=item)
    context = _encode(tokenizer, _format(task.prompt, row, task), special=True)
    scored = _encode(tokenizer, text, special=False)[: task.max_tokens]
    if not context or not scored:
        return None
    ids = context + scored
    start = len(context) - 1
    return ScoredSequence(ids, list(range(start, len(ids) - 1)), scored, item=item, chars=len(text))


def _mc_context(task: TaskSpec, row: dict) -> str:
    lettered = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(row["choices"]))
    return _format(task.prompt, {**row, "choices_lettered": lettered, "letters": ", ".join(LETTERS[: len(row["choices"])])}, task)


def prepare_task(task: TaskSpec, tokenizer, part: Part = None, fraction: float = 0.5, seed: int = 0) -> PreparedTask:
    """Tokenised requests for the task's rows (of one part of the split, see ``task_rows``)."""
    rows, shots = task_rows(task, part, fraction, seed)
    prepared = PreparedTask(task)
    if task.kind == "multiple_choice":
        _prepare_mc(prepared, rows, shots, tokenizer)
    elif task.kind == "language_modeling":
        for i, row in enumerate(rows):
            sequence = _lm_sequence(task, row, tokenizer, item=i)
            if sequence is not None:
                prepared.sequences.append(sequence)
    else:
        prefix = "".join(_format(task.prompt, s, task) + _format(task.target, s, task) + "\n\n" for s in shots)
        for i, row in enumerate(rows):
            text = prefix + _format(task.prompt, row, task)
            ids = _chat(tokenizer, text) if task.chat and getattr(tokenizer, "chat_template", None) else _encode(tokenizer, text, special=True)
            prepared.generations.append(GenerationRequest(ids, _format(task.target, row, task), item=i))
    return prepared


def _prepare_mc(prepared: PreparedTask, rows: list[dict], shots: list[dict], tokenizer) -> None:
    task = prepared.spec
    shot_text = ""
    for s in shots:
        k = _answer_index(s, len(s["choices"]), task, -1)
        answer = LETTERS[k] if task.scoring == "letter" else s["choices"][k]
        shot_text += f"{_mc_context(task, s)} {answer}\n\n"
    for i, row in enumerate(rows):
        choices = [str(c) for c in row["choices"]]
        if len(choices) < 2:
            raise TaskFileError(f"task '{task.name}': {row.get('_where', f'row {i}')}: fewer than two choices")
        prepared.answers.append(_answer_index(row, len(choices), task, i))
        prepared.n_choices.append(len(choices))
        context = shot_text + _mc_context(task, row)
        context_ids = _encode(tokenizer, context, special=True)
        if task.scoring == "letter":
            letter_ids = [_encode(tokenizer, f" {LETTERS[k]}", special=False)[-1] for k in range(len(choices))]
            prepared.sequences.append(
                ScoredSequence(context_ids, [len(context_ids) - 1], [letter_ids[0]], item=i, letter_ids=letter_ids)
            )
            continue
        for k, choice in enumerate(choices):
            text = choice if choice[:1].isspace() else " " + choice
            continuation = _encode(tokenizer, text, special=False)
            ids = context_ids + continuation
            positions = list(range(len(context_ids) - 1, len(ids) - 1))
            prepared.sequences.append(ScoredSequence(ids, positions, continuation, item=i, choice=k, chars=len(text)))
