"""Task drop that stops scoring the candidates that cannot win (racing, successive halving).

Full task drop scores every "skip layer i" candidate on every item. Most candidates are clearly
important after a fraction of the items, so racing scores every candidate on a first slice of each
task's items, keeps only those whose drop could still be the lowest, scores them on the next slice
(each slice's cumulative share ``growth`` times the last), and so on until the survivors have seen
every item. The model itself (the base of every drop) is scored on every slice. A slice only
scores new items, so more, smaller slices (``growth`` 1.5) cost no repeated work: they let a
candidate leave as soon as the evidence allows instead of at the next doubling.

The bound: all candidates still in the race are scored on the same items, so each is compared with
the current best ``b`` by paired per-item differences. Per task ``t`` with items ``j`` (weights
``w``: scored tokens for language modelling, 1 otherwise) the gap is
``D_t = sum_j w_j (v_j(b) - v_j(c)) / sum_j w_j``, its variance
``n/(n-1) * sum_j (w_j/W)^2 (d_j - D_t)^2 * (1 - n/N_t)`` (the last factor: the items are a finite
set, so a fully scored task has no error left), and for the aggregate (the mean over ``T`` tasks)
``G = sum_t D_t / T`` with ``se = sqrt(sum_t var_t) / T``. A candidate leaves the race when
``G > k * se``: its drop is, with high confidence, above the best one's. ``k`` is Student's t
quantile at the one-sided level a normal puts beyond ``z`` (``z = 3``: 0.99865), with the
Welch-Satterthwaite degrees of freedom ``(sum_t var_t)^2 / sum_t (var_t^2 / (n_t - 1))``: on the
first slice (3 items a task) the variances are themselves estimates from 2 degrees of freedom each,
and the normal's ``z * se`` dropped the true best layer there (``k`` is 4.3 or more at 8 degrees of
freedom, 3.4 at 20, 3.1 at 100). Each task's variances are moderated first (``variance:
moderated``): all candidates are scored on the same items, so the spread of their variances tells
how much of each one's is chance, and each is shrunk toward a prior fitted to all of them, gaining
the prior's degrees of freedom (empirical Bayes, as limma moderates gene-wise variances; Smyth 2004).
That narrows ``k`` where 2 degrees of freedom made it 5 to 8, without trusting any one small
variance more. The survivors are scored on
every item, so the proposal is the full-scoring proposal whenever the true best was not dropped;
near ties are never dropped (they stay within the bound) and are decided on all items. Every
elimination is logged with its gap and standard error (``RoundLog``).

Layers dropped early keep the value measured on the items they saw (``partial``): their per-task
scores and drop (against the model's score on the same items) are estimates on fewer items.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from engine.models.adapters import adapter_for
from engine.tasks.evaluate import ForwardCount, ItemScores, Progress, SuiteEvaluator, aggregate, task_score


@dataclass(frozen=True)
class RacingSettings:
    """How task drop races the candidates (``scoring.racing`` in a run's config).

    ``enabled``: False scores every candidate on every item (full scoring).
    ``first_fraction``: the share of each task's items in the first slice.
    ``growth``: each later slice brings the cumulative share to ``growth`` times the last.
    ``min_items``: at least this many items of each task in the first slice (all of a smaller task).
    ``z``: a candidate leaves the race when its gap to the best exceeds ``z`` standard errors.
    ``variance``: "task" uses each candidate's own per-task variance; "moderated" shrinks it toward
    a prior fitted to every candidate's (``_moderate``).
    ``seed``: the order of each task's items (a seeded shuffle, so slices mix the whole source).
    """

    enabled: bool = True
    first_fraction: float = 0.15
    growth: float = 1.5
    min_items: int = 3
    z: float = 3.0
    variance: str = "moderated"
    seed: int = 0

    def __post_init__(self):
        if not 0 < self.first_fraction <= 1:
            raise ValueError("racing.first_fraction must be in (0, 1]")
        if self.growth <= 1:
            raise ValueError("racing.growth must be above 1")
        if self.min_items < 2:
            raise ValueError("racing.min_items must be at least 2 (a standard error needs two items)")
        if self.z <= 0:
            raise ValueError("racing.z must be positive")
        if self.variance not in ("task", "moderated"):
            raise ValueError("racing.variance must be 'task' or 'moderated'")


@dataclass
class RoundLog:
    """One slice of the race: what was scored and who left, with the bound."""

    items: int  # items scored so far, all tasks together
    total: int  # items in all
    scored: list[int]  # layers (current indices) scored in this round
    best: int | None  # the best layer after this round (None after the last)
    # layer -> (gap to the best's aggregate, its standard error, the multiple of it the gap exceeded)
    eliminated: dict[int, tuple[float, float, float]]
    layer_forwards: int  # decoder layers x sequences run in this round

    def as_dict(self, name=lambda i: i) -> dict:
        """JSON-ready, with layers renamed by ``name`` (e.g. current -> original index)."""
        return {
            "items": self.items,
            "total": self.total,
            "scored": [name(i) for i in self.scored],
            "best": None if self.best is None else name(self.best),
            "eliminated": {str(name(i)): {"gap": g, "se": se, "k": k} for i, (g, se, k) in self.eliminated.items()},
            "layer_forwards": self.layer_forwards,
        }


@dataclass
class TaskDrop:
    """Task-drop importance of every current layer.

    ``drops[i]``: the aggregate of the model minus that with layer i skipped, on the items layer i
    was scored on (the model's score restricted to the same items). ``per_task[i]``: the task
    scores with layer i skipped, on those items. ``current``: the model's task scores on every item.
    ``items[i]``: how many items layer i was scored on (all tasks together) of ``total_items``;
    ``partial``: the layers scored on fewer (left the race early). ``proposal``: the layer with the
    lowest drop among the fully scored ones. ``rounds``: the race, slice by slice (one round for
    full scoring). ``forwards``: the decoder-layer work of the whole scoring.
    """

    drops: dict[int, float]
    per_task: dict[int, dict[str, float]]
    current: dict[str, float]
    items: dict[int, int]
    total_items: int
    partial: set[int]
    proposal: int
    rounds: list[RoundLog] = field(default_factory=list)
    forwards: ForwardCount = field(default_factory=ForwardCount)
    # the per-item results of each partial layer on the items it saw: an evaluation of the model
    # without it needs only the rest (engine.evaluation.Evaluation.completed)
    partial_items: dict[int, dict[str, ItemScores]] = field(default_factory=dict)

    def ranked(self) -> list[tuple[int, float]]:
        """(layer, drop), least important first: the fully scored layers by drop (the proposal
        first), then the partial ones by their estimated drop."""
        key = lambda i: (self.drops[i], i)
        complete = sorted((i for i in self.drops if i not in self.partial), key=key)
        return [(i, self.drops[i]) for i in complete + sorted(self.partial, key=key)]


def task_drop(
    evaluator: SuiteEvaluator,
    racing: RacingSettings | None = None,
    shared: bool = True,
    progress: Progress | None = None,
) -> TaskDrop:
    """Task-drop scores of every current layer of ``evaluator.model`` on the evaluator's items.

    ``racing`` None or disabled: every candidate on every item (full scoring). Otherwise the race
    described in the module docstring. Scoring runs from the shared prefix either way.
    """
    n = adapter_for(evaluator.model).num_layers
    layers = list(range(n))
    specs = {t.spec.name: t.spec for t in evaluator.tasks}
    all_items = evaluator.items()
    total = sum(len(v) for v in all_items.values())
    start = evaluator.forwards.copy()
    scored: dict[int | None, dict[str, ItemScores]] = {c: {t: ItemScores() for t in all_items} for c in [None, *layers]}
    rounds: list[RoundLog] = []

    if racing is None or not racing.enabled:
        results = evaluator.evaluate_items([None, *layers], shared=shared, progress=progress)
        for c, tasks in results.items():
            for t, values in tasks.items():
                scored[c][t].extend(values)
        rounds.append(RoundLog(total, total, layers, None, {}, (evaluator.forwards - start).layer_forwards))
        return _result(scored, specs, layers, total, rounds, evaluator.forwards - start)

    order = {t: _shuffled(items, racing.seed, t) for t, items in all_items.items()}
    done = dict.fromkeys(order, 0)
    alive = list(layers)
    share = racing.first_fraction
    while True:
        target = {t: _slice_end(len(order[t]), share, racing.min_items) for t in order}
        new = {t: order[t][done[t] : target[t]] for t in order if target[t] > done[t]}
        before = evaluator.forwards.copy()
        results = evaluator.evaluate_items([None, *alive], shared=shared, progress=progress, items=new)
        for c, tasks in results.items():
            for t, values in tasks.items():
                scored[c][t].extend(values)
        done = target
        so_far = sum(done.values())
        work = (evaluator.forwards - before).layer_forwards
        if so_far >= total:
            rounds.append(RoundLog(so_far, total, alive, None, {}, work))
            break
        sizes = {t: len(o) for t, o in order.items()}
        best, eliminated = _eliminate(scored, alive, specs, sizes, racing.z, racing.variance == "moderated")
        rounds.append(RoundLog(so_far, total, alive, best, eliminated, work))
        alive = [c for c in alive if c not in eliminated]
        share *= racing.growth
    return _result(scored, specs, layers, total, rounds, evaluator.forwards - start)


def _shuffled(items: list[int], seed: int, task: str) -> list[int]:
    out = list(items)
    random.Random(f"{seed}:{task}").shuffle(out)
    return out


def _slice_end(n: int, share: float, min_items: int) -> int:
    if share >= 1:
        return n
    return min(n, max(min(min_items, n), math.ceil(share * n)))


def _eliminate(
    scored, alive: list[int], specs, sizes: dict[str, int], z: float, moderated: bool = False
) -> tuple[int, dict[int, tuple[float, float, float]]]:
    """The best candidate so far and those confidently worse than it (gap, standard error, k)."""
    tasks = [t for t in sizes if scored[alive[0]][t].items]
    estimate = {c: aggregate({t: task_score(specs[t], scored[c][t]) for t in tasks}) for c in alive}
    best = max(alive, key=lambda c: (estimate[c], -c))
    others = [c for c in alive if c != best]
    # Per candidate and task: the weighted mean of the paired differences to the best, the variance
    # of that mean (before the finite-set factor) and its degrees of freedom.
    paired = {c: {t: _paired(scored[best][t], scored[c][t]) for t in tasks} for c in others}
    if moderated:
        for t in tasks:
            _moderate([paired[c][t] for c in others])
    out = {}
    for c in others:
        gap, variance, df_terms = 0.0, 0.0, 0.0
        for t in tasks:
            mean, var, df = paired[c][t]
            gap += mean
            if df <= 0:
                variance = math.inf
                continue
            task_variance = var * max(0.0, 1 - len(scored[c][t].items) / sizes[t])
            variance += task_variance
            df_terms += task_variance**2 / df
        gap /= len(tasks)
        se = math.sqrt(variance) / len(tasks)
        if gap <= 0 or se == 0 or not math.isfinite(se):  # no spread seen is no certainty while items remain
            continue
        k = _critical(z, variance**2 / df_terms if df_terms > 0 else math.inf)
        if gap > k * se:
            out[c] = (gap, se, k)
    return best, out


def _paired(b, o) -> list[float]:
    """[weighted mean of the differences b - o, the variance of that mean, its degrees of freedom]."""
    weights = b.weights
    total = sum(weights)
    diffs = [vb - vo for vb, vo in zip(b.values, o.values)]
    mean = sum(w * d for w, d in zip(weights, diffs)) / total
    count = len(diffs)
    if count < 2:
        return [mean, math.inf, 0.0]
    spread = sum((w / total) ** 2 * (d - mean) ** 2 for w, d in zip(weights, diffs))
    return [mean, count / (count - 1) * spread, float(count - 1)]


def _moderate(stats: list[list[float]]) -> None:
    """Shrink each candidate's variance toward a prior fitted to all of them (empirical Bayes, as
    limma moderates gene-wise variances, Smyth 2004): ``(d0 s0^2 + d s^2) / (d0 + d)`` with
    ``d0 + d`` degrees of freedom. The prior's ``d0`` is estimated from how far the log-variances
    spread beyond what ``d`` degrees of freedom alone explain: variances that differ for real get a
    small ``d0`` and stay nearly as they were; on the first slice, where each variance rests on 2
    degrees of freedom, the others' variances lend theirs."""
    from scipy.special import digamma, polygamma

    usable = [s for s in stats if s[2] > 0 and 0 < s[1] < math.inf]
    if len(usable) < 3 or len({s[2] for s in usable}) != 1:
        return
    d = usable[0][2]
    logs = [math.log(s[1]) - digamma(d / 2) + math.log(d / 2) for s in usable]
    mean = sum(logs) / len(logs)
    excess = sum((e - mean) ** 2 for e in logs) / (len(logs) - 1) - polygamma(1, d / 2)
    if excess <= 0:  # no more spread than chance: one common variance, known as well as its many estimates
        d0, prior = math.inf, math.exp(mean)
    else:
        d0 = 2 * _trigamma_inverse(excess)
        prior = math.exp(mean + digamma(d0 / 2) - math.log(d0 / 2))
    for s in usable:
        s[1] = prior if math.isinf(d0) else (d0 * prior + d * s[1]) / (d0 + d)
        s[2] = d + d0


def _trigamma_inverse(x: float) -> float:
    """y with trigamma(y) = x (Newton's method from limma's ``trigammaInverse``)."""
    from scipy.special import polygamma

    if x > 1e7:
        return 1 / math.sqrt(x)
    if x < 1e-6:
        return 1 / x
    y = 0.5 + 1 / x
    for _ in range(50):
        tri = float(polygamma(1, y))
        step = tri * (1 - tri / x) / float(polygamma(2, y))
        y += step
        if -step / y < 1e-8:
            break
    return y


def _critical(z: float, df: float) -> float:
    """The multiple of the standard error at the one-sided level a normal puts beyond ``z``, from
    Student's t with ``df`` degrees of freedom: a variance estimated on a handful of items is itself
    noisy, and with 3 items a task the normal's bound dropped the true best layer (bench/racing.py)."""
    from scipy.stats import norm, t

    if math.isinf(df):  # a variance known exactly (a moderated one with an infinitely sure prior)
        return z
    return float(t.ppf(norm.cdf(z), df))


def _result(scored, specs, layers: list[int], total: int, rounds: list[RoundLog], forwards: ForwardCount) -> TaskDrop:
    current = {t: task_score(specs[t], s) for t, s in scored[None].items()}
    per_task, drops, items = {}, {}, {}
    for c in layers:
        per_task[c] = {t: task_score(specs[t], s) for t, s in scored[c].items()}
        base = {t: task_score(specs[t], scored[None][t].subset(s.items)) for t, s in scored[c].items()}
        drops[c] = aggregate(base) - aggregate(per_task[c])
        items[c] = sum(len(s.items) for s in scored[c].values())
    partial = {c for c in layers if items[c] < total}
    complete = [c for c in layers if c not in partial]
    proposal = min(complete, key=lambda c: (drops[c], c))
    partial_items = {c: dict(scored[c]) for c in partial}
    return TaskDrop(drops, per_task, current, items, total, partial, proposal, rounds, forwards, partial_items)
