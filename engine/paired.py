"""Is one student better than another, or just luckier? A paired bootstrap over the same items.

    python -m engine.paired RUN_A RUN_B      # or RUN_B = teacher: RUN_A's own teacher
    python -m engine.paired RUN_A RUN_B --layers 27   # both runs' students at 27 layers

Both students (each run's last checkpoint, as ``ild export`` rebuilds it, or its checkpoint with
``--layers`` layers) are scored item by item on the same part of the same suite (the report part and
the report suite unless ``--part select``). The per-item scores are kept in the run directory
(``engine.item_store``), so a comparison runs again without scoring, and without the weights.
The items are then resampled with replacement, each task's on its own and the same draw for both
students (paired: an item both find hard moves both scores together), the task scores and the
aggregate recomputed by each task's own metric (corpus metrics over the drawn texts). The printed
interval is the percentile interval of the difference A - B; ``p`` is the two-sided bootstrap
p-value of no difference. With 40-60 items a task a difference of 0.005 in the aggregate is often
inside it: this says which differences of a table are measured and which are noise.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

TEACHER = "teacher"


@dataclass
class Difference:
    """A - B of one score, with its bootstrap interval and two-sided p-value."""

    a: float
    b: float
    diff: float
    low: float
    high: float
    p: float


@dataclass
class PairedResult:
    aggregate: Difference
    tasks: dict[str, Difference]
    resamples: int
    level: float
    items: dict[str, int]  # task -> items compared


def aligned(a, b):
    """Both students' results of one task in one item order; refused when they scored other items."""
    if sorted(a.items) != sorted(b.items):
        raise ValueError("the two students were scored on different items")
    order_a = {item: k for k, item in enumerate(a.items)}
    order_b = {item: k for k, item in enumerate(b.items)}
    items = sorted(order_a)
    return a.at(order_a[i] for i in items), b.at(order_b[i] for i in items)


def paired_bootstrap(specs: dict, a: dict, b: dict, resamples: int = 2000, seed: int = 0, level: float = 0.95):
    """``a`` and ``b``: task name -> ItemScores of the same items; ``specs``: task name -> TaskSpec."""
    from engine.tasks.evaluate import aggregate, task_score

    if set(a) != set(b):
        raise ValueError(f"the two students were scored on different tasks: {sorted(set(a) ^ set(b))}")
    names = sorted(a)
    pairs = {t: aligned(a[t], b[t]) for t in names}
    observed = {t: (task_score(specs[t], x), task_score(specs[t], y)) for t, (x, y) in pairs.items()}
    rng = random.Random(seed)
    drawn: dict[str, list[float]] = {t: [] for t in names}
    agg: list[float] = []
    for _ in range(resamples):
        diffs = {}
        for t, (x, y) in pairs.items():
            picks = [rng.randrange(len(x.items)) for _ in x.items]
            diffs[t] = task_score(specs[t], x.at(picks)) - task_score(specs[t], y.at(picks))
            drawn[t].append(diffs[t])
        agg.append(aggregate(diffs))  # the aggregate is a plain mean, so its difference is the mean difference

    def summarise(a_score: float, b_score: float, draws: list[float]) -> Difference:
        import numpy

        tail = (1 - level) / 2
        low, high = (float(q) for q in numpy.quantile(draws, [tail, 1 - tail]))
        at_or_below = sum(d <= 0 for d in draws) / len(draws)
        at_or_above = sum(d >= 0 for d in draws) / len(draws)
        return Difference(a_score, b_score, a_score - b_score, low, high, min(1.0, 2 * min(at_or_below, at_or_above)))

    tasks = {t: summarise(*observed[t], drawn[t]) for t in names}
    whole = summarise(
        aggregate({t: s[0] for t, s in observed.items()}), aggregate({t: s[1] for t, s in observed.items()}), agg
    )
    return PairedResult(whole, tasks, resamples, level, {t: len(pairs[t][0].items) for t in names})


# --- the command ------------------------------------------------------------------------------------
def _teacher_digest(run_dir: Path, config, started: dict) -> str:
    from engine.models.identity import IDENTITY_FILE
    from engine.runlog.safefile import read_regular

    try:
        digest = json.loads(read_regular(Path(run_dir) / IDENTITY_FILE, 1 << 20)).get("digest")
    except (OSError, ValueError, AttributeError):
        digest = None
    return f"{config.model} {started.get('model_version')} {digest}"


