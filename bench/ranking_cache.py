"""The first iteration's task-drop ranking: raced (what every run paid before the ranking cache) vs
read back from the ranking cache (what every later run ranking the same teacher on the same items
pays: a study's other task-drop presets, a run repeated with other healing settings).

On the embedded SmolLM2-135M and the selection part of the default suite, three ways in one
process, each with a freshly prepared evaluator as a new run has: without a cache, into an empty
cache, and from the filled cache; checks that the ranking read back equals the raced one (the
importance event with racing's rounds, the per-item results of the layers dropped early).

    .venv/bin/python bench/ranking_cache.py [--model smollm2-135m] [--suite default]
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
    parser.add_argument("--suite", default="default")
    args = parser.parse_args()

    from engine.config import RunConfig
    from engine.importance.racing import RacingSettings
    from engine.models.loading import load_model
    from engine.ranking_cache import RankingCache
    from engine.scoring import Scorer
    from engine.tasks.evaluate import SuiteEvaluator
    from engine.tasks.spec import load_suite
    from engine.worker import _quiet_libraries

    _quiet_libraries()
    loaded = load_model(args.model, device="cpu")
    model, tokenizer = loaded.model.eval(), loaded.tokenizer
    config = RunConfig(name="bench", model=args.model, strategy="iterative-distill", start_layers=30, target_layers=24)
    suite = load_suite(args.suite)
    print(machine_line())
    rankings, times, forwards = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="ild-bench-rankings-") as root:
        cache = RankingCache(Path(root))
        for name, use in (("raced", None), ("raced and stored", cache), ("read from the cache", cache)):
            start = time.perf_counter()
            evaluator = SuiteEvaluator(
                model, tokenizer, suite, part="select", split_seed=config.split_seed, batch_tokens=config.batch_tokens
            )
            scorer = Scorer(
                "task_drop",
                model,
                evaluator,
                [],
                evaluator.pad_id,
                config.batch_tokens,
                racing=RacingSettings(enabled=config.scoring.racing, seed=config.seed),
                cache=use,
            )
            rankings[name] = scorer.score()
            times[name] = time.perf_counter() - start
            forwards[name] = evaluator.forwards.layer_forwards
            print(f"{name}: {times[name]:.2f} s, {forwards[name]} layer-forwards", flush=True)
    raced, read = rankings["raced"], rankings["read from the cache"]
    same = raced == read  # a dataclass: every field (ranked, per-task scores, event, per-item results)
    print(
        f"read back **{times['raced'] / times['read from the cache']:.0f}x** faster than raced "
        f"({times['raced']:.1f} s vs {times['read from the cache']:.2f} s, the evaluator's preparation "
        f"included; storing added {times['raced and stored'] - times['raced']:+.1f} s once); proposal "
        f"{raced.proposal}; the same ranking, event and per-item results: {same}"
    )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
