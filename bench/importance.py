"""Task-drop scoring of every layer: naive per-candidate evaluation vs the shared prefix.

Both run in this process on the same model, suite and batches. "Naive" recomputes every
candidate from the embeddings; "shared" computes each layer's input once per batch and continues
candidate i from layer i's input (generation tasks also verify the current model's greedy output
from the shared prefix). Prints the time of each, the ratio, and whether the scores (to 1e-4) and
the rankings agree.

    .venv/bin/python bench/importance.py [--model smollm2-135m] [--suite default] [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--suite", default="default")
    parser.add_argument("--device", default=None)
    parser.add_argument("--repeat", type=int, default=2, help="rounds of (shared, naive); the best time of each is compared")
    args = parser.parse_args()

    import torch

    from engine.models.adapters import adapter_for
    from engine.models.loading import load_model
    from engine.tasks.evaluate import SuiteEvaluator, aggregate
    from engine.tasks.spec import load_suite
    from engine.worker import _quiet_libraries

    _quiet_libraries()
    loaded = load_model(args.model, device=args.device)
    evaluator = SuiteEvaluator(loaded.model, loaded.tokenizer, load_suite(args.suite))
    n = adapter_for(loaded.model).num_layers
    candidates = [None, *range(n)]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {next(loaded.model.parameters()).device}")
    print(f"model {args.model} ({n} layers), suite {args.suite}: {', '.join(evaluator.task_names)}")

    # Alternating rounds, the best time of each mode: a shared VM's noise only ever adds time.
    times, results = {"shared": [], "naive": []}, {}
    for round_ in range(args.repeat):
        for mode in ("shared", "naive"):
            start = time.perf_counter()
            results[mode] = evaluator.evaluate(candidates, shared=(mode == "shared"))
            times[mode].append(time.perf_counter() - start)
            print(f"round {round_ + 1} {mode:>6}: {times[mode][-1]:7.1f} s for {len(candidates)} variants (the model and {n} skip-one candidates)", flush=True)
    timings = {mode: min(values) for mode, values in times.items()}
    print(f"best of {args.repeat}: shared {timings['shared']:.1f} s, naive {timings['naive']:.1f} s")

    worst = max(abs(results["shared"][c][t] - results["naive"][c][t]) for c in candidates for t in evaluator.task_names)
    rank = {m: sorted(range(n), key=lambda i: (aggregate(results[m][None]) - aggregate(results[m][i]), i)) for m in results}
    print(f"ratio naive/shared: {timings['naive'] / timings['shared']:.2f}x")
    print(f"largest score difference: {worst:.2e} ({'equal to 1e-4' if worst <= 1e-4 else 'DIFFERENT'})")
    print(f"rankings identical: {rank['shared'] == rank['naive']}")
    print(f"ranking (least important first): {rank['shared']}")
    per_task = {t: [round(results['shared'][i][t], 3) for i in range(n)] for t in evaluator.task_names}
    for task, values in per_task.items():
        print(f"  {task:>14} per skipped layer: {values}")
    return 0 if worst <= 1e-4 and rank["shared"] == rank["naive"] else 1


if __name__ == "__main__":
    sys.exit(main())