def _which(run_dir: Path, config, events: list[dict], teacher: bool, layers: int | None) -> tuple[str, str, int | None]:
    """(the student's name in the item store, its digest, the checkpoint to restore) from the run's
    log alone: a run's last checkpoint, the last one with ``layers`` layers, or its teacher."""
    from engine.checkpoints import CheckpointError, recorded_checkpoints

    started = next((e for e in events if e.get("type") == "run_started"), {})
    if teacher:
        # the digest of the teacher's weight files the run recorded at its start (teacher.json)
        return "teacher", _teacher_digest(run_dir, config, started), None
    recorded = recorded_checkpoints(events)
    names = [n for n, e in recorded.items() if e.get("removed")]
    if layers is not None:
        # the last checkpoint (after healing, where the run healed) of the student with that many layers
        start = started.get("start_layers")
        if not isinstance(start, int):
            raise CheckpointError(f"{config.name}'s log does not say how many layers its teacher has")
        names = [n for n in names if len(recorded[n]["removed"]) == start - layers]
        if not names:
            raise CheckpointError(f"{config.name} has no checkpoint of a student with {layers} layers")
    if not names:
        return "", "", None  # no student logged: the checkpoint store says why (ild export's errors)
    name = max(names, key=int)
    return name, str(recorded[name].get("manifest_sha256")), int(name)


def _load(run_dir: Path, config, events: list[dict], device, teacher: bool, checkpoint: int | None):
    """The teacher, or the run's student of ``checkpoint`` (None: its newest), verified as for an export."""
    from engine.checkpoints import CheckpointStore
    from engine.models.loading import load_model

    loaded = load_model(config.model, device=device)
    if not teacher:
        store = CheckpointStore(run_dir)
        store.restore(loaded.model, store.newest(events, from_checkpoint=checkpoint))
    return loaded


def _scores(run_dir: Path, config, device, part: str, teacher: bool = False, layers: int | None = None) -> dict:
    """Per-item scores of one student on ``part``: from the run's item store when it holds them,
    else scored from its checkpoint (then stored for the next comparison)."""
    from engine import item_store
    from engine.checkpoints import CheckpointError
    from engine.digests import code_digest
    from engine.runlog.layout import RunDir
    from engine.runlog.tailer import read_all
    from engine.score_cache import SCORING_CODE

    events = read_all(RunDir(run_dir).events_file)
    student, digest, checkpoint = _which(run_dir, config, events, teacher, layers)
    if not student:  # no student logged: restoring says why, as for an export
        return _per_item(_load(run_dir, config, events, device, teacher, checkpoint), config, part)
    key = item_store.StudentKey(
        student=student,
        digest=digest,
        part=part,
        suite=config.suite,
        report_suite=config.report_suite,
        split_seed=config.split_seed,
        batch_tokens=config.batch_tokens,
        code=code_digest(*SCORING_CODE),
    )
    stored, _ = item_store.load(run_dir, key)
    if stored is not None:
        return stored
    try:
        loaded = _load(run_dir, config, events, device, teacher, checkpoint)
    except CheckpointError:
        stored, _ = item_store.load(run_dir, key, any_code=True)
        if stored is None:
            raise
        print(f"note: {config.name}'s {student} scored by earlier code (its weights are gone)", file=sys.stderr)
        return stored
    scores = _per_item(loaded, config, part)
    item_store.save(run_dir, key, scores)
    return scores


def _specs(config, part: str) -> dict:
    """Task name -> TaskSpec of the scored tasks (their metrics turn items into task scores)."""
    from engine.tasks.spec import load_report_suite, load_suite

    main = load_suite(config.suite)
    suites = [main] if part == "select" else [main, load_report_suite(main, config.report_suite)]
    return {task.name: task for suite in suites if suite is not None for task in suite.tasks}


def _same_items(a, b) -> None:
    for field in ("suite", "report_suite", "split_seed"):
        if getattr(a, field) != getattr(b, field):
            raise ValueError(
                f"the runs were evaluated on other items ({field}: {getattr(a, field)!r} vs {getattr(b, field)!r})"
            )


def _per_item(loaded, config, part: str) -> dict:
    from engine.evaluation import Evaluation

    evaluation = Evaluation(
        loaded.model, loaded.tokenizer, config.suite, config.report_suite, config.batch_tokens, config.split_seed
    )
    evaluators = [evaluation.select] if part == "select" else evaluation.report
    results = {}
    for evaluator in evaluators:
        results.update(evaluator.evaluate_items([None])[None])
    return results


