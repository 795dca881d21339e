"""What the dashboard draws, derived from a run's events: plain Python, no Textual.

``LiveModel`` wraps ``engine.runlog.fold.RunState`` (the one fold every client shares, so two
dashboards on one run agree) and adds what only a dashboard needs, kept incrementally so that a
run with 100,000 events stays cheap to follow:

* the loss series (one point per ``train_step``, last writer wins per ``(iteration, step)``);
* the event log lines (a bounded deque of the events a person reads);
* per-aspect versions, so each panel redraws only when its own data changed;
* the replies to commands this dashboard sent.

The view builders (``heatmap_view``, ``decision_view``, ``scores_view``) turn the state into
plain data for the widgets; tests exercise them without a terminal.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable

from engine.runlog.fold import RunState, derive_status

ASPECTS = ("header", "heatmap", "loss", "scores", "decision", "log")

_ASPECTS_OF: dict[str, tuple[str, ...]] = {
    "run_started": ("header", "heatmap", "scores", "decision", "log"),
    "engine_started": ("header", "log"),
    "phase": ("header",),
    "heartbeat": ("header",),
    "importance": ("heatmap", "log"),
    "proposal": ("heatmap", "decision", "log", "header"),
    "awaiting_decision": ("heatmap", "decision", "log", "header"),
    "decision": ("heatmap", "decision", "log", "header"),
    "layer_removed": ("heatmap", "decision", "log", "header"),
    "train_step": ("loss", "header"),
    "eval": ("scores", "decision", "log"),
    "checkpoint": ("header", "log"),
    "log": ("log",),
    "alert": ("log",),
    "command_applied": ("header", "decision", "log"),
    "command_rejected": ("decision", "log"),
    "run_finished": ("header", "decision", "log", "heatmap"),
    "run_failed": ("header", "decision", "log", "heatmap"),
}

LOSS_NAMES = ("loss", "kl", "mse")
STAGE_ORDER = ("teacher", "after_removal", "after_healing")


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _key_order(key: tuple) -> tuple:
    it, step = key
    return (-1 if it is None else it, step if isinstance(step, (int, float)) else math.inf)


class LossSeries:
    """Training losses in step order across iterations; x is the point's index."""

    def __init__(self) -> None:
        self.keys: list[tuple] = []
        self.iterations: list[int | None] = []
        self.values: dict[str, list[float]] = {n: [] for n in LOSS_NAMES}
        self.present: dict[str, bool] = {n: False for n in LOSS_NAMES}
        self.last: dict | None = None
        self.generation = 0  # bumps when points are replaced or re-sorted (caches restart)
        self._index: dict[tuple, int] = {}
        self._sorted = True
        self._bounds: tuple | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, event: dict, n: int) -> None:
        it = event.get("iteration")
        if type(it) is not int:
            it = None
        step = event.get("step")
        key = (it, step if type(step) in (int, float) else f"#{n}")
        loss, kl, mse = event.get("loss"), event.get("kl"), event.get("mse")
        # fast path: plain floats, as the engine writes them
        if type(loss) is not float or not math.isfinite(loss):
            loss = _num(loss)
        if type(kl) is not float or not math.isfinite(kl):
            kl = _num(kl)
        if type(mse) is not float or not math.isfinite(mse):
            mse = _num(mse)
        if loss is None and kl is not None and mse is not None:
            loss = kl + mse
        self.last = event
        values, present = self.values, self.present
        i = self._index.get(key)
        if i is not None:
            for name, v in (("loss", loss), ("kl", kl), ("mse", mse)):
                values[name][i] = math.nan if v is None else v
                present[name] |= v is not None
            self.generation += 1
            return
        if self.keys and _key_order(key) < _key_order(self.keys[-1]):
            self._sorted = False
        self._index[key] = len(self.keys)
        self.keys.append(key)
        self.iterations.append(it)
        nan = math.nan
        values["loss"].append(nan if loss is None else loss)
        values["kl"].append(nan if kl is None else kl)
        values["mse"].append(nan if mse is None else mse)
        if loss is not None:
            present["loss"] = True
        if kl is not None:
            present["kl"] = True
        if mse is not None:
            present["mse"] = True

    def ensure_sorted(self) -> None:
        if self._sorted:
            return
        order = sorted(range(len(self.keys)), key=lambda i: _key_order(self.keys[i]))
        self.keys = [self.keys[i] for i in order]
        self.iterations = [self.iterations[i] for i in order]
        for name in LOSS_NAMES:
            vs = self.values[name]
            self.values[name] = [vs[i] for i in order]
        self._index = {k: i for i, k in enumerate(self.keys)}
        self._sorted = True
        self.generation += 1

    def boundaries(self) -> list[tuple[int, int | None]]:
        """``(x, iteration)`` where each iteration's steps start (extended as points arrive)."""
        self.ensure_sorted()
        cache = self._bounds
        if cache is None or cache[0] != self.generation or cache[1] > len(self.iterations):
            cache = (self.generation, 0, [])
        _, done, out = cache
        prev: object = self.iterations[done - 1] if done else object()
        iterations = self.iterations
        for x in range(done, len(iterations)):
            it = iterations[x]
            if it != prev:
                out.append((x, it))
                prev = it
        self._bounds = (self.generation, len(iterations), out)
        return list(out)


