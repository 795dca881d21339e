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


def test_refuses_a_project_folder_unless_forced(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "main.py").write_text("print('precious')\n")
    with pytest.raises(ExportRefused, match="not empty and holds no earlier ild export; pass --force"):
        check_export_target(project)
    assert check_export_target(project, force=True) == project.resolve()
    with pytest.raises(ExportRefused, match="home"):
        check_export_target(Path.home(), force=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportRefused, match="is not a directory"):
        check_export_target(tmp_path / "file", force=True)


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
