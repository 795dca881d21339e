"""``python -m engine.suite_check``: does a suite separate layers on a model?

First, before any model is loaded, it reads every task's data and renders its templates
(``check_suite_data``) and prints what each task loads and how many items each part of the split
gets; a data or schema problem is one line and exit code 2. Then, per task, the score of the full
model, with layer 1 skipped and with a middle layer skipped (or the layers given), separately for
the selection part of the suite (what chooses layers), its report part, and the report suite
(never used to choose), with the time each took. A task whose scores do not move cannot rank layers.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _offline() -> bool:
    return any(
        os.environ.get(name, "").lower() in ("1", "true", "yes") for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ild suite check")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--suite", default="default")
    parser.add_argument("--report-suite", default=None, help="a report suite (default: the suite's own `report:`)")
    parser.add_argument(
        "--layers", default=None, help="comma-separated current layer indices to skip (default: 1 and the middle one)"
    )
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--data-only", action="store_true", help="check the data and print the plan; load no model")
    args = parser.parse_args(argv)

    from engine.hub_data import check_suites
    from engine.models.errors import ModelSpecError, UnsupportedArchitecture
    from engine.tasks.check import describe_suite_data, will_read
    from engine.tasks.plan import example_prompt, shortened, task_plan
    from engine.tasks.spec import TaskFileError, load_report_suite, load_suite

    try:
        suite = load_suite(args.suite)
        report = load_report_suite(suite, args.report_suite)
        network = not _offline()
        suites = [suite] + ([report] if report else [])
        title = lambda which: f"suite '{which.name}'" + (" (report suite)" if which is report else "")
        for which in suites:  # from the suite file alone: shown even when the data is not reachable
            print(f"{title(which)}:")
            for task in which.tasks:
                print(f"  {task_plan(task)}")
        if network:  # one request with a timeout first: an unreachable Hub is one line, not 25 s of retries
            check_suites(suites)
        for which in suites:
            print(f"{title(which)} data:")
            for line in describe_suite_data(which, network=network, split_seed=args.split_seed, split=which is suite):
                print(f"  {line}")
        if args.data_only:
            print(
                "prompts (no tokenizer: without the BOS text and the chat template, which the model's tokenizer adds):"
            )
            for task in (t for which in suites for t in which.tasks if will_read(t, network)):
                print(f"  {task.name}: {shortened(example_prompt(task))}")
            return 0
        from engine.worker import _quiet_libraries

        _quiet_libraries()
        from engine.models.adapters import adapter_for
        from engine.models.loading import load_model
        from engine.tasks.evaluate import SuiteEvaluator

        loaded = load_model(args.model, device=args.device)
        depth = adapter_for(loaded.model).num_layers
        layers = [int(x) for x in args.layers.split(",")] if args.layers else [1, depth // 2]
        bad = [x for x in layers if not 0 <= x < depth]
        if bad:
            raise ValueError(f"layer {bad[0]} does not exist (the model has {depth} layers)")
        print(f"prompts ({args.model}'s tokenizer):")
        for task in (t for which in suites for t in which.tasks if will_read(t, network)):
            print(f"  {task.name}: {shortened(example_prompt(task, loaded.tokenizer))}")
        make = lambda s, part: SuiteEvaluator(loaded.model, loaded.tokenizer, s, part=part, split_seed=args.split_seed)
        parts = [("selection part", make(suite, "select")), ("report part", make(suite, "report"))]
        if report:
            parts.append(("report suite", make(report, None)))
    except (TaskFileError, ModelSpecError, UnsupportedArchitecture, ValueError) as exc:
        print(f"ild: {exc}", file=sys.stderr)
        return 2
    print(f"model {args.model} ({depth} layers)")
    for title, evaluator in parts:
        _table(title, evaluator, layers)
    return 0


def _table(title: str, evaluator, layers: list[int]) -> None:
    from engine.tasks.evaluate import aggregate

    start = time.perf_counter()
    results = evaluator.evaluate([None, *layers])
    elapsed = time.perf_counter() - start
    columns = ["full"] + [f"skip {x}" for x in layers]
    names = evaluator.task_names
    width = max(len(n) for n in names + ["aggregate"])
    items = sum(len(v) for v in evaluator.items().values())
    print(f"\n{title} of '{evaluator.suite.name}': {items} items, {elapsed:.1f}s for {len(columns)} variants")
    print(f"{'task':<{width}}  " + "  ".join(f"{c:>8}" for c in columns) + "  moves")
    for name in names:
        values = [results[None][name]] + [results[x][name] for x in layers]
        moves = max(values) - min(values)
        print(
            f"{name:<{width}}  "
            + "  ".join(f"{v:8.3f}" for v in values)
            + f"  {'yes' if moves >= 0.02 else 'no'} ({moves:.3f})"
        )
    aggregates = [aggregate(results[None])] + [aggregate(results[x]) for x in layers]
    print(f"{'aggregate':<{width}}  " + "  ".join(f"{v:8.3f}" for v in aggregates))


if __name__ == "__main__":
    sys.exit(main())
