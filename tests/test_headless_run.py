"""End to end through the `ild` command on a tiny random model: run, ls, show, export, bad input."""

import json

import pytest

from engine.runlog.tailer import read_all
from tests.support import ild, run_args

pytestmark = pytest.mark.e2e  # starts engine processes


def test_iterative_pruning_run_show_ls_export(tiny, tmp_path):
    runs = tmp_path / "runs"
    result = ild(*run_args(tiny / "model", tiny / "suite.yaml", runs, "t1", "--headless"))
    assert result.returncode == 0, result.stderr + result.stdout
    assert "removed layer" in result.stdout and "finished" in result.stdout

    events = read_all(runs / "t1" / "events.jsonl")
    assert [e["seq"] for e in events] == list(range(len(events)))
    types = {e["type"] for e in events}
    assert {
        "run_started",
        "phase",
        "importance",
        "proposal",
        "decision",
        "layer_removed",
        "eval",
        "checkpoint",
        "run_finished",
    } <= types
    removed = [e["layer"] for e in events if e["type"] == "layer_removed"]
    assert len(removed) == 2 and len(set(removed)) == 2
    importance = [e for e in events if e["type"] == "importance"]
    assert (
        importance[0]["metric"] == "task_drop"
        and len(importance[0]["scores"]) == 6
        and len(importance[1]["scores"]) == 5
    )
    assert set(importance[0]["per_task"]) == {"lm", "ppl", "lm_ctx", "copy_tf", "mc", "mc_letter", "copy", "translate"}
    proposal = next(e for e in events if e["type"] == "proposal")
    assert proposal["layer"] == min(proposal["candidates"], key=lambda c: (c["score"], c["layer"]))["layer"]

    export = json.loads((runs / "t1" / "export" / "config.json").read_text())
    assert export["num_hidden_layers"] == 4 and len(export["ild_layer_map"]) == 4

    shown = ild("show", "t1", "--runs-dir", str(runs))
    assert shown.returncode == 0, shown.stderr
    assert "teacher" in shown.stdout and shown.stdout.count("after_removal") == 2
    for task in ("lm", "mc_letter", "translate"):
        assert task in shown.stdout

    listed = ild("ls", "--runs-dir", str(runs))
    assert "t1" in listed.stdout and "finished" in listed.stdout and "4/6" in listed.stdout

    out = tmp_path / "exported"
    exported = ild("export", "t1", "--out", str(out), "--runs-dir", str(runs))
    assert exported.returncode == 0, exported.stderr
    assert json.loads((out / "config.json").read_text())["ild_layer_map"] == export["ild_layer_map"]


METRICS = {
    "iterative-distill": "task_drop",
    "iterative-distill-bridge": "task_drop",
    "reverse-order": "position",
    "replaceme": "block_distance",
}


