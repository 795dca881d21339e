"""What a suite asks a model, shown before a run: each task's layout and stop strings (from the suite
file alone, no data, no network) and one rendered prompt (where the data loads)."""

from __future__ import annotations

from . import layouts
from .requests import _conversation, _format, _mc_context, _shot_text, conversation_messages, prepare_task, task_stops
from .sources import shots_for, task_rows
from .spec import TaskSpec, layout_of

SHOWN = 1500  # characters of a prompt shown whole; a longer one shows its start and its end


def task_plan(task: TaskSpec) -> str:
    """``name: layout L, stop [...], metric M, N new tokens`` from the task as written. A chat
    layout also stops at the template's end of turn, which only the model's tokenizer knows."""
    layout = layout_of(task)
    stops = task_stops(task) if task.kind == "generation" else []
    turn = " + the template's end of turn" if layout == "chat" and task.kind == "generation" else ""
    stop = f", stop {stops!r}{turn}" if task.kind == "generation" else ""
    tokens = f", {task.max_new_tokens} new tokens" if task.kind == "generation" else ""
    what = f" ({task.description})" if task.description else ""
    return f"{task.name}: layout {layout}{stop}, metric {task.metric}{tokens}{what}"


def example_prompt(task: TaskSpec, tokenizer=None) -> str:
    """The first item's prompt: decoded from its token ids with a tokenizer, else rendered as
    text (``plain`` without the BOS text, ``chat`` in the foundational layout: both need the model's
    tokenizer to be exact)."""
    one = task.model_copy(update={"samples": 1})
    if tokenizer is not None:
        prepared = prepare_task(one, tokenizer)
        ids = prepared.generations[0].prompt_ids if prepared.generations else prepared.sequences[0].ids
        if prepared.sequences and task.kind == "multiple_choice" and task.scoring == "cloze":
            ids = ids[: len(ids) - len(prepared.sequences[0].targets)]
        return tokenizer.decode(ids)
    rows, shots = task_rows(one)
    row, own = rows[0], shots_for(one, rows[0], shots)
    if _conversation(task):
        layout = layouts.resolved(layout_of(task), None)
        ordered = list(reversed(own)) if task.shot_order == "reversed" else own
        return layouts.render_messages(conversation_messages(task, row, ordered), layout, None)
    if task.kind == "multiple_choice":
        return _shot_text(task, own) + _mc_context(task, row)
    if task.kind == "language_modeling":
        return _format(task.prompt, row, task) if task.prompt else _format("{text}", row, task)
    prefix = "".join(_format(task.prompt, s, task) + _format(task.target, s, task) + "\n\n" for s in own)
    return prefix + _format(task.prompt, row, task)


def shortened(text: str) -> str:
    """The prompt as one line (``repr``: newlines and spaces visible), its middle cut when long."""
    if len(text) <= SHOWN:
        return repr(text)
    head, tail = text[: SHOWN // 3], text[-(2 * SHOWN) // 3 :]
    return f"{head!r} ... [{len(text) - len(head) - len(tail)} characters] ... {tail!r}"
