"""Rebuild what a run looks like from its events: a plain fold, no UI.

The dashboard, ``ild ls`` and ``ild show`` all need the same answer to "where
is this run?", and it must be testable without Textual, so the fold lives
here as plain Python.

Two rules make the fold safe to replay and to resume:

* Per-iteration facts are keyed by ``(iteration, kind)`` (an eval also by its
  stage) and the last writer wins. A resumed engine re-emits the events after
  its last checkpoint; folding them again changes nothing if they repeat, and
  replaces the stale ones if the redone iteration went differently.
* A proposal is open only while no later decision or removal exists for its
  iteration, so replaying a settled decision never re-asks it.

Unknown event types are ignored and unknown fields are kept in the stored
records, so an older dashboard can follow a newer engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

__all__ = ["RunState", "fold", "derive_status", "TERMINAL_STATUSES"]

TERMINAL_STATUSES = ("finished", "failed", "stopped")
_MAX_LOGS = 500


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _record(event: dict) -> dict:
    """The event as stored: everything but the writer's bookkeeping (seq, type)."""
    return {k: v for k, v in event.items() if k not in ("seq", "type")}


def _int_keys(d: Any) -> Any:
    """``{"3": x}`` -> ``{3: x}``: JSON object keys are strings, layers are ints."""
    if not isinstance(d, dict):
        return d
    out = {}
    for k, v in d.items():
        if isinstance(k, str) and k.lstrip("-").isdigit():
            k = int(k)
        out[k] = v
    return out


@dataclass
class RunState:
    """Everything the log says about a run. Build it with ``fold`` or ``apply``.

    Fields marked ``compare=False`` (times, counters, the log tail) differ
    between a replay and a resume without meaning the run differs.
    """

    name: str | None = None
    model: str | None = None
    strategy: str | None = None
    status: str = "running"  # running | finished | failed | stopped
    mode: str | None = None
    mode_seconds: float | None = None
    paused: bool = False
    phase: str | None = None
    iteration: int | None = None
    start_layers: int | None = None
    initial_layers: list[int] = field(default_factory=list)
    target_layers: int | None = None
    params: int | None = None
    start_params: int | None = None
    run_info: dict = field(default_factory=dict)  # the run_started record
    removals: dict[int | None, dict] = field(default_factory=dict)
    importance: dict[int | None, dict] = field(default_factory=dict)
    proposals: dict[int | None, dict] = field(default_factory=dict)
    awaiting: dict[int | None, dict] = field(default_factory=dict)
    decisions: dict[int | None, dict] = field(default_factory=dict)
    evals: dict[tuple[int | None, str], dict] = field(default_factory=dict)
    train: dict[tuple[int | None, Any], dict] = field(default_factory=dict)
    checkpoints: dict[int | None, dict] = field(default_factory=dict)
    commands: dict[str, dict] = field(default_factory=dict)
    finished: dict | None = None
    failure: dict | None = None
    last_event_t: float | None = field(default=None, compare=False)
    last_heartbeat_t: float | None = field(default=None, compare=False)
    last_seq: int | None = field(default=None, compare=False)
    events_seen: int = field(default=0, compare=False)
    logs: list[dict] = field(default_factory=list, compare=False)
    alerts: list[dict] = field(default_factory=list, compare=False)
    _order: dict[tuple[str, int | None], int] = field(default_factory=dict, compare=False, repr=False)

    # -- derived views -------------------------------------------------

    @property
    def removed(self) -> list[dict]:
        """Removed layers in iteration order: ``{iteration, layer, by, proposed}``."""
        out = []
        for it in sorted(self.removals, key=_sort_iter):
            rec = self.removals[it]
            dec = self.decisions.get(it, {})
            out.append(
                {
                    "iteration": it,
                    "layer": rec.get("layer"),
                    "by": rec.get("by", dec.get("by")),
                    "proposed": rec.get("proposed", dec.get("proposed")),
                }
            )
        return out

    @property
    def removed_layers(self) -> list[int]:
        return [r["layer"] for r in self.removed if r["layer"] is not None]

    @property
    def layers(self) -> list[int]:
        """Original indices of the layers still present, in model order.

        The engine's ``remaining`` list of the latest removal is the truth
        when given; otherwise the start layers minus everything removed.
        """
        if self.removals:
            latest = self.removals[max(self.removals, key=_sort_iter)]
            remaining = latest.get("remaining")
            if isinstance(remaining, list):
                return list(remaining)
        gone = set(self.removed_layers)
        return [i for i in self.initial_layers if i not in gone]

    @property
    def pending_proposal(self) -> dict | None:
        """The open proposal (merged with its awaiting_decision), or None.

        Open = a proposal or awaiting_decision for an iteration with no later
        decision or removal for that iteration, in a run that has not ended.
        """
        if self.status in TERMINAL_STATUSES:
            return None
        best = None
        for it in set(self.proposals) | set(self.awaiting):
            asked = max(self._order.get(("proposal", it), -1), self._order.get(("awaiting", it), -1))
            settled = max(self._order.get(("decision", it), -1), self._order.get(("removal", it), -1))
            if asked > settled and (best is None or _sort_iter(it) > _sort_iter(best)):
                best = it
        if best is None:
            return None
        return {**self.proposals.get(best, {}), **self.awaiting.get(best, {}), "iteration": best}

    def eval_series(self, stage: str | None = None) -> list[tuple[int | None, float | None]]:
        """``(iteration, aggregate)`` for one stage (all stages if None), by iteration."""
        pts = [
            (it, rec.get("aggregate"))
            for (it, st), rec in self.evals.items()
            if stage is None or st == stage
        ]
        return sorted(pts, key=lambda p: _sort_iter(p[0]))

    @property
    def latest_eval(self) -> dict | None:
        """The eval of the highest iteration (teacher evals count as before all)."""
        if not self.evals:
            return None
        key = max(self.evals, key=lambda k: (_sort_iter(k[0]), self._order.get(("eval", k), -1)))
        return self.evals[key]

    @property
    def teacher_eval(self) -> dict | None:
        for (_, stage), rec in self.evals.items():
            if stage == "teacher":
                return rec
        return None

    def scores(self, iteration: int | None = None) -> dict:
        """Importance scores ``{layer: score}`` for ``iteration`` (default: latest)."""
        if iteration is None and self.importance:
            iteration = max(self.importance, key=_sort_iter)
        rec = self.importance.get(iteration)
        return _int_keys(rec.get("scores")) if rec else {}

    @property
    def last_train(self) -> dict | None:
        if not self.train:
            return None
        return self.train[max(self.train, key=lambda k: self._order.get(("train", k), -1))]

    @property
    def last_checkpoint(self) -> dict | None:
        if not self.checkpoints:
            return None
        return self.checkpoints[max(self.checkpoints, key=_sort_iter)]

    # -- folding -------------------------------------------------------

    def apply(self, event: dict) -> "RunState":
        """Fold one event in; returns self so calls chain. Never raises on odd input."""
        if not isinstance(event, dict):
            return self
        self.events_seen += 1
        n = self.events_seen
        t = event.get("t")
        if isinstance(t, (int, float)) and not isinstance(t, bool):
            self.last_event_t = t
        seq = _int(event.get("seq"))
        if seq is not None:
            self.last_seq = seq
        handler = _HANDLERS.get(event.get("type"))
        if handler is None:
            return self
        it = _int(event.get("iteration"))
        if it is not None:
            self.iteration = it
        handler(self, event, it, n)
        return self

    def _mark(self, kind: str, key: Any, n: int) -> None:
        self._order[(kind, key)] = n

    def _set_mode(self, mode: Any, seconds: Any = None) -> None:
        if isinstance(mode, str):
            self.mode = mode
            self.mode_seconds = seconds if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) else None


