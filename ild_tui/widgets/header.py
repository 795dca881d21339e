"""The live screen's two header lines: what the run is, where it is, whether its engine lives."""

from __future__ import annotations

import time

from rich.style import Style
from rich.text import Text
from textual.widgets import Static

from engine.runlog.fold import LIVE_STATUSES, RunState
from engine.runlog.jsonsafe import printable

from ..runs import status_label

STATUS_LOOK = {
    # status: (glyph, label, theme colour variable); the label is the one `ild ls` filters match
    status: (glyph, status_label(status), var)
    for status, glyph, var in (
        ("running", "●", "success"),
        ("paused", "‖", "warning"),
        ("awaiting decision", "◆", "warning"),
        ("finished", "✔", "primary"),
        ("stopped", "■", "warning"),
        ("failed", "✖", "error"),
        ("died", "✖", "error"),
        ("unknown", "○", "foreground"),
        ("starting", "○", "warning"),
        ("unreadable", "✖", "error"),  # the log is a directory, a FIFO, a link...
    )
}


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return "-"
    s = int(seconds)
    if s >= 86400:
        return f"{s // 86400}d{s % 86400 // 3600:02d}h"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s"


def fmt_params(n: float | None) -> str:
    if not n:
        return "-"
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    return f"{n / 1e3:.0f}k"


def fmt_clock(t: float | None, with_date: bool = False) -> str:
    if t is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M" if with_date else "%H:%M:%S", time.localtime(t))


def theme_color(app, name: str) -> str | None:
    try:
        return app.theme_variables.get(name)
    except Exception:
        return None


class RunHeader(Static):
    DEFAULT_CSS = """
    RunHeader { height: 2; padding: 0 1; background: $panel; text-wrap: nowrap; text-overflow: ellipsis; }
    """

    EVENTS = frozenset(
        {
            "run_started",
            "engine_started",
            "phase",
            "proposal",
            "awaiting_decision",
            "decision",
            "layer_removed",
            "train_step",
            "checkpoint",
            "command_applied",
            "run_finished",
            "run_failed",
        }
    )

    def show(self, state: RunState, status: str, now: float, run_name: str, phase_detail: str | None = None) -> None:
        glyph, label, var = STATUS_LOOK.get(status, ("?", status, "foreground"))
        live = status in LIVE_STATUSES
        color = theme_color(self.app, var)
        strong = Style(bold=True)
        dim = Style(dim=True)
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append(
            f" {glyph} {label} ",
            Style(bold=True, color=color, reverse=True) if color else Style(bold=True, reverse=True),
        )
        t.append("  ")
        t.append(state.name or printable(run_name), strong)
        if state.name and run_name and state.name != run_name:
            t.append(f" (dir {printable(run_name)})", dim)  # a copied run directory keeps its recorded name
        t.append("  ")
        t.append(state.model or "-")
        t.append(" · ", dim)
        t.append(state.strategy or "-")
        metric = state.run_info.get("importance")
        if metric:
            t.append(f" ({metric})", dim)
        t.append(" · ", dim)
        mode = state.mode or "-"
        if mode == "auto-after" and state.mode_seconds:
            mode += f" {state.mode_seconds:g}s"
        t.append("mode ", dim)
        t.append(mode)
        if status == "died" and state.last_event_t:
            t.append(
                f"   last event {fmt_duration(now - state.last_event_t)} ago, no run_finished (`ild resume` continues it)",
                Style(color=color),
            )
        if status == "failed" and state.failure:
            t.append(f"   {state.failure.get('error', '')}", Style(color=color))
        if status == "starting":
            t.append("   the engine is starting: no event from it yet", dim)
        queued = state.decision_queued
        if status == "paused":
            if queued:
                t.append(
                    f"   {queued['name']} {queued['layer']} taken: the engine removes it when resumed (p)",
                    Style(color=color),
                )
            else:
                t.append("   the engine waits at a safe point; p resumes it", Style(color=color))

        t2 = Text(no_wrap=True, overflow="ellipsis")
        t2.append(" phase ", dim)
        phase = state.phase or "-"
        if status in ("finished", "stopped"):
            phase = "done"
        elif status == "awaiting decision":
            phase = "awaiting decision"
            phase_detail = None
        t2.append(phase, strong)
        if phase_detail and live:
            t2.append(f" ({phase_detail})", dim)
        t2.append("  iteration ", dim)
        t2.append(str(state.iteration if state.iteration is not None else "-"), strong)
        t2.append("  layers ", dim)
        now_layers = state.layers_now
        t2.append(f"{now_layers if now_layers is not None else '-'}", strong)
        t2.append(f"/{state.start_layers or '-'} → {state.target_layers or '-'}")
        t2.append("  params ", dim)
        t2.append(fmt_params(state.params), strong)
        if state.params and state.start_params and state.params != state.start_params:
            t2.append(f" ({(state.params / state.start_params - 1) * 100:+.1f}%)", dim)
        start, elapsed = state.started, state.duration(now, alive=live)
        t2.append("  elapsed ", dim)
        t2.append(fmt_duration(elapsed), strong)
        if start:
            t2.append(f" (since {fmt_clock(start, True)})", dim)
        both = Text("\n", no_wrap=True, overflow="ellipsis").join([t, t2])
        both.no_wrap = True
        self.update(both)
