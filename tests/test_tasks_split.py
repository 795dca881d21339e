"""The selection/report split, report suites, embedded paths, and the data check before a run."""

import json
import random

import pytest

from engine.tasks.check import check_suite_data, describe_suite_data
from engine.tasks.evaluate import SuiteEvaluator
from engine.tasks.sources import in_selection_part, task_rows
from engine.tasks.spec import TaskFileError, embedded_suites, load_report_suite, load_suite
from tests.tiny_models import tiny_model
from tests.tiny_suite import WORDS
from tests.tiny_tokenizer import word_tokenizer


def _rows(n, seed=0):
    rng = random.Random(seed)
    return [{"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))) + f" {i}"} for i in range(n)]


def _task_file(tmp_path, rows, samples=1000, extra=""):
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "t.yaml").write_text(
        "{name: t, kind: language_modeling, source: {type: jsonl, path: d.jsonl}, metric: next_token_probability, samples: %d%s}"  # noqa: UP031 (YAML braces)
        % (samples, extra)
    )
    return load_suite(str(tmp_path / "t.yaml")).tasks[0]


def _texts(rows):
    return [r["text"] for r in rows]


def test_split_is_deterministic_disjoint_covering_and_stable_when_rows_are_added(tmp_path):
    rows = _rows(200)
    task = _task_file(tmp_path, rows)
    select, _ = task_rows(task, "select")
    report, _ = task_rows(task, "report")
    assert _texts(task_rows(task, "select")[0]) == _texts(select)  # deterministic
    assert set(_texts(select)).isdisjoint(_texts(report))  # disjoint
    assert sorted(_texts(select) + _texts(report)) == sorted(_texts(rows))  # covering
    assert 60 < len(select) < 140  # about half
    # Rows added before, between and after, and the order shuffled: every old row stays in its part.
    more = rows + _rows(100, seed=1)
    random.Random(2).shuffle(more)
    task = _task_file(tmp_path, more)
    grown = set(_texts(task_rows(task, "select")[0]))
    assert set(_texts(select)) <= grown and grown.isdisjoint(_texts(report))
    # The seed and the fraction move it; the task name too (two tasks on one file split differently).
    assert {in_selection_part("t", r, 0.5, seed=1) for r in rows} == {True, False}
    assert [in_selection_part("t", r, 0.5, 1) for r in rows] != [in_selection_part("t", r, 0.5, 0) for r in rows]
    assert [in_selection_part("u", r, 0.5, 0) for r in rows] != [in_selection_part("t", r, 0.5, 0) for r in rows]
    assert sum(in_selection_part("t", r, 0.2) for r in rows) < sum(in_selection_part("t", r, 0.8) for r in rows)


def test_samples_counts_items_of_each_part_and_none_is_the_whole_source(tmp_path):
    rows = _rows(60)
    task = _task_file(tmp_path, rows, samples=10)
    select, report = task_rows(task, "select")[0], task_rows(task, "report")[0]
    assert len(select) == len(report) == 10
    assert _texts(task_rows(task, None)[0]) == _texts(rows[:10])
    # In source order within the part.
    positions = [_texts(rows).index(t) for t in _texts(select)]
    assert positions == sorted(positions)


def test_task_fraction_overrides_the_suite_fraction(tmp_path):
    rows = _rows(300)
    task = _task_file(tmp_path, rows, extra=", select_fraction: 0.2")
    assert len(task_rows(task, "select", fraction=0.2)[0]) < 100
    suite = load_suite(str(tmp_path / "t.yaml"))
    assert suite.fraction_for(suite.tasks[0]) == 0.2


def test_evaluator_parts_score_disjoint_items(tmp_path):
    rows = _rows(40)
    _task_file(tmp_path, rows, samples=8)
    suite = load_suite(str(tmp_path / "t.yaml"))
    tok = word_tokenizer(_texts(rows))
    model = tiny_model("llama")
    parts = {part: SuiteEvaluator(model, tok, suite, part=part) for part in ("select", "report", None)}
    seen = {part: {tuple(s.ids) for s in ev.tasks[0].sequences} for part, ev in parts.items()}
    assert seen["select"].isdisjoint(seen["report"]) and len(seen["select"]) == len(seen["report"]) == 8
    scores = {part: ev.evaluate([None])[None]["t"] for part, ev in parts.items()}
    assert scores["select"] != scores["report"]


def test_embedded_path_outside_the_data_folder_is_refused(tmp_path):
    for path in ("../../etc/passwd", "/etc/passwd", "../suites/default.yaml"):
        (tmp_path / "t.yaml").write_text(
            f"{{name: t, kind: language_modeling, source: {{type: embedded, path: '{path}'}}, metric: next_token_accuracy}}"
        )
        with pytest.raises(TaskFileError) as err:
            load_suite(str(tmp_path / "t.yaml"))
        assert "inside engine/tasks/data" in str(err.value) and "\n" not in str(err.value)


def test_report_suite_loads_and_task_names_must_not_collide(tmp_path):
    suite = load_suite("default")
    report = load_report_suite(suite)
    assert report.name == "default-report" and {t.name for t in suite.tasks}.isdisjoint(t.name for t in report.tasks)
    assert load_report_suite(load_suite("mmlu")) is None
    (tmp_path / "main.yaml").write_text(
        "name: main\nreport: other.yaml\ntasks:\n  - {name: lm_en, kind: language_modeling, source: {type: embedded, path: lm_heldout_en.jsonl}, metric: next_token_probability}\n"
    )
    (tmp_path / "other.yaml").write_text(
        "name: other\ntasks:\n  - {name: lm_en, kind: language_modeling, source: {type: embedded, path: copy_para_en.jsonl}, metric: next_token_probability}\n"
    )
    with pytest.raises(TaskFileError) as err:
        load_report_suite(load_suite(str(tmp_path / "main.yaml")))
    assert "task 'lm_en' is in both" in str(err.value) and "\n" not in str(err.value)
    assert (
        load_report_suite(load_suite(str(tmp_path / "main.yaml")), override="default-report").name == "default-report"
    )


def test_every_embedded_suite_passes_the_data_check():
    for name in embedded_suites():
        check_suite_data(load_suite(name))  # the Hub tasks of `paper` are skipped offline, not waited for
    assert any("not read offline" in line for line in describe_suite_data(load_suite("paper")))


@pytest.mark.parametrize(
    "data, task, message",
    [
        (
            None,
            "{name: t, kind: language_modeling, source: {type: jsonl, path: gone.jsonl}, metric: next_token_accuracy}",
            "gone.jsonl not found",
        ),
        (
            '{"text": "a b"}\n{"text": "a b"\n',
            "{name: t, kind: language_modeling, source: {type: jsonl, path: d.jsonl}, metric: next_token_accuracy}",
            "d.jsonl:2: bad JSON",
        ),
        (
            '{"text": "a b"}\n{"body": "c d"}\n',
            "{name: t, kind: language_modeling, source: {type: jsonl, path: d.jsonl}, metric: next_token_accuracy}",
            "d.jsonl:2: template field 'text' missing",
        ),
        (
            '{"q": "a", "c": ["x", "y"], "a": 0}\n{"q": "b", "a": 1}\n',
            "{name: t, kind: multiple_choice, source: {type: jsonl, path: d.jsonl}, fields: {question: q, choices: c, answer: a}, prompt: '{question}', metric: accuracy}",
            "d.jsonl:2: no column 'c' (for field 'choices'",
        ),
        (
            '{"src": "a", "dst": "b"}\n',
            "{name: t, kind: generation, source: {type: jsonl, path: d.jsonl}, fields: {input: src}, prompt: '{input} {summary}', metric: chrf}",
            "d.jsonl:1: template field 'summary' missing",
        ),
        (
            "[1, 2]\n",
            "{name: t, kind: language_modeling, source: {type: jsonl, path: d.jsonl}, metric: next_token_accuracy}",
            "d.jsonl:1: a row must be a JSON object",
        ),
    ],
)
def test_data_problems_are_one_line_before_any_model(tmp_path, data, task, message):
    if data is not None:
        (tmp_path / "d.jsonl").write_text(data)
    (tmp_path / "t.yaml").write_text(task)
    with pytest.raises(TaskFileError) as err:
        check_suite_data(load_suite(str(tmp_path / "t.yaml")))
    assert message in str(err.value) and "task 't'" in str(err.value) and "\n" not in str(err.value)
