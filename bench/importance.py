"""Task-drop scoring of every layer: per-candidate evaluation vs the shared prefix.

All run in this process on the same model, suite and batches, in alternating rounds:
- "shared" computes each layer's input once per batch and continues candidate i from layer i's
  input (generation tasks also verify the current model's greedy output from the shared prefix);
- "naive" is the same evaluator with the sharing off: every candidate from the embeddings, with
  the same chunked LM head and last layer read at the scored positions only. Its ratio is what the
  prefix sharing alone buys;
- "plain" is the way an evaluation harness scores a candidate: the model's own forward with the
  layer left out, logits and log-softmax at every position (forward-scored suites only).
Prints the time of each, the ratios, and whether the scores (to 1e-4) and the rankings agree.

    .venv/bin/python bench/importance.py [--model smollm2-135m] [--suite default] [--part select] [--repeat 2] [--skip-plain]
"""

from __future__ import annotations

import argparse
import contextlib
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
    parser.add_argument(
        "--part",
        default="select",
        choices=["select", "report", "all"],
        help="which items of the suite: the selection part (what task drop scores), the report part, or all",
    )
    parser.add_argument(
        "--repeat", type=int, default=2, help="rounds of (shared, naive, plain); the best time of each is compared"
    )
    parser.add_argument(
        "--skip-plain",
        action="store_true",
        help="leave out the plain way: each candidate as an evaluation harness runs it (the model's own forward, logits at every position)",
    )
    args = parser.parse_args()

    import torch

    from engine.models.adapters import adapter_for
    from engine.models.loading import load_model
    from engine.tasks.evaluate import SuiteEvaluator, aggregate
    from engine.tasks.spec import load_suite
    from engine.worker import _quiet_libraries

    _quiet_libraries()
    loaded = load_model(args.model, device=args.device)
    evaluator = SuiteEvaluator(
        loaded.model, loaded.tokenizer, load_suite(args.suite), part=None if args.part == "all" else args.part
    )
    n = adapter_for(loaded.model).num_layers
    candidates = [None, *range(n)]
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, device {next(loaded.model.parameters()).device}"
    )
    print(f"model {args.model} ({n} layers), suite {args.suite} ({args.part} part): {', '.join(evaluator.task_names)}")

    # Alternating rounds, the best time of each mode: a shared VM's noise only ever adds time.
    generation = [t.spec.name for t in evaluator.tasks if t.spec.kind == "generation"]
    if generation and not args.skip_plain:
        print(f"plain way left out: it covers forward-scored tasks only, and {', '.join(generation)} generate")
    modes = ("shared", "naive") if args.skip_plain or generation else ("shared", "naive", "plain")
    times, results = {mode: [] for mode in modes}, {}
    for round_ in range(args.repeat):
        for mode in modes:
            start = time.perf_counter()
            if mode == "plain":
                results[mode] = harness_scores(evaluator, candidates)
            else:
                results[mode] = evaluator.evaluate(candidates, shared=(mode == "shared"))
            times[mode].append(time.perf_counter() - start)
            print(
                f"round {round_ + 1} {mode:>6}: {times[mode][-1]:7.1f} s for {len(candidates)} variants (the model and {n} skip-one candidates)",
                flush=True,
            )
    timings = {mode: min(values) for mode, values in times.items()}
    print(f"best of {args.repeat}: " + ", ".join(f"{mode} {timings[mode]:.1f} s" for mode in modes))

    rank = {
        m: sorted(range(n), key=lambda i: (aggregate(results[m][None]) - aggregate(results[m][i]), i)) for m in results
    }
    agree = True
    for mode, what in (
        ("naive", "the same evaluator, every candidate from the embeddings"),
        ("plain", "the model's own forward per candidate, logits at every position"),
    ):
        if mode not in results:
            continue
        worst = max(
            abs(results["shared"][c][t] - results[mode][c][t]) for c in candidates for t in evaluator.task_names
        )
        same = worst <= 1e-4 and rank["shared"] == rank[mode]
        agree &= same
        print(
            f"ratio {mode}/shared: {timings[mode] / timings['shared']:.2f}x ({what}); "
            f"largest score difference {worst:.2e} ({'equal to 1e-4' if worst <= 1e-4 else 'DIFFERENT'}), "
            f"rankings identical: {rank['shared'] == rank[mode]}"
        )
    print(f"ranking (least important first): {rank['shared']}")
    per_task = {t: [round(results["shared"][i][t], 3) for i in range(n)] for t in evaluator.task_names}
    for task, values in per_task.items():
        print(f"  {task:>14} per skipped layer: {values}")
    return 0 if agree else 1


def harness_scores(evaluator, candidates):
    """Each candidate as an evaluation harness scores it: the model's own forward with the layer
    left out, logits and log-softmax at every position, then the scored positions read. Forward-
    scored tasks only (the default suite)."""
    import torch

    from engine.models.surgery import skipping
    from engine.tasks.evaluate import _forward_items, letter_rows, pack_right, per_sequence, task_score

    model = evaluator.model
    device = next(model.parameters()).device
    results = {}
    for c in candidates:
        scores = {}
        with torch.no_grad(), skipping(model, c) if c is not None else contextlib.nullcontext():
            for task in evaluator.tasks:
                per_seq = [None] * len(task.sequences)
                for batch in evaluator._batches(task.sequences):
                    seqs = [task.sequences[i] for i in batch]
                    ids, mask, rows, cols, targets = pack_right(seqs, evaluator.pad_id, device)
                    logprobs = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)[
                        rows, cols
                    ]
                    chosen = logprobs.gather(1, targets[:, None])[:, 0]
                    letters = {
                        row: int(logprobs[row, letter_ids].argmax()) for row, letter_ids in letter_rows(seqs).items()
                    }
                    for i, result in zip(batch, per_sequence(seqs, chosen, logprobs.argmax(-1), letters)):
                        per_seq[i] = result
                scores[task.spec.name] = task_score(task.spec, _forward_items(task, task.sequences, per_seq))
        results[c] = scores
    return results


if __name__ == "__main__":
    sys.exit(main())
