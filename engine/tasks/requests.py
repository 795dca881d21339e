"""Turning task rows into token-level requests.

Two request shapes cover every task:
  * ``ScoredSequence``: one forward pass; the task reads the log-probabilities (or argmax) of
    given target tokens at given positions. Multiple choice (cloze: one sequence per choice;
    letter: one sequence, the targets are the letter tokens) and language modelling.
  * ``GenerationRequest``: a prompt to continue greedily, and the reference text to score.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import layouts
from .sources import Part, shots_for, task_rows
from .spec import LookupVar, TaskFileError, TaskSpec, layout_of

LETTERS = "ABCDEFGHIJ"


@dataclass
class ScoredSequence:
    ids: list[int]
    positions: list[int]  # logits at position p predict targets[k] (the token at p + 1)
    targets: list[int]
    item: int  # which question / passage this belongs to
    choice: int = 0  # which choice (cloze)
    letter_ids: list[int] = field(default_factory=list)  # letter scoring: compare these at positions[-1]
    letter_variants: int = 1  # token variants per letter in letter_ids (" A" and "A"): the best of them counts
    chars: int = 0  # characters of the scored continuation, for per-character normalisation


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    reference: str
    item: int
    stop: list[str] = field(default_factory=list)  # stop strings beyond the task's (a template's end of turn)


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
        return template.format(**_names(row, task))
    except KeyError as exc:
        where = row.get("_where", "a row")
        raise TaskFileError(f"task '{task.name}': {where}: template field {exc} missing in the data") from None
    except (IndexError, ValueError) as exc:
        raise TaskFileError(
            f"task '{task.name}': {row.get('_where', 'a row')}: bad template {template!r} ({exc})"
        ) from None


def _names(row: dict, task: TaskSpec) -> dict:
    """What a template may name: the row's fields (a list other than ``choices`` written as its
    items joined by ``join``, as LLMTF joins Daru Treeway's sentences) and the task's ``vars``."""
    names = {
        k: (task.join.join(str(x) for x in v) if isinstance(v, list) and k != "choices" else v) for k, v in row.items()
    }
    for name, var in task.vars.items():
        if isinstance(var, LookupVar):
            if var.field not in names:
                raise KeyError(var.field)
            value = str(names[var.field])
            value = var.map.get(value, value)
            for old, new in var.replace.items():
                value = value.replace(old, new)
            names[name] = value
        else:
            names[name] = var.format(**names)
    return names


def _encode(tokenizer, text: str, special: bool) -> list[int]:
    return tokenizer(text, add_special_tokens=special)["input_ids"]


def _prompt_ids(task: TaskSpec, tokenizer, text: str) -> list[int]:
    """A prompt-template task's text as one user turn in the task's layout; ``plain`` (and ``chat``
    without a template) is the text itself, encoded with the tokenizer's special tokens."""
    layout = layouts.resolved(layout_of(task), tokenizer)
    if layout == "plain" or (layout == "foundational" and task.layout is None):
        return _encode(tokenizer, text, special=True)
    rendered = layouts.render_messages([{"role": "user", "content": text}], layout, tokenizer)
    return _encode(tokenizer, rendered, special=layouts.encode_special(layout))


def task_stops(task: TaskSpec, tokenizer=None) -> list[str]:
    """The stop strings of a task's generations: its own ``stop`` and its layout's end of an answer
    (a chat template's end of turn when a tokenizer is given; it also stops on that token)."""
    layout = layout_of(task) if tokenizer is None else layouts.resolved(layout_of(task), tokenizer)
    conversation = _conversation(task) or task.layout is not None
    extra = layouts.layout_stop(layout) if conversation else []
    if layout == "chat" and tokenizer is not None:
        turn = layouts.end_of_turn(tokenizer)
        extra = [turn] if turn else []
    return list(dict.fromkeys(task.stop + extra))


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
    raise TaskFileError(
        f"task '{task.name}': {row.get('_where', f'row {index}')}: answer {answer!r} is not a choice index, letter or choice text"
    )


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
    return _format(task.prompt, _mc_names(row), task)


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
    elif _conversation(task):
        for i, row in enumerate(rows):
            ids, stop = conversation_ids(task, row, shots_for(task, row, shots), tokenizer)
            prepared.generations.append(GenerationRequest(ids, _format(task.target, row, task), item=i, stop=stop))
    else:
        for i, row in enumerate(rows):
            prefix = "".join(
                _format(task.prompt, s, task) + _format(task.target, s, task) + "\n\n"
                for s in shots_for(task, row, shots)
            )
            text = prefix + _format(task.prompt, row, task)
            ids = _prompt_ids(task, tokenizer, text)
            stop = task_stops(task, tokenizer)
            prepared.generations.append(GenerationRequest(ids, _format(task.target, row, task), item=i, stop=stop))
    return prepared


