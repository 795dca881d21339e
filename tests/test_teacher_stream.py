"""The teacher on a stream of blocks: it runs the stream's own batches whatever window a block falls
in, so windows of one run and later runs cut differently read each batch back from the store, and
the outputs are those the window's own batches give where the two coincide."""

from __future__ import annotations

import copy

import torch

from engine.distill.data import HealingData
from engine.distill.heal import TeacherCache
from engine.distill.teacher_store import TeacherStore
from tests.test_teacher_store import _teacher

STREAM = torch.randint(3, 256, (10, 16), generator=torch.Generator().manual_seed(7))
HELDOUT = torch.randint(3, 256, (4, 16), generator=torch.Generator().manual_seed(8))
DATA = HealingData(STREAM, HELDOUT)


def _cache(teacher, store, start, count, stream=True):
    window = DATA.window(start, count)
    cache = TeacherCache(teacher, window.blocks, HELDOUT, None, 1 << 30, 4, store=store)
    if stream:
        cache.set_train(window.blocks, window.index, window.rows, STREAM)
    calls = []
    run_layer = cache.adapter.run_layer
    cache.adapter.run_layer = lambda j, *a, **k: (calls.append(j), run_layer(j, *a, **k))[1]
    return cache, calls, window


def test_aligned_windows_get_what_their_own_batches_give():
    teacher = _teacher()
    own, _, _ = _cache(teacher, None, 0, 8, stream=False)
    streamed, _, _ = _cache(teacher, None, 0, 8)
    for cache in (own, streamed):
        cache.ensure({1}, "train")
    assert streamed.batches_match()
    assert torch.equal(own.final["train"][:], streamed.final["train"][:])
    assert torch.equal(own.layers[("train", 1)][:], streamed.layers[("train", 1)][:])


def test_a_block_is_computed_once_across_windows_and_runs(tmp_path):
    teacher = _teacher()
    layers = teacher.config.num_hidden_layers
    store = TeacherStore(tmp_path, 1 << 30)
    first, calls, _ = _cache(teacher, store, 0, 8)
    first.ensure(set(), "train")
    assert len(calls) == 2 * layers  # stream batches 0 and 1
    # the next window wraps: rows 8, 9 (stream batch 2, new) then 0-5 (batches 0 and 1, stored)
    second, calls, window = _cache(teacher, store, 8, 8)
    assert window.rows.tolist() == [8, 9, 0, 1, 2, 3, 4, 5]
    second.ensure(set(), "train")
    assert len(calls) == layers
    assert torch.equal(second.final["train"][2:8], first.final["train"][0:6])
    assert not second.batches_match()  # [8, 9, 0, 1] is no batch of the stream: no shared student prefix
    # another run cuts the stream otherwise (rows 4-9) and with a layer no one stored yet
    other, calls, _ = _cache(copy.deepcopy(teacher), store, 4, 6)
    other.ensure(set(), "train")
    assert calls == []
    assert torch.equal(other.final["train"][0:4], first.final["train"][4:8])
    assert torch.equal(other.final["train"][4:6], second.final["train"][0:2])
    other.ensure({0}, "train")
    assert calls == [0, 0]  # batches 1 and 2, to layer 0 only
    fresh, _, _ = _cache(teacher, None, 4, 6, stream=False)
    fresh.ensure({0}, "train")
    assert torch.equal(other.layers[("train", 0)][0:4], fresh.layers[("train", 0)][0:4])


def test_the_teacher_pass_says_how_far_it_is():
    """A large budget's teacher pass takes many minutes: it reports each batch, so that neither a
    person nor the stall watchdog takes it for a hang."""
    teacher = _teacher()
    for stream in (True, False):
        cache, _, _ = _cache(teacher, None, 0, 8, stream=stream)
        told: list[tuple[str, int, int]] = []
        cache.progress = lambda what, done, total, told=told: told.append((what, done, total))
        cache.ensure({1}, "train")
        cache.ensure(set(), "heldout")
        train = [(done, total) for what, done, total in told if what == "teacher outputs"]
        assert train == [(0, 2), (1, 2)] if stream else [(0, 8), (4, 8)]
        assert [(what, done, total) for what, done, total in told if what != "teacher outputs"] == [
            ("held-out loss", 0, 4)
        ]


def test_outputs_larger_than_the_whole_store_are_not_written(tmp_path):
    """A budget whose teacher outputs exceed the store would only evict them (and every other run's
    entries) while writing them: they are computed for the run, not stored, and the log says so."""
    teacher = _teacher()
    hidden = teacher.config.hidden_size
    one_output = 8 * 16 * hidden * 4  # the window's 8 blocks of 16 tokens, float32
    small = TeacherStore(tmp_path / "small", one_output)  # holds the final state alone, not two outputs
    cache, _, _ = _cache(teacher, small, 0, 8)
    said: list[str] = []
    cache.say = said.append
    cache.ensure({1}, "train")
    cache.ensure({1}, "train")
    assert small.used_bytes() == 0 and not list((tmp_path / "small").rglob("*.bin"))
    assert len(said) == 1 and "exceed the teacher store" in said[0] and "heal.teacher_store_mb" in said[0]
    roomy = TeacherStore(tmp_path / "roomy", 4 * one_output)
    stored, _, _ = _cache(teacher, roomy, 0, 8)
    stored.say = said.append
    stored.ensure({1}, "train")
    assert roomy.used_bytes() > 0 and len(said) == 1
    assert torch.equal(stored.final["train"][:], cache.final["train"][:])
