"""`ild eval RUN --lm-eval TASKS`: lm-evaluation-harness on the exported student and its teacher, offline
(a task YAML over a local JSONL), stored with the run and shown by `ild report`."""

import json

import pytest

from engine.harness import table
from tests.support import ild, run_args

pytest.importorskip("lm_eval")

ROWS = [
    ("The sky on a clear day is", ["blue", "green", "loud"], 0),
    ("Fresh grass is", ["purple", "green", "salty"], 1),
    ("Snow is", ["white", "black", "hot"], 0),
    ("The sun rises in the", ["west", "east", "sea"], 1),
    ("Water freezes when it is", ["hot", "cold", "red"], 1),
    ("A cat says", ["moo", "meow", "quack"], 1),
    ("Two plus two is", ["four", "five", "six"], 0),
    ("Night comes after", ["day", "noon", "dawn"], 0),
]


@pytest.fixture(scope="module")
def finished(tiny, tmp_path_factory):
    runs = tmp_path_factory.mktemp("harness") / "runs"
    result = ild(*run_args(tiny / "model", tiny / "suite.yaml", runs, "h1", "--headless"))
    assert result.returncode == 0, result.stderr + result.stdout
    return runs


def _task_folder(root):
    root.mkdir()
    data = root / "rows.jsonl"
    data.write_text("".join(json.dumps({"q": q, "choices": c, "answer": a}) + "\n" for q, c, a in ROWS))
    (root / "tiny_mc.yaml").write_text(
        "task: tiny_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs: {{data_files: {{test: {data}}}}}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{q}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{answer}}"\n'
        "metric_list:\n  - {metric: acc, aggregation: mean, higher_is_better: true}\n"
        "  - {metric: acc_norm, aggregation: mean, higher_is_better: true}\n"
    )
    return root


@pytest.mark.e2e
def test_ild_eval_scores_student_and_teacher_and_report_shows_it(finished, tiny, tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    tasks = _task_folder(tmp_path / "tasks")
    result = ild("eval", "h1", "--lm-eval", "tiny_mc", "--include", str(tasks), "--runs-dir", str(finished))
    assert result.returncode == 0, result.stderr
    header, *lines = result.stdout.strip().splitlines()
    assert header.split() == ["task", "metric", "teacher", "h1"]
    assert [line.split()[:2] for line in lines] == [["tiny_mc", "acc"], ["tiny_mc", "acc_norm"]]

    stored = json.loads((finished / "h1" / "lm_eval.json").read_text())
    assert stored["teacher"]["model"] == str(tiny / "model")
    assert stored["student"]["model"] == str(finished / "h1" / "export")
    assert stored["tasks"] == ["tiny_mc"] and stored["student"]["n-samples"]["tiny_mc"]["effective"] == len(ROWS)
    # The teacher's figure is lm-eval's own on the teacher's directory: ild only loads the model.
    direct = simple_evaluate(
        model="hf",
        model_args=f"pretrained={tiny / 'model'},dtype=float32",
        tasks=["tiny_mc"],
        task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
        device="cpu",
        log_samples=False,
        bootstrap_iters=0,
    )
    for metric in ("acc,none", "acc_norm,none"):
        assert stored["teacher"]["results"]["tiny_mc"][metric] == direct["results"]["tiny_mc"][metric]

    out = tmp_path / "report"
    report = ild("report", "h1", "--out", str(out), "--no-measure", "--runs-dir", str(finished))
    assert report.returncode == 0, report.stderr
    page = (out / "report.html").read_text()
    assert "<h2>lm-evaluation-harness</h2>" in page
    acc = stored["student"]["results"]["tiny_mc"]["acc,none"]
    assert f"{acc:.4f}" in page and "lm_eval.csv" in page


def test_eval_refuses_a_run_without_export(runs):
    result = ild("eval", "smollm2-distill-live", "--lm-eval", "tiny_mc", "--runs-dir", str(runs))
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "ild: run 'smollm2-distill-live' has no export yet (it exports when it finishes): nothing to evaluate"
    ]


@pytest.mark.e2e
def test_eval_refuses_an_unknown_task_in_one_line(finished, tmp_path):
    tasks = _task_folder(tmp_path / "tasks")
    result = ild("eval", "h1", "--lm-eval", "nosuchtask", "--include", str(tasks), "--runs-dir", str(finished))
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"ild: --lm-eval: no lm-eval task 'nosuchtask' in {tasks}"
    ]


def test_the_table_puts_models_side_by_side_with_retention():
    results = lambda acc: {"results": {"t": {"acc,none": acc, "acc_stderr,none": 0.1}}}
    text = table([("teacher", results(0.8)), ("s1", results(0.6))], teacher="teacher")
    assert text.splitlines() == [
        "task  metric   teacher        s1",
        "t     acc       0.8000  0.6000 (75%)",
    ]


def test_the_report_section_escapes_each_cell_once():
    from ild_tui.report.lm_eval import section

    html = section(
        [{"run": "a&b", "task": "arc<easy>", "metric": "acc", "teacher": 0.5, "student": 0.4, "retention": 0.8}]
    )
    assert "<td>a&amp;b</td>" in html and "<td>arc&lt;easy&gt;</td>" in html
