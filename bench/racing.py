"""Racing vs full task-drop scoring over a whole pruning run, without healing.

From the embedded SmolLM2-135M (30 layers) down to 24: each iteration scores every layer on the
selection part of the default suite twice, by full shared-prefix scoring and by racing (the order
alternates between iterations), compares the proposals, then removes the full scoring's proposal
(as iterative-pruning does) so both follow the same run. Layer-forwards are counted by the
evaluator (one decoder layer on one sequence); the times are wall clock in the same process.

    .venv/bin/python bench/racing.py [--model smollm2-135m] [--suite default] [--target 24]
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


def cpu_flags() -> str:
    try:
        flags = next(
            line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")
        ).split()
    except (OSError, StopIteration):
        return "unknown"
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "fma")
    return " ".join(f for f in wanted if f in flags) or "none of avx2/avx512/amx"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--suite", default="default")
    parser.add_argument("--target", type=int, default=24)
    parser.add_argument("--device", default=None)
    parser.add_argument("--z", type=float, default=None, help="the racing bound (default: RacingSettings().z)")
    args = parser.parse_args()

    import torch

    from engine.importance.racing import RacingSettings, task_drop
    from engine.models.adapters import adapter_for
    from engine.models.loading import load_model
    from engine.models.surgery import layer_map, remove_layers
    from engine.tasks.evaluate import SuiteEvaluator
    from engine.tasks.spec import load_suite
    from engine.worker import _quiet_libraries

    _quiet_libraries()
    loaded = load_model(args.model, device=args.device)
    model = loaded.model
    evaluator = SuiteEvaluator(model, loaded.tokenizer, load_suite(args.suite), part="select")
    settings = RacingSettings() if args.z is None else RacingSettings(z=args.z)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, cpu flags: {cpu_flags()}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {next(model.parameters()).device}"
    )
    print(
        f"model {args.model} ({adapter_for(model).num_layers} layers) -> {args.target}; suite {args.suite}, selection part: "
        + ", ".join(f"{t} {len(v)}" for t, v in evaluator.items().items())
        + f" items; {settings}"
    )

    totals = {"full": [0, 0.0], "racing": [0, 0.0]}
    same = 0
    iteration = 0
    while adapter_for(model).num_layers > args.target:
        iteration += 1
        mapping = layer_map(model)
        runs = {}
        for mode in ("full", "racing") if iteration % 2 else ("racing", "full"):
            start = time.perf_counter()
            runs[mode] = task_drop(evaluator, racing=None if mode == "full" else settings)
            elapsed = time.perf_counter() - start
            totals[mode][0] += runs[mode].forwards.layer_forwards
            totals[mode][1] += elapsed
            runs[mode].seconds = elapsed
        full, raced = runs["full"], runs["racing"]
        agree = full.proposal == raced.proposal
        same += agree
        second = sorted(full.drops, key=lambda i: (full.drops[i], i))[1]
        print(
            f"iter {iteration}: {len(mapping)} layers; proposal full {mapping[full.proposal]} (drop {full.drops[full.proposal]:.4f}, "
            f"next {mapping[second]} at {full.drops[second]:.4f}), racing {mapping[raced.proposal]} -> {'same' if agree else 'DIFFERENT'}; "
            f"layer-forwards {full.forwards.layer_forwards} vs {raced.forwards.layer_forwards} "
            f"({full.forwards.layer_forwards / raced.forwards.layer_forwards:.2f}x); "
            f"time {full.seconds:.1f} s vs {raced.seconds:.1f} s ({full.seconds / raced.seconds:.2f}x); "
            f"partial {len(raced.partial)}/{len(mapping)}",
            flush=True,
        )
        for number, r in enumerate(raced.rounds, 1):
            bounds = ", ".join(
                f"{mapping[i]}: {g:.4f}>{k:.2f}x{se:.4f}" for i, (g, se, k) in sorted(r.eliminated.items())[:4]
            )
            more = f" (+{len(r.eliminated) - 4} more)" if len(r.eliminated) > 4 else ""
            print(
                f"    round {number}: {r.items}/{r.total} items, {len(r.scored)} candidates, {r.layer_forwards} layer-forwards; "
                f"eliminated {len(r.eliminated)}" + (f" [{bounds}{more}]" if r.eliminated else "")
            )
        if not agree:  # where the full scoring's choice left the race, or by how much it lost on every item
            left = next(
                (
                    (n, *r.eliminated[full.proposal])
                    for n, r in enumerate(raced.rounds, 1)
                    if full.proposal in r.eliminated
                ),
                None,
            )
            if left:
                number, gap, se, k = left
                print(
                    f"    full's choice {mapping[full.proposal]}: eliminated in round {number} with gap {gap:.4f} > {k:.2f} x {se:.4f}"
                )
            else:
                print(
                    f"    full's choice {mapping[full.proposal]}: raced to the end, drop {raced.drops[full.proposal]:.4f} "
                    f"against {raced.drops[raced.proposal]:.4f}"
                )
        remove_layers(model, mapping[full.proposal])  # by original index
    print(
        f"whole run ({iteration} iterations): layer-forwards full {totals['full'][0]}, racing {totals['racing'][0]} "
        f"(**{totals['full'][0] / totals['racing'][0]:.2f}x** fewer); time full {totals['full'][1]:.1f} s, racing {totals['racing'][1]:.1f} s "
        f"({totals['full'][1] / totals['racing'][1]:.2f}x); same proposal in {same}/{iteration} iterations"
    )
    return 0 if same >= 0.9 * iteration else 1


if __name__ == "__main__":
    sys.exit(main())
