"""The mixed healing corpus (heal.data=mixed): big enough, mixed as documented, and sharing no word
8-gram with any item of the embedded evaluation data."""

import importlib.util
from collections import Counter
from pathlib import Path

from engine.config import DataSettings
from engine.distill.data import load_texts

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("build_heal_corpus", ROOT / "tools" / "build_heal_corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows():
    import json
    import lzma

    with lzma.open(ROOT / "engine" / "tasks" / "data" / "heal_mix.jsonl.xz", "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_the_mixed_corpus_shares_no_8gram_with_any_evaluation_item():
    tool = _tool()
    banned = tool.eval_ngrams()
    assert len(banned) > 10000  # the evaluation data was found and read
    overlapping = [i for i, row in enumerate(_rows()) if tool.ngrams(row["text"]) & banned]
    assert overlapping == []


def test_the_check_finds_an_evaluation_item_inside_a_text():
    tool = _tool()
    import json

    item = json.loads((ROOT / "engine" / "tasks" / "data" / "copy_para_ru.jsonl").open(encoding="utf-8").readline())
    assert tool.ngrams("Предисловие. " + item["text"] + " Послесловие.") & tool.eval_ngrams()


def test_the_mixed_corpus_is_selectable_and_mixes_prose_russian_and_code():
    rows = _rows()
    chars = Counter()
    for row in rows:
        chars[row["source"]] += len(row["text"])
    assert set(chars) == {"brown_en", "fortunes_ru", "debian_faq_ru", "python_stdlib", "python_docs"}
    # ~2.5M SmolLM2 tokens (docs/heal_corpus.md); characters per source as the tool printed them
    assert chars["brown_en"] > 5_000_000 and chars["fortunes_ru"] > 500_000 and chars["python_stdlib"] > 1_500_000
    texts = load_texts(DataSettings(source="mixed"))
    assert texts == [row["text"] for row in rows]
