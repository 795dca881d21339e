"""Racing task drop: the same proposal as full scoring with fewer layer-forwards, counted exactly."""

import json
import math
import random

import pytest
import torch

from engine.importance.racing import RacingSettings, _eliminate, task_drop
from engine.importance.scores import task_drop_scores
from engine.tasks.evaluate import ItemScores, SuiteEvaluator
from engine.tasks.spec import load_suite
from tests.tiny_models import tiny_model
from tests.tiny_suite import WORDS
from tests.tiny_tokenizer import word_tokenizer


def _suite(tmp_path, n=48):
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 14))) for _ in range(n)]
    (tmp_path / "text.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    (tmp_path / "mc.jsonl").write_text(
        "".join(
            json.dumps({"q": t, "options": [rng.choice(WORDS) for _ in range(3)], "label": rng.randint(0, 2)}) + "\n"
            for t in texts
        )
    )
    (tmp_path / "suite.yaml").write_text("""
name: tiny
tasks:
  - {name: lm, kind: language_modeling, source: {type: jsonl, path: text.jsonl}, metric: next_token_probability, samples: 40}
  - {name: copy, kind: language_modeling, source: {type: jsonl, path: text.jsonl}, prompt: "{text} :", metric: next_token_probability, samples: 24}
  - {name: mc, kind: multiple_choice, source: {type: jsonl, path: mc.jsonl}, fields: {question: q, choices: options, answer: label}, prompt: "{question} ?", metric: choice_probability, samples: 24}
""")
    return load_suite(str(tmp_path / "suite.yaml")), word_tokenizer(texts + ["? :"])


def _trained_model(tmp_path, tok, steps: int = 150):
    """A tiny model trained briefly on the suite's texts (~5 s): a random one is at chance on every
    item, so skipping any layer moves its scores by noise alone and no bound can tell layers apart."""
    model = tiny_model("llama")
    texts = [json.loads(line)["text"] for line in (tmp_path / "text.jsonl").read_text().splitlines()]
    ids = [torch.tensor(tok(t)["input_ids"]) for t in texts]
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        batch = torch.nn.utils.rnn.pad_sequence(random.Random(step).sample(ids, 16), batch_first=True)
        loss = model(input_ids=batch, labels=batch).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


def test_layer_forwards_are_counted_exactly(tmp_path):
    suite, tok = _suite(tmp_path)
    model = tiny_model("llama")
    n = model.config.num_hidden_layers
    evaluator = SuiteEvaluator(model, tok, suite)
    sequences = sum(len(t.sequences) for t in evaluator.tasks)
    evaluator.evaluate([None, *range(n)], shared=True)
    # Shared: the prefix (n-1 layers), the model's last layer, n-1-i layers for candidate i, and for
    # the last candidate layer n-2 once more, read at the scored positions only.
    assert evaluator.forwards.layer_forwards == sequences * (n - 1 + 1 + sum(n - 1 - i for i in range(n - 1)) + 1)
    before = evaluator.forwards.copy()
    evaluator.evaluate([None, *range(n)], shared=False)
    assert (evaluator.forwards - before).layer_forwards == sequences * (n + n * (n - 1))
    before = evaluator.forwards.copy()
    evaluator.evaluate([None], shared=True)
    assert (evaluator.forwards - before).layer_forwards == sequences * n


def test_generation_decoding_is_counted(tmp_path):
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": f"the cat sat {w}"}) + "\n" for w in WORDS[:6]))
    (tmp_path / "t.yaml").write_text(
        "{name: g, kind: generation, source: {type: jsonl, path: d.jsonl}, fields: {input: text, target: text}, prompt: '{input} :', metric: lcs_ratio, samples: 6, max_new_tokens: 4, stop: []}"
    )
    tok = word_tokenizer(WORDS + ["the cat sat :"])
    evaluator = SuiteEvaluator(tiny_model("llama"), tok, load_suite(str(tmp_path / "t.yaml")))
    evaluator.evaluate([None])
    n = 6
    # At least the prompt pass and one decoding step per layer and sequence.
    assert evaluator.forwards.layer_forwards >= 2 * n * 6


