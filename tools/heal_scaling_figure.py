"""The healing-budget figure: report-part retention against healing tokens (log x), one line per
schedule, from the table ``tools/heal_scaling.py`` writes.

    python tools/heal_scaling_figure.py docs/results/heal_scaling.csv docs/results/heal_scaling.png

Each point is one finished run: x is the tokens it trained on (every healing together), y the
report aggregate of its final student over the teacher's. The teacher's 90 % is drawn as a line,
so where the curve is heading and what 90 % would cost can be read off the figure. ``--exclude
VARIANT`` leaves a row out of the figure (it stays in the table): for a run kept as measured that
does not measure its budget, such as a healing stopped early by a rule since fixed.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

# Okabe-Ito, as in the report's figures: told apart with every common colour-vision deficiency.
COLOURS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9"]
MARKERS = "os^DvP"


def read_points(path: Path, exclude: set[str] = frozenset()) -> dict[str, list[tuple[int, float]]]:
    """(tokens trained, retention) per series, a series being the schedule, its healing data and the
    variant's label (what ``tools/heal_scaling.py --label`` appended after the data); rows whose
    variant is in ``exclude`` are left out. ValueError if ``exclude`` names a variant the table lacks
    (a misspelt name would otherwise leave the row drawn without a word)."""
    series: dict[str, list[tuple[int, float]]] = {}
    variants: set[str] = set()
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            variants.add(row.get("variant"))
            if row.get("variant") in exclude:
                continue
            try:
                point = (int(float(row["tokens_trained"])), float(row["retention_report"]))
            except (KeyError, ValueError):
                continue  # a row without a finished run's numbers
            label = row.get("variant", "").partition(f" {row['data']}")[2].strip()
            name = f"{row['schedule']} ({row['data']}{', ' + label if label else ''})"
            series.setdefault(name, []).append(point)
    if unknown := set(exclude) - variants:
        raise ValueError(f"--exclude names no row of {path}: {', '.join(sorted(unknown))}")
    return {name: sorted(points) for name, points in series.items()}


def _tokens(x: float, _pos=None) -> str:
    return f"{x / 1e6:.2f}M" if x >= 1e5 else f"{x / 1e3:.0f}k"


def draw(series: dict[str, list[tuple[int, float]]], out: Path, title: str) -> Path:
    fig = Figure(figsize=(7.0, 4.2))
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.11, right=0.97, bottom=0.13, top=0.9)
    ax = fig.add_subplot()
    ax.set_xscale("log")
    for i, (name, points) in enumerate(series.items()):
        xs, ys = zip(*points)
        ax.plot(
            xs,
            [100 * y for y in ys],
            marker=MARKERS[i % len(MARKERS)],
            # Each series drawn smaller than the one before, so that two schedules landing on the same
            # point (a measured tie) both stay visible instead of one hiding the other.
            markersize=max(4.0, 9.0 - 1.2 * i),
            color=COLOURS[i % len(COLOURS)],
            label=name,
        )
    ax.axhline(90, color="#666666", linestyle="--", linewidth=1)
    ax.set_ylim(top=max(93.0, ax.get_ylim()[1]))  # the 90 % line and its label always inside
    ax.text(0.01, 90.4, "90 % of the teacher", transform=ax.get_yaxis_transform(), fontsize=8, color="#444444")
    # Ticks at the measured budgets: a log axis's own ticks (powers of ten) may miss them all.
    ax.set_xticks(sorted({x for points in series.values() for x, _ in points}))
    ax.xaxis.set_major_formatter(FuncFormatter(_tokens))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda x, _p: ""))
    ax.set_xlabel("healing tokens (all healings of the run, log scale)")
    ax.set_ylabel("report aggregate, % of the teacher")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="lower right")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", type=Path, help="heal_scaling.csv")
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--title", default="SmolLM2-135M, 30 -> 24 layers, fixed removals: retention against healing")
    parser.add_argument(
        "--exclude", action="append", default=[], metavar="VARIANT", help="a row's variant to leave out (repeatable)"
    )
    args = parser.parse_args(argv)
    if not args.table.is_file():
        print(f"error: no table at {args.table}", file=sys.stderr)
        return 2
    try:
        series = read_points(args.table, set(args.exclude))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not series:
        print(f"error: {args.table} has no finished rows to draw", file=sys.stderr)
        return 1
    print(draw(series, args.out, args.title))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
