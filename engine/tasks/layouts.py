"""Prompt layouts and the end of a turn: how a model is asked, and where its answer stops.

A task names its layout (``TaskSpec.layout``):
  * ``chat``: the tokenizer's own chat template (``enable_thinking=False`` passed, so a Qwen3-style
    template asks for the answer, not a reasoning block); without a template, ``foundational``.
  * ``plain``: LLMTF's ``non_instruct_simple`` conversation config, the layout the paper's eval.sh
    used for base models: every message ``{content}\\n\\n``, a continued last assistant message
    ``{content}``, no generation suffix, the tokenizer's BOS text first (LLMTF's global prefix when
    the config has none), and an answer ends at ``\\n\\n``.
  * ``foundational``: LLMTF's later layout for models without a chat template
    (``<start_of_turn>{role}\\n{content}\\t\\n``; an answer ends at ``\\t\\n``).

Whatever the layout, generation stops at every end-of-sequence id the model knows: the tokenizer's
EOS, ``generation_config.eos_token_id`` (an int or a list) and the end of an assistant turn as the
chat template writes it (``end_of_turn``). Qwen2.5 base models end a turn with ``<|im_end|>`` but
their EOS is ``<|endoftext|>``; Llama 3: ``<|eot_id|>`` vs ``<|end_of_text|>``.
"""

from __future__ import annotations

LAYOUTS = ("chat", "plain", "foundational")

# LLMTF conversation_configs/default_foundational.json at the time the paper suite was written.
FOUNDATIONAL_MESSAGE = "<start_of_turn>{role}\n{content}\t\n"
FOUNDATIONAL_OPEN = "<start_of_turn>{role}\n{content}"
FOUNDATIONAL_PROMPT = "<start_of_turn>assistant\n\n"
FOUNDATIONAL_STOP = "\t\n"

# LLMTF conversation_configs/non_instruct_simple.json (unchanged from 2024 to today).
PLAIN_MESSAGE = "{content}\n\n"
PLAIN_OPEN = "{content}"
PLAIN_STOP = "\n\n"

# Extra variables every chat template is rendered with; a template that does not use one ignores it.
TEMPLATE_KWARGS = {"enable_thinking": False}

_QUESTION, _ANSWER, _NEXT = "ildprobequestion", "ildprobeanswer", "ildprobenext"


def has_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def resolved(layout: str, tokenizer) -> str:
    """The layout actually used: ``chat`` without a chat template falls back to ``foundational``."""
    return "foundational" if layout == "chat" and not has_template(tokenizer) else layout


def apply_template(tokenizer, messages: list[dict], **kwargs) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, **TEMPLATE_KWARGS, **kwargs)


def render_messages(messages: list[dict], layout: str, tokenizer=None) -> str:
    """The prompt text of a conversation in ``layout`` (resolved). A final assistant message is
    left open (continued); else the layout's generation prompt follows."""
    open_end = messages[-1]["role"] == "assistant"
    if layout == "chat":
        return apply_template(tokenizer, messages, add_generation_prompt=not open_end, continue_final_message=open_end)
    if layout == "plain":
        prefix = _bos_text(tokenizer)
        last = len(messages) - 1
        return prefix + "".join(
            (PLAIN_OPEN if open_end and i == last else PLAIN_MESSAGE).format(content=m["content"])
            for i, m in enumerate(messages)
        )
    text = "".join(
        (FOUNDATIONAL_OPEN if open_end and i == len(messages) - 1 else FOUNDATIONAL_MESSAGE).format(**m)
        for i, m in enumerate(messages)
    )
    return text if open_end else text + FOUNDATIONAL_PROMPT


def layout_stop(layout: str) -> list[str]:
    """The stop strings a layout adds (its end of an answer); ``chat`` stops on tokens instead."""
    return {"plain": [PLAIN_STOP], "foundational": [FOUNDATIONAL_STOP]}.get(layout, [])


def encode_special(layout: str) -> bool:
    """Whether the rendered text is encoded with the tokenizer's special tokens added: a chat
    template writes its own, ``plain`` writes the BOS text itself (LLMTF's add_special_tokens: false)."""
    return layout == "foundational"


def _bos_text(tokenizer) -> str:
    if tokenizer is None or getattr(tokenizer, "bos_token_id", None) is None:
        return ""
    return tokenizer.decode([tokenizer.bos_token_id])


def end_of_turn(tokenizer) -> str | None:
    """The text the chat template writes after an assistant message, as the tokenizer knows it: the
    first added (special) token that follows the answer in a rendered user/assistant/user exchange.
    None when there is no template, it cannot render that exchange, or no added token follows."""
    if not has_template(tokenizer):
        return None
    probe = [
        {"role": "user", "content": _QUESTION},
        {"role": "assistant", "content": _ANSWER},
        {"role": "user", "content": _NEXT},
    ]
    try:
        text = apply_template(tokenizer, probe)
    except Exception:  # a template may refuse roles or content it does not expect
        return None
    start, stop = text.find(_ANSWER), text.find(_NEXT)
    if start < 0 or stop < 0:
        return None
    after = text[start + len(_ANSWER) : stop]
    added = [t for t in _added_tokens(tokenizer) if t.strip() and t in after]
    if not added:
        return None
    return min(added, key=lambda t: (after.index(t), -len(t)))


def _added_tokens(tokenizer) -> list[str]:
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    tokens = {str(getattr(t, "content", t)) for t in decoder.values()}
    return sorted(tokens | set(getattr(tokenizer, "all_special_tokens", [])))


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """Every token id that ends an answer: the tokenizer's EOS, the model's
    ``generation_config.eos_token_id`` (int or list) and the template's end of turn (one token)."""
    ids: list[int] = []
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.append(int(tokenizer.eos_token_id))
    config = getattr(model, "generation_config", None)
    configured = getattr(config, "eos_token_id", None)
    for value in configured if isinstance(configured, (list, tuple)) else [configured]:
        if value is not None:
            ids.append(int(value))
    turn = end_of_turn(tokenizer)
    if turn is not None:
        encoded = tokenizer.convert_tokens_to_ids(turn)
        if isinstance(encoded, int) and encoded != getattr(tokenizer, "unk_token_id", None):
            ids.append(encoded)
    return list(dict.fromkeys(ids))
