"""The report page: one HTML file, the figures embedded as data URIs, no script, no network."""

from __future__ import annotations

import base64
import html
import time
from pathlib import Path

from engine.runlog.schema import REPORT, SELECT

from .facts import ReportRun

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1b1f24; margin: 2em auto;
       max-width: 1100px; padding: 0 1.2em; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { margin-top: 2em; border-bottom: 1px solid #d0d7de; }
h3 { margin-top: 1.5em; }
.meta, .note { color: #57606a; } .note { font-size: .92em; }
table { border-collapse: collapse; margin: .6em 0 1em; font-size: .9em; }
th, td { border: 1px solid #d0d7de; padding: .25em .55em; } th { background: #f6f8fa; text-align: left; }
td:first-child, td.num { white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.scroll { overflow-x: auto; } img { max-width: 100%; height: auto; display: block; margin: .5em 0; }
ul.answers li { margin: .35em 0; } code { background: #f6f8fa; padding: 0 .25em; }
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def fmt_params(value) -> str:
    return "-" if not value else f"{value / 1e6:.1f}M"


def fmt_pct(value) -> str:
    return "-" if value is None else f"{value:.1f} %"


def fmt_bytes(value) -> str:
    return "-" if not value else f"{value / 2**20:,.0f} MiB"


def fmt_duration(seconds) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )


class Markup(str):
    """A table cell that is HTML already (a link), put in as it is."""


def _cell(value) -> str:
    return value if isinstance(value, Markup) else esc(value)


def table(headers: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    """``rows`` hold finished cell texts (escaped here, but for ``Markup``); columns in ``numeric``
    align right."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{_cell(c)}</td>' if i in numeric else f"<td>{_cell(c)}</td>" for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def image(path: Path | None, alt: str) -> str:
    if path is None:
        return ""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{esc(alt)}">'


def answer(run: ReportRun, row: dict, cost: dict | None) -> str:
    """One sentence a colleague can read: depth, size, quality kept, speed and memory bought."""
    s = run.state
    bits = [
        f"<b>{esc(run.strategy)}</b> (run <code>{esc(run.label)}</code>, {esc(run.status)}): "
        f"{fmt(row['start_layers'])} → {fmt(row['layers'])} layers"
    ]
    if row["params"] and row["teacher_params"]:
        bits.append(
            f", {fmt_params(row['teacher_params'])} → {fmt_params(row['params'])} parameters "
            f"({fmt_pct(row['params_pct'])})"
        )
    if row["retention_pct"] is not None:
        bits.append(
            f"; keeps <b>{fmt_pct(row['retention_pct'])}</b> of the teacher's aggregate on the report part "
            f"({fmt(row['aggregate'])} vs {fmt(row['teacher_aggregate'])})"
        )
    else:
        bits.append("; no evaluated iteration yet")
    if row["select_retention_pct"] is not None:
        bits.append(f", {fmt_pct(row['select_retention_pct'])} on the items that chose the layers")
    if cost and cost.get("decode_speedup") is not None:
        bits.append(
            f"; prefill {cost['prefill_speedup']:.2f}× and decode {cost['decode_speedup']:.2f}× the teacher's "
            f"tokens/s, peak memory {fmt_pct(cost['peak_memory_pct'])} of the teacher's ({esc(cost['device'])})"
        )
    if s.target_layers is not None and row["layers"] is not None and row["layers"] > s.target_layers:
        bits.append(f" — target {s.target_layers} layers not reached")
    return "<li>" + "".join(bits) + ".</li>"


def best_lines(run_rows: list[dict]) -> list[str]:
    """Which strategy kept most, among runs of one model that reached the same depth."""
    groups: dict[tuple, list[dict]] = {}
    for row in run_rows:
        if row["retention_pct"] is not None and row["layers"] is not None:
            groups.setdefault((row["model"], row["layers"]), []).append(row)
    lines = []
    for (model, layers), rows in sorted(groups.items(), key=lambda kv: (kv[0][0], -kv[0][1])):
        if len(rows) < 2:
            continue
        rows = sorted(rows, key=lambda r: -r["retention_pct"])
        others = ", ".join(f"{esc(r['strategy'])} {fmt_pct(r['retention_pct'])}" for r in rows[1:])
        lines.append(
            f"<li>At {layers} layers of <code>{esc(model)}</code> the best is <b>{esc(rows[0]['strategy'])}</b>: "
            f"{fmt_pct(rows[0]['retention_pct'])} of the teacher's aggregate (then {others}).</li>"
        )
    return lines


def render(
    *,
    title: str,
    runs: list[ReportRun],
    run_rows: list[dict],
    figures: dict,
    per_run: dict,
    tasks: list[str],
    cost_rows: list[dict] | None,
    notes: list[str],
    files: list[str],
    sections: list[str] = (),
) -> str:
    """The page. ``figures``: name -> PNG path or None; ``per_run``: label -> {importance, loss} PNGs."""
    students = {r["run"]: r for r in (cost_rows or []) if r["role"] == "student"}
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',
        f"<title>{esc(title)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f'<p class="meta">{len(runs)} run{"s" if len(runs) != 1 else ""}, written '
        f"{esc(time.strftime('%Y-%m-%d %H:%M %Z'))} by <code>ild report</code>. Aggregates are the report part's "
        "(items that never chose a layer) unless marked <i>select</i>; each iteration counts with its final "
        "evaluation (after healing when it healed).</p>",
        "<h2>In short</h2>",
        '<ul class="answers">',
        *[answer(r, row, students.get(r.label)) for r, row in zip(runs, run_rows)],
        *best_lines(run_rows),
        "</ul>",
    ]
    if notes:
        out += ['<p class="note">' + "<br>".join(esc(n) for n in notes) + "</p>"]

    selects = any(r.has_part(SELECT) for r in runs)
    headers = [
        "run",
        "strategy",
        "status",
        "layers",
        "params",
        "teacher",
        "final",
        "best",
        "% of teacher",
        *(["select final", "select % of teacher"] if selects else []),
        "removed (in order)",
        "engine time",
        "since start",
    ]
    rows = []
    for r in run_rows:
        rows.append(
            [
                r["run"],
                r["strategy"],
                r["status"],
                f"{fmt(r['start_layers'])} → {fmt(r['layers'])}",
                fmt_params(r["params"]),
                fmt(r["teacher_aggregate"]),
                fmt(r["aggregate"]),
                fmt(r["best_aggregate"]),
                fmt_pct(r["retention_pct"]),
                *([fmt(r["select_aggregate"]), fmt_pct(r["select_retention_pct"])] if selects else []),
                r["removed"] or "-",
                fmt_duration(r["engine_s"]),
                fmt_duration(r["duration_s"]),
            ]
        )
    numeric = {i for i, h in enumerate(headers) if h not in ("run", "strategy", "status", "removed (in order)")}
    out += ["<h2>Runs (Table 2)</h2>", table(headers, rows, numeric=numeric)]

    out += [
        "<h2>Aggregate against layers removed (Figure 9)</h2>",
        image(figures.get("aggregate"), "aggregate against layers removed")
        or '<p class="note">No evaluated iteration yet.</p>',
    ]
    out += ["<h2>Selection part and report part</h2>"]
    if figures.get("select_report"):
        out += [
            '<p class="note">The same runs on the items that chose the layers (left) and on held-out items '
            "(right): the gap is how much the choice flatters the student.</p>",
            image(figures["select_report"], "selection part beside report part"),
        ]
    else:
        out += ['<p class="note">These runs log one part only (an older engine): no selection part to compare.</p>']
    out += [
        "<h2>How often each layer was removed (Figure 10)</h2>",
        image(figures.get("removals"), "removal counts per original layer")
        or '<p class="note">No layer removed yet.</p>',
    ]

    out += ["<h2>What the compression buys</h2>"]
    if cost_rows is None:
        out += ['<p class="note">Not measured (<code>--no-measure</code>).</p>']
    elif cost_rows:
        first = next((c for c in cost_rows if c["device"]), None)
        if first:
            out += [
                f'<p class="note">Measured on this machine: {esc(first["device"])} ({esc(first["device_name"])}), '
                f"{esc(first['dtype'])}, {esc(first['threads'])} threads, batch {esc(first['batch'])}, "
                f"{esc(first['prompt_tokens'])} prompt tokens, {esc(first['new_tokens'])} greedy new tokens with the "
                "KV cache; best of three. Peak memory: the process's resident high-water mark on a CPU (weights "
                "included), the allocator's peak on a GPU.</p>"
            ]
        out += [
            table(
                [
                    "model",
                    "role",
                    "layers",
                    "params",
                    "% params",
                    "prefill tok/s",
                    "× teacher",
                    "decode tok/s",
                    "× teacher",
                    "peak memory",
                    "% of teacher",
                    "note",
                ],
                [
                    [
                        c["run"] or c["model"],
                        c["role"],
                        fmt(c["layers"]),
                        fmt_params(c["params"]),
                        fmt_pct(c["params_pct"]),
                        fmt(c["prefill_tokens_per_s"], 0),
                        fmt(c["prefill_speedup"], 2),
                        fmt(c["decode_tokens_per_s"], 1),
                        fmt(c["decode_speedup"], 2),
                        fmt_bytes(c["peak_memory_bytes"]),
                        fmt_pct(c["peak_memory_pct"]),
                        c["note"] or "",
                    ]
                    for c in cost_rows
                ],
                numeric={2, 3, 4, 5, 6, 7, 8, 9, 10},
            ),
            image(figures.get("cost"), "cost of each student as a share of the teacher's"),
        ]

    out += list(sections)  # more tables (lm-evaluation-harness results), before the runs one by one
    out += ["<h2>Each run</h2>"]
    for r in runs:
        out += [
            f"<h3>{esc(r.label)} — {esc(r.strategy)}, {esc(r.model)}</h3>",
            _iteration_table(r, tasks),
            image(per_run[r.label].get("importance"), f"importance heatmap of {r.label}"),
            image(per_run[r.label].get("loss"), f"healing losses of {r.label}"),
        ]
    out += [
        "<h2>Files</h2>",
        '<p class="note">Next to this page: ' + ", ".join(esc(f) for f in files) + ".</p>",
        "</body></html>",
    ]
    return "\n".join(x for x in out if x)


def _iteration_table(run: ReportRun, tasks: list[str]) -> str:
    """Table 3: per-task scores of each iteration's final model (report part), the teacher first."""
    s = run.state
    finals = s.final_evals(REPORT)
    teacher = s.teacher_eval(REPORT)
    own = [t for t in tasks if any(t in rec["tasks"] for rec in [*finals.values(), *([teacher] if teacher else [])])]
    heals = any(stage in ("after_healing", "after_final_healing") for (_, stage, _) in s.evals)
    selects = run.has_part(SELECT)
    removal = {x["iteration"]: x for x in s.removed}
    headers = [
        "iteration",
        "removed",
        "by",
        "layers",
        "params",
        "aggregate",
        "% of teacher",
        *(["after removal"] if heals else []),
        *(["select"] if selects else []),
        *own,
    ]
    rows = []
    records = ([(0, teacher)] if teacher else []) + sorted(finals.items())
    base = teacher["aggregate"] if teacher else None
    for it, rec in records:
        is_teacher = rec is teacher
        gone = removal.get(it, {})
        row = [
            (
                "teacher"
                if is_teacher
                else str(it) + (" + final healing" if rec.get("stage") == "after_final_healing" else "")
            ),
            "-" if is_teacher else fmt(gone.get("layer")),
            "-" if is_teacher else (gone.get("by") or "-"),
            fmt(rec.get("layers")),
            fmt_params(rec.get("params")),
            fmt(rec["aggregate"]),
            fmt_pct(None if rec["aggregate"] is None or not base else 100 * rec["aggregate"] / base),
        ]
        if heals:
            before = s.evals.get((it, "after_removal", REPORT))
            row.append("-" if is_teacher or before is None else fmt(before["aggregate"]))
        if selects:
            chosen = s.teacher_eval(SELECT) if is_teacher else s.final_evals(SELECT).get(it)
            row.append(fmt(chosen["aggregate"]) if chosen else "-")
        row += [fmt(rec["tasks"].get(t), 3) for t in own]
        rows.append(row)
    if not rows:
        return '<p class="note">No evaluation yet.</p>'
    return table(headers, rows, numeric=set(range(3, len(headers))))
