"""Every Hub dataset a run reads is opened, and one row read, before the run directory exists."""

import json
import time

import pytest

from engine.hub_data import HubRef, check_suites, parse_hf, read_one_row, suite_refs
from engine.tasks.spec import load_suite
from tests.support import ild


def test_hf_sources_parse_with_data_files():
    assert parse_hf("hf:IlyaGusev/rulm") == ("IlyaGusev/rulm", None, "train", None)
    assert parse_hf("hf:a/b:cfg:validation") == ("a/b", "cfg", "validation", None)
    assert parse_hf("hf:json?data_files=hf://datasets/a/b/x.jsonl,y.jsonl") == (
        "json",
        None,
        "train",
        ("hf://datasets/a/b/x.jsonl", "y.jsonl"),
    )
    with pytest.raises(ValueError, match="only data_files"):
        parse_hf("hf:a/b?split=x")


def test_the_paper_suite_opens_each_dataset_split_once():
    refs = suite_refs(load_suite("paper"))
    assert [(r.name, r.config, r.split) for r in refs] == [
        ("RefalMachine/darumeru", "mmlu_nlpcoreteam", "test"),
        ("RefalMachine/darumeru", "mmlu_nlpcoreteam", "dev"),
        ("dichspace/daru_treeway_eval", None, "test"),
        ("dichspace/daru_treeway_eval", None, "prompt"),
        ("RefalMachine/darumeru", "cp_doc_ru", "test"),
        ("RefalMachine/darumeru", "cp_doc_ru", "prompt"),
        ("RefalMachine/darumeru", "cp_para_ru", "test"),
        ("RefalMachine/darumeru", "cp_para_ru", "prompt"),
        ("RefalMachine/darumeru", "flores", "test"),
        ("RefalMachine/darumeru", "flores", "prompt"),
    ]


def test_offline_a_hub_dataset_not_in_the_cache_is_one_line_naming_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ValueError) as err:
        check_suites([load_suite("paper")])
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert message.startswith("task 'en_mmlu': dataset 'RefalMachine/darumeru' is not in the local cache")
    assert "HF_HUB_OFFLINE" in message and "\n" not in message


def test_an_unreachable_hub_fails_at_once_not_after_retries(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"heal\.data: cannot reach the Hub for dataset 'IlyaGusev/rulm'"):
        read_one_row(HubRef("heal.data", "IlyaGusev/rulm"))
    assert time.monotonic() - start < 10


def test_a_script_dataset_says_so_and_how_to_point_at_its_files(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "corpus.py").write_text("import datasets\n")  # a loading script, as on the Hub
    with pytest.raises(ValueError) as err:
        read_one_row(HubRef("heal.data", str(folder)))
    message = str(err.value)
    assert "is a script dataset, which datasets>=4 no longer loads" in message
    assert "heal.data=hf:json?data_files=" in message and "\n" not in message
    (folder / "part.jsonl").write_text(json.dumps({"text": "a b c"}) + "\n")
    row = read_one_row(HubRef("heal.data", "json", data_files=(str(folder / "part.jsonl"),)))
    assert row == {"text": "a b c"}


@pytest.mark.e2e
def test_ild_run_with_offline_hub_healing_data_fails_in_one_line_fast(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    runs = tmp_path / "runs"
    start = time.monotonic()
    result = ild(
        "run",
        *("--model", str(tiny / "model"), "--suite", str(tiny / "suite.yaml")),
        *("--strategy", "iterative-distill", "--target-layers", "4", "--runs-dir", str(runs), "--headless"),
        *("--set", "heal.data=hf:SOME/script_dataset"),
    )
    elapsed = time.monotonic() - start
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "heal.data: dataset 'SOME/script_dataset'" in lines[0], result.stderr
    assert elapsed < 10, elapsed
    assert not runs.exists() or not any(runs.iterdir())  # no run directory, not even a half-made one


def test_local_builders_are_read_through_the_same_check():
    from tests.test_paper_suite import paper_on_fixtures

    check_suites([paper_on_fixtures()])  # the json builder over the fixtures: ten splits, one row each


@pytest.mark.e2e
def test_healing_rows_from_data_files_must_hold_the_text_field(tiny, tmp_path):
    (tmp_path / "notext.jsonl").write_text(json.dumps({"body": "a b c"}) + "\n")
    source = f"hf:json?data_files={tmp_path / 'notext.jsonl'}"
    runs = tmp_path / "runs"
    result = ild(
        "run",
        *("--model", str(tiny / "model"), "--suite", str(tiny / "suite.yaml")),
        *("--strategy", "iterative-distill", "--target-layers", "4", "--runs-dir", str(runs), "--headless"),
        *("--set", f"heal.data={source}"),
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"ild: heal.data {source}: no 'text' field in a row"]
    assert not runs.exists() or not any(runs.iterdir())
