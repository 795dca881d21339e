"""The teacher's outputs on the distillation data: computed (what every run paid before the store) vs
read back from the teacher store (what every later run of the same teacher on the same data pays).

Builds the teacher cache a healing iteration needs (the final hidden state and one compared layer,
training and held-out blocks) on the embedded SmolLM2-135M at the study's budget, three ways in one
process: without a store, into an empty store, and from the filled store; checks that the stored
outputs are bit-identical to the computed ones.

    .venv/bin/python bench/teacher_store.py [--model smollm2-135m] [--train-tokens 32768] [--layer 15]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.racing import machine_line


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--train-tokens", type=int, default=32768)
    parser.add_argument("--layer", type=int, default=15, help="the compared layer (original index)")
    args = parser.parse_args()

    import torch

    from engine.config import HealSettings
    from engine.distill.data import distill_blocks
    from engine.distill.heal import TeacherCache
    from engine.distill.teacher_store import TeacherStore
    from engine.models.loading import load_model
    from engine.worker import _quiet_libraries

    _quiet_libraries()
    loaded = load_model(args.model, device="cpu")
    teacher = loaded.model.eval()
    config = HealSettings(train_tokens=args.train_tokens)
    data = config.data
    train, heldout = distill_blocks(data, loaded.tokenizer, seed=0)
    print(machine_line())
    print(
        f"model {args.model}; {train.numel()} training + {heldout.numel()} held-out tokens; final hidden state and layer {args.layer}"
    )
    with tempfile.TemporaryDirectory(prefix="ild-bench-store-") as root:
        store = TeacherStore(Path(root), 64 << 30)
        caches, times = {}, {}
        for name, use in (("computed", None), ("computed and stored", store), ("read from the store", store)):
            start = time.perf_counter()
            cache = TeacherCache(teacher, train, heldout, None, 64 << 30, config.batch_size, store=use)
            for split in ("train", "heldout"):
                cache.ensure({args.layer}, split)
                cache.final[split][0 : cache.final[split].n]  # read every row once, as healing does
            times[name] = time.perf_counter() - start
            caches[name] = cache
            print(f"{name}: {times[name]:.2f} s", flush=True)
        stored_mb = store.used_bytes() / 2**20
        same = all(
            torch.equal(caches["computed"].final[s][:], caches["read from the store"].final[s][:])
            and torch.equal(
                caches["computed"].layers[(s, args.layer)][:], caches["read from the store"].layers[(s, args.layer)][:]
            )
            for s in ("train", "heldout")
        )
    print(
        f"read back **{times['computed'] / times['read from the store']:.1f}x** faster than computed "
        f"({times['computed']:.1f} s vs {times['read from the store']:.2f} s; storing added "
        f"{times['computed and stored'] - times['computed']:.1f} s once, {stored_mb:.0f} MiB on disk); "
        f"bit-identical: {same}"
    )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
