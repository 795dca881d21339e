import itertools
import json

import pytest
import torch

from engine.models.surgery import remove_layers
from engine.tasks.evaluate import SuiteEvaluator, aggregate
from engine.tasks.metrics import bleu, chrf, lcs_ratio, rouge_l
from engine.tasks.spec import TaskFileError, load_suite
from tests.tiny_models import tiny_model
from tests.tiny_suite import tiny_suite as _suite
from tests.tiny_suite import write_rows as _write


def test_shared_prefix_equals_naive_and_plain_removal(tmp_path):
    suite, tok = _suite(tmp_path)
    model = tiny_model("llama")
    evaluator = SuiteEvaluator(model, tok, suite, batch_tokens=64)
    candidates = [None, 0, 2, 5]
    shared = evaluator.evaluate(candidates, shared=True)
    naive = evaluator.evaluate(candidates, shared=False)
    assert shared == naive
    for c in (0, 2, 5):
        # The reference: the model with layer c really removed, evaluated as it is.
        plain_model = tiny_model("llama")
        remove_layers(plain_model, c)
        plain = SuiteEvaluator(plain_model, tok, suite, batch_tokens=64).evaluate([None])[None]
        for task, value in plain.items():
            assert shared[c][task] == pytest.approx(value, abs=1e-4), (c, task)
    for scores in shared.values():
        assert set(scores) == {"lm", "ppl", "lm_ctx", "copy_tf", "mc", "mc_letter", "copy", "translate"}
        assert all(0.0 <= v <= 1.0 for v in scores.values())


def test_language_modeling_prompt_is_context_not_scored(tmp_path):
    """Teacher-forced copying: only the text after the prompt is scored, by the probability the model
    gives each right token."""
    from engine.tasks.requests import prepare_task

    suite, tok = _suite(tmp_path)
    task = next(t for t in suite.tasks if t.name == "copy_tf")
    prepared = prepare_task(task, tok)
    model = tiny_model("llama")
    probability = total = 0.0
    for seq in prepared.sequences:
        context = tok(seq_text := _row_text(tmp_path, seq.item) + " :")["input_ids"]
        scored = tok(_row_text(tmp_path, seq.item), add_special_tokens=False)["input_ids"]
        assert seq.ids == context + scored and seq.targets == scored, seq_text
        assert seq.positions == list(range(len(context) - 1, len(seq.ids) - 1))
        with torch.no_grad():
            logits = model(torch.tensor([seq.ids])).logits[0]
        probs = logits[len(context) - 1 : -1].softmax(-1)
        probability += float(probs[torch.arange(len(scored)), torch.tensor(scored)].sum())
        total += len(scored)
    score = SuiteEvaluator(model, tok, suite).evaluate([None])[None]["copy_tf"]
    assert score == pytest.approx(probability / total, rel=1e-4)


def test_language_modeling_context_tokens_are_read_not_scored(tmp_path):
    from engine.tasks.requests import prepare_task

    suite, tok = _suite(tmp_path)
    task = next(t for t in suite.tasks if t.name == "lm_ctx")
    for seq in prepare_task(task, tok).sequences:
        assert seq.targets == seq.ids[3:] and seq.positions == list(range(2, len(seq.ids) - 1))


def _row_text(tmp_path, index):
    return json.loads((tmp_path / "text.jsonl").read_text().splitlines()[index])["text"]


def test_scores_do_not_depend_on_batching(tmp_path):
    suite, tok = _suite(tmp_path)
    model = tiny_model("qwen2")
    small = SuiteEvaluator(model, tok, suite, batch_tokens=16, max_batch=1).evaluate([None, 3])
    large = SuiteEvaluator(model, tok, suite, batch_tokens=100000).evaluate([None, 3])
    for c in small:
        for task in small[c]:
            assert small[c][task] == pytest.approx(large[c][task], abs=1e-4)


def test_head_chunks_cover_the_positions_in_equal_pieces():
    from engine.tasks.evaluate import head_chunks

    for n in (1, 15, 127, 128, 129, 300, 1457):
        chunks = head_chunks(n, 49152, "cpu")
        assert chunks[0][0] == 0 and chunks[-1][1] == n
        assert all(a[1] == b[0] for a, b in itertools.pairwise(chunks))
        sizes = [stop - start for start, stop in chunks]
        assert max(sizes) <= 256 and max(sizes) - min(sizes) < len(chunks)
    assert [stop - start for start, stop in head_chunks(600, 49152, "cpu")] == [200, 200, 200]
    assert len(head_chunks(1457, 49152, "cuda")) == 1
    assert head_chunks(0, 49152, "cpu") == []