def ema(values: list[float], alpha: float, start: int = 0, prev: tuple[float, float] | None = None,
        out: list[float] | None = None) -> tuple[list[float], tuple[float, float]]:
    """Debiased EMA (TensorBoard's fix for the bias toward the first value); NaNs pass through.

    ``prev``/``out`` continue a previous call from ``start`` so appending stays O(new points).
    Returns the smoothed list and the running ``(accumulator, weight)``.
    """
    acc, weight = prev if prev else (0.0, 0.0)
    out = out if out is not None else []
    for v in values[start:]:
        if v != v:  # NaN
            out.append(v)
            continue
        acc = alpha * acc + (1 - alpha) * v
        weight = alpha * weight + (1 - alpha)
        out.append(acc / weight if weight else v)
    return out, (acc, weight)


class Smoother:
    """Caches the smoothed copy of a series and extends it when points are appended."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple] = {}

    def get(self, series: LossSeries, name: str, alpha: float) -> list[float]:
        values = series.values[name]
        if alpha <= 0:
            return values
        cached = self._cache.get(name)
        if cached and cached[0] == (series.generation, alpha) and cached[1] <= len(values):
            _, done, out, run = cached
            if done < len(values):
                out, run = ema(values, alpha, done, run, out)
        else:
            out, run = ema(values, alpha)
        self._cache[name] = ((series.generation, alpha), len(values), out, run)
        return out


def bucket(values: list[float], n: int, lo: int = 0, hi: int | None = None) -> list[tuple[float, float, float] | None]:
    """Split ``values[lo:hi]`` into ``n`` buckets of ``(min, max, last)``; None where empty or all NaN.

    Full-resolution data in, one bucket per dot column out: min/max keep the noise band that
    plain subsampling would drop, and builtin min/max over list slices keep it fast.
    """
    hi = len(values) if hi is None else hi
    total = hi - lo
    out: list[tuple[float, float, float] | None] = []
    if total <= 0 or n <= 0:
        return [None] * max(n, 0)
    for b in range(n):
        a = lo + (b * total) // n
        z = lo + ((b + 1) * total) // n
        if z <= a:
            out.append(None)
            continue
        chunk = values[a:z]
        mn, mx = min(chunk), max(chunk)
        if mn != mn or mx != mx:  # NaN inside: filter the slow way
            chunk = [v for v in chunk if v == v]
            if not chunk:
                out.append(None)
                continue
            mn, mx = min(chunk), max(chunk)
        last = chunk[-1]
        if last != last:
            last = mx
        out.append((mn, mx, last))
    return out


# -- event log ---------------------------------------------------------------------------------

@dataclass
class LogLine:
    seq: int | None
    t: float | None
    kind: str
    level: str
    text: str


def _fmt(v: Any, digits: int = 4) -> str:
    v = _num(v)
    return "-" if v is None else f"{v:.{digits}f}"


def describe(event: dict) -> LogLine | None:
    """One readable line for an event, or None for the chatty ones (train steps, progress)."""
    kind = event.get("type")
    it = event.get("iteration")
    pre = f"[{it}] " if isinstance(it, int) and not isinstance(it, bool) else ""
    level = "info"
    if kind == "run_started":
        text = (f"run {event.get('name')} started: {event.get('model')}, {event.get('strategy')}, "
                f"{event.get('start_layers') or len(event.get('layers') or [])} -> {event.get('target_layers')} layers, "
                f"mode {event.get('mode')}")
    elif kind == "engine_started":
        resumed = event.get("resumed_from")
        text = f"engine started (pid {event.get('pid')} on {event.get('host')})" + (f", resumed from checkpoint {resumed}" if resumed else "")
    elif kind == "phase":
        if event.get("done") is not None:
            return None
        detail = event.get("detail") or ""
        text = f"{pre}{event.get('phase')} {detail}".rstrip()
        level = "debug"
    elif kind == "importance":
        scores = event.get("scores") or {}
        pairs = sorted(((k, _num(v)) for k, v in scores.items() if _num(v) is not None), key=lambda kv: kv[1])[:3]
        low = ", ".join(f"{k} ({v:.4g})" for k, v in pairs)
        text = f"{pre}importance {event.get('metric', '')}{' (reused)' if event.get('reused') else ''}: least important {low}"
    elif kind == "proposal":
        text = f"{pre}proposal: remove layer {event.get('layer')}"
        level = "notice"
    elif kind == "awaiting_decision":
        mode = event.get("mode")
        text = f"{pre}awaiting a decision on layer {event.get('layer')} (mode {mode})"
        level = "notice"
    elif kind == "decision":
        by = event.get("by")
        proposed = event.get("proposed")
        note = "" if proposed in (None, event.get("layer")) else f", overriding proposed {proposed}"
        text = f"{pre}decision: remove layer {event.get('layer')} (by {by}{note})"
        level = "notice"
    elif kind == "layer_removed":
        params = _num(event.get("params"))
        remaining = event.get("remaining")
        n = event.get("layers", len(remaining) if isinstance(remaining, list) else "?")
        text = f"{pre}removed layer {event.get('layer')}: {n} layers" + (f", {params / 1e6:.1f}M params" if params else "")
    elif kind == "eval":
        text = f"{pre}eval {event.get('stage')}: aggregate {_fmt(event.get('aggregate'))}"
    elif kind == "checkpoint":
        text = f"{pre}checkpoint {event.get('name')}"
        level = "debug"
    elif kind in ("log", "alert"):
        level = str(event.get("level") or ("warning" if kind == "alert" else "info"))
        text = f"{pre}{event.get('message')}"
    elif kind == "command_applied":
        text = f"command {event.get('name')} {_args(event.get('args'))}applied".replace("  ", " ")
    elif kind == "command_rejected":
        text = f"command {event.get('name')} rejected: {event.get('reason')}"
        level = "warning"
    elif kind == "run_finished":
        text = f"run finished ({event.get('reason')}): {event.get('layers')} layers"
        level = "notice"
    elif kind == "run_failed":
        text = f"run failed: {event.get('error')}" + (f" — {event['hint']}" if event.get("hint") else "")
        level = "error"
    else:
        return None
    seq = event.get("seq")
    return LogLine(seq if isinstance(seq, int) else None, _num(event.get("t")), str(kind), level, text)


def _args(args: Any) -> str:
    if not isinstance(args, dict) or not args:
        return ""
    return " ".join(f"{k}={v}" for k, v in args.items()) + " "


# -- the model -------------------------------------------------------------------------------

@dataclass
class SentCommand:
    id: str
    name: str
    args: dict
    t: float
    iteration: int | None = None


class LiveModel:
    """RunState plus the dashboard's incremental extras. Feed it with ``apply``."""

    def __init__(self, log_lines: int = 1000) -> None:
        self.state = RunState()
        self.loss = LossSeries()
        self.lines: deque[LogLine] = deque(maxlen=log_lines)
        self.lines_added = 0  # total ever appended (the log pane writes the new ones)
        self.versions: dict[str, int] = {a: 0 for a in ASPECTS}
        self.sent: dict[str, SentCommand] = {}
        self.replies: list[dict] = []  # replies to this dashboard's commands, not yet shown
        self._last_phase: tuple | None = None
        self.phase_event: dict | None = None

    def apply(self, events: Iterable[dict]) -> set[str]:
        """Fold events in; return the aspects that changed."""
        kinds: set[str] = set()
        state = self.state
        state_apply = state.apply
        loss_add = self.loss.add
        lines = self.lines
        for ev in events:
            state_apply(ev)
            kind = ev.get("type") if isinstance(ev, dict) else None
            if kind == "train_step":  # nine events in ten on a healing run: keep this path short
                loss_add(ev, state.events_seen)
                kinds.add(kind)
                continue
            if kind not in _ASPECTS_OF:
                continue
            kinds.add(kind)
            if kind == "phase":
                self.phase_event = ev
                key = (ev.get("iteration"), ev.get("phase"), ev.get("detail"))
                if ev.get("done") is not None or key == self._last_phase:
                    continue
                self._last_phase = key
            line = describe(ev)
            if line is not None:
                lines.append(line)
                self.lines_added += 1
            if kind in ("command_applied", "command_rejected"):
                cid = ev.get("command_id")
                if isinstance(cid, str) and cid in self.sent:
                    self.replies.append(ev)
        changed: set[str] = set()
        for kind in kinds:
            changed.update(_ASPECTS_OF[kind])
        for a in changed:
            self.versions[a] += 1
        return changed

    def note_sent(self, command_id: str, name: str, args: dict, t: float) -> None:
        pending = self.state.pending_proposal
        self.sent[command_id] = SentCommand(command_id, name, args, t, pending.get("iteration") if pending else None)
        self.versions["decision"] += 1

    def phase_detail(self) -> str | None:
        ev = self.phase_event
        if not ev:
            return None
        detail = str(ev.get("detail") or "")
        done, total = ev.get("done"), ev.get("total")
        if isinstance(done, int) and isinstance(total, int) and total:
            detail = f"{detail} {done}/{total}".strip()
        return detail or None

    def take_replies(self) -> list[dict]:
        out, self.replies = self.replies, []
        return out

    def awaiting_reply(self) -> SentCommand | None:
        """The newest decision command this dashboard sent that the engine has not answered yet."""
        pending = self.state.pending_proposal
        for cmd in reversed(list(self.sent.values())):
            if cmd.name not in ("approve", "override"):
                continue
            if cmd.id in self.state.commands:
                return None
            if pending is not None and cmd.iteration == pending.get("iteration"):
                return cmd
            return None
        return None


