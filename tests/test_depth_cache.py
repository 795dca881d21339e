"""Evaluating from the lowest changed layer (engine/tasks/depth_cache.py): the same numbers as a full
pass, to the bit, after every kind of change a run makes, with fewer layers run."""

from __future__ import annotations

import copy

import pytest
import torch

from engine.models.adapters import adapter_for
from engine.models.surgery import remove_layers
from engine.tasks.depth_cache import ENV, DepthCache, Pool, budget_from_env, evaluator_tokens, plan_depths
from engine.tasks.evaluate import SuiteEvaluator
from tests.tiny_models import tiny_config
from tests.tiny_suite import tiny_suite

LAYERS = 8


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    return tiny_suite(tmp_path_factory.mktemp("suite"))


def tiny_llama(seed: int = 0):
    from transformers import AutoModelForCausalLM

    config = tiny_config("llama")
    config.num_hidden_layers = LAYERS
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


def forward_items(evaluator) -> dict[str, list[int]]:
    """Forward-scored tasks whose batches are all different (generation goes through generate(),
    which the cache leaves; "ppl" and "lm_ctx" are "lm"'s texts again, whose batches the cache
    finds stored, at every depth, by the first of them)."""
    return {name: items for name, items in evaluator.items().items() if name in ("lm", "copy_tf", "mc", "mc_letter")}


def scored(evaluator, items=None, shared=True):
    """Per-item results of the model itself, and the decoder layers (x sequences) that took."""
    before = evaluator.forwards.layer_forwards
    results = evaluator.evaluate_items([None], shared=shared, items=items)[None]
    flat = {name: (s.items, s.values, s.weights, s.predictions) for name, s in results.items()}
    return flat, evaluator.forwards.layer_forwards - before


def sequences(evaluator, items) -> int:
    return sum(len(t.sequences) for t in evaluator.tasks if t.spec.name in items)


def reference(model, tokenizer, suite_spec, items=None):
    """A fresh evaluator without the cache: the plain full pass."""
    return scored(SuiteEvaluator(model, tokenizer, suite_spec, eval_cache_mb=0), items)[0]


def adamw_step(model, layers: list[int], seed: int = 0):
    """One AdamW step (torch's defaults, as healing builds it) on the given layers, the rest frozen."""
    adapter = adapter_for(model)
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for i in layers for p in adapter.layers[i].parameters()]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.01)
    ids = torch.randint(3, 200, (2, 10), generator=torch.Generator().manual_seed(seed))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    for p in params:
        p.requires_grad_(False)


def test_after_an_update_of_the_upper_layers_it_runs_only_those(suite):
    spec, tokenizer = suite
    model = tiny_llama()
    evaluator = SuiteEvaluator(model, tokenizer, spec, eval_cache_mb=64)
    items = forward_items(evaluator)
    n = sequences(evaluator, items)
    first, layers = scored(evaluator, items)
    assert layers == LAYERS * n
    again, layers = scored(evaluator, items)  # nothing changed: the stored final states
    assert again == first and layers == 0
    adamw_step(model, [5, 6])
    after, layers = scored(evaluator, items)
    assert after == reference(model, tokenizer, spec, items) and after != first
    assert layers == (LAYERS - 5) * n


def test_after_a_removal_it_starts_at_the_gap(suite):
    spec, tokenizer = suite
    model = tiny_llama()
    evaluator = SuiteEvaluator(model, tokenizer, spec, eval_cache_mb=64)
    items = forward_items(evaluator)
    n = sequences(evaluator, items)
    scored(evaluator, items)
    remove_layers(model, 4)
    after, layers = scored(evaluator, items)
    assert after == reference(model, tokenizer, spec, items)
    assert layers == (LAYERS - 1 - 4) * n
    remove_layers(model, LAYERS - 1)  # the last layer: what entered it is a full output, not the rows'
    after, layers = scored(evaluator, items)
    assert after == reference(model, tokenizer, spec, items)
    assert layers == n  # the new last layer, from its stored input, at the scored rows


def test_removals_and_healing_in_turn_give_a_full_pass_numbers(suite):
    """The run's loop: remove, evaluate, heal the layers next to the gap, evaluate; every task of
    the suite (generation included), every time equal to a fresh evaluator's."""
    spec, tokenizer = suite
    model = tiny_llama(seed=3)
    evaluator = SuiteEvaluator(model, tokenizer, spec, eval_cache_mb=64)
    items = forward_items(evaluator)
    n = sequences(evaluator, items)
    scored(evaluator)
    for step, original in enumerate([5, 2, 6]):
        g = adapter_for(model).layer_map().index(original)
        remove_layers(model, original)
        depth = adapter_for(model).num_layers
        after_removal, layers = scored(evaluator)
        assert after_removal == reference(model, tokenizer, spec)
        bottom = max(0, g - 1)
        adamw_step(model, [j for j in (g - 1, g) if 0 <= j < depth], seed=step)
        after_healing, layers = scored(evaluator, items)
        assert after_healing == reference(model, tokenizer, spec, items)
        assert layers == (depth - bottom) * n  # 64 MiB holds every depth: it starts at the bottom