def _conversation(task: TaskSpec) -> bool:
    return task.messages is not None or task.messages_field is not None


def task_messages(task: TaskSpec, row: dict, shot: bool) -> list[dict]:
    """One example's messages, rendered: the task's inline ``messages`` or the row's own
    (``messages_field``), each content formatted with the row's names (plus the keys of
    ``message_inputs``); a shot's last assistant message gets ``shot_answer`` appended."""
    if task.messages is not None:
        templates = [m.model_dump() for m in task.messages]
    else:
        templates = row.get(task.messages_field)
        if not isinstance(templates, list) or not all(
            isinstance(m, dict) and {"role", "content"} <= set(m) for m in templates
        ):
            raise TaskFileError(
                f"task '{task.name}': {row.get('_where', 'a row')}: field '{task.messages_field}' is not a list of {{role, content}} messages"
            )
    names = dict(row)
    if task.message_inputs:
        inputs = row.get(task.message_inputs)
        if not isinstance(inputs, dict):
            raise TaskFileError(
                f"task '{task.name}': {row.get('_where', 'a row')}: field '{task.message_inputs}' is not a mapping"
            )
        names.update(inputs)
    out = []
    for m in templates:
        role = {"bot": "assistant"}.get(m["role"], m["role"])
        out.append({"role": role, "content": _format(m["content"], names, task)})
    if shot:
        # As LLMTF does: the answer goes at the end of the example's last message.
        out[-1]["content"] += _format(task.shot_answer, names, task)
    return out


def conversation_messages(task: TaskSpec, row: dict, shots: list[dict]) -> list[dict]:
    """The messages of one item as LLMTF builds them: the shots' then the item's, ``header``
    before the first user message. Multiple-choice rows gain ``choices_lettered``/``letters`` and a
    shot's ``target`` is its answer letter."""
    if task.kind == "multiple_choice":
        shots = [{**_mc_names(s), "target": LETTERS[_answer_index(s, len(s["choices"]), task, -1)]} for s in shots]
        row = _mc_names(row)
    messages = [m for s in shots for m in task_messages(task, s, shot=True)] + task_messages(task, row, shot=False)
    if task.header:
        first = next((m for m in messages if m["role"] == "user"), None)
        if first is None:
            raise TaskFileError(f"task '{task.name}': {row.get('_where', 'a row')}: a header needs a user message")
        first["content"] = _format(task.header, row, task) + first["content"]
    return messages


def conversation_ids(task: TaskSpec, row: dict, shots: list[dict], tokenizer) -> tuple[list[int], list[str]]:
    """The prompt of one item (``conversation_messages``) rendered in the task's layout
    (``layouts.render_messages``: the tokenizer's chat template, LLMTF's non_instruct_simple or
    its foundational layout); a final assistant message is continued, else the layout's generation
    prompt follows. Shots are added while the prompt stays below ``max_prompt_tokens``
    (``shot_order: reversed`` puts the first shot nearest the query, as LLMTF's base.py prepends
    each shot). Returns the token ids and the task's stop strings (``task_stops``)."""
    ordered = list(reversed(shots)) if task.shot_order == "reversed" else list(shots)
    layout = layouts.resolved(layout_of(task), tokenizer)
    ids: list[int] = []
    for count in range(len(ordered), -1, -1):
        chosen = ordered[len(ordered) - count :] if task.shot_order == "reversed" else ordered[:count]
        text = layouts.render_messages(conversation_messages(task, row, chosen), layout, tokenizer)
        ids = _encode(tokenizer, text, special=layouts.encode_special(layout))
        if task.max_prompt_tokens is None or len(ids) < task.max_prompt_tokens:
            break
    return ids, task_stops(task, tokenizer)


