"""The study's two best strategies at each depth, compared item by item, so that "best" is measured.

After its report, a study ranks its strategies at every depth by the report part's aggregate
(the report's ``summary.csv``) and compares the first two with ``engine.paired`` (a paired
bootstrap over the same items): one ``paired/best-two-N-A_vs_B.txt`` (and ``.json``) a depth, and
``paired/best-two.csv`` with one row a depth. The students' per-item scores are kept in their run
directories (``engine.item_store``), so running the study again scores nothing while the scoring
code is unchanged (after a change it scores again from the weights, or, the weights gone, reuses
the earlier scores with a note). A depth whose students cannot be scored (weights gone and never
scored) is a note, not a failure.
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

PAIRED = "paired"
TABLE = "best-two.csv"
# the last line ild paired prints
_VERDICT = re.compile(r"aggregate difference \S+: (?P<verdict>.+) \(p = (?P<p>\S+)\)")
COLUMNS = ["layers", "a", "b", "a_aggregate", "b_aggregate", "diff", "low", "high", "p", "verdict", "file"]


@dataclass
class PairedDepths:
    rows: list[dict]  # one a depth compared, as in best-two.csv
    notes: list[str]  # depths not compared, and why


def ranked(summary_csv: Path, strategies: list[str]) -> dict[int, list[tuple[str, float]]]:
    """Depth -> (strategy, report aggregate), best first, of the students the report holds (the
    teacher's depth excluded: no strategy removed anything there)."""
    by_depth: dict[int, list[tuple[str, float]]] = {}
    with open(summary_csv, newline="") as f:
        for row in csv.DictReader(f):
            if row["part"] != "report" or row["strategy"] not in strategies or not row["aggregate"]:
                continue
            if int(row.get("layers_removed") or 0) == 0:
                continue
            by_depth.setdefault(int(row["layers"]), []).append((row["strategy"], float(row["aggregate"])))
    # a strategy's name breaks ties, so the order does not depend on the order of the runs
    return {n: sorted(rows, key=lambda r: (-r[1], r[0])) for n, rows in sorted(by_depth.items(), reverse=True)}


def pair_best_two(out: Path, summary_csv: Path, run_dirs: dict[str, Path], device=None, progress=None) -> PairedDepths:
    """Compare the two best strategies at each depth; write ``out/paired/``. ``run_dirs``: strategy ->
    its run directory. Each comparison is ``ild paired A B --layers N`` (the engine's process)."""
    from engine.runlog.atomic import write_text_atomic

    from .launch import ENGINE, engine_env

    folder = out / PAIRED
    folder.mkdir(parents=True, exist_ok=True)
    rows, notes = [], []
    for layers, order in ranked(summary_csv, list(run_dirs)).items():
        if len(order) < 2:
            notes.append(f"{layers} layers: only {order[0][0]} got there; nothing to compare")
            continue
        (a, _), (b, _) = order[:2]
        if progress:
            progress(f"paired at {layers} layers: {a} against {b}")
        stem = f"best-two-{layers}-{a}_vs_{b}"
        saved = folder / f"{stem}.json.tmp"
        command = [ENGINE[0], "-m", "engine.paired", str(run_dirs[a]), str(run_dirs[b]), "--layers", str(layers)]
        command += ["--json", str(saved), *(["--device", device] if device else [])]
        done = subprocess.run(command, capture_output=True, text=True, env=engine_env())
        said = _VERDICT.search(done.stdout)
        if done.returncode != 0 or said is None or not saved.is_file():
            why = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1].removeprefix("ild: ")
            notes.append(f"{layers} layers ({a} against {b}) not compared: {why}")
            saved.unlink(missing_ok=True)
            continue
        for stale in folder.glob(f"best-two-{layers}-*"):  # an earlier pair at this depth (a strategy joined)
            if stale != saved:
                stale.unlink()
        result = json.loads(saved.read_text())
        saved.replace(folder / f"{stem}.json")
        write_text_atomic(folder / f"{stem}.txt", done.stdout)
        d = result["aggregate"]
        rows.append(
            {
                "layers": layers,
                "a": a,
                "b": b,
                "a_aggregate": round(d["a"], 6),
                "b_aggregate": round(d["b"], 6),
                "diff": round(d["diff"], 6),
                "low": round(d["low"], 6),
                "high": round(d["high"], 6),
                "p": said.group("p"),
                "verdict": said.group("verdict"),
                "file": f"{stem}.txt",
            }
        )
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(folder / TABLE, text.getvalue())
    return PairedDepths(rows, notes)


def line(row: dict) -> str:
    """One depth's comparison in a sentence for the study's output."""
    return (
        f"{row['layers']} layers: {row['a']} {row['a_aggregate']:.4f} against {row['b']} {row['b_aggregate']:.4f}: "
        f"{_difference(row)}, p {'' if row['p'].startswith('<') else '= '}{row['p']} ({row['verdict']})"
    )


def _difference(row: dict) -> str:
    """A - B with its 95 % interval, as the printed line and the report page show it."""
    return f"{row['diff']:+.4f} [{row['low']:+.4f}, {row['high']:+.4f}]"


def section(paired: PairedDepths, folder: str) -> str:
    """The report page's section: one row a depth compared, each linking its ``ild paired`` output
    (``folder``: the paired folder relative to the page), then the depths not compared."""
    from .report.page import Markup, esc, fmt, table

    if not paired.rows and not paired.notes:
        return ""
    body = [
        [
            str(r["layers"]),
            r["a"],
            r["b"],
            fmt(r["a_aggregate"]),
            fmt(r["b_aggregate"]),
            _difference(r),
            r["p"],
            Markup(f'<a href="{esc(folder)}/{esc(r["file"])}">{esc(r["verdict"])}</a>'),
        ]
        for r in paired.rows
    ]
    out = [
        "<h2>The two best at each depth, paired</h2>",
        '<p class="note">The two strategies with the highest report-part aggregate at each depth, compared item '
        "by item (<code>ild paired A B --layers N</code>: a paired bootstrap over the same items; the difference "
        "is A minus B with its 95 % interval). A difference whose interval holds zero is noise, not a ranking.</p>",
    ]
    if body:
        out.append(
            table(
                ["layers", "A", "B", "A aggregate", "B aggregate", "A - B [95 %]", "p", "verdict"],
                body,
                numeric={0, 3, 4, 5, 6},
            )
        )
    out += [f'<p class="note">{esc(note)}</p>' for note in paired.notes]
    return "\n".join(out)