def _sort_iter(it: Any) -> tuple[int, int]:
    """Order iterations with None (run-level, e.g. the teacher eval) first."""
    return (0, 0) if it is None else (1, it)


def _run_started(s: RunState, e: dict, it: int | None, n: int) -> None:
    s.run_info = _record(e)
    s.status = "running"
    s.finished = s.failure = None
    for attr in ("name", "model", "strategy"):
        if isinstance(e.get(attr), str):
            setattr(s, attr, e[attr])
    if s.name is None and isinstance(e.get("run_id"), str):
        s.name = e["run_id"]
    layers = e.get("layers")
    if isinstance(layers, list) and all(_int(x) is not None for x in layers):
        s.initial_layers = list(layers)
        s.start_layers = len(layers)
    elif _int(e.get("start_layers")) is not None:
        s.start_layers = e["start_layers"]
        s.initial_layers = list(range(s.start_layers))
    if _int(e.get("target_layers")) is not None:
        s.target_layers = e["target_layers"]
    if _int(e.get("params")) is not None:
        s.start_params = s.params = e["params"]
    s._set_mode(e.get("mode"), e.get("mode_seconds", e.get("seconds")))


def _engine_started(s: RunState, e: dict, it: int | None, n: int) -> None:
    s.status = "running"
    s.finished = s.failure = None
    s.paused = False
    s._set_mode(e.get("mode"), e.get("mode_seconds", e.get("seconds")))


