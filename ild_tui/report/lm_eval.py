"""The lm-evaluation-harness results ``ild eval`` stored with each run (``RUN/lm_eval.json``):
one CSV row per (run, task, metric), and the report's side-by-side table of teacher and student."""

from __future__ import annotations

import json

from .page import fmt, fmt_pct, table

RESULTS_FILE = "lm_eval.json"  # engine/harness.py writes it
COLUMNS = ["run", "task", "metric", "teacher", "student", "retention", "num_fewshot", "limit"]


def rows(runs) -> list[dict]:
    out = []
    for run in runs:
        path = run.path / RESULTS_FILE
        if not path.is_file() or path.is_symlink():
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            student = record["student"]["results"]
            teacher = (record.get("teacher") or {}).get("results", {})
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        settings = record.get("settings") or {}
        for task, metrics in student.items():
            for metric, value in metrics.items():
                if "stderr" in metric or not isinstance(value, (int, float)):
                    continue
                before = teacher.get(task, {}).get(metric)
                out.append(
                    {
                        "run": run.label,
                        "task": task,
                        "metric": metric.split(",")[0],
                        "teacher": before,
                        "student": value,
                        "retention": value / before if isinstance(before, (int, float)) and before else None,
                        "num_fewshot": settings.get("num_fewshot"),
                        "limit": settings.get("limit"),
                    }
                )
    return out


def section(found: list[dict]) -> str:
    """The HTML section (empty without results)."""
    if not found:
        return ""
    body = [
        [
            r["run"],  # table() escapes each cell
            r["task"],
            r["metric"],
            fmt(r["teacher"]),
            fmt(r["student"]),
            fmt_pct(None if r["retention"] is None else 100 * r["retention"]),
        ]
        for r in found
    ]
    return "\n".join(
        [
            "<h2>lm-evaluation-harness</h2>",
            '<p class="note">Scored by <code>ild eval RUN --lm-eval TASKS</code>: the exported student and its '
            "teacher with the same settings.</p>",
            table(["run", "task", "metric", "teacher", "student", "retention"], body, numeric={3, 4, 5}),
        ]
    )
