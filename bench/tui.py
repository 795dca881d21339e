"""Dashboard performance: attaching to a 100,000-event run, and staying responsive under load.

1. Writes a synthetic run (a 30-layer iterative-distill run whose healing steps make up most of
   the ~100,000 events) with ``engine.runlog.events.EventWriter``.
2. Time to first full paint: from creating the app to the live screen painted with the whole
   folded state (headless ``run_test``; the log is read and folded in the tail thread).
3. Then a separate process appends events at 200/s (train steps, with the occasional phase, log
   and eval) for a few seconds while this one presses keys on the heatmap and measures
   key-to-cursor latency, the redraw pass time, and the event loop's lag behind a 10 ms timer.

    .venv/bin/python bench/tui.py [--events 100000] [--rate 200] [--seconds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.runlog.layout import RunDir  # noqa: E402

WRITER = r"""
import random, sys, time
from engine.runlog.events import EventWriter
path, rate, seconds, it = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
rng = random.Random(0)
w = EventWriter(path)
start = time.monotonic()
n = 0
step = 100000
while True:
    due = int((time.monotonic() - start) * rate)
    if time.monotonic() - start >= seconds:
        break
    while n < due:
        n += 1
        step += 1
        if n % 100 == 0:
            w.emit("log", level="info", message=f"bench line {n}", iteration=it)
        elif n % 50 == 0:
            w.emit("phase", iteration=it, phase="healing", detail="bench", done=n, total=int(rate * seconds))
        else:
            kl = 1.0 + rng.random()
            w.emit("train_step", iteration=it, step=step, loss=kl / 100 + 0.3, kl=kl, mse=0.3, lr=1e-4, tokens_per_s=12000.0)
    time.sleep(0.002)
w.close()
print(n)
"""


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


def make_run(root: Path, target_events: int) -> Path:
    from tools.synthetic_runs import synth_run

    # ~30 events of scoring/evals per iteration; the rest are training steps
    steps = max(1, (target_events - 10 * 60) // 10)
    run = root / "bench-100k"
    synth_run(
        run,
        name="bench-100k",
        strategy="iterative-distill",
        mode="auto",
        steps_per_iter=steps,
        seed=7,
        seconds_per_step=0.5,
    )
    return run


async def measure(run: Path, rate: float, seconds: float) -> dict:
    from textual import events

    from ild_tui.app import IldApp
    from ild_tui.live.heatmap import Heatmap
    from ild_tui.live.screen import LiveScreen
    from ild_tui.settings import Settings

    out: dict = {}
    t0 = time.perf_counter()
    app = IldApp(run.parent, run, settings=Settings(), save_settings=False, heatmap_mode="blocks")
    async with app.run_test(size=(160, 48)) as pilot:
        while not (isinstance(app.screen, LiveScreen) and app.screen.painted):
            await asyncio.sleep(0.005)
        await pilot.pause()  # the compositor has drawn the frame
        out["paint_s"] = time.perf_counter() - t0
        screen: LiveScreen = app.screen
        out["load_s"] = screen.load_seconds
        out["events"] = screen.model.state.events_seen
        out["loss_points"] = len(screen.model.loss)

        draws: list[float] = []
        original = screen._draw

        def timed_draw():
            s = time.perf_counter()
            original()
            draws.append(time.perf_counter() - s)

        screen._draw = timed_draw
        lags: list[float] = []
        last = [time.perf_counter()]

        def beat():
            now = time.perf_counter()
            lags.append(max(0.0, now - last[0] - 0.01))
            last[0] = now

        app.set_interval(0.01, beat)
        before = screen.model.state.events_seen
        it = screen.model.state.iteration or 1
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(RunDir(run).events_file), str(rate), str(seconds), str(it)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        hm = screen.query_one(Heatmap)
        hm.focus()
        latencies: list[float] = []
        direction = "down"
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            if hm.row >= len(hm.data.layers) - 1:
                direction = "up"
            elif hm.row <= 0:
                direction = "down"
            row = hm.row
            s = time.perf_counter()
            key = events.Key(direction, None)  # as the terminal driver delivers a key press
            key.set_sender(app)
            app._driver.send_message(key)
            while hm.row == row:
                await asyncio.sleep(0.001)
            latencies.append(time.perf_counter() - s)
            await asyncio.sleep(0.05)
        written = int(writer.communicate(timeout=30)[0].strip() or 0)
        deadline = time.perf_counter() + 5
        while screen.model.state.events_seen - before < written and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        out["written"] = written
        out["folded"] = screen.model.state.events_seen - before
        out["latency"] = latencies
        out["draws"] = draws
        out["lags"] = lags
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()
    os.environ.setdefault("ILD_CONFIG_DIR", tempfile.mkdtemp(prefix="ild-bench-config-"))

    t = time.perf_counter()
    import ild_tui.app  # noqa: F401  (Textual and the dashboard)

    import_s = time.perf_counter() - t
    with tempfile.TemporaryDirectory(prefix="ild-bench-") as tmp:
        t = time.perf_counter()
        run = make_run(Path(tmp), args.events)
        gen_s = time.perf_counter() - t
        size = (RunDir(run).events_file).stat().st_size
        from ild_tui.live.model import LiveModel
        from ild_tui.live.screen import replay

        t = time.perf_counter()
        events, _ = replay(RunDir(run).events_file)
        LiveModel().apply(events)
        alone_s = time.perf_counter() - t
        del events
        if os.environ.get("ILD_BENCH_PROFILE"):
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.enable()
            r = asyncio.run(measure(run, args.rate, args.seconds))
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        else:
            r = asyncio.run(measure(run, args.rate, args.seconds))

    ms = lambda v: f"{v * 1000:.1f} ms"
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(
        f"synthetic run: {r['events']:,} events ({size / 1e6:.1f} MB, {r['loss_points']:,} train steps), written in {gen_s:.1f} s"
    )
    print()
    print(
        f"attach: time to first full paint          {r['paint_s']:.2f} s   (limit 2 s: {'OK' if r['paint_s'] < 2 else 'OVER'})"
    )
    print(f"          of which read + fold (thread)   {r['load_s']:.2f} s   (the same alone, no UI: {alone_s:.2f} s)")
    print(f"        importing the dashboard           {import_s:.2f} s   (before the app starts)")
    print()
    lat, draws, lags = r["latency"], r["draws"], r["lags"]
    print(f"live: {r['written']:,} events at {args.rate:.0f}/s for {args.seconds:.0f} s, {r['folded']:,} folded")
    print(
        f"  key -> heatmap cursor moved   median {ms(statistics.median(lat))}, p95 {ms(pct(lat, 95))}, "
        f"max {ms(max(lat))}  (n={len(lat)})"
    )
    print(
        f"  redraw pass (4 Hz, dirty)     median {ms(statistics.median(draws))}, p95 {ms(pct(draws, 95))}, "
        f"max {ms(max(draws))}  (n={len(draws)})"
    )
    print(
        f"  event-loop lag (10 ms timer)  median {ms(statistics.median(lags))}, p95 {ms(pct(lags, 95))}, "
        f"max {ms(max(lags))}"
    )
    ok = r["paint_s"] < 2 and pct(lat, 95) < 0.1
    print(f"\nresponsive (p95 key latency < 100 ms): {'yes' if pct(lat, 95) < 0.1 else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