def render_messages(messages: list[dict], tokenizer=None, layout: str | None = None) -> str:
    """The prompt text of a conversation in ``layout`` (default: the tokenizer's chat template if a
    tokenizer is given, else LLMTF's foundational layout)."""
    layout = layout or ("chat" if tokenizer is not None else "foundational")
    return layouts.render_messages(messages, layouts.resolved(layout, tokenizer), tokenizer)


def _shot_text(task: TaskSpec, shots: list[dict]) -> str:
    text = ""
    for s in shots:
        k = _answer_index(s, len(s["choices"]), task, -1)
        answer = LETTERS[k] if task.scoring == "letter" else s["choices"][k]
        text += f"{_mc_context(task, s)} {answer}\n\n"
    return text


def _mc_names(row: dict) -> dict:
    """The row with the names a multiple-choice template may add: ``choices_lettered`` ("A. x" lines)
    and ``letters`` ("A, B, C, D")."""
    lettered = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(row["choices"]))
    return {**row, "choices_lettered": lettered, "letters": ", ".join(LETTERS[: len(row["choices"])])}


def _letter_variants(tokenizer, n: int) -> list[int]:
    """Each letter as the next token with and without a leading space (LLMTF takes the better of
    the two); the first token of each, in letter order."""
    return [_encode(tokenizer, text, special=False)[0] for k in range(n) for text in (f" {LETTERS[k]}", LETTERS[k])]


def _plain_letters(tokenizer, context_ids: list[int], n: int) -> tuple[list[int], list[int]]:
    """LLMTF's tokens of interest (llmtf/model.py of the paper's time): each letter as it follows
    the prompt, after a space unless the prompt ends with a newline; the first token that is not
    blank. Returns (letter ids, the tokens to append to the prompt: the space, when the tokenizer
    writes it as a token of its own and LLMTF adds it to the prompt)."""
    space = "" if tokenizer.decode(context_ids).endswith("\n") else " "
    ids, before = [], []
    for k in range(n):
        tokens = _encode(tokenizer, space + LETTERS[k], special=False)
        skip = next((i for i, t in enumerate(tokens) if tokenizer.decode([t]).strip()), len(tokens) - 1)
        ids.append(tokens[skip])
        before = tokens[:skip] if k == 0 else before
    return ids, before


def _prepare_mc(prepared: PreparedTask, rows: list[dict], shots: list[dict], tokenizer) -> None:
    task = prepared.spec
    for i, row in enumerate(rows):
        choices = [str(c) for c in row["choices"]]
        if len(choices) < 2:
            raise TaskFileError(f"task '{task.name}': {row.get('_where', f'row {i}')}: fewer than two choices")
        prepared.answers.append(_answer_index(row, len(choices), task, i))
        prepared.n_choices.append(len(choices))
        if task.group:
            prepared.groups.append(str(row.get(task.group)))
        own_shots = shots_for(task, row, shots)
        if _conversation(task):
            context_ids, _ = conversation_ids(task, row, own_shots, tokenizer)
        else:
            context_ids = _encode(tokenizer, _shot_text(task, own_shots) + _mc_context(task, row), special=True)
        if task.scoring == "letter":
            if _conversation(task) and layout_of(task) == "plain":
                letter_ids, space = _plain_letters(tokenizer, context_ids, len(choices))
                context_ids, variants = context_ids + space, 1
            elif _conversation(task):
                letter_ids, variants = _letter_variants(tokenizer, len(choices)), 2
            else:
                letter_ids, variants = (
                    [_encode(tokenizer, f" {LETTERS[k]}", special=False)[-1] for k in range(len(choices))],
                    1,
                )
            prepared.sequences.append(
                ScoredSequence(
                    context_ids,
                    [len(context_ids) - 1],
                    [letter_ids[0]],
                    item=i,
                    letter_ids=letter_ids,
                    letter_variants=variants,
                )
            )
            continue
        for k, choice in enumerate(choices):
            text = choice if choice[:1].isspace() else " " + choice
            continuation = _encode(tokenizer, text, special=False)
            ids = context_ids + continuation
            positions = list(range(len(context_ids) - 1, len(ids) - 1))
            prepared.sequences.append(ScoredSequence(ids, positions, continuation, item=i, choice=k, chars=len(text)))
