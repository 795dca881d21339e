"""The report's figures (matplotlib, Agg, no pyplot: safe in the dashboard's worker thread).

Each function writes one PNG and returns its path, or None when the runs have nothing to draw.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

from engine.runlog.loss_terms import step_terms
from engine.runlog.schema import REPORT, SELECT

from .facts import ReportRun

DPI = 110
# Okabe-Ito: told apart with every common colour-vision deficiency.
COLOURS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442"]
MARKERS = "os^DvP*X"
PARTS_WORDS = {REPORT: "report part (held-out items)", SELECT: "selection part (the items that chose the layers)"}


def colour(i: int) -> str:
    return COLOURS[i % len(COLOURS)]


def _figure(width: float, height: float, **margins) -> Figure:
    """Fixed margins, no layout engine: measuring every label to place the axes (constrained or
    tight layout) costs more than drawing the figure."""
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    fig.subplots_adjust(**{"left": 0.09, "right": 0.97, "bottom": 0.12, "top": 0.92, **margins})
    return fig


def fit(fig: Figure, pad: float = 0.06) -> None:
    """Grow the figure until every label, tick, title and legend is inside it.

    Fixed margins cannot know how long a y label or a run's name is (Fig. 9's label was cut at
    the left; a narrow heatmap's colour bar lost its tick labels). One draw measures everything
    (``get_tightbbox``); the figure grows by what sticks out, and every axes keeps its size in
    inches, so nothing is squeezed either.
    """
    bbox = fig.get_tightbbox(fig.canvas.get_renderer())
    w, h = fig.get_size_inches()
    left, bottom = max(0.0, pad - bbox.x0), max(0.0, pad - bbox.y0)
    right, top = max(0.0, bbox.x1 + pad - w), max(0.0, bbox.y1 + pad - h)
    if not (left or bottom or right or top):
        return
    new_w, new_h = w + left + right, h + bottom + top
    for ax in fig.axes:
        pos = ax.get_position()
        ax.set_position(
            [(pos.x0 * w + left) / new_w, (pos.y0 * h + bottom) / new_h, pos.width * w / new_w, pos.height * h / new_h]
        )
    fig.set_size_inches(new_w, new_h)


def _save(fig: Figure, path: Path) -> Path:
    fit(fig)
    # Fast zlib: the figures are mostly flat colour, so the files stay small anyway.
    fig.savefig(path, dpi=DPI, format="png", metadata={"Software": None}, pil_kwargs={"compress_level": 3})
    return path


def _teachers(runs: list[ReportRun], part: str) -> dict[str, float]:
    """The teacher's aggregate per distinct model (the first run of each model tells it)."""
    out: dict[str, float] = {}
    for r in runs:
        teacher = r.state.teacher_eval(part)
        if r.model not in out and teacher and teacher["aggregate"] is not None:
            out[r.model] = teacher["aggregate"]
    return out


def relative(runs: list[ReportRun], part: str) -> bool:
    """Whether the runs' teachers differ (another model, another suite): then an absolute
    aggregate on one axis compares nothing, and each run is drawn as % of its own teacher."""
    values = set()
    for r in runs:
        teacher = r.state.teacher_eval(part)
        if teacher and teacher["aggregate"] is not None:
            values.add((r.model, round(teacher["aggregate"], 6)))
    return len(values) > 1


