"""An export is the student or an error: a run whose newest checkpoint was altered, removed,
replaced by a link or whose teacher changed is never exported as something else with exit 0."""

import json
import os
import shutil
import subprocess

import pytest
import yaml
from safetensors.torch import load_file

from engine.runlog.tailer import read_all
from tests.support import ENGINE
from tests.test_faults import _create, _env

pytestmark = pytest.mark.e2e  # starts engine processes


@pytest.fixture(scope="module")
def finished(tiny, tmp_path_factory):
    """A healed run from 6 to 4 layers on its own copy of the tiny teacher: checkpoints 0, 1, 2."""
    root = tmp_path_factory.mktemp("integrity")
    shutil.copytree(tiny / "model", root / "teacher")
    run = _create(root / "runs" / "whole", tiny, model=str(root / "teacher"))
    result = subprocess.run([*ENGINE, str(run)], capture_output=True, text=True, env=_env())
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == ["0", "1", "2"]
    return run


def _copy(run, tmp_path, name="copy"):
    """A copy of the run beside its own runs directory (checkpoint links inside stay relative)."""
    target = tmp_path / "runs" / name
    shutil.copytree(run, target, symlinks=True)
    return target


def _export(run, out, *extra):
    return subprocess.run(
        [*ENGINE, str(run), "--export", "--out", str(out), *extra], capture_output=True, text=True, env=_env()
    )


def _refused(result, out, words):
    assert result.returncode == 1, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert words in result.stderr, result.stderr
    assert not out.exists()


def test_the_export_of_a_sound_run_is_byte_identical_to_the_runs_own_student(finished, tmp_path):
    result = _export(finished, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    ours = load_file(str(tmp_path / "out" / "model.safetensors"))
    engines = load_file(str(finished / "export" / "model.safetensors"))
    assert ours.keys() == engines.keys()
    assert all((ours[k] == engines[k]).all() for k in ours)
    record = json.loads((tmp_path / "out" / "ild_export.json").read_text())
    assert record["checkpoint"] == "2" and len(record["removed"]) == 2


def test_overwritten_tensors_of_the_newest_checkpoint_fail_instead_of_exporting_the_one_before(finished, tmp_path):
    run = _copy(finished, tmp_path)
    tensors = run / "checkpoints" / "2" / "layers.safetensors"
    size = tensors.stat().st_size
    tensors.write_bytes(os.urandom(size))
    _refused(_export(run, tmp_path / "out"), tmp_path / "out", "checkpoint 2: layers.safetensors does not match")


@pytest.mark.parametrize(
    "damage, words",
    [
        ("delete manifest", "checkpoint 2 has no readable checkpoint.json"),
        ("wrong sha", "checkpoint.json is not the one the run's log recorded"),
        ("edit removed layer", "checkpoint.json is not the one the run's log recorded"),
        ("drop files key", "checkpoint.json is not the one the run's log recorded"),
        ("link to another run", "checkpoint 2 is a symbolic link"),
        ("tensors a link", "layers.safetensors is not a regular file of the run"),
        ("only checkpoint 0 verifies", "checkpoint 2"),
    ],
)
def test_a_damaged_newest_checkpoint_is_an_error_naming_what(finished, tmp_path, damage, words):
    run = _copy(finished, tmp_path)
    ckpt = run / "checkpoints" / "2"
    manifest = json.loads((ckpt / "checkpoint.json").read_text())
    if damage == "delete manifest":
        (ckpt / "checkpoint.json").unlink()
    elif damage == "wrong sha":
        manifest["files"]["layers.safetensors"]["sha256"] = "0" * 64
        (ckpt / "checkpoint.json").write_text(json.dumps(manifest))
    elif damage == "edit removed layer":
        manifest["removed"][-1]["layer"] = 0
        (ckpt / "checkpoint.json").write_text(json.dumps(manifest))
    elif damage == "drop files key":
        del manifest["files"]
        (ckpt / "checkpoint.json").write_text(json.dumps(manifest))
    elif damage == "link to another run":
        other = _copy(finished, tmp_path, "other")
        shutil.rmtree(ckpt)
        ckpt.symlink_to(other / "checkpoints" / "1")
    elif damage == "tensors a link":
        shutil.copy(ckpt / "layers.safetensors", tmp_path / "elsewhere.safetensors")
        (ckpt / "layers.safetensors").unlink()
        (ckpt / "layers.safetensors").symlink_to(tmp_path / "elsewhere.safetensors")
    elif damage == "only checkpoint 0 verifies":
        for name in ("1", "2"):
            (run / "checkpoints" / name / "layers.safetensors").write_bytes(b"x")
    _refused(_export(run, tmp_path / "out"), tmp_path / "out", words)


def test_a_log_without_manifest_digests_still_catches_an_edited_removal(finished, tmp_path):
    """A run written before the log kept manifest digests: the log's removals are the witness."""
    run = _copy(finished, tmp_path)
    events = read_all(run / "events.jsonl")
    with open(run / "events.jsonl", "w") as f:
        for e in events:
            if e["type"] == "checkpoint":
                e.pop("manifest_sha256", None)
                e.pop("removed", None)
            f.write(json.dumps(e) + "\n")
    ckpt = run / "checkpoints" / "2"
    manifest = json.loads((ckpt / "checkpoint.json").read_text())
    kept = [r["layer"] for r in manifest["removed"]]
    manifest["removed"][-1]["layer"] = next(i for i in range(6) if i not in kept)
    (ckpt / "checkpoint.json").write_text(json.dumps(manifest))
    _refused(_export(run, tmp_path / "out"), tmp_path / "out", "the run's log")


def test_an_older_checkpoint_is_exported_only_on_purpose(finished, tmp_path):
    result = _export(finished, tmp_path / "out", "--from-checkpoint", "1")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "out" / "config.json").read_text())["num_hidden_layers"] == 5
    _refused(_export(finished, tmp_path / "zero", "--from-checkpoint", "0"), tmp_path / "zero", "it is the teacher")
    _refused(_export(finished, tmp_path / "nine", "--from-checkpoint", "9"), tmp_path / "nine", "no checkpoint 9")


