"""Racing vs full task-drop scoring over a whole pruning run, without healing.

From the embedded SmolLM2-135M (30 layers) down to 24: each iteration scores every layer on the
selection part of the default suite twice, by full shared-prefix scoring and by racing (the order
alternates between iterations), compares the proposals, then removes the full scoring's proposal
(as iterative-pruning does) so both follow the same run. Layer-forwards are counted by the
evaluator (one decoder layer on one sequence); the times are wall clock in the same process.

    .venv/bin/python bench/racing.py [--model smollm2-135m] [--suite default] [--target 24]
    .venv/bin/python bench/racing.py --dump scores.jsonl      # also keep every full scoring's per-item results
    .venv/bin/python bench/racing.py --replay scores.jsonl [--growth 1.5 ...]

``--replay`` races again on the per-item results a ``--dump`` kept, through the same ``task_drop``
(an evaluator that serves the recorded results and counts layer-forwards as the real one does), in
seconds instead of the half hour of scoring: a race's choices depend on nothing but the per-item
values. It first checks that it reproduces the recorded full and racing layer-forwards and
proposals of the settings the dump ran with, then races with the settings given.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time
from dataclasses import asdict, replace
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


def machine_line() -> str:
    """What every bench prints first: the CPU, its flags, torch and its threads (figures differ
    between machines; a ratio is compared, never an absolute time)."""
    import torch

    return (
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, cpu flags: {cpu_flags()}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--suite", default="default")
    parser.add_argument("--target", type=int, default=24)
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None, help="default: the device's")
    parser.add_argument("--dump", type=Path, help="write every full scoring's per-item results here (JSON lines)")
    parser.add_argument("--replay", type=Path, help="race again on a --dump's results instead of scoring")
    for name, kind in (("z", float), ("first-fraction", float), ("growth", float), ("min-items", int)):
        parser.add_argument(f"--{name}", type=kind, default=None, help="a racing setting (default: RacingSettings())")
    parser.add_argument("--variance", choices=("task", "moderated"), default=None, help="racing.variance")
    parser.add_argument(
        "--pack",
        choices=("auto", "on", "off"),
        default="auto",
        help="the forward-scored tasks share batches (scoring.pack_tasks; auto: on a GPU, as a run does)",
    )
    parser.add_argument(
        "--seeds", type=int, default=0, help="with --replay: also race with item orders 0..N-1 (racing.seed) and sum up"
    )
    args = parser.parse_args()

    from engine.importance.racing import RacingSettings

    chosen = {
        key: value
        for key, value in {
            "z": args.z,
            "first_fraction": args.first_fraction,
            "growth": args.growth,
            "min_items": args.min_items,
            "variance": args.variance,
        }.items()
        if value is not None
    }
    settings = RacingSettings(**chosen)
    if args.replay:
        return replay(args.replay, args.suite, settings, args.seeds)
    return live(args, settings)


def live(args, settings) -> int:
    import torch

    from engine.importance.racing import task_drop
    from engine.models.adapters import adapter_for
    from engine.models.loading import load_model
    from engine.models.surgery import layer_map, remove_layers
    from engine.tasks.evaluate import SuiteEvaluator
    from engine.tasks.spec import load_suite
    from engine.worker import _quiet_libraries

    _quiet_libraries()
    loaded = load_model(args.model, device=args.device, dtype=getattr(torch, args.dtype) if args.dtype else None)
    model = loaded.model
    evaluator = SuiteEvaluator(model, loaded.tokenizer, load_suite(args.suite), part="select")
    device = next(model.parameters()).device
    evaluator.pack_tasks = device.type == "cuda" if args.pack == "auto" else args.pack == "on"
    card = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    print(
        f"{machine_line()}, device {device}{card}, {next(model.parameters()).dtype}, "
        f"tasks {'packed into shared batches' if evaluator.pack_tasks else 'batched each on its own'}"
    )
    print(
        f"model {args.model} ({adapter_for(model).num_layers} layers) -> {args.target}; suite {args.suite}, selection part: "
        + ", ".join(f"{t} {len(v)}" for t, v in evaluator.items().items())
        + f" items; {settings}"
    )
    dump = args.dump.open("w") if args.dump else None
    tally = Tally()
    while adapter_for(model).num_layers > args.target:
        iteration = tally.iterations + 1
        mapping = layer_map(model)
        runs, seconds = {}, {}
        recorder = Recorder(evaluator)
        for mode in ("full", "racing") if iteration % 2 else ("racing", "full"):
            start = time.perf_counter()
            runs[mode] = task_drop(
                recorder if mode == "full" else evaluator, racing=None if mode == "full" else settings
            )
            seconds[mode] = time.perf_counter() - start
        tally.add(iteration, mapping, runs["full"], runs["racing"], seconds)
        if dump:
            dump.write(json.dumps(_record(evaluator, mapping, runs, recorder.scored, settings)) + "\n")
            dump.flush()
        remove_layers(model, mapping[runs["full"].proposal])  # by original index
    return tally.finish()


class Tally:
    """The per-iteration lines and the whole run's totals, live or replayed."""

    def __init__(self):
        self.iterations = 0
        self.same = 0
        self.forwards = {"full": 0, "racing": 0}
        self.seconds = {"full": 0.0, "racing": 0.0}

    def add(self, iteration, mapping, full, raced, seconds=None) -> None:
        self.iterations = iteration
        agree = full.proposal == raced.proposal
        self.same += agree
        self.forwards["full"] += full.forwards.layer_forwards
        self.forwards["racing"] += raced.forwards.layer_forwards
        timing = ""
        if seconds:
            for mode in self.seconds:
                self.seconds[mode] += seconds[mode]
            timing = f"time {seconds['full']:.1f} s vs {seconds['racing']:.1f} s ({seconds['full'] / seconds['racing']:.2f}x); "
        second = sorted(full.drops, key=lambda i: (full.drops[i], i))[1]
        print(
            f"iter {iteration}: {len(mapping)} layers; proposal full {mapping[full.proposal]} (drop {full.drops[full.proposal]:.4f}, "
            f"next {mapping[second]} at {full.drops[second]:.4f}), racing {mapping[raced.proposal]} -> {'same' if agree else 'DIFFERENT'}; "
            f"layer-forwards {full.forwards.layer_forwards} vs {raced.forwards.layer_forwards} "
            f"({full.forwards.layer_forwards / raced.forwards.layer_forwards:.2f}x); {timing}"
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

    def finish(self) -> int:
        full, racing = self.forwards["full"], self.forwards["racing"]
        timing = ""
        if self.seconds["racing"]:
            timing = (
                f"; time full {self.seconds['full']:.1f} s, racing {self.seconds['racing']:.1f} s "
                f"({self.seconds['full'] / self.seconds['racing']:.2f}x)"
            )
        print(
            f"whole run ({self.iterations} iterations): layer-forwards full {full}, racing {racing} "
            f"(**{full / racing:.2f}x** fewer){timing}; same proposal in {self.same}/{self.iterations} iterations"
        )
        return 0 if self.same >= 0.9 * self.iterations else 1


# --- dump and replay ------------------------------------------------------------------------------


class Recorder:
    """The evaluator, keeping the per-item results it returns (full scoring asks once, for all)."""

    def __init__(self, evaluator):
        self.evaluator = evaluator
        self.scored = {}

    def __getattr__(self, name):
        return getattr(self.evaluator, name)

    def evaluate_items(self, *args, **kwargs):
        results = self.evaluator.evaluate_items(*args, **kwargs)
        self.scored = results
        return results


def _record(evaluator, mapping, runs, scored, settings) -> dict:
    """One iteration's full-scoring per-item results, what a replay needs to race again."""
    from collections import Counter

    if any(t.spec.kind == "generation" for t in evaluator.tasks):
        raise SystemExit("--dump: generation tasks are not replayable (their decoding work is not per sequence)")
    full, raced = runs["full"], runs["racing"]
    return {
        "layers": mapping,
        "settings": asdict(settings),
        "sequences": {t.spec.name: Counter(s.item for s in t.sequences) for t in evaluator.tasks},
        "full": {"proposal": full.proposal, "layer_forwards": full.forwards.layer_forwards},
        "racing": {"proposal": raced.proposal, "layer_forwards": raced.forwards.layer_forwards},
        # Full scoring restricted nothing: per candidate ("None": the model itself) and task, the
        # items in scoring order with their values and weights.
        "scores": {
            str(c): {t: [s.items, s.values, s.weights] for t, s in tasks.items()} for c, tasks in scored.items()
        },
    }


class ReplayEvaluator:
    """What ``task_drop`` asks of an evaluator, served from a dump: per-item results looked up,
    layer-forwards counted per sequence by ``candidate_layers``, as the live evaluator counts them."""

    def __init__(self, record: dict, specs: dict):
        from engine.tasks.evaluate import ForwardCount, ItemScores

        n = len(record["layers"])
        self.model = _stand_in(n)
        self.n = n
        self.tasks = [_Task(specs[t]) for t in record["sequences"]]
        self.forwards = ForwardCount()
        self.sequences = {t: {int(i): k for i, k in counts.items()} for t, counts in record["sequences"].items()}
        self.scores = {
            None if c == "None" else int(c): {
                t: ItemScores(list(v[0]), list(v[1]), list(v[2])) for t, v in tasks.items()
            }
            for c, tasks in record["scores"].items()
        }

    def items(self) -> dict[str, list[int]]:
        return {t: list(s.items) for t, s in self.scores[None].items()}

    def evaluate_items(self, candidates, shared=True, progress=None, items=None):
        from engine.tasks.evaluate import candidate_layers

        assert shared, "the replay counts the shared-prefix path"
        candidates = list(dict.fromkeys(candidates))
        per_sequence = candidate_layers(candidates, self.n, shared=True, at_rows=True)
        out = {c: {} for c in candidates}
        for t, recorded in self.scores[None].items():
            if items is not None and t not in items:
                continue
            wanted = set(recorded.items if items is None else items[t])
            sequences = sum(self.sequences[t][i] for i in wanted)
            self.forwards.add(per_sequence, sequences, 0)
            for c in candidates:
                out[c][t] = self.scores[c][t].subset(wanted)
        return out


@functools.cache
def _stand_in(layers: int):
    """A minute model with this many layers: ``task_drop`` reads only ``adapter_for(model).num_layers``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = dict(vocab_size=8, hidden_size=8, intermediate_size=8, num_attention_heads=1, num_key_value_heads=1)
    return LlamaForCausalLM(LlamaConfig(num_hidden_layers=layers, **shape))


class _Task:
    def __init__(self, spec):
        self.spec = spec


def replay(path: Path, suite: str, settings, seeds: int = 0) -> int:
    from engine.importance.racing import RacingSettings, task_drop
    from engine.tasks.spec import load_suite
    from engine.worker import _quiet_libraries

    _quiet_libraries()
    specs = {t.name: t for t in load_suite(suite).tasks}
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    recorded = RacingSettings(**records[0]["settings"])
    full = [task_drop(ReplayEvaluator(record, specs), racing=None) for record in records]
    for number, (record, whole) in enumerate(zip(records, full), 1):  # the replay must reproduce what was measured
        raced = task_drop(ReplayEvaluator(record, specs), racing=recorded)
        got = (whole.proposal, whole.forwards.layer_forwards, raced.proposal, raced.forwards.layer_forwards)
        want = tuple(record[m][k] for m in ("full", "racing") for k in ("proposal", "layer_forwards"))
        if got != want:
            print(f"replay of iteration {number} does not reproduce the dump: {got} != {want}")
            return 2
    print(f"replay of {path}: {len(records)} iterations reproduced (proposals and layer-forwards) under {recorded}")
    print(f"racing again with {settings}")
    tally = Tally()
    for number, (record, whole) in enumerate(zip(records, full), 1):
        raced = task_drop(ReplayEvaluator(record, specs), racing=settings)
        tally.add(number, record["layers"], whole, raced)
    status = tally.finish()
    if seeds:
        # Which items fall in the first slices is chance (a seeded shuffle); over many orders the
        # share of races that keep the full proposal estimates how often the bound errs.
        same, races, forwards = 0, 0, 0
        for seed in range(seeds):
            for record, whole in zip(records, full):
                raced = task_drop(ReplayEvaluator(record, specs), racing=replace(settings, seed=seed))
                same += raced.proposal == whole.proposal
                races += 1
                forwards += raced.forwards.layer_forwards
        total = sum(f.forwards.layer_forwards for f in full) * seeds
        print(
            f"item orders 0..{seeds - 1}: {races} races, the full proposal kept in {same} ({same / races:.1%}); "
            f"layer-forwards {total / forwards:.2f}x fewer than full scoring"
        )
        status = max(status, 0 if same >= 0.9 * races else 1)
    return status


if __name__ == "__main__":
    sys.exit(main())
