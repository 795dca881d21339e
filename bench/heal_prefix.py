"""A healing's preparation (the teacher's pass over the training blocks and the student's frozen
prefix below the trainable layers), with the prefix taken from the teacher's pass where the
student's lowest layers are still the teacher's, against computing it from the student's own.

On the embedded SmolLM2-135M at the default healing budget: layer ``--remove`` taken out, the
default trainable layers (the gap's neighbours) healed; both ways from a cold teacher cache (the
first healing of a run on fresh tokens, no teacher store), alternating, best of ``--rounds``; checks
that both prefixes are bit-identical.

    .venv/bin/python bench/heal_prefix.py [--model smollm2-135m] [--remove 14] [--rounds 2]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.racing import machine_line


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--remove", type=int, default=14, help="the original layer removed")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    import torch

    from engine.config import HealSettings
    from engine.distill import loops
    from engine.distill.data import distill_blocks
    from engine.distill.heal import Healer, TeacherCache
    from engine.distill.losses import hidden_pairs
    from engine.distill.trainable import choose_trainable
    from engine.models.loading import load_model
    from engine.models.surgery import layer_map, remove_layers
    from engine.worker import _quiet_libraries

    _quiet_libraries()
    loaded = load_model(args.model, device="cpu")
    teacher = loaded.model.eval()
    student = copy.deepcopy(teacher)
    remove_layers(student, args.remove)
    config = HealSettings()
    train, heldout = distill_blocks(config.data, loaded.tokenizer, seed=0)
    mapping = layer_map(student)
    trainable = choose_trainable(mapping, len(mapping) + 1, args.remove, config.trainable)
    pairs = hidden_pairs(config.loss, trainable, len(mapping))
    print(machine_line())
    print(
        f"model {args.model}, layer {args.remove} removed, trainable {trainable}, compared {pairs}; "
        f"{train.numel()} training tokens in batches of {config.batch_size}"
    )
    real = loops.shared_depth
    times: dict[str, list[float]] = {"own prefix": [], "from the teacher's pass": []}
    prefixes = {}
    for _ in range(args.rounds):
        for name in times:
            loops.shared_depth = real if name != "own prefix" else (lambda s, t, limit: 0)
            cache = TeacherCache(teacher, train, heldout, None, 64 << 30, config.batch_size)
            healer = Healer(student, cache, config)
            start = time.perf_counter()
            loop = loops.loop_for(healer, pairs, mapping, trainable, torch.device("cpu"))
            times[name].append(time.perf_counter() - start)
            prefixes[name] = loop.prefix[:].clone()
            print(f"{name}: {times[name][-1]:.1f} s (shared layers: {loop.shared})", flush=True)
            loop.close()
            cache.close()
    loops.shared_depth = real
    same = torch.equal(prefixes["own prefix"], prefixes["from the teacher's pass"])
    own, shared = min(times["own prefix"]), min(times["from the teacher's pass"])
    print(
        f"preparation from the teacher's pass: **{shared / own:.2f}** of the time with the student's own prefix "
        f"({shared:.1f} s vs {own:.1f} s, best of {args.rounds}); prefixes bit-identical: {same}"
    )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