def test_another_teacher_at_the_models_path_is_refused_by_export_and_resume(finished, tmp_path):
    run = _copy(finished, tmp_path)
    moved = tmp_path / "teacher-moved"
    shutil.copytree(yaml.safe_load((run / "config.yaml").read_text())["model"], moved)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"] = str(moved)
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    assert _export(run, tmp_path / "same").returncode == 0  # moved, same weights: the same teacher

    from safetensors.torch import save_file

    weights = load_file(str(moved / "model.safetensors"))
    first = sorted(weights)[0]
    weights[first] = weights[first] + 1
    save_file(weights, str(moved / "model.safetensors"), metadata={"format": "pt"})
    _refused(_export(run, tmp_path / "out"), tmp_path / "out", "not those the run started from")

    before = (run / "events.jsonl").read_bytes()
    resumed = subprocess.run([*ENGINE, str(run)], capture_output=True, text=True, env=_env())
    assert resumed.returncode == 2 and "not those the run started from" in resumed.stderr
    assert len(resumed.stderr.strip().splitlines()) == 1
    assert (run / "events.jsonl").read_bytes() == before


def test_a_relative_model_is_recorded_as_the_absolute_directory_it_named(tiny, tmp_path, monkeypatch):
    shutil.copytree(tiny / "model", tmp_path / "mymodel")
    monkeypatch.chdir(tmp_path)
    run = _create(tmp_path / "runs" / "rel", tiny, model="mymodel")
    recorded = yaml.safe_load((run / "config.yaml").read_text())["model"]
    assert recorded == str((tmp_path / "mymodel").resolve())
    teacher = json.loads((run / "teacher.json").read_text())
    assert teacher["digest"] and teacher["source"] == recorded
