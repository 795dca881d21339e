"""The built-in importance metrics' scoring functions, as registered in ``engine.runlog.strategies``.

Each is ``score(scorer) -> Ranking``: it reads what it declared it needs from the ``Scorer``
(``model``, ``evaluator`` for the selection part, ``calibration``, ``teacher``, ``pad_id``,
``batch_tokens``, ``racing``, ``block``, ``progress``) and ranks the layers by original index,
least important first (``scorer.ranking`` sorts a dict of scores).
"""

from __future__ import annotations

from engine.models.surgery import layer_map
from engine.scoring import Ranking, Scorer, keyed


def _similarity(scorer: Scorer, which: str) -> Ranking:
    from engine.importance.scores import similarity_scores

    mapping = layer_map(scorer.model)
    both = similarity_scores(scorer.model, scorer.calibration, scorer.pad_id, scorer.batch_tokens, scorer.progress)
    scores = {mapping[i]: v for i, v in both[which].items()}
    other = "angular" if which == "bi" else "bi"
    return scorer.ranking(scores, also={other: keyed({mapping[i]: v for i, v in both[other].items()})})


def block_influence(scorer: Scorer) -> Ranking:
    return _similarity(scorer, "bi")


def angular(scorer: Scorer) -> Ranking:
    return _similarity(scorer, "angular")


def _loss_drop(scorer: Scorer, kind: str) -> Ranking:
    from engine.importance.scores import loss_drop_scores

    mapping = layer_map(scorer.model)
    drops = loss_drop_scores(
        scorer.model,
        scorer.calibration,
        scorer.pad_id,
        kind=kind,
        teacher=scorer.teacher,
        batch_tokens=scorer.batch_tokens,
        progress=scorer.progress,
    )
    return scorer.ranking({mapping[i]: v for i, v in drops.items()})


def loss_nll(scorer: Scorer) -> Ranking:
    return _loss_drop(scorer, "nll")


def loss_kl(scorer: Scorer) -> Ranking:
    return _loss_drop(scorer, "kl")


def position(scorer: Scorer) -> Ranking:
    """The place in the reverse order: the dashboard shows it like any other score."""
    from engine.models.surgery import reverse_order_candidates

    mapping = layer_map(scorer.model)
    order = reverse_order_candidates(mapping)
    return scorer.ranking({o: float(order.index(o)) if o in order else float(len(mapping)) for o in mapping})


def task_drop(scorer: Scorer) -> Ranking:
    """Task drop on the selection part, racing the candidates unless ``scoring.racing`` is off.

    A layer the race dropped early keeps its estimate on the items it saw (``partial``): it is
    ranked after every fully scored layer, and its per-task scores are not an evaluation of the
    model without it: if a person picks it, the runner scores that model on the items the race did
    not reach and keeps the per-item results it has (``Ranking.partial_items``)."""
    from engine.importance.racing import RacingSettings
    from engine.importance.racing import task_drop as race
    from engine.tasks.evaluate import aggregate

    mapping = layer_map(scorer.model)
    racing = scorer.racing if scorer.racing is not None else RacingSettings(enabled=False)
    result = race(scorer.evaluator, racing=racing, progress=scorer.progress)
    ranked = [(mapping[i], drop) for i, drop in result.ranked()]
    by_layer = {mapping[i]: result.per_task[i] for i in result.per_task if i not in result.partial}
    partial_items = {mapping[i]: tasks for i, tasks in result.partial_items.items()}
    by_task = {
        task: {str(mapping[i]): result.per_task[i][task] for i in result.per_task}
        for task in scorer.evaluator.task_names
    }
    event = {
        "metric": scorer.metric,
        "scores": keyed({mapping[i]: d for i, d in result.drops.items()}),
        "per_task": by_task,
        "aggregates": {str(mapping[i]): aggregate(result.per_task[i]) for i in result.per_task},
    }
    if racing.enabled:
        event.update(
            partial=sorted(mapping[i] for i in result.partial),
            items={str(mapping[i]): n for i, n in sorted(result.items.items())},
            racing={
                "total_items": result.total_items,
                "layer_forwards": result.forwards.layer_forwards,
                "rounds": [r.as_dict(name=lambda i: mapping[i]) for r in result.rounds],
            },
        )
    return Ranking(ranked, by_layer, event, partial_items)


def block_distance(scorer: Scorer) -> Ranking:
    """ReplaceMe's one-shot choice: the contiguous block of ``block`` layers whose input and
    output are closest (cosine distance); its layers are proposed in order, the rest after."""
    from engine.models.bridge import block_distances

    mapping = layer_map(scorer.model)
    block = scorer.block
    distances = block_distances(scorer.model, block, scorer.calibration, scorer.pad_id, scorer.batch_tokens)
    start = min(distances, key=lambda s: (distances[s], s))
    chosen = mapping[mapping.index(start) : mapping.index(start) + block]
    scores = {o: float(chosen.index(o)) if o in chosen else float(block + distances.get(o, 1.0)) for o in mapping}
    return scorer.ranking(scores, block=chosen, block_distance=keyed(distances))
