"""What LLMTF (github.com/RefalMachine/llmtf_open, revision 19b5ce6 of 2025-05-26, the paper's time)
asks a model with ``conversation_configs/non_instruct_simple.json``, written out independently of
ild's code so the paper suite can be compared with it row by row.

The config's values, verbatim: system/user/bot message ``{content}\\n\\n``, incomplete (continued)
bot message ``{content}``, suffix ``""``, add_special_tokens false, eos_token ``["\\n\\n"]``; with
no ``global_prefix`` in the config LLMTF puts the decoded BOS token first (empty without one).
"""

from __future__ import annotations

NON_INSTRUCT_SIMPLE = {
    "system_message_template": "{content}\n\n",
    "user_message_template": "{content}\n\n",
    "bot_message_template": "{content}\n\n",
    "bot_message_template_incomplete": "{content}",
    "suffix": "",
    "add_special_tokens": False,
    "eos_token": ["\n\n"],
}
MAX_LEN = 4000  # evaluate_model.py --max_len default; the prompt budget of every task
SHOTS = 5


def prompt(messages: list[dict], tokenizer) -> str:
    """Conversation.get_prompt(incomplete_last_bot_message=True) under non_instruct_simple."""
    c = NON_INSTRUCT_SIMPLE
    text = tokenizer.decode([tokenizer.bos_token_id]) if tokenizer.bos_token_id is not None else ""
    bot = ("bot", "assistant")
    for i, m in enumerate(messages):
        if m["role"] in bot:
            last = i == len(messages) - 1
            template = c["bot_message_template_incomplete"] if last else c["bot_message_template"]
        else:
            template = c[f"{m['role']}_message_template"]
        text += template.format(content=m["content"])
    if messages[-1]["role"] not in bot:
        text += c["suffix"]
    return text


def count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=NON_INSTRUCT_SIMPLE["add_special_tokens"])["input_ids"])


def few_shot(create, sample: dict, prompt_rows: list[dict], tokenizer) -> list[dict]:
    """base.py SimpleFewShotHFTask._prepare_messages: each shot put before the messages so far
    while the prompt stays under MAX_LEN tokens."""
    messages = create(sample, False)
    for row in prompt_rows[:SHOTS]:
        shot = create(row, True)
        if count(tokenizer, prompt(shot + messages, tokenizer)) >= MAX_LEN:
            break
        messages = shot + messages
    return messages


def darumeru(sample: dict, with_answer: bool) -> list[dict]:
    """darumeru.py DarumeruTask.create_messages (copy tasks): the row's messages, formatted."""
    return [{"role": m["role"], "content": m["content"].format(**sample["inputs"])} for m in sample["messages"]]


def flores(input_lang: str):
    def create(sample: dict, with_answer: bool) -> list[dict]:
        messages = [dict(m) for m in sample["messages"]]
        if with_answer:
            messages[-1]["content"] += "{translation}"
        names = {"ru": ("русского", "английский", "ru", "en"), "en": ("английского", "русский", "en", "ru")}
        source, target, src, tgt = names[input_lang]
        inputs = {
            "input": source,
            "output": target,
            "input_text": sample["inputs"][src],
            "translation": sample["inputs"][tgt],
        }
        return [{"role": m["role"], "content": m["content"].format(**inputs)} for m in messages]

    return create


def treeway(sample: dict, with_answer: bool) -> list[dict]:
    """daru_treeway_summ.py DaruTreewayAbstractive.create_messages."""
    text, summary = " ".join(sample["src_sents"]), " ".join(sample["summary_sents"])
    user = "Напиши краткую аннотацию на русском языке к следующему тексту.\nТекст: {text}".replace("{text}", text)
    bot = "TL;DR: {summary}".replace("{summary}", summary) if with_answer else "TL;DR:"
    return [{"role": "user", "content": user}, {"role": "bot", "content": bot}]


HEADLINES = {
    "en": "The following are multiple choice questions (with answers) about",
    "ru": "Ниже приведены вопросы с множественным выбором (с ответами) по",
}
ANSWER = {"en": "Answer:", "ru": "Ответ:"}


def mmlu(lang: str, sample: dict, dev: list[dict], subject_name: str, tokenizer) -> list[dict]:
    """nlpcoreteam.py MMLU._prepare_messages: the headline on the first shot, each later shot put
    just before the query."""

    def create(row, headline, answer):
        options = "\n".join(f"{x}. {y}" for x, y in zip("ABCD", row[f"choices_{lang}"]))
        q = "\n".join([row[f"question_{lang}"], options])
        if headline:
            q = f"{HEADLINES[lang]} {subject_name}.\n\n" + q
        bot = ANSWER[lang] + (f" {'ABCD'[row['answer']]}" if answer else "")
        return [{"role": "user", "content": q}, {"role": "bot", "content": bot}]

    messages = create(sample, False, False)
    for i, row in enumerate(dev[:SHOTS]):
        candidate = (
            create(row, True, True) + messages if i == 0 else messages[:-2] + create(row, False, True) + messages[-2:]
        )
        if count(tokenizer, prompt(candidate, tokenizer)) >= MAX_LEN:
            break
        messages = candidate
    return messages


def tokens_of_interest(text: str, tokenizer, letters="ABCD") -> tuple[list[int], bool]:
    """model.py _calculate_tokens_of_interest_ids_and_addition_spaces: each letter's first non-blank
    token after the prompt (a space before it unless the prompt ends with a newline), and whether
    the prompt gets that space appended."""
    shift = count(tokenizer, text)
    ids, spaces = [], []
    for letter in letters:
        check = text + letter if text.endswith("\n") else text + " " + letter
        rest = tokenizer(check, add_special_tokens=False)["input_ids"][shift:]
        skip = 0
        for token in rest:
            piece = tokenizer.decode([token]).strip()
            if piece and letter.startswith(piece):
                break
            skip += 1
        ids.append(token)
        spaces.append(skip > 0)
    return ids, spaces[0]