def test_racing_disabled_is_full_scoring(tmp_path):
    suite, tok = _suite(tmp_path)
    model = tiny_model("llama")
    full = task_drop(SuiteEvaluator(model, tok, suite), racing=RacingSettings(enabled=False))
    drops, per_task, current = task_drop_scores(SuiteEvaluator(model, tok, suite))
    assert full.partial == set() and full.drops == drops and full.per_task == per_task and full.current == current
    assert full.proposal == min(drops, key=lambda i: (drops[i], i))
    assert full.items == dict.fromkeys(drops, full.total_items)


def test_racing_never_eliminating_equals_full_scoring(tmp_path):
    suite, tok = _suite(tmp_path)
    model = tiny_model("llama")
    full = task_drop(SuiteEvaluator(model, tok, suite), racing=None)
    raced = task_drop(SuiteEvaluator(model, tok, suite), racing=RacingSettings(z=1e9))
    assert raced.partial == set() and raced.proposal == full.proposal and len(raced.rounds) > 1
    for i in full.drops:
        assert raced.drops[i] == pytest.approx(full.drops[i], abs=1e-5)


def test_racing_finds_the_full_proposal_with_fewer_layer_forwards(tmp_path):
    suite, tok = _suite(tmp_path)
    model = _trained_model(tmp_path, tok)
    full = task_drop(SuiteEvaluator(model, tok, suite), racing=None)
    raced = task_drop(SuiteEvaluator(model, tok, suite), racing=RacingSettings())
    assert full.proposal == raced.proposal
    assert raced.partial and full.proposal not in raced.partial
    assert raced.forwards.layer_forwards < full.forwards.layer_forwards
    # Every layer has a value; partial ones on fewer items, each eliminated beyond the bound.
    assert set(raced.drops) == set(range(model.config.num_hidden_layers))
    eliminated = {i: bound for r in raced.rounds for i, bound in r.eliminated.items()}
    assert set(eliminated) == raced.partial
    for i, (gap, se, k) in eliminated.items():
        assert raced.items[i] < raced.total_items and k >= RacingSettings().z and gap > k * se
    # Complete layers match full scoring; the ranked list starts with the proposal.
    for i in set(full.drops) - raced.partial:
        assert raced.drops[i] == pytest.approx(full.drops[i], abs=1e-5)
    assert raced.ranked()[0][0] == full.proposal and [i for i, _ in raced.ranked()[-len(raced.partial) :]] == sorted(
        raced.partial, key=lambda i: (raced.drops[i], i)
    )
    assert json.dumps([r.as_dict() for r in raced.rounds])
    # What the race measured of each partial layer is handed over item by item, on the items it saw.
    assert set(raced.partial_items) == raced.partial
    for i in raced.partial:
        assert sum(len(s.items) for s in raced.partial_items[i].values()) == raced.items[i]


def test_racing_settings_are_validated():
    for bad in (dict(first_fraction=0), dict(growth=1.0), dict(min_items=1), dict(z=0)):
        with pytest.raises(ValueError):
            RacingSettings(**bad)


def _scores(values: list[float]) -> ItemScores:
    return ItemScores(items=list(range(len(values))), values=values, weights=[1.0] * len(values))


