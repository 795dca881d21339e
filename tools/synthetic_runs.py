"""Synthetic run directories: the dashboard tests' canned runs, its screenshots and its benchmark.

``synth_run`` writes a plausible run through the real ``EventWriter`` (deterministic: fixed seed,
fixed clock). The canned runs under ``tests/fixtures/runs/`` are its output, committed; a test
checks that it still writes them byte for byte. Regenerate them, or the README's screenshots::

    .venv/bin/python -m tools.synthetic_runs
    .venv/bin/python -m tools.synthetic_runs --screenshots docs/

``bench/tui.py`` uses ``synth_run`` too, for its 100,000-event run.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

from engine.runlog.events import EventWriter
from engine.runlog.layout import RunDir, create
from engine.runlog.tailer import read_all

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "runs"
T0 = 1767225600.0  # 2026-01-01 00:00:00 UTC
TASKS = ("lm", "ppl", "mc", "mc_letter", "copy", "translate")
TEACHER = {"lm": 0.412, "ppl": 0.538, "mc": 0.461, "mc_letter": 0.297, "copy": 0.884, "translate": 0.233}
SENSITIVITY = {"lm": 1.0, "ppl": 0.8, "mc": 0.6, "mc_letter": 0.9, "copy": 1.6, "translate": 1.3}
PARAMS = 134_515_008
PER_LAYER = 3_540_096
MODEL = "smollm2-135m"

FINISHED = "smollm2-distill-30to20"
LIVE = "smollm2-distill-live"
DEAD = "smollm2-pruning-dead"
SHORTGPT = "smollm2-shortgpt-30to20"
LIVE_DEADLINE_IN = 300.0
# The fixed "now" of the live fixture's tests: 83 s before its decision deadline.
LIVE_NOW_OFFSET = LIVE_DEADLINE_IN - 83.0


def _true_importance(layer: int, n: int) -> float:
    """Early and last layers matter most, the late-middle ones least (as measured on Llamas)."""
    x = layer / (n - 1)
    v = 0.015 + 0.05 * (1 - x) ** 3
    if layer == 0:
        v += 0.35
    if layer == 1:
        v += 0.08
    if layer == n - 1:
        v += 0.2
    if 0.55 < x < 0.9:
        v *= 0.45
    return v


def synth_run(
    path: Path,
    *,
    name: str,
    strategy: str = "iterative-distill",
    start_layers: int = 30,
    target_layers: int = 20,
    steps_per_iter: int = 60,
    mode: str = "auto",
    overrides: dict[int, int] | None = None,
    user_iterations: tuple[int, ...] = (),
    end: str = "finished",  # finished | awaiting | dead
    end_iteration: int | None = None,
    seed: int = 0,
    t0: float = T0,
    seconds_per_step: float = 2.0,
    metric: str | None = None,
    split: bool = False,
    model: str = MODEL,
) -> dict:
    """Write a plausible run directory; returns facts the tests check against.

    ``end="awaiting"`` stops at ``end_iteration``'s awaiting_decision (deadline LIVE_DEADLINE_IN s
    after it); ``end="dead"`` stops mid-scoring in ``end_iteration`` with no final event;
    ``end="floor"`` finishes after ``end_iteration`` with reason floor. ``split`` adds what newer
    engines log (the canned runs are older): each eval for the report and the select part, the
    weighted loss terms, and the most important layers scored on part of the items.
    """
    rng = random.Random(seed)
    overrides = overrides or {}
    heals = strategy in ("iterative-distill", "iterative-bi-distill")
    metric = metric or ("task_drop" if strategy in ("iterative-distill", "iterative-pruning") else "bi")
    rescore = strategy != "shortgpt"
    clock = {"t": t0}

    def tick(dt: float) -> None:
        clock["t"] += dt

    def emit_eval(iteration: int, stage: str, scores: dict[str, float], **more) -> None:
        aggregate = round(sum(scores.values()) / len(scores), 6)
        tasks = {k: round(v, 6) for k, v in scores.items()}
        if not split:
            emit("eval", iteration=iteration, stage=stage, aggregate=aggregate, tasks=tasks, **more)
            return
        emit("eval", iteration=iteration, stage=stage, part="report", aggregate=aggregate, tasks=tasks, **more)
        # The items that chose the layers flatter the student a little.
        chosen = {k: round(min(1.0, v + 0.006), 6) for k, v in scores.items()}
        emit(
            "eval",
            iteration=iteration,
            stage=stage,
            part="select",
            aggregate=round(sum(chosen.values()) / len(chosen), 6),
            tasks=chosen,
            **more,
        )

    rd = create(path)
    rd.config_file.write_text(
        f"name: {name}\nmodel: {model}\nstrategy: {strategy}\nstart_layers: {start_layers}\n"
        f"target_layers: {target_layers}\nmode: {mode}\nsuite: default\nseed: {seed}\n"
    )
    (rd.done_dir / ".keep").write_text("")
    rd.lock_file.write_text("")
    w = EventWriter(rd.events_file, clock=lambda: clock["t"], fsync_interval=1e9)
    emit = w.emit
    emit("engine_started", pid=4242, host="gpu-box", resumed_from=None)
    tick(0.4)
    emit("phase", iteration=0, phase="loading", detail=f"loading {model}")
    tick(11.0)
    emit(
        "run_started",
        name=name,
        model=model,
        model_version="gguf-q8_0",
        strategy=strategy,
        importance=metric,
        start_layers=start_layers,
        target_layers=target_layers,
        mode=mode,
        **({"mode_seconds": LIVE_DEADLINE_IN} if mode == "auto-after" else {}),
        params=PARAMS,
        config={
            "name": name,
            "model": model,
            "strategy": strategy,
            "target_layers": target_layers,
            "start_layers": start_layers,
            "mode": mode,
            "seed": seed,
        },
    )
    tick(0.2)
    emit("phase", iteration=0, phase="evaluating", detail="teacher")
    tick(42.0)
    current = dict(TEACHER)
    emit_eval(0, "teacher", current, layers=start_layers, params=PARAMS)
    emit("checkpoint", iteration=0, name="0", path="checkpoints/0")
    remaining = list(range(start_layers))
    fragility = 1.0
    one_shot: dict[int, float] | None = None
    n_iters = start_layers - target_layers
    facts = {"removed": [], "iterations": n_iters, "train_steps": 0}
    for it in range(1, n_iters + 1):
        emit("phase", iteration=it, phase="scoring", detail=metric)
        cur_agg = sum(current.values()) / len(current)
        per_task: dict[str, dict[str, float]] = {t: {} for t in TASKS}
        aggregates: dict[str, float] = {}
        scores: dict[int, float] = {}
        n_scored = len(remaining)
        for k, layer in enumerate(remaining):
            if end == "dead" and it == end_iteration and k == n_scored // 2:
                emit("phase", iteration=it, phase="scoring", detail="task drop", done=k, total=n_scored)
                w.close()
                facts["last_t"] = clock["t"]
                return facts
            if k % 10 == 9:
                emit("phase", iteration=it, phase="scoring", detail="task drop", done=k + 1, total=n_scored)
            tick(1.5)
            imp = _true_importance(layer, start_layers) * fragility * rng.uniform(0.8, 1.25)
            skipped = {}
            for t in TASKS:
                drop = imp * SENSITIVITY[t] * rng.uniform(0.6, 1.4)
                skipped[t] = max(0.0, current[t] - drop)
                per_task[t][str(layer)] = round(skipped[t], 6)
            agg = sum(skipped.values()) / len(skipped)
            aggregates[str(layer)] = round(agg, 6)
            if metric == "task_drop":
                scores[layer] = round(cur_agg - agg, 6)
            else:
                if one_shot is None or rescore:
                    scores[layer] = round(min(0.9, 0.02 + imp * 1.8 * rng.uniform(0.9, 1.1)), 6)
                else:
                    scores[layer] = one_shot[layer]
        if metric != "task_drop" and one_shot is None:
            one_shot = dict(scores)
        keyed = {str(k): v for k, v in sorted(scores.items())}
        racing = {}
        if split:  # racing stops scoring the layers that clearly matter most
            partial = sorted(scores, key=lambda k: -scores[k])[:3]
            racing = {"partial": partial, "items": {str(k): 4 if k in partial else 12 for k in sorted(scores)}}
        if metric == "task_drop":
            emit(
                "importance",
                iteration=it,
                metric=metric,
                scores=keyed,
                per_task=per_task,
                aggregates=aggregates,
                **racing,
            )
        else:
            also = {"angular": {k: round(v * 0.61, 6) for k, v in keyed.items()}}
            emit(
                "importance",
                iteration=it,
                metric=metric,
                scores=keyed,
                also=also,
                **({"reused": True} if not rescore and it > 1 else {}),
            )
        ranked = sorted(scores.items(), key=lambda kv: (kv[1], kv[0]))
        proposal = ranked[0][0]
        cands = []
        for layer, score in ranked:
            c = {"layer": layer, "score": score}
            if metric == "task_drop":
                c["tasks"] = {t: per_task[t][str(layer)] for t in TASKS}
            cands.append(c)
        emit("proposal", iteration=it, layer=proposal, metric=metric, candidates=cands)
        if mode != "auto":
            deadline = clock["t"] + LIVE_DEADLINE_IN if mode == "auto-after" else None
            emit(
                "awaiting_decision",
                iteration=it,
                layer=proposal,
                mode=mode,
                deadline=deadline,
                candidates=[c["layer"] for c in cands],
            )
            if end == "awaiting" and it == end_iteration:
                w.close()
                facts["proposal"] = proposal
                facts["deadline"] = deadline
                facts["candidates"] = [c["layer"] for c in cands]
                facts["awaiting_t"] = clock["t"]
                return facts
            tick(rng.uniform(20, 90))
        layer = overrides.get(it, proposal)
        by = "user" if (it in overrides or it in user_iterations) else ("auto" if mode == "auto" else "timeout")
        cid = None
        if by == "user":
            cid = f"{int(clock['t'] * 1e9)}-{it:08x}"
            name_ = "override" if it in overrides else "approve"
            emit("command_applied", command_id=cid, name=name_, args={"layer": layer}, by="dashboard")
        emit("decision", iteration=it, layer=layer, by=by, proposed=proposal, command_id=cid)
        remaining.remove(layer)
        facts["removed"].append(layer)
        params = PARAMS - PER_LAYER * (start_layers - len(remaining))
        emit(
            "layer_removed", iteration=it, layer=layer, remaining=list(remaining), layers=len(remaining), params=params
        )
        after = (
            {t: per_task[t][str(layer)] for t in TASKS}
            if metric == "task_drop"
            else {
                t: max(
                    0.0,
                    current[t]
                    - _true_importance(layer, start_layers) * fragility * SENSITIVITY[t] * rng.uniform(0.7, 1.3),
                )
                for t in TASKS
            }
        )
        emit_eval(it, "after_removal", after, layers=len(remaining), params=params)
        current = dict(after)
        if heals:
            emit("phase", iteration=it, phase="healing", detail=f"layers {layer - 1}..{layer + 1}")
            base = 1.6 + 0.25 * it
            for step in range(steps_per_iter):
                tick(seconds_per_step)
                decay = 0.45 + 0.55 * (1 - step / steps_per_iter) ** 2
                kl = base * decay * rng.uniform(0.88, 1.12)
                mse = 0.35 * base * decay * rng.uniform(0.85, 1.15)
                terms = {"kl_term": round(kl / 100, 6), "mse_term": round(mse, 6)} if split else {}
                emit(
                    "train_step",
                    iteration=it,
                    step=step,
                    loss=round(kl / 100 + mse, 6),
                    kl=round(kl, 6),
                    mse=round(mse, 6),
                    **terms,
                    lr=1e-4,
                    tokens_per_s=round(rng.uniform(11000, 13000), 1),
                )
                facts["train_steps"] += 1
            healed = {t: min(TEACHER[t], v + (TEACHER[t] - v) * rng.uniform(0.45, 0.7)) for t, v in current.items()}
            emit("phase", iteration=it, phase="evaluating", detail="after healing")
            tick(40.0)
            emit_eval(it, "after_healing", healed, layers=len(remaining), params=params)
            current = healed
        emit("checkpoint", iteration=it, name=str(it), path=f"checkpoints/{it}")
        if it % 3 == 0:
            emit("log", level="info", message=f"iteration {it}: {len(remaining)} layers left", iteration=it)
        fragility *= 1.12
        if end == "floor" and it == end_iteration:
            break
    tick(20.0)
    emit("phase", iteration=it, phase="exporting", detail="export")
    emit(
        "run_finished",
        reason="floor" if end == "floor" else "target",
        layers=len(remaining),
        params=PARAMS - PER_LAYER * (start_layers - len(remaining)),
        removed=facts["removed"],
        export="export",
        iteration=it,
    )
    w.close()
    facts["last_t"] = clock["t"]
    return facts


def build_fixtures(root: Path = FIXTURES) -> dict[str, dict]:
    """(Re)write the four canned runs under ``root``."""
    facts = {}
    specs = {
        FINISHED: dict(
            strategy="iterative-distill",
            mode="manual",
            user_iterations=(1, 2, 3, 5, 6, 8, 9, 10),
            overrides={4: 18, 7: 25},
            seed=1,
            t0=T0 + 3600,
        ),
        LIVE: dict(
            strategy="iterative-distill", mode="auto-after", end="awaiting", end_iteration=5, seed=2, t0=T0 + 3 * 3600
        ),
        DEAD: dict(strategy="iterative-pruning", mode="auto", end="dead", end_iteration=4, seed=3, t0=T0 + 2 * 3600),
        SHORTGPT: dict(strategy="shortgpt", mode="auto", seed=4),
    }
    for name, kw in specs.items():
        path = root / name
        if path.exists():
            shutil.rmtree(path)
        facts[name] = synth_run(path, name=name, **kw)
    set_activity_order(root)
    return facts


def set_activity_order(root: Path) -> None:
    """``list_runs`` orders by events.jsonl mtime (git does not keep it): the live run is the newest."""
    for i, name in enumerate((SHORTGPT, FINISHED, DEAD, LIVE)):
        if (root / name).is_dir():
            t = T0 + 86400 + i * 3600
            os.utime(RunDir(root / name).events_file, (t, t))


def copy_fixture(name: str, dest_root: Path) -> Path:
    """A writable copy (commands get written into a run directory) under ``dest_root``."""
    dest = RunDir(dest_root / name)
    shutil.copytree(FIXTURES / name, dest.path)
    dest.done_dir.mkdir(parents=True, exist_ok=True)
    dest.checkpoints_dir.mkdir(exist_ok=True)
    set_activity_order(dest_root)
    return dest.path


def copy_all(dest_root: Path) -> Path:
    for name in (SHORTGPT, FINISHED, DEAD, LIVE):
        copy_fixture(name, dest_root)
    return dest_root


def live_now() -> float:
    """The fixed clock of the live fixture's tests."""
    import json

    last = None
    with open(RunDir(FIXTURES / LIVE).events_file, "rb") as f:
        for line in f:
            ev = json.loads(line)
            if ev["type"] == "awaiting_decision":
                last = ev["t"]
    assert last is not None, "live fixture has no awaiting_decision"
    return last + LIVE_NOW_OFFSET


