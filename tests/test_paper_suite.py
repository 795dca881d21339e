"""The paper suite on fixture rows in its Hub datasets' schemas, through the datasets code path."""

import json
from pathlib import Path

import pytest
import torch

from engine.tasks.check import check_suite_data, describe_suite_data
from engine.tasks.evaluate import SuiteEvaluator
from engine.tasks.metrics import copy_match, mmlu_category_mean, rouge_l_lemmas
from engine.tasks.requests import conversation_ids, prepare_task
from engine.tasks.sources import shots_for, task_rows
from engine.tasks.spec import HubSource, SuiteSpec, TaskFileError, load_suite

FIXTURES = Path(__file__).parent / "fixtures" / "paper"
FILES = {  # (name, config) of each paper source -> its fixture folder
    ("RefalMachine/darumeru", "mmlu_nlpcoreteam"): "darumeru/mmlu_nlpcoreteam",
    ("RefalMachine/darumeru", "cp_doc_ru"): "darumeru/cp_doc_ru",
    ("RefalMachine/darumeru", "cp_para_ru"): "darumeru/cp_para_ru",
    ("RefalMachine/darumeru", "flores"): "darumeru/flores",
    ("dichspace/daru_treeway_eval", None): "daru_treeway_eval",
}


def paper_on_fixtures(root: Path = FIXTURES) -> SuiteSpec:
    """The embedded paper suite with each Hub source read from the fixtures by the json builder."""
    suite = load_suite("paper")
    tasks = []
    for task in suite.tasks:
        folder = root / FILES[(task.source.name, task.source.config)]
        files = {p.stem: str(p) for p in folder.glob("*.jsonl")}
        source = HubSource(type="hf", name="json", split=task.source.split, data_files=files)
        tasks.append(task.model_copy(update={"source": source}))
    return suite.model_copy(update={"tasks": tasks})


def byte_tokenizer(chat_template: str | None = None):
    """Byte-level, no merges: every text encodes and decodes exactly (prompts can be read back)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab.update({"[PAD]": 256, "[EOS]": 257, "[BOS]": 258})
    raw = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    raw.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="[PAD]", eos_token="[EOS]", bos_token="[BOS]")
    tok.chat_template = chat_template
    return tok


def byte_model():
    import transformers as t

    from tests.tiny_models import COMMON

    torch.manual_seed(0)
    config = t.LlamaConfig(
        **{
            **COMMON,
            "vocab_size": 260,
            "max_position_embeddings": 8192,
            "pad_token_id": 256,
            "eos_token_id": 257,
            "bos_token_id": 258,
        }
    )
    return t.AutoModelForCausalLM.from_config(config).eval()


def _task(suite, name):
    return next(t for t in suite.tasks if t.name == name)


def _prompt(task, tok, index=0):
    rows, shots = task_rows(task)
    ids, stop = conversation_ids(task, rows[index], shots_for(task, rows[index], shots), tok)
    return tok.decode(ids), stop


def test_paper_suite_reads_the_hub_schemas_and_checks_before_any_model():
    suite = paper_on_fixtures()
    check_suite_data(suite)
    lines = describe_suite_data(suite)
    assert len(lines) == 7 and all("items select" in line for line in lines)


def test_mmlu_prompt_is_llmtfs_five_shot_of_the_same_subject():
    """nlpcoreteam.py: the headline on the first shot only, "Answer: X" after each shot, shots from
    dev of the same subject, in order, the query's "Answer:" continued."""
    task = _task(paper_on_fixtures(), "en_mmlu").model_copy(update={"few_shot": 2})
    text, stop = _prompt(task, byte_tokenizer())
    dev = [json.loads(line) for line in (FIXTURES / "darumeru/mmlu_nlpcoreteam/dev.jsonl").open()][:2]
    test = json.loads((FIXTURES / "darumeru/mmlu_nlpcoreteam/test.jsonl").open().readline())

    def block(row, answer):
        options = "\n".join(f"{l}. {c}" for l, c in zip("ABCD", row["choices_en"]))
        user = f"<start_of_turn>user\n{row['question_en']}\n{options}\t\n"
        return user + (
            "<start_of_turn>assistant\nAnswer: " + "ABCD"[row["answer"]] + "\t\n"
            if answer
            else "<start_of_turn>assistant\nAnswer:"
        )

    headline = "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
    expected = block(dev[0], True).replace("user\n", "user\n" + headline, 1) + block(dev[1], True) + block(test, False)
    assert text == expected and stop == ["\t\n"]


def test_ru_mmlu_headline_uses_llmtfs_russian_subject_names():
    text, _ = _prompt(_task(paper_on_fixtures(), "ru_mmlu"), byte_tokenizer())
    assert text.startswith(
        "<start_of_turn>user\nНиже приведены вопросы с множественным выбором (с ответами) по абстрактной алгебре.\n\n"
    )
    assert text.endswith("<start_of_turn>assistant\nОтвет:")