def _curves(ax, runs: list[ReportRun], part: str, rel: bool = False) -> bool:
    drawn = False
    for i, r in enumerate(runs):
        points = r.state.curve(part)
        teacher = r.state.teacher_eval(part)
        base = teacher["aggregate"] if teacher else None
        if not points or (rel and not base):
            continue
        ax.plot(
            [p["removed"] for p in points],
            [p["aggregate"] / base * 100 if rel else p["aggregate"] for p in points],
            marker=MARKERS[i % len(MARKERS)],
            markersize=4,
            linewidth=1.6,
            color=colour(i),
            label=r.label,
        )
        drawn = True
    if rel:
        ax.axhline(100, linestyle="--", linewidth=1.1, color="0.35", label="each run's own teacher = 100 %")
    for j, (model, value) in enumerate([] if rel else _teachers(runs, part).items()):
        ax.axhline(
            value,
            linestyle="--",
            linewidth=1.1,
            color="0.35" if j == 0 else colour(len(runs) + j),
            label=f"teacher ({model})",
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layers removed")
    ax.grid(alpha=0.3)
    return drawn


def aggregate_figure(runs: list[ReportRun], path: Path) -> Path | None:
    """The paper's Figure 9: the aggregate against layers removed, the teacher dashed, the
    parameter count on a second axis."""
    fig = _figure(8.0, 5.6, right=0.9, bottom=0.3)
    ax = fig.add_subplot()
    rel = relative(runs, REPORT)
    if not _curves(ax, runs, REPORT, rel):
        return None
    ax.set_ylabel("% of its own teacher's aggregate (report part)" if rel else "aggregate (report part)")
    curves = _params(runs)
    handles, labels = ax.get_legend_handles_labels()
    if curves:
        ax2 = ax.twinx()
        shared = max(range(len(curves)), key=lambda i: len(curves[i][0]))
        for number, (names, points) in enumerate(curves):
            xs = sorted(points)
            style = dict(linestyle=(0, (1, 1 + 2 * number)), linewidth=1.3, color="0.45")
            ax2.plot(xs, [points[x] / 1e6 for x in xs], **style)
            handles.append(Line2D([], [], **style))
            # The line most strategies share is "parameters"; the others name theirs.
            whose = "" if number == shared else f", {', '.join(names)}"
            labels.append(f"parameters{whose} (right axis)")
        ax2.set_ylabel("parameters (millions)")
    # Below the axes: eight strategies and their labels would cover the curves inside.
    ax.legend(handles, labels, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3, frameon=False)
    ax.set_title(
        "Aggregate against layers removed" + (" (the teachers differ: each run against its own)" if rel else "")
    )
    return _save(fig, path)


def _params(runs: list[ReportRun]) -> list[tuple[list[str], dict[int, float]]]:
    """Parameter curves against layers removed, with the strategies on each. Runs of one model whose
    students weigh the same at every depth they share make one curve (each run tells some points);
    a run that weighs otherwise (reverse-order unties a tied head) makes its own."""
    curves: list[tuple[str, list[str], dict[int, float]]] = []
    for r in runs:
        points = {p["removed"]: p["params"] for p in r.state.curve(REPORT) if p["params"]}
        if not points:
            continue
        for model, names, known in curves:
            if model == r.model and all(known[x] == v for x, v in points.items() if x in known):
                known.update(points)
                if r.strategy not in names:
                    names.append(r.strategy)
                break
        else:
            curves.append((r.model, [r.strategy], dict(points)))
    return [(names, points) for _, names, points in curves if len(points) > 1]


def select_report_figure(runs: list[ReportRun], path: Path) -> Path | None:
    """The selection part beside the report part, on one scale: how much the choosing items flatter."""
    if not any(r.has_part(SELECT) for r in runs):
        return None
    fig = _figure(10.0, 4.2, left=0.07, wspace=0.05, bottom=0.2)
    left, right = fig.subplots(1, 2, sharey=True)
    rel = relative(runs, REPORT) or relative(runs, SELECT)
    for ax, part in ((left, SELECT), (right, REPORT)):
        _curves(ax, runs, part, rel)
        ax.set_title(PARTS_WORDS[part], fontsize=10)
    left.set_ylabel("% of its own teacher's aggregate" if rel else "aggregate")
    # Below both panels (centred under the gap between them), never over the curves; anchored to an
    # axes so that it moves with it when ``fit`` grows the figure.
    handles, labels = right.get_legend_handles_labels()
    left.legend(handles, labels, fontsize=8, loc="upper center", bbox_to_anchor=(1.025, -0.16), ncol=4, frameon=False)
    return _save(fig, path)


def removal_figure(runs: list[ReportRun], path: Path) -> Path | None:
    """The paper's Figure 10: how often each original layer was removed, stacked by run."""
    depth = max((r.state.start_layers or 0 for r in runs), default=0)
    if not depth or not any(r.state.removed_layers for r in runs):
        return None
    fig = _figure(max(6.0, 0.22 * depth + 2), 3.6, bottom=0.14)
    ax = fig.add_subplot()
    bottom = [0] * depth
    for i, r in enumerate(runs):
        heights = [1 if layer in set(r.state.removed_layers) else 0 for layer in range(depth)]
        ax.bar(range(depth), heights, bottom=bottom, color=colour(i), label=r.label, width=0.8)
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set_xlabel("original layer")
    ax.set_ylabel("runs that removed it")
    ax.set_xticks(range(0, depth, 1 if depth <= 40 else 5))
    ax.tick_params(axis="x", labelsize=7)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(0, max(1, max(bottom)) + 0.2)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # beside the bars
    ax.set_title("How often each layer was removed")
    return _save(fig, path)


def importance_figure(run: ReportRun, path: Path) -> Path | None:
    """The importance heatmap: one row per original layer, one column per iteration, coloured by
    the layer's rank within the iteration (dark = least important); removed layers are gaps,
    × marks the layer removed in that iteration, ○ a layer scored on part of the items only."""
    s = run.state
    iterations = sorted(s.importance)
    depth = s.start_layers or 0
    if not iterations or not depth:
        return None
    grid = [[math.nan] * len(iterations) for _ in range(depth)]
    for j, it in enumerate(iterations):
        scores = {k: v for k, v in s.scores(it).items() if v is not None and 0 <= k < depth}
        ranked = sorted(scores, key=lambda k: (scores[k], k))
        for rank, layer in enumerate(ranked):
            grid[layer][j] = rank / max(1, len(ranked) - 1)
    width, height = min(14.0, max(5.0, 0.42 * len(iterations) + 2.5)), min(14.0, max(3.5, 0.2 * depth + 1.2))
    fig = _figure(width, height, left=0.9 / width, right=1 - 0.3 / width, bottom=0.6 / height, top=1 - 0.5 / height)
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")  # NaN: a removed layer, a gap
    image = ax.imshow(grid, aspect="auto", cmap=cmap, vmin=0, vmax=1, interpolation="nearest", origin="lower")
    removed = {x["iteration"]: x["layer"] for x in s.removed}
    xs = [j for j, it in enumerate(iterations) if it in removed]
    ax.scatter(xs, [removed[iterations[j]] for j in xs], marker="x", s=28, color="#D55E00", linewidths=1.6)
    partial = [(j, layer) for j, it in enumerate(iterations) for layer in s.partial_layers(it)]
    if partial:
        ax.scatter(
            [p[0] for p in partial],
            [p[1] for p in partial],
            marker="o",
            s=16,
            facecolors="none",
            edgecolors="white",
            linewidths=0.9,
        )
    ax.set_xticks(range(len(iterations)), [str(it) for it in iterations], fontsize=7)
    ax.set_yticks(range(0, depth, 1 if depth <= 40 else 4))
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xlabel("iteration")
    ax.set_ylabel("original layer")
    metric = s.importance[iterations[0]].get("metric", "")
    marks = "× removed" + (", ○ scored on part of the items" if partial else "")
    ax.set_title(f"{run.label}: importance ({metric}); {marks}", fontsize=9)
    bar = fig.colorbar(image, ax=ax, shrink=0.8, pad=0.02, fraction=0.05)
    bar.set_ticks([0, 0.5, 1], labels=["least", "middle", "most"])
    bar.ax.tick_params(labelsize=7)
    bar.set_label("importance rank in the iteration", fontsize=8)
    return _save(fig, path)


def loss_series(steps: list[dict]) -> list[tuple[str, list[tuple[int, float]]]]:
    """The curves of the loss figure: the total, then every term the run logged, weighted (they
    add up to the loss) where logged, else unweighted; each ``(label, [(x, value)])``."""
    terms = [step_terms(st) for st in steps]
    weighted = any(v is not None for w, _ in terms for v in w.values())
    values = [w if weighted else u for w, u in terms]
    total = [st.get("loss") for st in steps]
    total = [v if isinstance(v, int | float) and not isinstance(v, bool) else None for v in total]
    out = [("total loss", total)]
    for name in dict.fromkeys(n for v in values for n in v):
        out.append((f"{name} term" if weighted else name, [v.get(name) for v in values]))
    return [(label, [(x, v) for x, v in enumerate(got) if v is not None]) for label, got in out]


def loss_figure(run: ReportRun, path: Path) -> Path | None:
    """The healing losses in step order across iterations (log scale), iterations marked."""
    steps = run.state.train_curve()
    if not steps:
        return None
    fig = _figure(8.0, 3.6, bottom=0.14)
    ax = fig.add_subplot()
    positive = True
    for i, (label, pts) in enumerate(loss_series(steps)):
        if pts:
            positive &= all(v > 0 for _, v in pts)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], linewidth=1.0, color=colour(i), label=label)
    if positive:
        ax.set_yscale("log")
        # Plain numbers, not mathtext powers of ten: each of those is parsed, and costs ~10 ms.
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    starts = [x for x, st in enumerate(steps) if x == 0 or steps[x - 1]["iteration"] != st["iteration"]]
    for x in starts:
        ax.axvline(x, color="0.7", linewidth=0.7, linestyle=":")
        ax.annotate(
            str(steps[x]["iteration"]),
            (x, 1),
            xycoords=("data", "axes fraction"),
            fontsize=7,
            color="0.4",
            xytext=(2, -10),
            textcoords="offset points",
        )
    ax.set_xlabel("healing step (all iterations; dotted lines start an iteration)")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # beside the curves
    ax.set_title(f"{run.label}: healing losses", fontsize=10)
    return _save(fig, path)