def test_racing_bound_widens_for_variances_estimated_on_few_items(tmp_path):
    # Three items a task (the first slice of the default suite): a gap of 3.4 standard errors, which
    # the normal's bound (z = 3) called certain, and which on the embedded model turned out to be the
    # true best layer (bench/racing.py, 28 layers: dropped with 0.0082 > 3 x 0.0024, best on all items).
    spec = next(t for t in _suite(tmp_path)[0].tasks if t.name == "mc")  # a plain mean of the item values
    best = [0.50, 0.60, 0.70]
    other = [0.50 - 0.034 + 0.019, 0.60 - 0.034 - 0.019, 0.70 - 0.034]
    scored = {0: {"t": _scores(best)}, 1: {"t": _scores(other)}}
    sizes = {"t": 20}
    gap = 0.034
    se = math.sqrt(3 / 2 * ((0.019**2 + 0.019**2) / 9) * (1 - 3 / 20))
    assert 3 * se < gap < 3.5 * se  # the normal's bound would drop layer 1
    best_layer, out = _eliminate(scored, [0, 1], {"t": spec}, sizes, z=3.0)
    assert best_layer == 0 and out == {}
    # With many items the same ratio is enough evidence: k tends to z.
    many = 400
    wide = {0: {"t": _scores([0.5 + 0.001 * (j % 7) for j in range(many)])}}
    wide[1] = {"t": _scores([v - 0.2 for v in wide[0]["t"].values])}
    wide[1]["t"].values[0] += 0.01
    _, out = _eliminate(wide, [0, 1], {"t": spec}, {"t": 10 * many}, z=3.0)
    gap, se, k = out[1]
    assert 3.0 < k < 3.05 and gap > k * se


