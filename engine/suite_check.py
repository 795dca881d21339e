"""``python -m engine.suite_check``: does a suite separate layers on a model?

Prints, per task, the score of the full model, with layer 1 skipped and with a middle layer
skipped (or the layers given), and the time it took. A task whose scores do not move cannot rank
layers; the default suite is chosen so that its tasks do.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ild suite check")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--suite", default="default")
    parser.add_argument("--layers", default=None, help="comma-separated original layer indices to skip (default: 1 and the middle one)")
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)

    from engine.models.errors import ModelSpecError, UnsupportedArchitecture
    from engine.tasks.spec import TaskFileError, load_suite

    try:
        suite = load_suite(args.suite)
        from engine.worker import _quiet_libraries

        _quiet_libraries()
        from engine.models.adapters import adapter_for
        from engine.models.loading import load_model
        from engine.tasks.evaluate import SuiteEvaluator, aggregate

        loaded = load_model(args.model, device=args.device)
        depth = adapter_for(loaded.model).num_layers
        layers = [int(x) for x in args.layers.split(",")] if args.layers else [1, depth // 2]
        bad = [x for x in layers if not 0 <= x < depth]
        if bad:
            raise ValueError(f"layer {bad[0]} does not exist (the model has {depth} layers)")
        evaluator = SuiteEvaluator(loaded.model, loaded.tokenizer, suite)
    except (TaskFileError, ModelSpecError, UnsupportedArchitecture, ValueError) as exc:
        print(f"ild: {exc}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    results = evaluator.evaluate([None, *layers])
    elapsed = time.perf_counter() - start
    columns = ["full"] + [f"skip {x}" for x in layers]
    names = evaluator.task_names
    width = max(len(n) for n in names + ["aggregate"])
    print(f"suite '{suite.name}' on {args.model} ({depth} layers), {elapsed:.1f}s for {len(columns)} variants")
    print(f"{'task':<{width}}  " + "  ".join(f"{c:>8}" for c in columns) + "  moves")
    for name in names:
        values = [results[None][name]] + [results[x][name] for x in layers]
        moves = max(values) - min(values)
        print(f"{name:<{width}}  " + "  ".join(f"{v:8.3f}" for v in values) + f"  {'yes' if moves >= 0.02 else 'no'} ({moves:.3f})")
    aggregates = [aggregate(results[None])] + [aggregate(results[x]) for x in layers]
    print(f"{'aggregate':<{width}}  " + "  ".join(f"{v:8.3f}" for v in aggregates))
    return 0


if __name__ == "__main__":
    sys.exit(main())
