"""`make demo`'s run, side by side: an earlier commit against this tree, on this machine, one after
the other, each from an empty store (as on a fresh clone), printing both wall times, their ratio,
where the time went in each (``bench/phases.py``'s table, totals per kind of work), and whether the
two runs removed the same layers and printed the same aggregates. ``--set`` passes a setting to
both runs, ``--set-new`` to the new code's only: across a change of defaults (``heal.trainable``
became ``all`` and early stopping waits for half the steps, 2026-12-04), pin the old ones
(``--set heal.trainable=adjacent --set-new heal.early_stop_from=0``) to time the same work.

    .venv/bin/python bench/demo_speed.py --old df344b1 [--new HEAD] [--again] [--target-layers 28] [--set KEY=VALUE ...] [--keep DIR] [--json FILE]

Both commits are checked out into git worktrees and run with this checkout's virtual environment
(their code first on the path), so later edits here cannot reach a run under way; the runs are ``ild run --strategy iterative-distill
--headless`` on the embedded model, exactly what ``ild demo`` runs. The model's converted weights
(``ILD_CACHE_DIR``) are warmed first and shared: a fresh clone pays that once, whichever code it runs.
Run it on an otherwise idle machine: both runs take all the cores.

It also prints the *floor*: the new run's healing steps and teacher outputs, arithmetic that every
exact run redoes on an empty store (the same steps on the same tokens, the teacher on those tokens),
as a fraction of the old run: the ratio that would remain even if scoring, evaluations and loading
took no time. ``--again`` runs the new code a third time on the new run's store, as a second
`make demo` on the same machine would (the teacher's outputs and the teacher's scores kept from the
first): its time, its ratio and whether its outcome is the same too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.phases import table  # noqa: E402
from bench.racing import cpu_flags  # noqa: E402
from engine.runlog.tailer import read_all  # noqa: E402

DEFAULT_MODEL = "smollm2-135m"  # what `ild demo` prunes
CLI = "import sys; from ild_tui.cli import main; sys.exit(main())"


def run_demo(
    tree: Path, work: Path, side: str, target_layers: int, store: str | None = None, settings: tuple[str, ...] = ()
) -> tuple[float, Path]:
    """One demo run of the code in ``tree``; (wall seconds, run directory). ``store``: whose store it
    uses (default its own, empty: no teacher outputs or scores kept from before); ``settings``:
    KEY=VALUE passed with ``--set``."""
    runs = work / f"runs-{side}"
    env = {**os.environ, "PYTHONPATH": str(tree), "ILD_STORE_DIR": str(work / f"store-{store or side}")}
    cmd = [sys.executable, "-c", CLI, "run", "--model", DEFAULT_MODEL, "--strategy", "iterative-distill"]
    cmd += ["--target-layers", str(target_layers), "--name", side, "--runs-dir", str(runs), "--headless"]
    cmd += [arg for setting in settings for arg in ("--set", setting)]
    started = time.perf_counter()
    with open(work / f"{side}.log", "w") as log:
        done = subprocess.run(cmd, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"demo_speed: the {side} run failed (exit {done.returncode}); see {work / f'{side}.log'}")
    return seconds, runs / side


def outcome(run_dir: Path) -> dict:
    """What the run decided and printed: its removals and every evaluation's aggregate and task scores."""
    events = read_all(run_dir / "events.jsonl")
    removals = [e.get("layer") for e in events if e.get("type") == "decision"]
    evals = {
        f"{e.get('iteration')} {e.get('stage')} {e.get('part')}": {
            "aggregate": e.get("aggregate"),
            "tasks": e.get("tasks"),
        }
        for e in events
        if e.get("type") == "eval"
    }
    return {"removals": removals, "evals": evals, "events": events}


def compare(old: dict, new: dict) -> list[str]:
    """The differences between two runs' outcomes, in words (empty: the same to the bit)."""
    out = []
    if old["removals"] != new["removals"]:
        out.append(f"removals differ: {old['removals']} vs {new['removals']}")
    for key in sorted(set(old["evals"]) | set(new["evals"])):
        a, b = old["evals"].get(key), new["evals"].get(key)
        if a is None or b is None:
            out.append(f"{key}: only in the {'new' if a is None else 'old'} run")
        elif a != b:
            out.append(f"{key}: aggregate {a['aggregate']} vs {b['aggregate']}")
    return out


def phase_totals(events: list[dict]) -> dict[str, float]:
    labels, _, cells = table(events)
    totals = dict.fromkeys(labels, 0.0)
    for (label, _), seconds in cells.items():
        totals[label] += seconds
    # The old side may show a healing's preparation whole, the new one in parts: both summed too.
    preparation = [label for label in totals if label.startswith("healing: ") and label != "healing: steps"]
    if preparation:
        totals["healing: preparation, all parts"] = sum(totals[label] for label in preparation)
    return totals