# -- views ------------------------------------------------------------------------------------

def status_of(state: RunState, alive: bool | None, young: bool = False) -> str:
    """running | finished | failed | stopped | died | starting | unknown (liveness not checked yet).

    ``young``: the run directory was made moments ago, so a free lock and an empty log mean an
    engine that has not taken its lock yet, not a dead one.
    """
    if alive is None and state.status not in ("finished", "failed", "stopped"):
        return "unknown"
    status = derive_status(state, bool(alive))
    if status == "died" and young and state.events_seen == 0:
        return "starting"
    return status


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
    iterations = sorted(k for k in state.importance if isinstance(k, int))
    raw: list[dict[int, float]] = []
    seen: set[int] = set()
    metric = None
    for it in iterations:
        rec = state.importance[it]
        metric = rec.get("metric", metric)
        col: dict[int, float] = {}
        for k, v in (rec.get("scores") or {}).items():
            try:
                layer = int(k)
            except (TypeError, ValueError):
                continue
            f = _num(v)
            if f is not None:
                col[layer] = f
                seen.add(layer)
        raw.append(col)
    layers = list(state.initial_layers) or sorted(seen)
    extra = sorted(seen - set(layers))
    layers += extra
    removed_at, removed_by = {}, {}
    for r in state.removed:
        if isinstance(r.get("layer"), int):
            removed_at[r["layer"]] = r["iteration"]
            removed_by[r["layer"]] = r.get("by") or ""
    proposed = {}
    for it, rec in state.proposals.items():
        if isinstance(it, int) and isinstance(rec.get("layer"), int):
            proposed[it] = rec["layer"]
    pending = state.pending_proposal
    proposal = None
    if pending and isinstance(pending.get("layer"), int):
        proposal = (pending["iteration"], pending["layer"])
    planned = None
    if state.start_layers and state.target_layers and state.start_layers > state.target_layers:
        planned = state.start_layers - state.target_layers
    return HeatmapData(layers, iterations, raw, removed_at, removed_by, proposal, proposed, metric, planned)


