"""The checkpoint store: whole or absent, verified on reading, never a wrong student, never code."""

import os
import pickle

import pytest
import torch

from engine.checkpoints import CheckpointError, CheckpointStore, layer_group
from engine.models.surgery import layer_map, remove_layers
from engine.runlog.layout import create


@pytest.fixture
def model():
    from transformers import AutoModelForCausalLM

    from tests.tiny_models import tiny_config

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(tiny_config("llama")).eval()


def _fresh(model_like):
    import copy

    return copy.deepcopy(model_like)


def _removed(*layers):
    return [{"iteration": i + 1, "layer": layer, "by": "auto", "proposed": layer} for i, layer in enumerate(layers)]


def _heal_layer(model, original):
    layer = model.model.layers[layer_map(model).index(original)]
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.5)


def _store(tmp_path):
    create(tmp_path / "run")
    return CheckpointStore(tmp_path / "run")


def test_round_trip_rebuilds_the_student(model, tmp_path):
    teacher = _fresh(model)
    store = _store(tmp_path)
    remove_layers(model, [3])
    _heal_layer(model, 2)
    store.save(1, _removed(3), model, [layer_group(2)], {"one_shot": {"1": 0.5}})
    checkpoint = store.latest()
    assert checkpoint.iteration == 1 and checkpoint.removed_layers == [3] and checkpoint.note is None
    assert checkpoint.extra == {"one_shot": {"1": 0.5}}
    student = _fresh(teacher)
    store.restore(student, checkpoint)
    for a, b in zip(student.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    assert oct(os.stat(checkpoint.path).st_mode & 0o777) == "0o700"


def test_a_truncated_checkpoint_falls_back_to_the_previous_one_and_says_so(model, tmp_path):
    store = _store(tmp_path)
    remove_layers(model, [3])
    _heal_layer(model, 2)
    store.save(1, _removed(3), model, [layer_group(2)])
    remove_layers(model, [1])
    _heal_layer(model, 0)
    store.save(2, _removed(3, 1), model, [layer_group(2), layer_group(0)])
    tensors = store.root / "2" / "layers.safetensors"
    with open(tensors, "r+b") as f:
        f.truncate(tensors.stat().st_size // 2)
    checkpoint = store.latest()
    assert checkpoint.name == "1" and "truncated" in checkpoint.note and "using checkpoint 1" in checkpoint.note


def test_an_altered_file_fails_its_checksum(model, tmp_path):
    store = _store(tmp_path)
    _heal_layer(model, 2)
    store.save(1, _removed(3), model, [layer_group(2)])
    tensors = store.root / "1" / "layers.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-1] ^= 0xFF
    tensors.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        store.latest()


def test_latest_naming_a_missing_checkpoint_with_nothing_else_is_an_error_not_a_fresh_start(model, tmp_path):
    store = _store(tmp_path)
    store.rundir.latest_file.write_text("4\n")
    with pytest.raises(CheckpointError, match="checkpoint 4 is missing, and no other checkpoint verifies"):
        store.latest()
    store.rundir.latest_file.write_text("../../etc\n")
    with pytest.raises(CheckpointError, match="not a checkpoint name"):
        store.latest()


def test_missing_latest_with_checkpoints_present_resumes_from_the_newest(model, tmp_path):
    store = _store(tmp_path)
    store.save(0, [], model, [])
    remove_layers(model, [3])
    store.save(1, _removed(3), model, [])
    store.rundir.latest_file.unlink()
    checkpoint = store.latest()
    assert checkpoint.name == "1" and "LATEST is missing" in checkpoint.note


def test_a_fresh_run_has_no_checkpoint(tmp_path):
    assert _store(tmp_path).latest() is None


def test_leftovers_of_a_killed_write_are_removed_and_never_read(model, tmp_path):
    store = _store(tmp_path)
    half = store.root / ".tmp-3-123-abcd"
    half.mkdir(parents=True)
    (half / "checkpoint.json").write_text("{")
    assert store.clean_leftovers() == [".tmp-3-123-abcd"] and not half.exists()


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch /tmp/ild-pwned",))


def test_a_crafted_partial_runs_no_code_and_escapes_no_directory(model, tmp_path):
    store = _store(tmp_path)
    if os.path.exists("/tmp/ild-pwned"):
        os.unlink("/tmp/ild-pwned")
    # PARTIAL naming a path outside checkpoints/ is ignored.
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (store.root / "PARTIAL").write_text("../../elsewhere\n")
    assert store.partial(1) is None
    # A partial whose state is a pickle with code in it: not executed, the iteration is redone.
    store.save_partial(1, 2, {"layer": 3, "by": "auto", "proposed": 3}, [2, 3], {"step": 2, "optimizer": None})
    pointed = store.root / (store.root / "PARTIAL").read_text().strip()
    with open(pointed / "heal_state.pt", "wb") as f:
        pickle.dump({"step": _Boom()}, f)
    import json

    manifest = json.loads((pointed / "partial.json").read_text())
    manifest["files"] = {}  # the attacker fixes the manifest too
    (pointed / "partial.json").write_text(json.dumps(manifest))
    assert store.partial(1) is None
    assert not os.path.exists("/tmp/ild-pwned")


def test_partial_round_trip_and_replacement(model, tmp_path):
    store = _store(tmp_path)
    state = {
        "step": 2,
        "optimizer": {"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": [{"lr": 0.1, "betas": (0.9, 0.99)}]},
        "trainable": {"w": torch.arange(4.0)},
    }
    store.save_partial(1, 2, {"layer": 3, "by": "auto", "proposed": 3}, [2, 3], state)
    store.save_partial(1, 4, {"layer": 3, "by": "auto", "proposed": 3}, [2, 3], {**state, "step": 4})
    partial = store.partial(1)
    assert (
        partial.step == 4
        and partial.trainable == [2, 3]
        and torch.equal(partial.state["trainable"]["w"], torch.arange(4.0))
    )
    assert [p.name for p in store.root.glob("partial-*")] == ["partial-1-4"]
    assert store.partial(2) is None
    store.save(1, _removed(3), model, [])
    assert store.partial(1) is None and not list(store.root.glob("partial-*"))


def test_rewriting_a_checkpoint_that_latest_does_not_name(model, tmp_path):
    """A kill after renaming checkpoint k but before LATEST moved: the resumed run writes k again."""
    store = _store(tmp_path)
    store.save(1, [], model, [])
    (store.root / "2").mkdir()
    (store.root / "2" / "checkpoint.json").write_text("{}")
    store.save(2, _removed(3), model, [])
    assert store.latest().name == "2" and store.latest().removed_layers == [3]