@dataclass
class Comparison:
    """One paired comparison as ``ild paired`` prints and saves it."""

    result: PairedResult
    name_a: str
    name_b: str
    part: str
    layers: int | None = None

    def as_json(self) -> dict:
        return {"a": self.name_a, "b": self.name_b, "part": self.part, "layers": self.layers, **asdict(self.result)}


def compare(
    run_a: Path,
    run_b: Path | str,
    part: str = "report",
    layers: int | None = None,
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    device=None,
) -> Comparison:
    """RUN_A's student against RUN_B's (``TEACHER``: RUN_A's teacher), item by item on ``part``.

    Raises ValueError, ``CheckpointError``, ``ModelSpecError`` or ``TaskFileError`` with a one-line
    reason (other items, no such student, weights gone and never scored)."""
    from engine.worker import _load_config, _quiet_libraries

    vs_teacher = run_b == TEACHER
    run_a = Path(run_a)
    run_b = run_a if vs_teacher else Path(run_b)
    config_a, config_b = _load_config(run_a), _load_config(run_b)  # a one-line error unless both are runs
    _quiet_libraries()
    _same_items(config_a, config_b)
    a = _scores(run_a, config_a, device, part, layers=layers)
    b = _scores(run_b, config_b, device, part, teacher=vs_teacher, layers=layers)
    result = paired_bootstrap(_specs(config_a, part), a, b, resamples, seed, level)
    name_b = f"{config_a.name}'s teacher" if vs_teacher else config_b.name
    return Comparison(result, config_a.name, name_b, part, layers)


def p_text(p: float, resamples: int) -> str:
    """A bootstrap p-value as printed: none of the resamples crossed zero is below their resolution."""
    return f"<{1 / resamples:.4f}" if p == 0 else f"{p:.3f}"


def verdict(d: Difference) -> str:
    return "measured" if d.low > 0 or d.high < 0 else "inside the noise of these items"


def render(comparison: Comparison) -> str:
    """The comparison as ``ild paired`` prints it: one row a task, then the aggregate's verdict."""
    result = comparison.result
    pct = f"{result.level:.0%}"
    at = f" at {comparison.layers} layers" if comparison.layers is not None else ""
    lines = [
        f"{comparison.name_a} (A) against {comparison.name_b} (B){at}, {comparison.part} part, "
        f"{result.resamples} paired resamples",
        f"{'task':14} {'items':>5} {'A':>7} {'B':>7} {'A - B':>8}  {pct + ' interval':>19} {'p':>7}",
    ]
    rows = [(t, d, result.items[t]) for t, d in result.tasks.items()] + [("aggregate", result.aggregate, None)]
    for name, d, n in rows:
        lines.append(
            f"{name:14} {'' if n is None else n:>5} {d.a:7.4f} {d.b:7.4f} {d.diff:+8.4f}  "
            f"[{d.low:+8.4f}, {d.high:+8.4f}] {p_text(d.p, result.resamples):>7}"
        )
    d = result.aggregate
    lines.append(f"aggregate difference {d.diff:+.4f}: {verdict(d)} (p = {p_text(d.p, result.resamples)})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ild paired", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", help=f"a run directory, or '{TEACHER}' for RUN_A's teacher")
    parser.add_argument("--part", choices=("report", "select"), default="report")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--level", type=float, default=0.95)
    parser.add_argument("--device", default=None)
    parser.add_argument(
        "--layers", type=int, default=None, help="both students at this many layers (default: the last)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)
    if args.resamples < 100 or not 0.5 <= args.level < 1:
        print("ild: --resamples must be at least 100 and --level in [0.5, 1)", file=sys.stderr)
        return 2

    from engine.checkpoints import CheckpointError
    from engine.models.errors import ModelSpecError
    from engine.tasks.spec import TaskFileError

    try:
        comparison = compare(
            args.run_a, args.run_b, args.part, args.layers, args.resamples, args.seed, args.level, args.device
        )
    except (ValueError, ModelSpecError, CheckpointError, TaskFileError) as exc:
        print(f"ild: {exc}", file=sys.stderr)
        return 2
    print(render(comparison))
    if args.json is not None:
        args.json.write_text(json.dumps(comparison.as_json(), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
