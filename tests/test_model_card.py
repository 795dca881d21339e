"""Every export carries a model card the Hub reads: front matter, removed layers, retention, command."""

import json

import pytest

from engine.models.model_card import base_model, build_card, export_warning, sliding_window_warning
from engine.runlog.reader import read_run
from tests.support import ild, run_args


@pytest.fixture(scope="module")
def finished(tiny, tmp_path_factory):
    runs = tmp_path_factory.mktemp("card") / "runs"
    result = ild(*run_args(tiny / "model", tiny / "suite.yaml", runs, "c1", "--headless"))
    assert result.returncode == 0, result.stderr + result.stdout
    return runs


@pytest.mark.e2e
def test_the_run_export_and_ild_export_carry_a_card_the_hub_reads(finished, tmp_path):
    from huggingface_hub import ModelCard

    out = tmp_path / "exported"
    exported = ild("export", "c1", "--out", str(out), "--runs-dir", str(finished))
    assert exported.returncode == 0, exported.stderr
    record = json.loads((out / "ild_export.json").read_text())
    state = read_run(finished / "c1")
    teacher = state.teacher_eval("report")
    for folder in (finished / "c1" / "export", out):
        card = ModelCard.load(folder / "README.md")
        assert card.data.library_name == "transformers" and "ild" in card.data.tags and "llama" in card.data.tags
        assert card.data.base_model is None  # a local teacher has no Hub id
        text = card.text
        assert (
            f"Removed layers (original indices, in removal order): {', '.join(map(str, record['removal_order']))}"
            in text
        )
        for task in teacher["tasks"]:
            assert f"| {task} | {teacher['tasks'][task]:.4f} |" in text
        assert "| aggregate |" in text and "ild run --model" in text and "--strategy iterative-pruning" in text
    assert "checkpoint `" in (out / "README.md").read_text()


def test_retention_is_the_students_report_score_over_the_teachers():
    class State:
        def teacher_eval(self, part):
            return {"aggregate": 0.5, "tasks": {"a": 0.8, "b": 0.2}}

        def final_evals(self, part):
            return {
                1: {"aggregate": 0.3, "tasks": {"a": 0.6, "b": 0.0}},
                2: {"aggregate": 0.1, "tasks": {"a": 0.2, "b": 0.0}},
            }

    record = {
        "teacher": "Qwen/Qwen2.5-3B",
        "strategy": "iterative-distill",
        "removal_order": [30],
        "teacher_layers": 36,
    }
    text = build_card({**record, "layer_map": list(range(35))}, state=State(), iteration=1)
    assert "| a | 0.8000 | 0.6000 | 75.0 % |" in text and "| b | 0.2000 | 0.0000 | 0.0 % |" in text
    assert "| aggregate | 0.5000 | 0.3000 | 60.0 % |" in text
    assert text.startswith("---\nbase_model: Qwen/Qwen2.5-3B\nlibrary_name: transformers\n")


def test_base_model_is_the_teachers_hub_id():
    assert base_model("Qwen/Qwen2.5-3B") == "Qwen/Qwen2.5-3B"
    assert base_model("smollm2-135m") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert base_model("/models/local") is None and base_model("model.Q4.gguf") is None


@pytest.mark.parametrize("family", ["gemma2", "gemma3_text"])
def test_gemma_students_warn_about_vllm_and_llama_cpp(family):
    from tests.tiny_models import tiny_config

    config = tiny_config(family)
    assert "vLLM and llama.cpp" in export_warning(config)
    text = build_card({"teacher": "google/gemma-2-2b", "layer_map": [0, 2]}, model_config=config)
    assert "## Runtimes" in text and "set_swa_pattern" in text
    assert export_warning(tiny_config("llama")) is None and sliding_window_warning("llama", None) is None


@pytest.mark.e2e
def test_push_to_hub_offline_is_refused_in_one_line_before_exporting(finished, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "pushed"
    result = ild("export", "c1", "--out", str(out), "--runs-dir", str(finished), "--push-to-hub", "me/student")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "HF_HUB_OFFLINE" in lines[0] and not out.exists()
    bad = ild("export", "c1", "--out", str(out), "--runs-dir", str(finished), "--push-to-hub", "a/b/c")
    assert bad.returncode == 2 and "not a Hub repository id" in bad.stderr and not out.exists()


@pytest.mark.e2e
def test_a_failed_upload_is_one_line_and_keeps_the_export(finished, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("HF_TOKEN", "hf_test_token_not_real")
    out = tmp_path / "pushed"
    result = ild("export", "c1", "--out", str(out), "--runs-dir", str(finished), "--push-to-hub", "me/student")
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ild: --push-to-hub me/student: "), result.stderr
    assert (out / "README.md").is_file() and "exported c1" in result.stdout
