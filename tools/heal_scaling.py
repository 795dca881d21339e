"""Quality against healing budget: iterative-distill 30 -> 24 with fixed removals, healed with more and
more tokens, and iterative healing against prune-then-heal at equal tokens.

    python tools/heal_scaling.py --runs-dir runs/heal-scaling --out docs/results/heal_scaling.csv

For each total budget B (``--budgets``, tokens) and each schedule (``--only`` picks some):

    iterative           heal after each removal, B / 6 tokens each (heal.each_removal)
    once                prune-then-heal: remove all six, heal once with B tokens
    iterative + final   B / 12 after each removal, then a final healing of B / 2 (heal.final_tokens)
    once + final        remove all six, heal once with B / 2, then a final healing of B / 2

The removals are fixed (``--removals``, default the study's iterative-distill order 14, 25, 13, 12,
6, 27) so that only healing differs. Each row is a normal run directory: the tool resumes a killed
run where it stopped and never runs a finished one again. Rows are merged by variant into the CSV,
rewritten atomically after every run, so a partial table is always whole. With ``--paired`` (the
default) each budget's ``iterative`` and ``once`` students, then ``iterative + final`` and
``once + final``, are compared by ``ild paired`` on the report part once both are finished
(``docs/results/paired/heal-scaling-*.{txt,json}``). ``--heal KEY=VALUE`` sets another heal setting
for every run; give such runs a ``--label`` (e.g. ``--heal final_trainable=all --label final-all``),
which is appended to their names so that they never share a row or a run directory with the defaults'.
The layers next to the gaps train and early stopping may stop from the first check, as every
committed row was measured, unless ``--heal`` says otherwise (the engine's defaults became every
layer and no stop before half a healing's steps later: ``--heal trainable=all --label all``).
Healing data: ``--data`` (default ``mixed``,
the 2.5M-token mixed corpus; the default ``embedded`` Brown text holds ~70k tokens, so large budgets
would repeat it many times: the CSV's ``epochs`` says how often).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: tools/ is then not importable as a package

from tools.result_rows import earlier_rows, write_rows  # noqa: E402

ENGINE = [sys.executable, "-m", "engine.worker"]
ILD = [sys.executable, "-m", "ild_tui.cli"]
STUDY_REMOVALS = "14,25,13,12,6,27"
BUDGETS = "196608,393216,786432,1572864"  # ~0.2M, 0.4M, 0.8M, 1.6M tokens
SCHEDULES = ("iterative", "once", "iterative + final", "once + final")
PAIRS = (("iterative", "once"), ("iterative + final", "once + final"))
COLUMNS = [
    "variant",
    "schedule",
    "budget_tokens",
    "per_removal_tokens",
    "final_tokens",
    "tokens_trained",
    "epochs",
    "data",
    "removals",
    "teacher_report",
    "report_final",
    "retention_report",
    "select_final",
    "heldout_kl_final",
    "healings",
    "heal_seconds",
    "run_seconds",
]


def heal_settings(schedule: str, budget: int, removals: int) -> dict:
    """The heal section of one schedule at one total budget (tokens)."""
    if schedule == "iterative":
        return {"each_removal": True, "train_tokens": budget // removals}
    if schedule == "once":
        return {"train_tokens": budget}
    if schedule == "iterative + final":
        return {"each_removal": True, "train_tokens": budget // (2 * removals), "final_tokens": budget // 2}
    if schedule == "once + final":
        return {"train_tokens": budget // 2, "final_tokens": budget // 2}
    raise ValueError(schedule)


def variant_name(schedule: str, budget: int, data: str, label: str = "") -> str:
    return f"{schedule} {budget} {data}" + (f" {label}" if label else "")


def slug(name: str) -> str:
    """A run name for a variant: at most 100 characters (a run name's limit), a long one (a data
    path) cut and told apart by a digest of the whole name."""
    import hashlib

    out = "".join(c if c.isalnum() else "-" for c in name)
    while "--" in out:
        out = out.replace("--", "-")
    out = out.strip("-")
    if len(out) > 100:
        out = f"{out[:87]}-{hashlib.sha1(name.encode()).hexdigest()[:12]}"
    return out


def _events(run: Path) -> list[dict]:
    from engine.runlog.layout import RunDir
    from engine.runlog.tailer import read_all

    return read_all(RunDir(run).events_file)


def _finished(run: Path) -> bool:
    events = _events(run) if run.exists() else []
    return bool(events) and events[-1]["type"] == "run_finished" and events[-1].get("reason") == "target"


def run_variant(run: Path, schedule: str, budget: int, args) -> None:
    if not run.exists():
        config = {
            "name": run.name,
            "model": args.model,
            "strategy": "iterative-distill",
            "removals": args.removals,
            "suite": args.suite,
            "seed": args.seed,
            "heal": {
                **heal_settings(schedule, budget, len(args.removals)),
                "data": args.data,
                # the layers next to the gaps and early stopping from the first check, as every
                # committed row was measured (the defaults are now every layer, no stop before half
                # the steps: --heal trainable=all --label all, as those rows were)
                "trainable": "adjacent",
                "early_stop_from": 0.0,
                **({"early_stop": False} if args.no_early_stop else {}),
                **args.heal,
            },
        }
        created = subprocess.run(
            [*ENGINE, str(run), "--create"], input=json.dumps(config), capture_output=True, text=True, cwd=ROOT
        )
        if created.returncode != 0:
            raise SystemExit(f"{run.name}: {created.stderr.strip()}")
    if _finished(run):
        return
    started = time.time()
    print(f"[{time.strftime('%H:%M:%S')}] {run.name} ...", flush=True)
    done = subprocess.run([*ENGINE, str(run)], capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{run.name}: {done.stderr.strip()[-2000:]}")
    print(f"[{time.strftime('%H:%M:%S')}] {run.name} done in {time.time() - started:.0f}s", flush=True)


def row(name: str, schedule: str, budget: int, run: Path, args) -> dict:
    events = _events(run)
    report = [e for e in events if e["type"] == "eval" and e.get("part", "report") == "report"]
    select = [e for e in events if e["type"] == "eval" and e.get("part") == "select"]
    teacher = next(e for e in report if e["stage"] == "teacher")["aggregate"]
    final = report[-1]  # the model the run ended with: after its last (final) healing
    healed = [e for e in report if "healing" in e]
    steps = [e for e in events if e["type"] == "train_step"]
    heal = heal_settings(schedule, budget, len(args.removals))
    config = next(e for e in events if e["type"] == "run_started")["config"]["heal"]
    per_step = config["batch_size"] * config["seq_len"]
    # healing time: each healing's first to last step (a resume's restart time is left out)
    by_healing: dict[tuple, list[float]] = {}
    for e in steps:
        by_healing.setdefault((e["iteration"], e.get("stage", "")), []).append(e["t"])
    return {
        "variant": name,
        "schedule": schedule,
        "budget_tokens": budget,
        "per_removal_tokens": heal["train_tokens"],
        "final_tokens": heal.get("final_tokens", 0),
        # steps of every healing (a redone step after a resume counts once)
        "tokens_trained": len({(e["iteration"], e.get("stage", ""), e["step"]) for e in steps}) * per_step,
        "epochs": healed[-1]["healing"]["epochs"] if healed else "",
        "data": args.data,
        "removals": " ".join(map(str, args.removals)),
        "teacher_report": round(teacher, 5),
        "report_final": round(final["aggregate"], 5),
        "retention_report": round(final["aggregate"] / teacher, 4),
        "select_final": round(select[-1]["aggregate"], 5) if select else "",
        "heldout_kl_final": round(final["heldout"]["after"]["kl"], 5) if "heldout" in final else "",
        "healings": len(healed),
        "heal_seconds": round(sum(max(t) - min(t) for t in by_healing.values()), 1),
        "run_seconds": round(events[-1]["t"] - events[0]["t"], 1),
    }


def paired(runs: Path, a: str, b: str, out_dir: Path) -> None:
    """``ild paired`` on two finished students, once (its JSON is the mark that it was done)."""
    target = out_dir / f"heal-scaling-{slug(a)}_vs_{slug(b)}"
    if target.with_suffix(".json").exists():
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"[{time.strftime('%H:%M:%S')}] ild paired {a} / {b} ...", flush=True)
    done = subprocess.run(
        [*ILD, "paired", slug(a), slug(b), "--runs-dir", str(runs), "--json", str(target) + ".json.tmp"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if done.returncode != 0:
        raise SystemExit(f"ild paired {a} {b}: {(done.stderr or done.stdout).strip()[-2000:]}")
    Path(str(target) + ".txt").write_text(done.stdout)
    Path(str(target) + ".json.tmp").replace(target.with_suffix(".json"))


_earlier_rows = earlier_rows


def _write(path: Path, rows: dict[str, dict]) -> None:
    """Every row, by data, schedule and budget; written beside and renamed: never half a table."""
    ranked = sorted(
        rows.values(),
        key=lambda r: (
            r["data"],
            SCHEDULES.index(r["schedule"]) if r["schedule"] in SCHEDULES else len(SCHEDULES),
            int(r["budget_tokens"]),
        ),
    )
    write_rows(path, ranked, COLUMNS, extrasaction="ignore")


def _setting(item: str) -> tuple[str, object]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise SystemExit(f"--heal {item!r}: expected KEY=VALUE")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--suite", default="default")
    parser.add_argument("--removals", default=STUDY_REMOVALS, help="original layers removed, in order")
    parser.add_argument("--budgets", default=BUDGETS, help="total healing tokens of a run, comma-separated")
    parser.add_argument("--data", default="mixed", help="heal.data of every run (mixed, embedded, a path)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-early-stop", action="store_true", help="spend every budget whole (heal.early_stop=false)")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "heal-scaling")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "heal_scaling.csv")
    parser.add_argument("--paired-dir", type=Path, default=ROOT / "docs" / "results" / "paired")
    parser.add_argument("--no-paired", dest="paired", action="store_false", help="skip the ild paired comparisons")
    parser.add_argument("--only", action="append", default=None, metavar="SCHEDULE", help=f"one of {SCHEDULES}")
    parser.add_argument("--table-only", action="store_true", help="run nothing: the CSV from the finished runs")
    parser.add_argument(
        "--heal",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another heal setting for every run (repeatable)",
    )
    parser.add_argument(
        "--label",
        default="",
        help="appended to every variant's name (and run directory): tells runs with other --heal settings apart",
    )
    args = parser.parse_args(argv)
    args.heal = dict(_setting(item) for item in args.heal)
    try:
        args.removals = [int(x) for x in args.removals.split(",")]
        budgets = [int(x) for x in args.budgets.split(",")]
    except ValueError:
        raise SystemExit("--removals and --budgets take comma-separated integers") from None
    unknown = sorted(set(args.only or ()) - set(SCHEDULES))
    if unknown:
        raise SystemExit(f"unknown schedule {unknown[0]!r}; the schedules: {', '.join(SCHEDULES)}")
    schedules = [s for s in SCHEDULES if args.only is None or s in args.only]
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    rows = _earlier_rows(args.out)
    for budget in budgets:  # the cheap budgets first: the curve's left end arrives first
        for schedule in schedules:
            name = variant_name(schedule, budget, args.data, args.label)
            run = args.runs_dir / slug(name)
            if args.table_only:
                if not _finished(run):
                    continue
            else:
                run_variant(run, schedule, budget, args)
            rows[name] = row(name, schedule, budget, run, args)
            _write(args.out, rows)
        if args.paired and not args.table_only:
            for a, b in PAIRS:
                names = [variant_name(s, budget, args.data, args.label) for s in (a, b)]
                if all(_finished(args.runs_dir / slug(n)) for n in names):
                    paired(args.runs_dir, *names, args.paired_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