def eval_before(state: RunState, iteration: int | None) -> dict | None:
    """The model's scores just before ``iteration``'s removal: the previous iteration's last eval."""
    best = None
    best_key = None
    for (it, stage), rec in state.evals.items():
        it_n = -1 if it is None else it
        if iteration is not None and stage != "teacher" and it_n >= iteration:
            continue
        rank = STAGE_ORDER.index(stage) if stage in STAGE_ORDER else 1
        key = (0 if stage == "teacher" else 1, it_n, rank)
        if best_key is None or key > best_key:
            best, best_key = rec, key
    return best


@dataclass
class Candidate:
    rank: int
    layer: int
    score: float | None
    aggregate: float | None  # aggregate with the layer skipped, when known
    delta: float | None  # aggregate change vs before this iteration
    task_deltas: dict[str, float]  # task -> score with the layer skipped minus score before
    proposed: bool


@dataclass
class DecisionData:
    iteration: int
    layer: int | None
    mode: str | None
    deadline: float | None
    metric: str | None
    candidates: list[Candidate]
    tasks: list[str]


def decision_view(state: RunState) -> DecisionData | None:
    pending = state.pending_proposal
    if not pending:
        return None
    it = pending.get("iteration")
    layer = pending.get("layer") if isinstance(pending.get("layer"), int) else None
    before = eval_before(state, it)
    base_tasks = (before or {}).get("tasks") or {}
    base_agg = _num((before or {}).get("aggregate"))
    imp = state.importance.get(it) or {}
    aggregates = imp.get("aggregates") or {}
    per_task = imp.get("per_task") or {}
    # The proposal's candidates carry scores and per-task results; awaiting_decision may repeat
    # them as bare layer numbers (and wins the merge in pending_proposal), so prefer the former.
    cands: list[dict] = []
    for source in ((state.proposals.get(it) or {}).get("candidates"), pending.get("candidates")):
        if isinstance(source, list) and source and all(isinstance(c, dict) for c in source):
            cands = list(source)
            break
    if not cands:  # no ranked list given: rank the importance scores
        scores = state.scores(it)
        cands = [{"layer": k, "score": v} for k, v in sorted(scores.items(), key=lambda kv: (kv[1], kv[0]))]
        if not cands and isinstance(pending.get("candidates"), list):
            cands = [{"layer": c} for c in pending["candidates"] if isinstance(c, int)]
    tasks: list[str] = list(base_tasks)
    out: list[Candidate] = []
    for i, c in enumerate(cands):
        lay = c.get("layer")
        if not isinstance(lay, int):
            try:
                lay = int(lay)
            except (TypeError, ValueError):
                continue
        skipped = c.get("tasks") if isinstance(c.get("tasks"), dict) else None
        if skipped is None and per_task:
            skipped = {t: m.get(str(lay)) for t, m in per_task.items() if isinstance(m, dict) and str(lay) in m}
        skipped = skipped or {}
        for t in skipped:
            if t not in tasks:
                tasks.append(t)
        deltas = {}
        for t, v in skipped.items():
            b, s = _num(base_tasks.get(t)), _num(v)
            if b is not None and s is not None:
                deltas[t] = s - b
        agg = _num(c.get("aggregate"))
        if agg is None:
            agg = _num(aggregates.get(str(lay)))
        if agg is None and skipped:
            vals = [_num(v) for v in skipped.values()]
            vals = [v for v in vals if v is not None]
            agg = sum(vals) / len(vals) if vals else None
        delta = agg - base_agg if agg is not None and base_agg is not None else None
        out.append(Candidate(i + 1, lay, _num(c.get("score")), agg, delta, deltas, lay == layer))
    deadline = _num(pending.get("deadline"))
    return DecisionData(it, layer, pending.get("mode") or state.mode, deadline, pending.get("metric") or imp.get("metric"), out, tasks)