def test_copy_and_flores_use_the_rows_own_messages_and_shots_nearest_first():
    suite = paper_on_fixtures()
    text, _ = _prompt(_task(suite, "cp_para_ru").model_copy(update={"few_shot": 2}), byte_tokenizer())
    prompt_rows = [json.loads(line) for line in (FIXTURES / "darumeru/cp_para_ru/prompt.jsonl").open()]
    shot = lambda r: (
        f"<start_of_turn>user\nСкопируй текст без изменений.\nТекст: {r['inputs']['text']}\t\n<start_of_turn>assistant\n{r['inputs']['text']}\t\n"
    )
    query = "<start_of_turn>user\nСкопируй текст без изменений.\nТекст: Мама мыла раму, а кот сидел на окне.\t\n<start_of_turn>assistant\n\n"
    assert text == shot(prompt_rows[1]) + shot(prompt_rows[0]) + query  # base.py prepends each shot
    text, _ = _prompt(_task(suite, "flores_ru_en").model_copy(update={"few_shot": 1}), byte_tokenizer())
    assert text == (
        "<start_of_turn>user\nПереведи текст с русского языка на английский.\nКошка спит.\t\n<start_of_turn>assistant\nПеревод: The cat sleeps.\t\n"
        "<start_of_turn>user\nПереведи текст с русского языка на английский.\nКошка спит.\t\n<start_of_turn>assistant\nПеревод: "
    )


def test_treeway_joins_the_sentence_lists_and_continues_tldr_with_a_chat_template():
    template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% if not loop.last %}<|end|>{% endif %}{% endfor %}{% if add_generation_prompt %}<|end|><|assistant|>{% endif %}"
    task = _task(paper_on_fixtures(), "daru_treeway_abstractive").model_copy(update={"few_shot": 1})
    text, stop = _prompt(task, byte_tokenizer(template))
    assert "**Текст:**\nВчера прошёл дождь. Улицы были мокрыми. Люди шли с зонтами.<|end|><|assistant|>TL;DR:" in text
    assert text.endswith("<|assistant|>TL;DR:") and "TL;DR: Был дождь.<|end|>" in text and stop == []
    assert prepare_task(task, byte_tokenizer(template)).generations[0].reference == "Был дождь."


def test_the_paper_suite_evaluates_end_to_end_on_a_tiny_model():
    suite = paper_on_fixtures()
    suite = suite.model_copy(
        update={"tasks": [t.model_copy(update={"max_new_tokens": 8, "few_shot": 1}) for t in suite.tasks]}
    )
    tok, model = byte_tokenizer(), byte_model()
    for part in ("select", "report"):
        scores = SuiteEvaluator(model, tok, suite, part=part).evaluate([None, 2])
        assert set(scores[None]) == {t.name for t in suite.tasks}
        assert all(0.0 <= v <= 1.0 for c in scores for v in scores[c].values())


def test_schema_mismatch_is_one_line_naming_the_field(tmp_path):
    import shutil

    shutil.copytree(FIXTURES, tmp_path / "paper")
    path = tmp_path / "paper/darumeru/flores/test.jsonl"
    rows = [json.loads(line) for line in path.open()]
    del rows[3]["inputs"]["ru"]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    with pytest.raises(TaskFileError) as err:
        check_suite_data(paper_on_fixtures(tmp_path / "paper"))
    message = str(err.value)
    assert "flores_en_ru" in message and "'inputs.ru'" in message and "row 3" in message and "\n" not in message


def test_llmtf_metrics():
    # Copying is binary: 1 when 99% of the copy's characters match, as Table 3's 1.0 / 0.02.
    assert copy_match(["Мама мыла раму."], ["Мама мыла раму."]) == 1.0
    assert copy_match(["Мама мыла раму. Папа тоже."], ["Мама мыла раму."]) == 0.0
    assert (
        copy_match(["Утром шёл дождь.\n\nК обеду выглянуло солнце."], ["Утром шёл дождь.\n\nК обеду выглянуло солнце."])
        == 1.0
    )
    assert copy_match([""], ["x"]) == 0.0
    # ROUGE-L on lemmas: inflection and punctuation do not count.
    assert rouge_l_lemmas(["Кошки сидели на коврах!"], ["кошка сидит на ковре"]) == 1.0
    assert rouge_l_lemmas(["собака"], ["кошка"]) == 0.0
    # MMLU: subjects, then categories (abstract_algebra and astronomy are STEM, anatomy is "other").
    assert mmlu_category_mean(
        [1, 0, 1, 1, 0], ["abstract_algebra", "abstract_algebra", "astronomy", "anatomy", "anatomy"]
    ) == pytest.approx(((0.5 + 1) / 2 + 0.5) / 2)