def cost_figure(rows: list[dict], path: Path) -> Path | None:
    """Each student's parameters, peak memory and speeds as a share of its teacher's."""
    students = [r for r in rows if r["role"] == "student" and r["params_pct"] is not None]
    if not students:
        return None
    measures = [
        ("params_pct", "parameters", 1.0),
        ("peak_memory_pct", "peak memory", 1.0),
        ("prefill_speedup", "prefill tokens/s", 100.0),
        ("decode_speedup", "decode tokens/s", 100.0),
    ]
    fig = _figure(max(6.0, 1.6 * len(students) + 3), 3.8, bottom=0.25)
    ax = fig.add_subplot()
    width = 0.8 / len(measures)
    for k, (key, label, scale) in enumerate(measures):
        xs = [i + (k - (len(measures) - 1) / 2) * width for i in range(len(students))]
        ax.bar(xs, [(s[key] or 0) * scale for s in students], width=width, color=colour(k), label=label)
    ax.axhline(100, linestyle="--", color="0.35", linewidth=1.0, label="teacher = 100 %")
    ax.set_xticks(range(len(students)), [s["run"] for s in students], fontsize=8)
    ax.set_ylabel("% of the teacher")
    ax.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.12), frameon=False)
    ax.set_title("What the smaller model buys (this machine)", fontsize=10)
    return _save(fig, path)
