"""The student's frozen prefix taken from the teacher's pass where the two are still the same layers:
found only where the layers are bit-identical, and a healing from it equals one without it, bit for bit."""

import copy

import pytest
import torch

from engine.distill import loops
from engine.distill.teacher_prefix import shared_depth
from engine.models.surgery import remove_layers
from tests.test_distill_heal import _setup


def _pair():
    from transformers import AutoModelForCausalLM

    from tests.tiny_models import tiny_config

    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_config(tiny_config("llama")).eval()
    return teacher, copy.deepcopy(teacher)


def test_shared_depth_stops_at_the_first_removed_or_changed_layer():
    teacher, student = _pair()
    assert shared_depth(student, teacher, 100) == 6
    assert shared_depth(student, teacher, 2) == 2
    remove_layers(student, 3)
    assert shared_depth(student, teacher, 100) == 3  # layer 3 is now the teacher's 4
    with torch.no_grad():
        student.model.layers[1].mlp.up_proj.weight[0, 0] += 1e-7
    assert shared_depth(student, teacher, 100) == 1
    with torch.no_grad():
        student.model.embed_tokens.weight[5, 0] += 1e-7
    assert shared_depth(student, teacher, 100) == 0


def _heal(share: bool, touch_layer_1: bool, monkeypatch):
    teacher, student, healer = _setup()  # the teacher's layer 3 removed
    if touch_layer_1:  # as an earlier healing of layer 1 would have left it
        with torch.no_grad():
            for p in student.model.layers[1].parameters():
                p.mul_(1.01)
    expected = 1 if touch_layer_1 else 3
    assert shared_depth(student, teacher, 100) == expected
    seen = []
    real = loops.shared_depth

    def spy(s, t, limit):
        depth = real(s, t, limit) if share else 0
        seen.append(depth)
        return depth

    monkeypatch.setattr(loops, "shared_depth", spy)
    steps = []
    healer.heal([3, 4], iteration=1, seed=0, on_step=steps.append)
    assert seen == [min(expected, 3) if share else 0]
    return [s["loss"] for s in steps], student.state_dict()


@pytest.mark.parametrize("touch_layer_1", [False, True], ids=["whole-prefix-shared", "part-shared"])
def test_healing_from_the_teachers_prefix_equals_healing_from_the_students(touch_layer_1, monkeypatch):
    losses_shared, weights_shared = _heal(True, touch_layer_1, monkeypatch)
    monkeypatch.undo()
    losses_own, weights_own = _heal(False, touch_layer_1, monkeypatch)
    assert losses_shared == losses_own  # the same sums in the same order: equal, not close
    assert all(torch.equal(weights_shared[k], weights_own[k]) for k in weights_own)
