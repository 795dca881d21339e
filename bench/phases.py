"""Where a run's time went, read from its event log: ``python bench/phases.py RUN_DIR [--json]``.

One row per kind of work (task-drop scoring, each evaluation, healing before its first step and its
steps, waiting for a decision, ...), one column per iteration, in seconds of wall time between the
events that start and end each piece. Nothing is re-run: any run directory, finished or not, on any
machine, prints its table, so the next person sees where the time goes without reading logs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.runlog.tailer import read_all

ENDS = ("engine_started", "run_failed", "run_finished")
# What a healing does before its first step, each marked as it starts (runs before these marks
# show it all as "healing: before the first step")
HEALING_PARTS = ("held-out loss", "teacher outputs", "student prefix")


def _label(event: dict) -> str:
    phase, detail = event.get("phase", "?"), str(event.get("detail") or "")
    if phase == "evaluating":
        return f"evaluation {detail}".strip()
    if phase == "scoring":
        return f"scoring ({detail.replace('_', ' ')})" if detail else "scoring"
    if phase == "healing":
        return "healing: before the first step"
    if phase == "preparing":
        return f"preparing: {detail}" if detail else "preparing"
    return phase


def segments(events: list[dict]) -> list[tuple[str, int, float]]:
    """(label, iteration, seconds) for every piece of work the log shows, in order."""
    out: list[tuple[str, int, float]] = []
    label, iteration, start = None, 0, None
    stepped: set[int] = set()

    def switch(new_label: str | None, new_iteration: int, t: float) -> None:
        nonlocal label, iteration, start
        if label is not None and start is not None:
            out.append((label, iteration, t - start))
        label, iteration, start = new_label, new_iteration, t

    for e in events:
        t, kind = e.get("t"), e.get("type")
        if not isinstance(t, (int, float)):
            continue
        it = e.get("iteration") if isinstance(e.get("iteration"), int) else iteration
        if kind == "phase" and e.get("phase") == "healing" and e.get("detail") in HEALING_PARTS and it not in stepped:
            if (f"healing: {e['detail']}", it) != (label, iteration):  # not its progress within the part
                switch(f"healing: {e['detail']}", it, t)  # the parts of a healing's preparation
        elif kind == "phase" and "total" not in e:  # progress within a phase repeats it with done/total
            new = _label(e)
            same_healing = bool(label) and label.startswith("healing") and new.startswith("healing")
            if it != iteration or (new != label and not same_healing):
                switch(new, it, t)
        elif kind == "train_step" and it not in stepped:
            stepped.add(it)
            switch("healing: steps", it, t)
        elif kind == "awaiting_decision":
            switch("waiting for a decision", it, t)
        elif kind == "decision":
            switch("removal", it, t)
        elif kind in ENDS:
            switch("engine start" if kind == "engine_started" else None, it, t)
    return out


def table(events: list[dict]) -> tuple[list[str], list[int], dict[tuple[str, int], float]]:
    cells: dict[tuple[str, int], float] = defaultdict(float)
    labels: list[str] = []
    for label, iteration, seconds in segments(events):
        if label not in labels:
            labels.append(label)
        cells[(label, iteration)] += seconds
    iterations = sorted({it for _, it in cells})
    return labels, iterations, dict(cells)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--json", action="store_true", help="print the table as JSON")
    args = parser.parse_args(argv)
    events_file = args.run_dir / "events.jsonl"
    if not events_file.is_file():
        print(f"phases: {args.run_dir} is not a run directory (no events.jsonl)", file=sys.stderr)
        return 2
    labels, iterations, cells = table(read_all(events_file))
    if args.json:
        print(json.dumps([{"work": lab, "iteration": it, "seconds": round(s, 3)} for (lab, it), s in cells.items()]))
        return 0
    from rich.console import Console
    from rich.table import Table

    out = Table(title=f"{args.run_dir.name}: seconds of wall time per iteration")
    out.add_column("work", no_wrap=True)
    for it in iterations:
        out.add_column(f"it {it}", justify="right")
    out.add_column("total", justify="right")
    for label in labels:
        row = [cells.get((label, it)) for it in iterations]
        out.add_row(label, *(f"{s:.0f}" if s is not None else "" for s in row), f"{sum(s or 0 for s in row):.0f}")
    total = [sum(s for (_, i), s in cells.items() if i == it) for it in iterations]
    out.add_row("[b]all[/b]", *(f"{s:.0f}" for s in total), f"{sum(total):.0f}")
    Console(width=max(100, 48 + 7 * (len(iterations) + 1))).print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
