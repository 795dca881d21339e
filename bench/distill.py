"""Healing step speed and memory: the cached loop vs the plain loop, same trainable layers, same run.

The plain loop runs the teacher and the whole student every step. The cached loop reads the
teacher's final hidden state (logits recomputed through the frozen head) and compared layer outputs
from a cache built once, and starts the student at its lowest trainable layer from a prefix cached
once per iteration. Cache building is timed separately and reported, since it is paid once.

    .venv/bin/python bench/distill.py [--model smollm2-135m] [--remove 7,15,22] [--steps 6]

The gain depends on where the gap is: the cached loop skips the frozen layers below the lowest
trainable one, so a gap high in the stack saves more. Each removal is measured and reported.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


# plain: teacher + whole student every step, dense head and KL (the plain way, float32 on CPU).
# cached-fp32: the caches and the fused chunked head + KL, its matmuls in float32.
# cached: what a run does by default (head_matmul=auto: bfloat16 on CUDA and AVX512-BF16/AMX CPUs).
MODES = ("plain", "cached-fp32", "cached")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument(
        "--remove", default="7,15,22", help="original layers to remove before healing, one measurement each"
    )
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--device", default=None)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--remove-one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode is None:
        # Each loop in its own process, so each peak-memory figure is its own.
        import subprocess

        ratios, ratios_fp32 = {}, {}
        for remove in [int(x) for x in args.remove.split(",")]:
            speeds = {}
            for mode in MODES:
                out = subprocess.run(
                    [sys.executable, __file__, *sys.argv[1:], "--remove-one", str(remove), "--mode", mode],
                    capture_output=True,
                    text=True,
                )
                first = not ratios and not speeds  # the machine and model lines, once
                for line in out.stdout.splitlines():
                    if line.startswith("RESULT"):
                        speeds[mode] = float(line.split()[1])
                    elif first or not line.startswith(("machine", "model")):
                        print(line)
                if out.returncode:
                    print(out.stderr[-2000:])
                    return 1
            ratios[remove] = speeds["plain"] / speeds["cached"]
            ratios_fp32[remove] = speeds["plain"] / speeds["cached-fp32"]
            print(
                f"removed layer {remove}: cached loop {ratios[remove]:.2f}x the plain loop's steps per second "
                f"({ratios_fp32[remove]:.2f}x with its head in float32)"
            )
        for label, table in (
            ("ratio cached/plain steps per second", ratios),
            ("  with the fused head in float32", ratios_fp32),
        ):
            mean = sum(table.values()) / len(table)
            print(f"{label}: " + ", ".join(f"layer {k} {v:.2f}x" for k, v in table.items()) + f"; mean {mean:.2f}x")
        return 0

    import torch

    from engine.config import DataSettings, HealSettings, TrainableSettings
    from engine.distill.data import distill_blocks
    from engine.distill.heal import Healer, TeacherCache
    from engine.distill.trainable import choose_trainable
    from engine.models.loading import load_model
    from engine.models.surgery import layer_map, remove_layers
    from engine.worker import _quiet_libraries

    _quiet_libraries()
    loaded = load_model(args.model, device=args.device)
    teacher = loaded.model
    device = next(teacher.parameters()).device
    data = DataSettings(
        seq_len=args.seq_len, train_tokens=args.steps * args.batch_size * args.seq_len, heldout_tokens=args.seq_len
    )
    train, heldout = distill_blocks(data, loaded.tokenizer)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}"
    )
    print(f"model {args.model}, {args.steps} steps of {args.batch_size}x{args.seq_len} tokens")

    results = {}
    for mode in (args.mode,):
        student = copy.deepcopy(teacher)
        remove_layers(student, args.remove_one)
        trainable = choose_trainable(
            layer_map(student), len(layer_map(teacher)), args.remove_one, TrainableSettings(k=1)
        )  # the two neighbours, as measured
        config = HealSettings(
            batch_size=args.batch_size,
            cached=(mode != "plain"),
            data=data,
            warmup_steps=1,
            head_matmul="fp32" if mode == "cached-fp32" else "auto",
        )
        cache = TeacherCache(teacher, train, heldout, None, 1 << 34, args.batch_size)
        healer = Healer(student, cache, config)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        if mode != "plain":
            from engine.distill.losses import hidden_pairs

            pairs = hidden_pairs(config.loss, trainable, len(layer_map(student)))
            cache.ensure({layer_map(student)[j] for j in pairs}, "train")
        setup = time.perf_counter() - start
        times = []
        healer.heal(trainable, iteration=1, seed=0, on_step=lambda r, times=times: times.append(time.perf_counter()))
        # The first step also pays the per-iteration prefix cache (cached loop): report steady state.
        step_s = (times[-1] - times[0]) / max(1, len(times) - 1)
        first = times[0] - start - setup
        peak = (
            torch.cuda.max_memory_allocated() / 2**20
            if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        )
        results[mode] = step_s
        print(
            f"layer {args.remove_one} {mode:>11}: {1 / step_s:6.2f} steps/s ({step_s:.2f} s/step), first step incl. per-iteration caches "
            f"{first:.1f} s, one-off teacher cache {setup:.1f} s, peak memory so far {peak:.0f} MiB"
        )
        cache.close()
        print(f"RESULT {step_s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
