"""`ild export --out DIR` never deletes what it did not write."""

import json
from pathlib import Path

import pytest

from engine.models.export import ExportRefused, check_export_target, export_model


def test_refuses_the_run_directory_and_its_parents(tmp_path):
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    for out in (run, tmp_path / "runs", tmp_path):
        with pytest.raises(ExportRefused, match="is the run directory or holds it"):
            check_export_target(out, force=True, run_dir=run)


def test_refuses_a_project_folder_even_when_forced(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "main.py").write_text("print('precious')\n")
    for force in (False, True):
        with pytest.raises(ExportRefused, match="not empty and holds no earlier ild export"):
            check_export_target(project, force=force)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportRefused, match="is not a directory"):
        check_export_target(tmp_path / "file", force=True)


def test_refuses_home_and_every_directory_above_it_even_when_forced(tmp_path, monkeypatch):
    home = tmp_path / "home" / "user"
    home.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    for out, words in ((home, "your home directory"), (home.parent, "above your home"), (tmp_path, "above your home")):
        with pytest.raises(ExportRefused, match=words):
            check_export_target(out, force=True)
    assert check_export_target(home / "exports" / "student") == (home / "exports" / "student").resolve()


def _run_dir(path: Path) -> Path:
    (path / "checkpoints").mkdir(parents=True)
    (path / "events.jsonl").write_text("")
    (path / "config.yaml").write_text("name: x\n")
    return path


def test_refuses_anything_inside_a_run_directory_and_a_runs_directory_even_when_forced(tmp_path):
    run = _run_dir(tmp_path / "runs" / "mine")
    other = _run_dir(tmp_path / "runs" / "other")
    for out, words in (
        (run / "checkpoints", "inside the run directory"),
        (other, "inside the run directory"),
        (other / "checkpoints" / "new", "inside the run directory"),
        (tmp_path / "runs", "is the run directory or holds it"),
    ):
        with pytest.raises(ExportRefused, match=words):
            check_export_target(out, force=True, run_dir=run)
    with pytest.raises(ExportRefused, match="holds run directories"):
        check_export_target(tmp_path / "runs", force=True, run_dir=None)
    # The run's own export directory is the engine's to write.
    assert check_export_target(run / "export", run_dir=run) == (run / "export").resolve()


def test_an_earlier_export_with_added_files_is_replaced_only_when_forced_and_the_files_are_kept(tmp_path):
    from transformers import AutoModelForCausalLM

    from tests.tiny_models import tiny_config

    model = AutoModelForCausalLM.from_config(tiny_config("llama"))
    out = export_model(model, None, tmp_path / "student")
    (out / "notes.md").write_text("my evaluation notes")
    with pytest.raises(ExportRefused, match=r"holds files no export wrote \(notes.md\); pass --force"):
        export_model(model, None, out, {"run": "second"})
    assert json.loads((out / "ild_export.json").read_text()).get("run") is None
    export_model(model, None, out, {"run": "second"}, force=True)
    assert json.loads((out / "ild_export.json").read_text())["run"] == "second"
    assert (out / "notes.md").read_text() == "my evaluation notes"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_an_export_from_before_the_file_list_still_keeps_what_it_did_not_write(tmp_path):
    from transformers import AutoModelForCausalLM

    from tests.tiny_models import tiny_config

    model = AutoModelForCausalLM.from_config(tiny_config("llama"))
    out = export_model(model, None, tmp_path / "student")
    record = json.loads((out / "ild_export.json").read_text())
    del record["files"]
    (out / "ild_export.json").write_text(json.dumps(record))
    (out / "keep.txt").write_text("keep")
    with pytest.raises(ExportRefused, match=r"keep\.txt"):
        export_model(model, None, out)
    assert (out / "keep.txt").read_text() == "keep"
    export_model(model, None, out, force=True)
    assert (out / "keep.txt").read_text() == "keep"


def test_replaces_an_earlier_export_and_an_empty_directory(tmp_path):
    from transformers import AutoModelForCausalLM

    from tests.tiny_models import tiny_config

    model = AutoModelForCausalLM.from_config(tiny_config("llama"))
    (tmp_path / "empty").mkdir()
    export_model(model, None, tmp_path / "empty")
    out = export_model(model, None, tmp_path / "empty", {"run": "second"})
    assert json.loads((out / "ild_export.json").read_text())["run"] == "second"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    project = tmp_path / "project"
    project.mkdir()
    (project / "keep.txt").write_text("keep")
    with pytest.raises(ExportRefused):
        export_model(model, None, project)
    assert (project / "keep.txt").read_text() == "keep"
