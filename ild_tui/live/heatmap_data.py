"""What the importance heatmap shows, from the run's state alone (no Textual): one row per original
layer, one column per iteration, each column's scores and how they are normalised to [0, 1], the
removals, the proposals, and the layers scored on part of the items.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from engine.runlog.fold import RunState

PARTIAL_MARK = "~"


@dataclass
class HeatmapData:
    layers: list[int] = field(default_factory=list)  # original indices, one row each
    iterations: list[int] = field(default_factory=list)  # one column each
    raw: list[dict[int, float]] = field(default_factory=list)  # per column {layer: score}
    removed_at: dict[int, int] = field(default_factory=dict)  # layer -> iteration it was removed in
    removed_by: dict[int, str] = field(default_factory=dict)
    proposal: tuple[int, int] | None = None  # (iteration, layer) of the open proposal
    proposed: dict[int, int] = field(default_factory=dict)  # iteration -> proposed layer (history)
    metric: str | None = None
    planned: int | None = None  # iterations the run is expected to take (start - target layers)
    partial: list[set[int]] = field(default_factory=list)  # per column: layers scored on part of the items
    fixed: bool = False  # a fixed-removal run (--removals): layers removed, none scored

    def normalised(self, mode: str) -> list[dict[int, float]]:
        """Each column mapped to [0, 1]: ``iteration`` (min-max per column), ``global``, ``rank``."""
        out: list[dict[int, float]] = []
        if mode == "global":
            vals = [v for col in self.raw for v in col.values()]
            lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
            span = hi - lo or 1.0
            return [{k: (v - lo) / span for k, v in col.items()} for col in self.raw]
        for col in self.raw:
            if not col:
                out.append({})
                continue
            if mode == "rank":
                order = sorted(col, key=lambda k: (col[k], k))
                n = max(len(order) - 1, 1)
                out.append({k: i / n for i, k in enumerate(order)})
            else:
                lo, hi = min(col.values()), max(col.values())
                span = hi - lo
                out.append({k: ((v - lo) / span if span else 0.5) for k, v in col.items()})
        return out

    def range(self) -> tuple[float, float] | None:
        vals = [v for col in self.raw for v in col.values()]
        return (min(vals), max(vals)) if vals else None


def heatmap_view(state: RunState) -> HeatmapData:
    iterations = sorted(state.importance)
    raw: list[dict[int, float]] = []
    partial: list[set[int]] = []
    seen: set[int] = set()
    metric = None
    for it in iterations:
        rec = state.importance[it]
        metric = rec["metric"]
        col = {layer: v for layer, v in state.scores(it).items() if v is not None and math.isfinite(v)}
        seen.update(col)
        raw.append(col)
        partial.append(set(rec.get("partial", ())))
    layers = list(state.initial_layers) or sorted(seen)
    layers += sorted(seen - set(layers))
    removed_at = {r["layer"]: r["iteration"] for r in state.removed}
    removed_by = {r["layer"]: r["by"] or "" for r in state.removed}
    proposed = {it: rec["layer"] for it, rec in state.proposals.items()}
    pending = state.pending_proposal
    proposal = (pending["iteration"], pending["layer"]) if pending else None
    planned = None
    if state.start_layers and state.target_layers and state.start_layers > state.target_layers:
        planned = state.start_layers - state.target_layers
    fixed = bool(removed_by) and not iterations and set(removed_by.values()) == {"fixed"}
    return HeatmapData(
        layers, iterations, raw, removed_at, removed_by, proposal, proposed, metric, planned, partial, fixed
    )


NORMS = ("rank", "iteration", "global")
NORM_LABEL = {"iteration": "min-max per iteration", "global": "global min-max", "rank": "rank per iteration"}
