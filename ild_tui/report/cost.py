"""What the compression bought: each teacher and each exported student measured on this machine.

The measuring is ``python -m engine.measure`` (torch), run as a child process: the dashboard never
imports torch. Each model is measured on its own (a fresh process per model, one after another,
so they do not compete for the cores and each peak memory is that model's), and a teacher shared
by several runs is measured once. A model that cannot be measured (a Hub id offline, a run with no
export yet) gets a reason instead of figures; the report says so.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field

from .facts import ReportRun, _pct

COST_COLUMNS = [
    "model",
    "role",
    "run",
    "strategy",
    "layers",
    "params",
    "params_pct",
    "prefill_tokens_per_s",
    "prefill_speedup",
    "decode_tokens_per_s",
    "decode_speedup",
    "peak_memory_bytes",
    "peak_memory_pct",
    "device",
    "device_name",
    "dtype",
    "threads",
    "batch",
    "prompt_tokens",
    "new_tokens",
    "note",
]


@dataclass
class Measured:
    rows: list[dict] = field(default_factory=list)  # COST_COLUMNS, teachers first
    notes: list[str] = field(default_factory=list)  # what could not be measured, and why


def measure_spec(spec: str, device: str | None = None, python: str = sys.executable) -> dict:
    """``engine.measure``'s JSON for one model, or ``{"error": its one line}``."""
    from ..launch import engine_env

    command = [python, "-m", "engine.measure", spec, "--json", *(["--device", device] if device else [])]
    done = subprocess.run(command, capture_output=True, text=True, env=engine_env(), stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit code {done.returncode}"]
        return {"error": lines[-1].removeprefix("ild: ")}
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": "engine.measure printed no JSON"}


def measure_runs(runs: list[ReportRun], device: str | None = None, progress=None) -> Measured:
    """Each distinct teacher once, then each run's exported student."""
    say = progress or (lambda text: None)
    out = Measured()
    teachers: dict[str, dict] = {}
    for r in runs:
        if r.state.model and r.state.model not in teachers:
            say(f"measuring the teacher {r.state.model}")
            teachers[r.state.model] = measure_spec(r.state.model, device)
    for model, result in teachers.items():
        if "error" in result:
            out.notes.append(f"teacher {model}: not measured ({result['error']})")
        out.rows.append(_row(result, None, model, "teacher", None))
    for r in runs:
        export = r.export_dir
        if export is None:
            out.notes.append(f"{r.label}: no exported student yet ({r.status})")
            continue
        say(f"measuring {r.label}'s student")
        result = measure_spec(str(export), device)
        if "error" in result:
            out.notes.append(f"{r.label}: student not measured ({result['error']})")
        out.rows.append(_row(result, teachers.get(r.state.model), str(export), "student", r))
    return out


def _ratio(value, base):
    return None if value is None or not base else value / base


def _row(result: dict, teacher: dict | None, model: str, role: str, run: ReportRun | None) -> dict:
    teacher = teacher if teacher and "error" not in teacher else None
    get = result.get
    row = {
        c: get(c)
        for c in COST_COLUMNS
        if c
        in (
            "layers",
            "params",
            "prefill_tokens_per_s",
            "decode_tokens_per_s",
            "peak_memory_bytes",
            "device",
            "device_name",
            "dtype",
            "threads",
            "batch",
            "prompt_tokens",
            "new_tokens",
        )
    }
    row.update(
        {
            "model": model,
            "role": role,
            "run": run.label if run else None,
            "strategy": run.strategy if run else None,
            "note": get("error"),
        }
    )
    if teacher is not None:
        row["params_pct"] = _pct(get("params"), teacher.get("params"))
        row["prefill_speedup"] = _ratio(get("prefill_tokens_per_s"), teacher.get("prefill_tokens_per_s"))
        row["decode_speedup"] = _ratio(get("decode_tokens_per_s"), teacher.get("decode_tokens_per_s"))
        row["peak_memory_pct"] = _pct(get("peak_memory_bytes"), teacher.get("peak_memory_bytes"))
    elif role == "teacher" and "error" not in result:
        row.update(params_pct=100.0, prefill_speedup=1.0, decode_speedup=1.0, peak_memory_pct=100.0)
    return {c: row.get(c) for c in COST_COLUMNS}