@pytest.mark.parametrize(
    "strategy",
    [
        "shortgpt",
        "iterative-bi",
        "iterative-bi-distill",
        "iterative-distill",
        "reverse-order",
        "replaceme",
        "iterative-distill-bridge",
    ],
)
def test_strategies_finish(tiny, tmp_path, strategy):
    runs = tmp_path / "runs"
    result = ild(
        *run_args(tiny / "model", tiny / "suite.yaml", runs, "r", strategy=strategy),
        "--headless",
        "--set",
        "heal.train_tokens=192",
        "--set",
        "heal.seq_len=24",
        "--set",
        "heal.heldout_tokens=48",
    )
    assert result.returncode == 0, result.stderr + result.stdout
    events = read_all(runs / "r" / "events.jsonl")
    importance = [e for e in events if e["type"] == "importance"]
    metric = METRICS.get(strategy, "bi")
    assert [e["metric"] for e in importance] == [metric, metric]
    assert importance[1].get("reused", False) is (strategy in ("shortgpt", "reverse-order", "replaceme"))
    for part in ("select", "report"):
        stages = [e["stage"] for e in events if e["type"] == "eval" and e["part"] == part]
        assert stages.count("teacher") == 1 and stages.count("after_removal") == 2
        heals = strategy.endswith("distill") or strategy in ("reverse-order", "iterative-distill-bridge")
        assert stages.count("after_healing") == (2 if heals else 0)
    steps = [e for e in events if e["type"] == "train_step"]
    assert bool(steps) is heals
    removed = [e for e in events if e["type"] == "layer_removed"]
    if heals:
        assert {"loss", "terms", "unweighted", "lr", "grad_norm", "tokens_per_s"} <= set(steps[0])
        assert list(steps[0]["terms"]) == list(steps[0]["unweighted"]) == ["kl", "mse"]
        shown = ild("show", "r", "--runs-dir", str(runs))
        assert shown.stdout.count("after_healing") == 2, shown.stdout
    if strategy == "reverse-order":
        assert [e["layer"] for e in removed] == [4, 3]  # the deepest layers, the final one kept
        config = json.loads((runs / "r" / "export" / "config.json").read_text())
        assert config["tie_word_embeddings"] is False  # the healed head is the student's own
    if strategy in ("replaceme", "iterative-distill-bridge"):
        assert all("bridge" in e for e in removed if e["layer"] != min(e["remaining"] + [e["layer"]]))
    if strategy == "replaceme":
        block = importance[0]["block"]
        assert [e["layer"] for e in removed] == block and block[1] == block[0] + 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--strategy", "best-one", "--target-layers", "4"], "unknown strategy 'best-one'"),
        (
            ["--strategy", "iterative-pruning", "--target-layers", "6"],
            "must be below the model's current depth (6 layers)",
        ),
        (["--strategy", "iterative-pruning", "--target-layers", "0"], "--target-layers: Input should be greater"),
        (["--strategy", "iterative-pruning", "--target-layers", "4", "--suite", "nosuch"], "unknown suite 'nosuch'"),
        (
            ["--strategy", "iterative-pruning", "--target-layers", "4", "--suite", "BADFIELD"],
            "unknown task field 'colour'",
        ),
        (
            ["--strategy", "iterative-pruning", "--target-layers", "4", "--suite", "BADMETRIC"],
            "unknown metric 'meteor'",
        ),
        (
            ["--strategy", "iterative-pruning", "--target-layers", "4", "--model", "nope/missing-model"],
            "cannot load model",
        ),
        (["--strategy", "iterative-pruning", "--target-layers", "4", "--suite", "NOFILE"], "not found"),
        (["--strategy", "iterative-pruning", "--target-layers", "4", "--suite", "BROKENJSONL"], ":2: bad JSON"),
        (["--strategy", "iterative-pruning", "--target-layers", "4", "--suite", "NOCOLUMN"], "no column 'words'"),
        (["--strategy", "iterative-pruning", "--target-layers", "4", "--suite", "BADTEMPLATE"], "{nope}"),
        (["--strategy", "iterative-distill", "--target-layers", "4", "--set", "heal.data=NODISTILL"], "heal.data"),
        (["--strategy", "iterative-distill", "--target-layers", "4", "--set", "heal.data=NOTEXT"], "no 'text' field"),
        (["--strategy", "iterative-pruning", "--target-layers", "4", "--notify-cmd", 'a "b'], "notify command"),
    ],
)
def test_bad_input_is_one_line_and_leaves_no_run_directory(tiny, tmp_path, args, message, monkeypatch):
    (tmp_path / "badfield.yaml").write_text(
        "{name: t, kind: multiple_choice, source: {type: jsonl, path: x.jsonl}, metric: accuracy, fields: {colour: c}}"
    )
    (tmp_path / "badmetric.yaml").write_text(
        "{name: t, kind: generation, prompt: p, source: {type: jsonl, path: x.jsonl}, metric: meteor}"
    )
    (tmp_path / "lines.jsonl").write_text('{"text": "a b c"}\n{"text": \n')
    (tmp_path / "rows.jsonl").write_text("".join(f'{{"text": "a b c {i}"}}\n' for i in range(12)))
    (tmp_path / "notext.jsonl").write_text('{"body": "a b c"}\n')
    lm = "{name: t, kind: language_modeling, metric: next_token_accuracy, "
    files = {
        "NOFILE": lm + "source: {type: jsonl, path: missing.jsonl}}",
        "BROKENJSONL": lm + "source: {type: jsonl, path: lines.jsonl}}",
        "NOCOLUMN": lm + "source: {type: jsonl, path: rows.jsonl}, fields: {text: words}}",
        "BADTEMPLATE": lm + "source: {type: jsonl, path: rows.jsonl}, prompt: '{text} {nope}'}",
    }
    for key, text in files.items():
        (tmp_path / f"{key.lower()}.yaml").write_text(text)
    replacements = {
        "BADFIELD": tmp_path / "badfield.yaml",
        "BADMETRIC": tmp_path / "badmetric.yaml",
        "NODISTILL": tmp_path / "missing.jsonl",
        "NOTEXT": tmp_path / "notext.jsonl",
        **{key: tmp_path / f"{key.lower()}.yaml" for key in files},
    }
    for key, path in replacements.items():
        args = [a.replace(key, str(path)) for a in args]
    if "--model" not in args:
        args += ["--model", str(tiny / "model")]
    if "--suite" not in args:
        args += ["--suite", str(tiny / "suite.yaml")]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    runs = tmp_path / "runs"
    result = ild("run", *args, "--runs-dir", str(runs), "--headless")
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not runs.exists() or not any(runs.iterdir())
