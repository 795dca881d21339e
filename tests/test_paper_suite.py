"""The paper suite on fixture rows in its Hub datasets' schemas, through the datasets code path."""

import json
from pathlib import Path

import pytest
import torch

from engine.tasks.check import check_suite_data, describe_suite_data
from engine.tasks.evaluate import SuiteEvaluator
from engine.tasks.metrics import copy_match, mmlu_category_mean, rouge_12_lemmas, rouge_l_lemmas
from engine.tasks.requests import conversation_ids, prepare_task
from engine.tasks.sources import shots_for, task_rows
from engine.tasks.spec import HubSource, SuiteSpec, TaskFileError, load_suite
from tests import llmtf_reference as ref
from tests.chat_tokenizers import chat_tokenizer

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


def _rows(path):
    return [json.loads(line) for line in (FIXTURES / path).open()]


def _reference_messages(task, row, tok):
    """The messages LLMTF 19b5ce6 builds for this test row of the fixtures (tests/llmtf_reference.py)."""
    if task.name.endswith("_mmlu"):
        lang = task.name[:2]
        dev = [r for r in _rows("darumeru/mmlu_nlpcoreteam/dev.jsonl") if r["subject"] == row["subject"]]
        name = task.vars["subject_name"]
        subject = name.map.get(row["subject"], row["subject"]).replace("_", " ")
        return ref.mmlu(lang, row, dev, subject, tok)
    if task.name == "daru_treeway_abstractive":
        return ref.few_shot(ref.treeway, row, _rows("daru_treeway_eval/prompt.jsonl"), tok)
    if task.name.startswith("flores_"):
        return ref.few_shot(ref.flores(task.name[7:9]), row, _rows("darumeru/flores/prompt.jsonl"), tok)
    folder = task.source.config if task.source.name != "json" else task.name
    return ref.few_shot(ref.darumeru, row, _rows(f"darumeru/{folder}/prompt.jsonl"), tok)


@pytest.mark.parametrize("family", ["qwen2.5", "llama3"])
def test_every_paper_task_asks_what_llmtfs_non_instruct_simple_asks(family):
    """The paper's eval.sh: LLMTF with conversation_configs/non_instruct_simple.json. For every task
    and test row, the prompt ild renders and its stop strings are LLMTF's, on a Qwen-style
    tokenizer (no BOS) and a Llama-3-style one (its BOS text first); MMLU's answer tokens too."""
    tok = chat_tokenizer(family)
    suite = paper_on_fixtures()
    for task in suite.tasks:
        assert task.layout == "plain"
        prepared = prepare_task(task, tok)
        test_rows = _rows(_test_file(task))
        assert len(test_rows) == len(task_rows(task)[0])  # every fixture row, in source order
        for k, row in enumerate(test_rows):
            expected = ref.prompt(_reference_messages(task, row, tok), tok)
            if task.kind == "multiple_choice":
                letters, space = ref.tokens_of_interest(expected, tok)
                sequence = prepared.sequences[k]
                assert tok.decode(sequence.ids) == expected + (" " if space else ""), (task.name, k)
                assert sequence.letter_ids == letters and sequence.letter_variants == 1
            else:
                request = prepared.generations[k]
                assert tok.decode(request.prompt_ids) == expected, (task.name, k)
                assert request.stop == ref.NON_INSTRUCT_SIMPLE["eos_token"]
                assert ref.count(tok, expected) == len(request.prompt_ids)


def _test_file(task):
    for (name, config), folder in FILES.items():
        if (name, config) == ORIGINAL[task.name]:
            return f"{folder}/test.jsonl"
    raise KeyError(task.name)


ORIGINAL = {t.name: (t.source.name, t.source.config) for t in load_suite("paper").tasks}