def test_a_reloaded_model_is_a_new_model(suite):
    spec, tokenizer = suite
    model = tiny_llama()
    evaluator = SuiteEvaluator(model, tokenizer, spec, eval_cache_mb=64)
    items = forward_items(evaluator)
    first, _ = scored(evaluator, items)
    evaluator.model = copy.deepcopy(model)  # same values, new objects: nothing may be trusted
    with torch.no_grad():
        adapter_for(evaluator.model).layers[0].mlp.down_proj.weight.mul_(1.5)
    del model
    after, layers = scored(evaluator, items)
    assert layers == LAYERS * sequences(evaluator, items)
    assert after == reference(evaluator.model, tokenizer, spec, items) and after != first


def test_over_budget_it_keeps_fewer_depths_and_the_same_numbers(suite):
    spec, tokenizer = suite
    model = tiny_llama()
    evaluator = SuiteEvaluator(model, tokenizer, spec, eval_cache_mb=0)
    tokens = evaluator_tokens(evaluator)
    pool = Pool(tokens * 64 * 4 * 2 + tokens * 64)  # two depths of fp32 states of width 64, and the finals
    evaluator.depth_cache = cache = DepthCache(tokens, pool)
    items = forward_items(evaluator)
    n = sequences(evaluator, items)
    scored(evaluator, items)
    assert pool.used <= pool.limit
    assert all(len(e.depths) <= 2 for e in cache.entries.values())
    adamw_step(model, [6])
    after, layers = scored(evaluator, items)
    assert after == reference(model, tokenizer, spec, items)
    assert layers < LAYERS * n  # two depths (at 3 and 5 of 8) still spare some layers
    assert pool.used <= pool.limit


def test_the_cache_off_and_candidates_take_the_plain_path(suite, monkeypatch):
    spec, tokenizer = suite
    monkeypatch.setenv(ENV, "0")
    assert SuiteEvaluator(tiny_llama(), tokenizer, spec).depth_cache is None
    monkeypatch.setenv(ENV, "lots")
    with pytest.raises(ValueError, match="ILD_EVAL_CACHE_MB must be a whole number"):
        budget_from_env()
    monkeypatch.delenv(ENV)
    model = tiny_llama()
    evaluator = SuiteEvaluator(model, tokenizer, spec, eval_cache_mb=64)
    items = forward_items(evaluator)
    scored(evaluator, items)
    before = evaluator.forwards.layer_forwards
    results = evaluator.evaluate_items([None, 3], items=items)  # task drop: the shared-prefix path
    plain = SuiteEvaluator(model, tokenizer, spec, eval_cache_mb=0).evaluate_items([None, 3], items=items)
    assert results[3]["lm"].values == plain[3]["lm"].values
    assert evaluator.forwards.layer_forwards - before > LAYERS * sequences(evaluator, items)


def test_the_optimizer_the_engine_uses_marks_what_it_changes():
    """The cache sees an update through the parameters' version counters: torch's default AdamW
    (foreach) bumps the trained ones and leaves the frozen ones (fused=True does not: see the
    module docstring)."""
    model = tiny_llama()
    adapter = adapter_for(model)
    versions = [[p._version for p in layer.parameters()] for layer in adapter.layers]
    adamw_step(model, [3])
    now = [[p._version for p in layer.parameters()] for layer in adapter.layers]
    assert all(a != b for a, b in zip(versions[3], now[3]))
    assert [v for i, v in enumerate(now) if i != 3] == [v for i, v in enumerate(versions) if i != 3]


def test_the_depths_kept():
    # a first evaluation: spread over the stack
    assert plan_depths(30, 0, None, set(), 5) == {5, 10, 15, 20, 25}
    # after a removal at 17 that started from 15: 15..17 densely, the rest spread
    kept = plan_depths(29, 15, 17, {5, 10, 15}, 6)
    assert {15, 16, 17} <= kept and len(kept) == 6
    assert plan_depths(8, 0, None, set(), 100) == set(range(1, 8))
    assert plan_depths(8, 0, None, set(), 0) == set()


def test_the_engines_own_healing_is_seen(suite):
    """Healing as the runner does it (engine.distill.heal: accelerate, AdamW, the cached loop), after
    a removal: the evaluation after healing starts at the lowest trainable layer, with a full
    pass's numbers."""
    from engine.config import HealSettings, TrainableSettings
    from engine.distill.heal import Healer, TeacherCache
    from engine.distill.trainable import choose_trainable
    from engine.models.surgery import layer_map

    spec, tokenizer = suite
    teacher = tiny_llama(seed=1)
    student = copy.deepcopy(teacher)
    evaluator = SuiteEvaluator(student, tokenizer, spec, eval_cache_mb=64)
    items = forward_items(evaluator)
    n = sequences(evaluator, items)
    scored(evaluator, items)
    remove_layers(student, 4)
    scored(evaluator, items)
    g = torch.Generator().manual_seed(5)
    train, heldout = torch.randint(3, 256, (8, 16), generator=g), torch.randint(3, 256, (4, 16), generator=g)
    config = HealSettings(lr=1e-3, batch_size=4, seq_len=16, early_stop=False, head_matmul="fp32")
    healer = Healer(student, TeacherCache(teacher, train, heldout, None, 1 << 30, 4), config)
    trainable = choose_trainable(layer_map(student), LAYERS, 4, TrainableSettings(choice="adjacent", k=1))
    assert trainable == [3, 4]
    before = scored(SuiteEvaluator(student, tokenizer, spec, eval_cache_mb=0), items)[0]
    healer.heal(trainable, iteration=1, seed=0)
    after, layers = scored(evaluator, items)
    assert after == reference(student, tokenizer, spec, items) and after != before
    assert layers == (LAYERS - 1 - 3) * n
