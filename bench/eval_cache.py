"""Evaluating from the lowest changed layer (engine/tasks/depth_cache.py) vs the plain full pass.

On the embedded SmolLM2-135M and the evaluators a run builds on the `default` suite (its selection
part, its report part, the report suite `default-report`), the stages of one iteration of the demo:
the teacher's evaluation (fills the cache), the removal of layer 14 (the demo's first), the
evaluation after the removal (report), one AdamW step on the two layers next to the gap (what
healing trains), the evaluation after healing (selection and report). At each stage the
forward-scored tasks are evaluated twice, in one process: from the cache, and by the plain full
pass (``shared=False``: every layer from the embeddings); their per-item results must be equal to
the bit. Generation tasks take the full path either way: they are timed once and added to both.

    .venv/bin/python bench/eval_cache.py [--model smollm2-135m] [--layer 14]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--layer", type=int, default=14, help="the layer removed (original index)")
    args = parser.parse_args()

    import torch

    from bench.racing import machine_line
    from engine.models.adapters import adapter_for
    from engine.models.loading import load_model
    from engine.models.surgery import remove_layers
    from engine.tasks.depth_cache import shared_pool
    from engine.tasks.evaluate import SuiteEvaluator
    from engine.tasks.spec import load_report_suite, load_suite
    from engine.worker import _quiet_libraries

    _quiet_libraries()
    loaded = load_model(args.model, device="cpu")
    model, tokenizer = loaded.model.eval(), loaded.tokenizer
    main_suite = load_suite("default")
    select = SuiteEvaluator(model, tokenizer, main_suite, part="select")
    report = [
        SuiteEvaluator(model, tokenizer, main_suite, part="report"),
        SuiteEvaluator(model, tokenizer, load_report_suite(main_suite), part=None),
    ]
    print(f"{machine_line()}; pool {shared_pool().limit >> 20} MiB")

    def split(evaluator):
        kinds = {t.spec.name: t.spec.kind for t in evaluator.tasks}
        items = evaluator.items()
        forward = {k: v for k, v in items.items() if kinds[k] != "generation"}
        generation = {k: v for k, v in items.items() if kinds[k] == "generation"}
        return forward, generation

    def run(evaluators, shared):
        start, layers, results = time.perf_counter(), 0, []
        for e in evaluators:
            before = e.forwards.layer_forwards
            out = e.evaluate_items([None], shared=shared, items=split(e)[0])[None]
            results.append({k: (s.items, s.values) for k, s in out.items()})
            layers += e.forwards.layer_forwards - before
        return time.perf_counter() - start, layers, results

    def generation(evaluators):
        start = time.perf_counter()
        for e in evaluators:
            gen = split(e)[1]
            if gen:
                e.evaluate_items([None], items=gen)
        return time.perf_counter() - start

    def stage(name, evaluators):
        cached, cached_layers, a = run(evaluators, shared=True)
        plain, plain_layers, b = run(evaluators, shared=False)
        gen = generation(evaluators)
        if a != b:
            print(f"{name}: the cached scores DIFFER from the full pass")
            return False
        print(
            f"{name}: forward-scored tasks cached {cached:.2f} s vs full {plain:.2f} s "
            f"(**{cached / plain:.2f}** of the time; layer-forwards {cached_layers:,} vs {plain_layers:,}); "
            f"with the generation tasks ({gen:.2f} s, full path both ways) {(cached + gen) / (plain + gen):.2f}; "
            "scores identical",
            flush=True,
        )
        return True

    ok = True
    start = time.perf_counter()
    for e in (select, *report):
        e.evaluate_items([None], items=split(e)[0])
    print(
        f"teacher evaluation (fills the cache): {time.perf_counter() - start:.2f} s; pool used "
        f"{shared_pool().used / 2**20:.0f} MiB of {shared_pool().limit >> 20}"
    )
    gap = adapter_for(model).layer_map().index(args.layer)
    remove_layers(model, args.layer)
    ok &= stage(f"after removing layer {args.layer} (report)", report)

    adapter = adapter_for(model)
    trainable = [gap - 1, gap]
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for j in trainable for p in adapter.layers[j].parameters()]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=1e-4)  # as healing builds it
    ids = torch.tensor([tokenizer("The quick brown fox jumps over the lazy dog. " * 8)["input_ids"]])
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    for p in params:
        p.requires_grad_(False)
    ok &= stage(f"after healing layers {trainable} (select + report)", [select, *report])
    print(f"pool used {shared_pool().used / 2**20:.0f} MiB of {shared_pool().limit >> 20}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