@dataclass
class ScoresData:
    teacher: float | None
    teacher_tasks: dict[str, float]
    removal: list[tuple[int, float]]  # (iteration, aggregate) after removal
    healing: list[tuple[int, float]]  # after healing
    best_path: list[tuple[int, float]]  # the model each iteration ended with
    latest: dict | None
    latest_label: str
    tasks: list[str]


def scores_view(state: RunState) -> ScoresData:
    teacher = state.teacher_eval or {}
    removal, healing = [], []
    final: dict[int, tuple[int, float]] = {}
    for (it, stage), rec in state.evals.items():
        agg = _num(rec.get("aggregate"))
        if agg is None or not isinstance(it, int):
            continue
        if stage == "after_removal":
            removal.append((it, agg))
        elif stage == "after_healing":
            healing.append((it, agg))
        else:
            continue
        rank = 2 if stage == "after_healing" else 1
        if it not in final or rank > final[it][0]:
            final[it] = (rank, agg)
    removal.sort()
    healing.sort()
    path = [(it, v) for it, (_, v) in sorted(final.items())]
    t_agg = _num(teacher.get("aggregate"))
    if t_agg is not None:
        path = [(0, t_agg)] + [p for p in path if p[0] != 0]
    latest = eval_before(state, None)
    label = "-"
    if latest is not None:
        for (it, stage), rec in state.evals.items():
            if rec is latest:
                label = "teacher" if stage == "teacher" else f"iter {it} {stage.replace('_', ' ')}"
    tasks: list[str] = list(teacher.get("tasks") or {})
    for rec in state.evals.values():
        for t in rec.get("tasks") or {}:
            if t not in tasks:
                tasks.append(t)
    return ScoresData(t_agg, dict(teacher.get("tasks") or {}), removal, healing, path, latest, label, tasks)