def test_the_paper_suite_names_its_layout_and_metric_versions():
    suite = load_suite("paper")
    assert {t.layout for t in suite.tasks} == {"plain"}
    assert all("LLMTF 19b5ce6" in t.description for t in suite.tasks)
    metrics = {t.name: t.metric for t in suite.tasks}
    assert metrics["flores_en_ru"] == metrics["daru_treeway_abstractive"] == "rouge_12_lemmas"
    assert _task(suite, "cp_doc_ru").max_new_tokens == 4096 and _task(suite, "cp_para_ru").max_new_tokens == 1024


def test_the_foundational_layout_is_llmtfs_start_of_turn():
    task = _task(paper_on_fixtures(), "flores_ru_en").model_copy(update={"few_shot": 1, "layout": "foundational"})
    text, stop = _prompt(task, byte_tokenizer())
    assert text == (
        "<start_of_turn>user\nПереведи текст с русского языка на английский.\nКошка спит.\t\n<start_of_turn>assistant\nПеревод: The cat sleeps.\t\n"
        "<start_of_turn>user\nПереведи текст с русского языка на английский.\nКошка спит.\t\n<start_of_turn>assistant\nПеревод: "
    )
    assert stop == ["\n\n", "\t\n"]


def test_treeway_in_chat_layout_continues_tldr_through_the_template():
    template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% if not loop.last %}<|end|>{% endif %}{% endfor %}{% if add_generation_prompt %}<|end|><|assistant|>{% endif %}"
    task = _task(paper_on_fixtures(), "daru_treeway_abstractive").model_copy(update={"few_shot": 1, "layout": "chat"})
    text, stop = _prompt(task, byte_tokenizer(template))
    assert "Текст: Вчера прошёл дождь. Улицы были мокрыми. Люди шли с зонтами.<|end|><|assistant|>TL;DR:" in text
    assert text.endswith("<|assistant|>TL;DR:") and "TL;DR: Был дождь.<|end|>" in text and stop == ["\n\n"]
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
    # The paper-era score: the mean of ROUGE-1 and ROUGE-2 F on lemmas. "кошка сидит на ковре" vs
    # "кошка лежит на ковре": unigrams 3 of 4 match (F 0.75), bigrams 1 of 3 ("на ковёр"; F 1/3).
    assert rouge_12_lemmas(["Кошки лежали на коврах"], ["кошка сидит на ковре"]) == pytest.approx((0.75 + 1 / 3) / 2)
    # MMLU: subjects, then categories (abstract_algebra and astronomy are STEM, anatomy is "other").
    assert mmlu_category_mean(
        [1, 0, 1, 1, 0], ["abstract_algebra", "abstract_algebra", "astronomy", "anatomy", "anatomy"]
    ) == pytest.approx(((0.5 + 1) / 2 + 0.5) / 2)


def test_suite_check_prints_layout_and_stops_offline_and_a_prompt_where_the_data_loads(tmp_path, capsys, monkeypatch):
    import yaml

    from engine import suite_check

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert suite_check.main(["--suite", "paper", "--data-only"]) == 0
    out = capsys.readouterr().out
    for task in load_suite("paper").tasks:
        assert f"  {task.name}: layout plain" in out and "(Hub, not read offline)" in out
    assert "flores_en_ru: layout plain, stop ['\\n\\n'], metric rouge_12_lemmas, 512 new tokens" in out

    suite = paper_on_fixtures()
    path = tmp_path / "paper_local.yaml"
    tasks = [t.model_dump(mode="json", exclude_none=True) for t in suite.tasks]
    path.write_text(yaml.safe_dump({"name": "paper_local", "tasks": tasks}, allow_unicode=True))
    assert suite_check.main(["--suite", str(path), "--data-only"]) == 0
    out = capsys.readouterr().out
    tok = chat_tokenizer("qwen2.5")  # no BOS: the text LLMTF renders is the text shown
    row = _rows("darumeru/flores/test.jsonl")[0]
    expected = ref.prompt(ref.few_shot(ref.flores("ru"), row, _rows("darumeru/flores/prompt.jsonl"), tok), tok)
    assert f"  flores_ru_en: {expected!r}" in out