def make_app(
    runs_dir: Path,
    run: Path | None = None,
    *,
    now: float | None = None,
    theme: str = "ild-dark",
    liveness=None,
    heatmap_mode: str = "blocks",
    compare: list[str] | None = None,
    **kwargs,
):
    from ild_tui.app import IldApp
    from ild_tui.settings import Settings

    now = live_now() if now is None else now
    extra = {}
    if liveness is not None:
        extra["liveness"] = liveness
    return IldApp(
        runs_dir,
        run,
        theme=theme,
        clock=lambda: now,
        heatmap_mode=heatmap_mode,
        settings=Settings(theme=theme),
        save_settings=False,
        compare=compare,
        **extra,
        **kwargs,
    )


def write_screenshots(dest: Path) -> list[Path]:
    """The README's SVGs: a live run healing, a decision, and the compare screen."""
    import asyncio
    import random
    import tempfile

    from ild_tui.live.screen import LiveScreen
    from ild_tui.screens.compare import CompareScreen

    os.environ.setdefault("TZ", "UTC")
    os.environ.setdefault("ILD_CONFIG_DIR", tempfile.mkdtemp(prefix="ild-shots-"))
    import time as _time

    _time.tzset()
    dest.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="ild-shots-runs-"))
    copy_all(root)
    # "live": the live fixture after a person approved iteration 5, healing half way through
    live = root / LIVE
    events = [e for e in read_events(live) if e["type"] == "awaiting_decision"]
    t = events[-1]["t"] + 40
    rng = random.Random(5)
    remaining = [x for x in range(30) if x not in (21, 18, 25, 22, 23)]
    with EventWriter(RunDir(live).events_file, clock=lambda: t, fsync_interval=1e9) as w:
        w.emit("command_applied", command_id="shot-1", name="approve", args={"layer": 23}, by="dashboard")
        w.emit("decision", iteration=5, layer=23, by="user", proposed=23, command_id="shot-1")
        w.emit("layer_removed", iteration=5, layer=23, remaining=remaining, layers=25, params=PARAMS - 5 * PER_LAYER)
        w.emit(
            "eval",
            iteration=5,
            stage="after_removal",
            aggregate=0.4562,
            tasks={"lm": 0.395, "ppl": 0.529, "mc": 0.455, "mc_letter": 0.284, "copy": 0.864, "translate": 0.207},
            layers=25,
            params=PARAMS - 5 * PER_LAYER,
        )
        w.emit("phase", iteration=5, phase="healing", detail="layers 22..24")
        for step in range(36):
            t += 2.0
            decay = 0.45 + 0.55 * (1 - step / 60) ** 2
            kl = 2.85 * decay * rng.uniform(0.88, 1.12)
            mse = 0.35 * 2.85 * decay * rng.uniform(0.85, 1.15)
            w.emit(
                "train_step",
                iteration=5,
                step=step,
                loss=round(kl / 100 + mse, 6),
                kl=round(kl, 6),
                mse=round(mse, 6),
                lr=1e-4,
                tokens_per_s=round(rng.uniform(11000, 13000), 1),
            )
        w.emit("phase", iteration=5, phase="healing", detail="step", done=36, total=60)
    now = t + 3

    async def shoot(app, ready, name: str, size=(160, 48)) -> Path:
        async with app.run_test(size=size) as pilot:
            deadline = _time.monotonic() + 20
            while not ready(app):
                assert _time.monotonic() < deadline
                await pilot.pause(0.05)
            await pilot.pause(0.3)
            out = dest / name
            out.write_text(app.export_screenshot(title="ild"))
            return out

    def painted(app):
        return isinstance(app.screen, LiveScreen) and app.screen.painted

    def compared(app):
        return isinstance(app.screen, CompareScreen) and app.screen.loaded

    alive = lambda rd: rd.name == LIVE
    out = [
        asyncio.run(shoot(make_app(root, live, now=now, liveness=alive), painted, "screenshot-live.svg")),
        asyncio.run(
            shoot(
                make_app(root, copy_fixture_as(LIVE, root, "decision"), liveness=lambda rd: True),
                painted,
                "screenshot-decision.svg",
            )
        ),
        asyncio.run(
            shoot(
                make_app(root, compare=[str(root / n) for n in (FINISHED, SHORTGPT, DEAD, LIVE)], liveness=alive),
                compared,
                "screenshot-compare.svg",
            )
        ),
    ]
    return out


def copy_fixture_as(name: str, dest_root: Path, new: str) -> Path:
    dest = RunDir(dest_root / new)
    shutil.copytree(FIXTURES / name, dest.path)
    dest.done_dir.mkdir(parents=True, exist_ok=True)
    return dest.path


def read_events(run_dir: Path) -> list[dict]:
    return read_all(RunDir(run_dir).events_file)


if __name__ == "__main__":
    import sys

    if len(sys.argv) > 2 and sys.argv[1] == "--screenshots":
        for p in write_screenshots(Path(sys.argv[2])):
            print("wrote", p)
    else:
        for name, f in build_fixtures().items():
            print(name, {k: v for k, v in f.items() if k != "candidates"})