def test_moderated_variances_borrow_strength_from_the_other_candidates(tmp_path):
    # Many candidates on 3 items (2 degrees of freedom each) whose variances differ by chance alone:
    # the prior takes them all, so each candidate's variance moves toward the pool and its degrees of
    # freedom grow, which narrows the t bound (k) without changing any gap.
    from engine.importance.racing import _moderate, _paired

    rng = random.Random(0)
    best = _scores([0.5, 0.6, 0.7])
    stats = []
    for _ in range(24):
        other = _scores([v - 0.05 + rng.gauss(0, 0.01) for v in best.values])
        stats.append(_paired(best, other))
    raw = [list(s) for s in stats]
    _moderate(stats)
    pool = sorted(s[1] for s in raw)
    assert all(s[2] > 2 for s in stats)  # more than the 2 each had alone
    for before, after in zip(raw, stats):
        assert after[0] == before[0]  # the gap is untouched
        assert min(before[1], pool[len(pool) // 2]) <= after[1] * (1 + 1e-9) or after[1] <= before[1]
    spread = lambda xs: max(xs) / min(xs)
    assert spread([s[1] for s in stats]) < spread([s[1] for s in raw])
    # Variances that differ for real (a hundredfold between halves) are barely moved.
    real = [[0.0, 1e-4 * (100 if i % 2 else 1) * (1 + 0.1 * rng.random()), 40.0] for i in range(24)]
    before = [list(s) for s in real]
    _moderate(real)
    assert all(abs(a[1] - b[1]) / b[1] < 0.5 for a, b in zip(real, before))
    # Too few candidates to fit a prior: nothing changes.
    few = [list(s) for s in raw[:2]]
    _moderate(few)
    assert few == raw[:2]


def test_moderated_racing_finds_the_full_proposal(tmp_path):
    suite, tok = _suite(tmp_path)
    model = _trained_model(tmp_path, tok)
    full = task_drop(SuiteEvaluator(model, tok, suite), racing=None)
    raced = task_drop(SuiteEvaluator(model, tok, suite), racing=RacingSettings(variance="moderated"))
    assert raced.proposal == full.proposal and raced.forwards.layer_forwards < full.forwards.layer_forwards
    with pytest.raises(ValueError):
        RacingSettings(variance="pooled")


def test_replay_of_a_dump_reproduces_the_race(tmp_path):
    # bench/racing.py --replay races again on recorded per-item results; its figures are only worth
    # something if it counts and chooses exactly as the live evaluator does.
    from bench.racing import Recorder, ReplayEvaluator, _record
    from engine.models.surgery import layer_map

    suite, tok = _suite(tmp_path)
    model = _trained_model(tmp_path, tok)
    evaluator = SuiteEvaluator(model, tok, suite)
    recorder = Recorder(evaluator)
    settings = RacingSettings()
    runs = {"full": task_drop(recorder, racing=None), "racing": task_drop(evaluator, racing=settings)}
    record = json.loads(json.dumps(_record(evaluator, layer_map(model), runs, recorder.scored, settings)))
    specs = {t.name: t for t in suite.tasks}
    for mode, racing in (("full", None), ("racing", settings)):
        again = task_drop(ReplayEvaluator(record, specs), racing=racing)
        live = runs[mode]
        assert again.proposal == live.proposal
        assert again.forwards.layer_forwards == live.forwards.layer_forwards
        assert again.partial == live.partial
        assert [r.eliminated.keys() for r in again.rounds] == [r.eliminated.keys() for r in live.rounds]
        for i in live.drops:  # the live race batched its slices differently: rounding, no more
            assert again.drops[i] == pytest.approx(live.drops[i], abs=1e-6)


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("at_rows", [True, False])
def test_the_count_is_the_layers_run(shared, at_rows):
    """``candidate_layers`` (what the evaluator, the ranks' shares and the replay count) against the
    attention blocks that actually ran, on every path of ``candidate_hidden``."""
    from engine.models.adapters import adapter_for
    from engine.tasks.evaluate import ForwardCount, candidate_hidden
    from tests.tiny_models import batch

    model = tiny_model("llama").eval()
    adapter = adapter_for(model)
    n = adapter.num_layers
    ids, mask = batch()
    rows, cols = (
        (torch.arange(ids.shape[0]), torch.full((ids.shape[0],), ids.shape[1] - 1)) if at_rows else (None, None)
    )
    ran = []
    handles = [
        layer.self_attn.register_forward_pre_hook(lambda m, a, k: ran.append(1), with_kwargs=True)
        for layer in adapter.layers
    ]
    try:
        for candidates in ([None, *range(n)], [n - 1], [None, 0], [2, n - 1]):
            ran.clear()
            counter = ForwardCount()
            with torch.no_grad():
                candidate_hidden(adapter, ids, mask, candidates, shared, rows, cols, counter=counter)
            assert counter.layer_forwards == len(ran) * ids.shape[0], candidates
    finally:
        for h in handles:
            h.remove()


def test_packed_tasks_score_what_each_task_batched_alone_scores(tmp_path):
    """scoring.pack_tasks (on a GPU): the forward-scored tasks of a round share batches. Each
    sequence is scored on its own row with its own mask, so only the batches' shapes differ: every
    per-item value equals the unpacked one to float32 rounding, the race takes the same decisions,
    and a packed round runs fewer batches."""
    suite, tok = _suite(tmp_path)
    model = _trained_model(tmp_path, tok)
    alone, packed = SuiteEvaluator(model, tok, suite), SuiteEvaluator(model, tok, suite)
    packed.pack_tasks = True
    batches = {"alone": 0, "packed": 0}
    for name, evaluator in (("alone", alone), ("packed", packed)):
        forward = evaluator._forward

        def counted(sequences, *args, _forward=forward, _name=name, _evaluator=evaluator):
            batches[_name] += len(_evaluator._batches(sequences))
            return _forward(sequences, *args)

        evaluator._forward = counted
    a = task_drop(alone, racing=RacingSettings())
    b = task_drop(packed, racing=RacingSettings())
    assert a.proposal == b.proposal and a.partial == b.partial and a.items == b.items
    assert [r.eliminated.keys() for r in a.rounds] == [r.eliminated.keys() for r in b.rounds]
    for i in a.drops:
        assert b.drops[i] == pytest.approx(a.drops[i], abs=1e-5)
        for t in a.per_task[i]:
            assert b.per_task[i][t] == pytest.approx(a.per_task[i][t], abs=1e-5)
    assert b.forwards.layer_forwards == a.forwards.layer_forwards  # the same work, in fewer batches
    assert batches["packed"] < batches["alone"]
    # one candidate (the model's own evaluation) is never packed: its batches are those of the runs before
    assert packed.evaluate_items([None])[None].keys() == alone.evaluate_items([None])[None].keys()