# What an exact run must recompute from an empty store: the healing itself and the teacher on its tokens.
FLOOR_PARTS = ("healing: steps", "healing: teacher outputs")


def floor_seconds(phases: dict[str, float]) -> float:
    return sum(phases.get(label, 0.0) for label in FLOOR_PARTS)


def side_settings(both: list[str], new_only: list[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The --set settings of the old code's run and of the new code's runs."""
    return tuple(both), tuple(both + new_only)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="the earlier commit (any git revision)")
    parser.add_argument("--new", default="HEAD", help="the later commit (default: HEAD)")
    parser.add_argument("--target-layers", type=int, default=28)
    parser.add_argument(
        "--again", action="store_true", help="then the new code once more on its own store (a second make demo)"
    )
    parser.add_argument(
        "--set", dest="settings", action="append", default=[], metavar="KEY=VALUE", help="for both runs (repeatable)"
    )
    parser.add_argument(
        "--set-new",
        dest="new_settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="for the new code's runs only: a setting the old code does not know (repeatable)",
    )
    parser.add_argument("--keep", type=Path, help="keep both runs and logs here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args(argv)

    work = args.keep or Path(tempfile.mkdtemp(prefix="ild-demo-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    trees = {side: work / f"{side}-tree" for side in ("old", "new")}
    for side, rev in (("old", args.old), ("new", args.new)):
        if not trees[side].exists():
            subprocess.run(["git", "worktree", "add", "--detach", str(trees[side]), rev], cwd=ROOT, check=True)
    short = lambda tree: subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True, text=True
    ).stdout.strip()
    rev, new_rev = short(trees["old"]), short(trees["new"])
    try:
        from engine.models.loading import load_model

        load_model(DEFAULT_MODEL)  # the converted weights, shared by both sides
        settings, new_settings = side_settings(args.settings, args.new_settings)
        old_s, old_dir = run_demo(trees["old"], work, "old", args.target_layers, settings=settings)
        new_s, new_dir = run_demo(trees["new"], work, "new", args.target_layers, settings=new_settings)
        again_s, again_dir = (
            run_demo(trees["new"], work, "again", args.target_layers, store="new", settings=new_settings)
            if args.again
            else (None, None)
        )
    finally:
        for tree in trees.values():
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
    old, new = outcome(old_dir), outcome(new_dir)
    differences = compare(old, new)
    old_phases, new_phases = phase_totals(old["events"]), phase_totals(new["events"])
    again = outcome(again_dir) if args.again else None
    again_phases = phase_totals(again["events"]) if args.again else {}

    print(f"demo 30 -> {args.target_layers}, CPU flags: {cpu_flags()}, {os.cpu_count()} cores")
    if settings:
        print(f"both runs with: {' '.join(settings)}")
    if args.new_settings:
        print(f"the new code's runs also with: {' '.join(args.new_settings)}")
    print(f"old {rev}: {old_s:8.1f} s")
    print(f"new {new_rev}: {new_s:8.1f} s")
    print(f"new / old: {new_s / old_s:.3f}")
    print(f"\n{'work':40s} {'old s':>8s} {'new s':>8s} {'ratio':>6s}" + (f" {'again s':>8s}" if args.again else ""))
    for label in dict.fromkeys([*old_phases, *new_phases]):
        a, b = old_phases.get(label, 0.0), new_phases.get(label, 0.0)
        line = f"{label:40s} {a:8.0f} {b:8.0f} {b / a if a else float('nan'):6.2f}"
        print(line + (f" {again_phases.get(label, 0.0):8.0f}" if args.again else ""))
    print(f"\nremovals: old {old['removals']}, new {new['removals']}")
    if differences:
        print("NOT the same outcome:")
        for line in differences:
            print("  " + line)
    else:
        print(f"the same removals and all {len(new['evals'])} evaluations' scores equal to the bit")
    floor = floor_seconds(new_phases)
    print(
        f"\nfloor: the new run's {' + '.join(FLOOR_PARTS)} = {floor:.0f} s = {floor / old_s:.3f} of the old run "
        "(the ratio even if scoring, evaluations and loading took no time)"
    )
    if args.again:
        repeat = compare(old, again)
        differences += [f"again: {line}" for line in repeat]
        print(f"again on the new run's store: {again_s:8.1f} s, again / old: {again_s / old_s:.3f}; ", end="")
        print("the same outcome" if not repeat else "NOT the same outcome: " + "; ".join(repeat))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "old": rev,
                    "new": new_rev,
                    "settings": list(settings),
                    "new_settings": list(args.new_settings),
                    "cpu_flags": cpu_flags(),
                    "old_seconds": old_s,
                    "new_seconds": new_s,
                    "ratio": new_s / old_s,
                    "old_phases": old_phases,
                    "new_phases": new_phases,
                    "floor_seconds": floor,
                    "again_seconds": again_s,
                    "again_phases": again_phases,
                    "differences": differences,
                },
                indent=1,
            )
        )
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