def test_scores_do_not_depend_on_the_head_chunks(tmp_path, monkeypatch):
    """Task scores and loss drop read the LM head a chunk of positions at a time; chunks of 16 rows
    give what one chunk of every position gives."""
    from engine.importance.scores import loss_drop_scores
    from engine.tasks import batches
    from engine.tasks.requests import prepare_task

    suite, tok = _suite(tmp_path)
    model, teacher = tiny_model("llama"), tiny_model("llama", seed=1)
    sequences = prepare_task(next(t for t in suite.tasks if t.name == "lm"), tok).sequences
    vocab = model.config.vocab_size
    results = []
    for budget in (1 << 30, 4 * vocab * 16):
        monkeypatch.setattr(batches, "HEAD_CHUNK_BYTES", {"cpu": budget})
        assert (len(batches.head_chunks(50, vocab, "cpu")) == 1) == (budget == 1 << 30)
        scores = SuiteEvaluator(model, tok, suite, batch_tokens=256).evaluate([None, 1, 3])
        nll = loss_drop_scores(model, sequences, tok.pad_token_id, "nll", batch_tokens=256)
        kl = loss_drop_scores(model, sequences, tok.pad_token_id, "kl", teacher=teacher, batch_tokens=256)
        results.append((scores, nll, kl))
    (scores_one, nll_one, kl_one), (scores_many, nll_many, kl_many) = results
    for c in scores_one:
        for task in scores_one[c]:
            assert scores_many[c][task] == pytest.approx(scores_one[c][task], abs=1e-6), (c, task)
    for one, many in ((nll_one, nll_many), (kl_one, kl_many)):
        assert set(one) == set(range(model.config.num_hidden_layers))
        assert all(many[i] == pytest.approx(one[i], rel=1e-3, abs=1e-7) for i in one)
    assert any(abs(v) > 1e-2 for v in nll_one.values()) and any(abs(v) > 1e-4 for v in kl_one.values())


def test_metrics_against_known_values():
    assert lcs_ratio(["a b c d"], ["a b c d"]) == 1.0
    assert lcs_ratio(["a b x d"], ["a b c d"]) == 0.75
    assert lcs_ratio(["a b c d e f g h"], ["a b c d"]) == 0.5  # invented text costs too
    assert rouge_l(["кошка сидит на ковре"], ["кошка сидит на ковре"]) == 1.0  # non-ASCII kept
    assert rouge_l(["a b"], ["c d"]) == 0.0
    assert chrf(["hello world"], ["hello world"]) == pytest.approx(1.0)
    assert bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(1.0)
    assert 0 < chrf(["hello there"], ["hello world"]) < 1
    assert aggregate({"a": 0.2, "b": 0.4}) == pytest.approx(0.3)


@pytest.mark.parametrize(
    "task, message",
    [
        ("{name: t, kind: sorting, source: {type: embedded, path: x.jsonl}, metric: accuracy}", "kind"),
        (
            "{name: t, kind: generation, source: {type: embedded, path: x.jsonl}, metric: meteor, prompt: p}",
            "unknown metric 'meteor'",
        ),
        (
            "{name: t, kind: multiple_choice, source: {type: embedded, path: x.jsonl}, metric: accuracy, fields: {colour: c}}",
            "unknown task field 'colour'",
        ),
        ("{name: t, kind: multiple_choice, source: {type: ftp, path: x}, metric: accuracy}", "source type"),
        (
            "{name: t, kind: language_modeling, source: {type: embedded, path: x.jsonl}, metric: next_token_accuracy, sample: 3}",
            "unknown key 'sample'",
        ),
        (
            "{name: t, kind: generation, source: {type: embedded, path: x.jsonl}, metric: chrf, prompt: '{nope}'}",
            "unknown field '{nope}'",
        ),
    ],
)
def test_bad_task_files_are_one_clear_line(tmp_path, task, message):
    path = tmp_path / "task.yaml"
    path.write_text(task)
    with pytest.raises(TaskFileError) as err:
        load_suite(str(path))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unknown_suite_is_clear():
    with pytest.raises(TaskFileError, match="unknown suite 'nope'"):
        load_suite("nope")


def test_missing_column_is_clear(tmp_path):
    _write(tmp_path, "d.jsonl", [{"a": 1}])
    (tmp_path / "t.yaml").write_text(
        "{name: t, kind: language_modeling, source: {type: jsonl, path: d.jsonl}, metric: next_token_accuracy, fields: {text: body}}"
    )
    suite = load_suite(str(tmp_path / "t.yaml"))
    from engine.tasks.sources import task_rows

    with pytest.raises(TaskFileError, match="no column 'body'"):
        task_rows(suite.tasks[0])


def test_no_evaluation_text_is_in_the_distillation_data():
    """Healing trains on distill_en.jsonl: any evaluation text in it (a passage, a paragraph to copy,
    a question or any of its choices, distractors included) would score healing on its own data."""
    import json

    from engine.tasks.spec import DATA_DIR as EMBEDDED_DATA

    def words(text):
        return " ".join(text.split())

    training = " ".join(words(json.loads(line)["text"]) for line in (EMBEDDED_DATA / "distill_en.jsonl").open())
    snippets = []
    for name in ("lm_heldout_en.jsonl", "copy_para_en.jsonl", "mc_en.jsonl"):
        for line in (EMBEDDED_DATA / name).open():
            row = json.loads(line)
            for text in [row.get("text") or row["question"], *row.get("choices", [])]:
                snippets.append(words(text)[:60])
    assert len(snippets) == 40 + 40 + 120 * 5
    assert [s for s in snippets if s in training] == []