def _phase(s: RunState, e: dict, it: int | None, n: int) -> None:
    if isinstance(e.get("phase"), str):
        s.phase = e["phase"]


def _importance(s: RunState, e: dict, it: int | None, n: int) -> None:
    s.importance[it] = _record(e)
    s._mark("importance", it, n)


def _proposal(s: RunState, e: dict, it: int | None, n: int) -> None:
    s.proposals[it] = _record(e)
    s._mark("proposal", it, n)


def _awaiting(s: RunState, e: dict, it: int | None, n: int) -> None:
    s.awaiting[it] = _record(e)
    s._mark("awaiting", it, n)
    s._set_mode(e.get("mode"), e.get("mode_seconds", e.get("seconds")))


def _decision(s: RunState, e: dict, it: int | None, n: int) -> None:
    s.decisions[it] = _record(e)
    s._mark("decision", it, n)


def _layer_removed(s: RunState, e: dict, it: int | None, n: int) -> None:
    s.removals[it] = _record(e)
    s._mark("removal", it, n)
    if _int(e.get("params")) is not None:
        s.params = e["params"]


def _train_step(s: RunState, e: dict, it: int | None, n: int) -> None:
    step = e.get("step")
    key = (it, step if step is not None else f"#{n}")
    s.train[key] = _record(e)
    s._mark("train", key, n)


def _eval(s: RunState, e: dict, it: int | None, n: int) -> None:
    stage = e.get("stage") if isinstance(e.get("stage"), str) else "eval"
    key = (it, stage)
    s.evals[key] = _record(e)
    s._mark("eval", key, n)


def _checkpoint(s: RunState, e: dict, it: int | None, n: int) -> None:
    s.checkpoints[it] = _record(e)


def _log(s: RunState, e: dict, it: int | None, n: int) -> None:
    s.logs.append(_record(e))
    if len(s.logs) > _MAX_LOGS:
        del s.logs[: len(s.logs) - _MAX_LOGS]


def _alert(s: RunState, e: dict, it: int | None, n: int) -> None:
    s.alerts.append(_record(e))
    if len(s.alerts) > _MAX_LOGS:
        del s.alerts[: len(s.alerts) - _MAX_LOGS]


def _heartbeat(s: RunState, e: dict, it: int | None, n: int) -> None:
    s.last_heartbeat_t = s.last_event_t
    if isinstance(e.get("phase"), str):
        s.phase = e["phase"]


def _command(s: RunState, e: dict, it: int | None, n: int) -> None:
    rec = _record(e)
    rec["applied"] = e.get("type") == "command_applied"
    cid = e.get("command_id")
    if isinstance(cid, str):
        s.commands[cid] = rec
    if not rec["applied"]:
        return
    name = e.get("name")
    args = e.get("args") if isinstance(e.get("args"), dict) else {}
    if name == "set_mode":
        s._set_mode(args.get("mode", e.get("mode")), args.get("seconds", e.get("seconds")))
    elif name == "pause":
        s.paused = True
    elif name == "resume":
        s.paused = False


def _run_finished(s: RunState, e: dict, it: int | None, n: int) -> None:
    s.finished = _record(e)
    s.status = "stopped" if e.get("reason") == "stopped" or e.get("stopped") is True else "finished"
    if _int(e.get("params")) is not None:
        s.params = e["params"]


def _run_failed(s: RunState, e: dict, it: int | None, n: int) -> None:
    s.failure = _record(e)
    s.status = "failed"


_HANDLERS = {
    "run_started": _run_started,
    "engine_started": _engine_started,
    "phase": _phase,
    "importance": _importance,
    "proposal": _proposal,
    "awaiting_decision": _awaiting,
    "decision": _decision,
    "layer_removed": _layer_removed,
    "train_step": _train_step,
    "eval": _eval,
    "checkpoint": _checkpoint,
    "log": _log,
    "alert": _alert,
    "heartbeat": _heartbeat,
    "command_applied": _command,
    "command_rejected": _command,
    "run_finished": _run_finished,
    "run_failed": _run_failed,
}


def fold(events: Iterable[dict], state: RunState | None = None) -> RunState:
    """Fold ``events`` into ``state`` (a new ``RunState`` if None) and return it."""
    state = state if state is not None else RunState()
    for ev in events:
        state.apply(ev)
    return state


def derive_status(state: RunState, alive: bool) -> str:
    """running | finished | failed | stopped | died.

    The log's own end event wins; without one, a held lock means running and
    a free lock means the engine died without saying so (SIGKILL, OOM, node
    lost). A run whose engine has not taken the lock yet also reads "died":
    callers that just launched one should allow it a moment.
    """
    if state.status in TERMINAL_STATUSES:
        return state.status
    return "running" if alive else "died"
