"""Scoring and healing on 1 and N engine processes (accelerate launch), as a run shares them out.

For each process count: one task-drop scoring pass (every "skip layer i" candidate and the model
itself on the selection part of the suite, each rank scoring its share of the candidates from the
shared prefix), then healing steps after removing one layer (each rank half of every batch, DDP).
Printed: seconds, the ratio to one process, the bytes the ranks exchanged (object collectives:
pickled payload; DDP: the all-reduced gradient), and a model of the scoring time on 8 processes
from the measured cost of one layer-forward and the way the candidates are shared out.

    .venv/bin/python bench/scale.py [--model smollm2-135m] [--processes 1,2] [--items 24] [--device cuda]

On the 2-core development VM two processes cannot be faster than one (each gets one core): the
figures there show what is exchanged and that nothing but the sharing changes. On a GPU box,
``--device cuda --processes 1,2,...`` runs one process per GPU (one GPU: ``--processes 1`` gives the
per-candidate cost the 8-GPU model reads).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--suite", default="default")
    parser.add_argument("--processes", default="1,2", help="process counts to measure, e.g. 1,2 or 1,2,4,8")
    parser.add_argument("--items", type=int, default=24, help="selection-part items per task scored (0: all)")
    parser.add_argument("--remove", type=int, default=15, help="original layer removed before healing")
    parser.add_argument("--steps", type=int, default=4, help="healing steps timed (after one warm-up step)")
    parser.add_argument("--batch-size", type=int, default=4, help="global batch, shared out over the processes")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--device", default=None, help="cpu, cuda (one GPU per process)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    counts = [int(n) for n in args.processes.split(",")]
    results = {}
    for n in counts:
        script = [str(Path(__file__).resolve()), *sys.argv[1:], "--worker"]
        if n == 1:
            command = [sys.executable, *script]
        else:
            from engine.distributed.supervise import one_host_flags

            command = [sys.executable, "-m", "accelerate.commands.launch", *one_host_flags(n), *script]
        started = time.perf_counter()
        out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        if out.returncode or not lines:
            print(out.stdout[-3000:], out.stderr[-3000:])
            return 1
        results[n] = json.loads(lines[-1].removeprefix("RESULT "))
        results[n]["wall"] = time.perf_counter() - started
    report(results, counts)
    return 0


def report(results: dict, counts: list[int]) -> None:
    one = results[counts[0]]
    print(f"machine: {one['machine']}; model {one['model']}, {one['layers']} layers; device {one['device']}")
    print(
        f"scoring: {one['candidates']} candidates on {one['items']} items ({one['tokens']} scored-sequence tokens); "
        f"healing: layer {one['removed']} removed, {one['batch']} x {one['seq_len']} tokens a step"
    )
    print(
        f"{'processes':>9} {'threads':>7} {'scoring s':>10} {'vs 1':>6} {'gathered B':>11} {'step s':>8} {'vs 1':>6} "
        f"{'all-reduce B/step':>18} {'objects B/step':>15} {'wall s':>7}"
    )
    for n in counts:
        r = results[n]
        print(
            f"{n:>9} {r['threads']:>7} {r['scoring_s']:>10.2f} {one['scoring_s'] / r['scoring_s']:>5.2f}x "
            f"{r['scoring_bytes']:>11,} {r['step_s']:>8.3f} {one['step_s'] / r['step_s']:>5.2f}x "
            f"{r['allreduce_bytes'] if n > 1 else 0:>18,} {r['step_object_bytes']:>15,} {r['wall']:>7.0f}"
        )
    same = all(results[n]["scores"] == one["scores"] for n in counts)
    print(f"importance values identical to one process, bit for bit: {same}")
    print(
        f"healing losses, largest relative difference to one process: "
        f"{max(_rel(results[n]['losses'], one['losses']) for n in counts):.2e}"
    )
    # The 8-process model: the measured seconds per layer-forward unit (one decoder layer on every
    # scored sequence) times the busiest rank's units under the sharing a run uses.
    unit = one["scoring_s"] / one["units"]
    print(
        f"one process: {unit * 1000:.1f} ms per layer over the {one['sequences']} scored sequences, {one['units']} such units a pass "
        f"({one['scoring_s'] / one['candidates']:.2f} s per candidate)"
    )
    for n in (2, 4, 8):
        units = one["units_by_size"][str(n)]
        print(
            f"  modelled on {n} processes (one GPU each, same per-layer cost): busiest rank {units} units -> "
            f"{units * unit:.1f} s a pass, {one['units'] / units:.2f}x"
        )


def _rel(a: list[float], b: list[float]) -> float:
    return max((abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b)), default=0.0)


def worker(args) -> int:
    import torch

    from engine.config import DataSettings, HealSettings, TrainableSettings
    from engine.distill.data import distill_blocks
    from engine.distill.heal import Healer, TeacherCache
    from engine.distill.trainable import choose_trainable
    from engine.distributed.evaluator import SharedEvaluator, assign_candidates, candidate_cost
    from engine.distributed.ranks import apply_threads, default_threads, from_environment, resolve_device
    from engine.models.adapters import adapter_for
    from engine.models.loading import load_model
    from engine.models.surgery import layer_map, remove_layers
    from engine.tasks.evaluate import SuiteEvaluator
    from engine.tasks.spec import load_suite
    from engine.worker import _quiet_libraries

    _quiet_libraries()
    cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    ranks = from_environment(cpu=not cuda, timeout_s=900)
    apply_threads(default_threads(ranks.local_size))
    device = resolve_device(args.device, ranks)
    with ranks.main_first():
        teacher = load_model(args.model, device=device)
        student = load_model(args.model, device=device).model
    n = adapter_for(student).num_layers

    # --- scoring: every candidate once, on the same items whatever the number of processes --------
    inner = SuiteEvaluator(student, teacher.tokenizer, load_suite(args.suite), part="select")
    chosen = {task: items[: args.items] if args.items else items for task, items in inner.items().items()}
    evaluator = SharedEvaluator(inner, ranks)
    candidates = [None, *range(n)]
    ranks.barrier()
    start = time.perf_counter()
    before = ranks.sent_bytes
    scores = evaluator.evaluate(candidates, items=chosen)
    scoring_s = time.perf_counter() - start
    scoring_bytes = ranks.sent_bytes - before
    sequences = sum(len([s for s in t.sequences if s.item in set(chosen[t.spec.name])]) for t in inner.tasks)
    tokens = sum(len(s.ids) for t in inner.tasks for s in t.sequences if s.item in set(chosen[t.spec.name]))

    def units(size: int) -> int:
        shares = assign_candidates(candidates, n, size)
        return max(
            max(candidate_cost(c, n)[0] for c in s) + sum(candidate_cost(c, n)[1] for c in s) for s in shares if s
        )

    # --- healing: steps after one removal, the global batch shared out -----------------------------
    remove_layers(student, args.remove)
    trainable = choose_trainable(
        layer_map(student), n, args.remove, TrainableSettings(k=1)
    )  # the two neighbours, as measured
    data = DataSettings(
        seq_len=args.seq_len,
        train_tokens=(args.steps + 1) * args.batch_size * args.seq_len,
        heldout_tokens=args.seq_len,
    )
    train, heldout = distill_blocks(data, teacher.tokenizer)
    config = HealSettings(batch_size=args.batch_size, data=data, warmup_steps=1, early_stop=False)
    cache = TeacherCache(teacher.model, train, heldout, None, 1 << 34, args.batch_size)
    healer = Healer(student, cache, config, ranks=ranks)
    stamps, losses, objects = [], [], []

    def on_step(record):
        stamps.append(time.perf_counter())
        losses.append(record["loss"])
        objects.append(ranks.sent_bytes)

    def lockstep() -> bool:  # what a run does every step: the ranks agree on whether to stop
        ranks.gather(False)
        return False

    ranks.barrier()
    healer.heal(trainable, iteration=1, seed=0, on_step=on_step, interrupt=lockstep)
    step_s = (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1)
    trainable_bytes = sum(p.numel() * 4 for j in trainable for p in adapter_for(student).layers[j].parameters())
    cache.close()
    scoring_bytes = sum(ranks.gather(scoring_bytes))  # what every rank sent
    step_objects = sum(ranks.gather((objects[-1] - objects[0]) // max(1, len(objects) - 1)))
    if ranks.is_main:
        result = {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
            + (f", {torch.cuda.get_device_name(device)}" if cuda else ""),
            "model": args.model,
            "layers": n,
            "device": str(device),
            "threads": torch.get_num_threads(),
            "candidates": len(candidates),
            "items": sum(len(v) for v in chosen.values()),
            "tokens": tokens,
            "removed": args.remove,
            "batch": args.batch_size,
            "seq_len": args.seq_len,
            "scoring_s": scoring_s,
            "scoring_bytes": scoring_bytes,
            "scores": {str(c): s for c, s in scores.items()},
            "units": units(1),
            "sequences": sequences,
            "units_by_size": {str(k): units(k) for k in (2, 4, 8)},
            "step_s": step_s,
            "losses": losses,
            "allreduce_bytes": trainable_bytes,
            "step_object_bytes": step_objects,
        }
        print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
