"""The teacher store: a second run of the same teacher on the same blocks reads the teacher's outputs
back instead of recomputing them, gets exactly the same numbers, and never mixes another teacher's."""

from __future__ import annotations

import copy

import pytest
import torch

from engine.digests import weights_digest
from engine.distill.heal import TeacherCache
from engine.distill.teacher_store import TeacherStore


def _teacher(seed=0):
    from transformers import AutoModelForCausalLM

    from tests.tiny_models import tiny_config

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config("llama")).eval()


def _blocks(seed=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 256, (8, 16), generator=g), torch.randint(3, 256, (4, 16), generator=g)


def _cache(teacher, store, blocks=None):
    train, heldout = blocks or _blocks()
    cache = TeacherCache(teacher, train, heldout, None, 1 << 30, 4, store=store)
    calls = []
    run_layer = cache.adapter.run_layer
    cache.adapter.run_layer = lambda j, *a, **k: (calls.append(j), run_layer(j, *a, **k))[1]
    return cache, calls


def test_a_second_run_reads_the_teachers_outputs_back(tmp_path):
    store = TeacherStore(tmp_path, 1 << 30)
    teacher = _teacher()
    first, computed = _cache(teacher, store)
    first.ensure({1}, "train")
    assert computed, "the first run computes"
    again, recomputed = _cache(copy.deepcopy(teacher), store)  # another process: the same weights, loaded again
    again.ensure({1}, "train")
    assert recomputed == []
    assert torch.equal(again.final["train"][:], first.final["train"][:])
    assert torch.equal(again.hidden("train", 1, slice(0, 8), "cpu"), first.hidden("train", 1, slice(0, 8), "cpu"))
    # a layer nobody stored yet is computed (only as deep as it needs), then stored too
    again.ensure({0}, "train")
    assert recomputed == [0, 0] and torch.equal(again.hidden("train", 0, slice(0, 8), "cpu"), _fresh(teacher, 0))
    third, none = _cache(teacher, store)
    third.ensure({0, 1}, "train")
    assert none == []
    # the held-out blocks are other tokens: their own entry
    third.ensure(set(), "heldout")
    assert none, "held-out outputs are not the training blocks' outputs"


def _fresh(teacher, layer):
    cache = TeacherCache(teacher, _blocks()[0], _blocks()[1], None, 1 << 30, 4)
    cache.ensure({layer}, "train")
    return cache.hidden("train", layer, slice(0, 8), "cpu")


def test_other_weights_or_other_tokens_never_read_an_entry(tmp_path):
    store = TeacherStore(tmp_path, 1 << 30)
    teacher = _teacher()
    first, _ = _cache(teacher, store)
    first.ensure(set(), "train")
    changed = copy.deepcopy(teacher)
    with torch.no_grad():
        changed.model.layers[1].mlp.down_proj.weight.mul_(1.01)
    assert weights_digest(changed) != weights_digest(teacher)
    other, calls = _cache(changed, store)
    other.ensure(set(), "train")
    assert calls and not torch.equal(other.final["train"][:], first.final["train"][:])
    tokens, calls = _cache(teacher, store, blocks=_blocks(seed=6))
    tokens.ensure(set(), "train")
    assert calls


def test_a_damaged_entry_is_recomputed_and_the_store_keeps_its_limit(tmp_path):
    teacher = _teacher()
    store = TeacherStore(tmp_path, 1 << 30)
    first, _ = _cache(teacher, store)
    first.ensure(set(), "train")
    (stored,) = tmp_path.glob("*/final.bin")
    stored.write_bytes(stored.read_bytes()[:100])  # a disk that filled up mid-copy
    again, calls = _cache(teacher, store)
    again.ensure(set(), "train")
    assert calls and torch.equal(again.final["train"][:], first.final["train"][:])

    # 8 blocks x 16 tokens x 64 dims of float32 = 32 KiB an array: room for two entries
    small = TeacherStore(tmp_path / "small", 70 << 10)
    for seed in (1, 2, 3):
        cache, _ = _cache(teacher, small, blocks=_blocks(seed=seed))
        cache.ensure(set(), "train")
    assert small.used_bytes() <= 70 << 10
    kept, calls = _cache(teacher, small, blocks=_blocks(seed=3))  # the newest survived
    kept.ensure(set(), "train")
    assert calls == []
    gone, calls = _cache(teacher, small, blocks=_blocks(seed=1))  # the oldest did not
    gone.ensure(set(), "train")
    assert calls


@pytest.mark.parametrize("stored", [False, True])
def test_healing_from_the_store_equals_healing_without_it(tmp_path, stored):
    from engine.config import HealSettings, TrainableSettings
    from engine.distill.heal import Healer
    from engine.distill.trainable import choose_trainable
    from engine.models.surgery import layer_map, remove_layers

    teacher = _teacher()
    store = TeacherStore(tmp_path, 1 << 30)
    if stored:  # an earlier run filled the store
        _cache(copy.deepcopy(teacher), store)[0].ensure({0, 1, 2, 3}, "train")
    losses = []
    for use in (None, store):
        student = copy.deepcopy(teacher)
        remove_layers(student, 2)
        config = HealSettings(lr=1e-3, batch_size=4, seq_len=16, head_matmul="fp32", early_stop=False)
        cache = TeacherCache(teacher, *_blocks(), None, 1 << 30, 4, store=use)
        healer = Healer(student, cache, config)
        trainable = choose_trainable(layer_map(student), len(layer_map(teacher)), 2, TrainableSettings())
        healer.heal(trainable, iteration=1, seed=0)
        losses.append(healer.heldout_loss([max(trainable), len(layer_map(student)) - 1]))
    assert losses[0] == losses[1]
