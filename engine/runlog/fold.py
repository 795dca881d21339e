"""Rebuild what a run looks like from its events: a plain fold, no UI.

The dashboard, ``ild ls`` and ``ild show`` all need the same answers to "where is this run?", "what
is its best aggregate?", "is it running, dead or just starting?", and they must be testable without
Textual, so the fold and those answers live here, once.

Two rules make the fold safe to replay and to resume:

* Per-iteration facts are keyed by ``(iteration, kind)`` (an eval also by its stage and part) and
  the last writer wins. A resumed engine re-emits the events after its last checkpoint; folding
  them again changes nothing if they repeat, and replaces the stale ones if the redone iteration
  went differently.
* A proposal is open only while no later decision or removal exists for its iteration, so
  replaying a settled decision never re-asks it.

Each event type has its handler in ``engine.runlog.handlers``. Every event is checked against the
registry (``engine.runlog.schema``) first: one whose fields have the wrong type is skipped and
counted in ``skipped``, so a bad line can never break a client. Unknown event types are ignored and
unknown fields are kept in the stored records (unread), so an
older dashboard can follow a newer engine.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from engine.runlog.handlers import HANDLERS as _HANDLERS
from engine.runlog.schema import REPORT, STAGES, is_valid

__all__ = ["LIVE_STATUSES", "OUTCOMES", "STARTING_GRACE_S", "RunState", "fold", "is_layer_key"]

OUTCOMES = ("finished", "failed", "stopped")
# What ``RunState.status`` says of a run whose engine holds its lock.
LIVE_STATUSES = ("running", "paused", "awaiting decision")
# A run directory this young with an empty log and a free lock is an engine that has not taken
# its lock yet, not a dead one.
STARTING_GRACE_S = 30.0


def is_layer_key(key: str) -> bool:
    """A map key naming a layer: a short string of ASCII digits."""
    return key.isascii() and key.isdigit() and len(key) < 7


@dataclass
class RunState:
    """Everything the log says about a run. Build it with ``fold`` or ``apply``.

    Fields marked ``compare=False`` (times, counters, the log tail) differ between a replay and a
    resume without meaning the run differs.
    """

    name: str | None = None
    model: str | None = None
    strategy: str | None = None
    outcome: str | None = None  # finished | failed | stopped, once the log says so
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
    removals: dict[int, dict] = field(default_factory=dict)
    importance: dict[int, dict] = field(default_factory=dict)
    proposals: dict[int, dict] = field(default_factory=dict)
    awaiting: dict[int, dict] = field(default_factory=dict)
    decisions: dict[int, dict] = field(default_factory=dict)
    evals: dict[tuple[int, str, str], dict] = field(default_factory=dict)  # (iteration, stage, part)
    checkpoints: dict[int, dict] = field(default_factory=dict)
    commands: dict[str, dict] = field(default_factory=dict)
    # An approve/override the engine applied to the open decision but has not carried out yet
    # (it was paused): {iteration, layer, name, by}. It settles the question: nobody is asked again.
    queued_decision: dict | None = None
    finished: dict | None = None
    failure: dict | None = None
    # A quality floor's rejected iteration: its removal and evals, kept apart from the final student's.
    rejected: dict = field(default_factory=dict)
    dir_mtime: float | None = field(default=None, compare=False)  # the run directory's (RunDir.mtime)
    last_event_t: float | None = field(default=None, compare=False)
    # Engine sessions: the seconds of those ended (engine_started .. their last event) and the
    # start of the latest, so a run's time between a stop and a resume is not counted as work.
    engine_closed_s: float = field(default=0.0, compare=False)
    session_start: float | None = field(default=None, compare=False)
    last_seq: int | None = field(default=None, compare=False)
    last_train: dict | None = field(default=None, compare=False)
    # Every healing step, kept only when asked for (a report's loss curves): nine events in ten of
    # a healing run are steps, and the dashboard's lists of runs must not hold them all.
    keep_train_steps: bool = field(default=False, compare=False)
    # (iteration, 1 for the final healing else 0, step)
    train_steps: dict[tuple[int, int, int], dict] = field(default_factory=dict, compare=False)
    events_seen: int = field(default=0, compare=False)
    skipped: int = field(default=0, compare=False)  # events dropped for wrong field types
    # Lines that are not one JSON object (garbage, binary, bad UTF-8): counted by the reader's tailer.
    unparsable: int = field(default=0, compare=False)
    # Why the log cannot be read at all (a directory, a FIFO, a link in its place), set by RunReader.
    unreadable: str | None = field(default=None, compare=False)
    logs: list[dict] = field(default_factory=list, compare=False)
    alerts: list[dict] = field(default_factory=list, compare=False)
    _order: dict[tuple[str, Any], int] = field(default_factory=dict, compare=False, repr=False)

    # -- where the run is ------------------------------------------------------------------------

    @property
    def removed(self) -> list[dict]:
        """Removed layers in iteration order: ``{iteration, layer, by, proposed}``."""
        out = []
        for it in sorted(self.removals):
            dec = self.decisions.get(it, {})
            out.append(
                {
                    "iteration": it,
                    "layer": self.removals[it]["layer"],
                    "by": dec.get("by"),
                    "proposed": dec.get("proposed"),
                }
            )
        return out

    @property
    def removed_layers(self) -> list[int]:
        return [self.removals[it]["layer"] for it in sorted(self.removals)]

    @property
    def layers(self) -> list[int]:
        """Original indices of the layers still present, in model order.

        The engine's ``remaining`` list of the latest removal is the truth when given; otherwise
        the start layers minus everything removed.
        """
        if self.removals:
            remaining = self.removals[max(self.removals)].get("remaining")
            if remaining is not None:
                return list(remaining)
        gone = set(self.removed_layers)
        return [i for i in self.initial_layers if i not in gone]

    @property
    def layers_now(self) -> int | None:
        return len(self.layers) if (self.removals or self.initial_layers) else self.start_layers

    @property
    def started(self) -> float | None:
        """When the run started (its run_started event)."""
        return self.run_info.get("t")

    @property
    def ended(self) -> bool:
        return self.outcome is not None

    def status(self, alive: bool | None, now: float) -> str:
        """running | paused | awaiting decision | finished | failed | stopped | died | starting | unknown | unreadable.

        The log's own end event wins; without one, a held lock (``alive``) means a live engine:
        paused (it applied a pause and no resume since), awaiting decision (a proposal is open),
        else running. A free lock means the engine died without saying so (SIGKILL, OOM, node
        lost) - unless the run directory is younger than ``STARTING_GRACE_S`` and the log still
        empty: then the engine has not taken its lock yet. ``alive=None`` (not checked yet) is
        unknown.
        """
        if self.unreadable is not None:
            return "unreadable"
        if self.outcome is not None:
            return self.outcome
        if alive is None:
            return "unknown"
        if alive:
            if self.paused:
                return "paused"
            if self.pending_proposal is not None:
                return "awaiting decision"
            return "running"
        if self.events_seen == 0 and self.dir_mtime is not None and now - self.dir_mtime < STARTING_GRACE_S:
            return "starting"
        return "died"

    def duration(self, now: float, alive: bool | None = False) -> float | None:
        """Seconds since the start: a live run counts to ``now``, an ended or dead one to its last event."""
        start, end = self.started, self._end(now, alive)
        if start is None or end is None:
            return None
        return max(0.0, end - start)

    def engine_time(self, now: float, alive: bool | None = False) -> float | None:
        """Seconds an engine was running the run: the sum over its sessions (from engine_started to
        the session's last event; a live one to ``now``). Unlike ``duration`` it leaves out the time
        between a stop or a crash and the resume; waiting for a person's decision counts."""
        start = self.session_start if self.session_start is not None else self.started
        end = self._end(now, alive)
        if start is None or end is None:
            return None
        return self.engine_closed_s + max(0.0, end - start)

    def _end(self, now: float, alive: bool | None) -> float | None:
        """Where the run's time stops: ``now`` while it is live, else its last event."""
        return now if alive and self.outcome is None else self.last_event_t

    @property
    def pending_proposal(self) -> dict | None:
        """The open proposal (merged with its awaiting_decision), or None.

        Open = a proposal or awaiting_decision for an iteration with no later decision or removal
        for that iteration, in a run that has not ended.
        """
        if self.outcome is not None:
            return None
        best = None
        for it in set(self.proposals) | set(self.awaiting):
            asked = max(self._order.get(("proposal", it), -1), self._order.get(("awaiting", it), -1))
            settled = max(
                self._order.get(("decision", it), -1),
                self._order.get(("removal", it), -1),
                self._order.get(("queued", it), -1),
            )
            if asked > settled and (best is None or it > best):
                best = it
        if best is None:
            return None
        return {**self.proposals.get(best, {}), **self.awaiting.get(best, {}), "iteration": best}

    @property
    def decision_queued(self) -> dict | None:
        """The decision the engine took from a person and has not carried out yet (it is paused),
        or None once its decision or removal is logged, the question is asked again or the run ended."""
        q = self.queued_decision
        if q is None or self.outcome is not None:
            return None
        it, order = q["iteration"], self._order
        queued = order.get(("queued", it), -1)
        later = max(
            order.get(("decision", it), -1),
            order.get(("removal", it), -1),
            order.get(("proposal", it), -1),
            order.get(("awaiting", it), -1),
        )
        return q if queued > later else None

    # -- scores ----------------------------------------------------------------------------------

    def teacher_eval(self, part: str = REPORT) -> dict | None:
        found = [k for k in self.evals if k[1] == "teacher" and k[2] == part]
        return self.evals[max(found, key=lambda k: self._order.get(("eval", k), -1))] if found else None

    def final_evals(self, part: str = REPORT) -> dict[int, dict]:
        """``{iteration: eval}`` of the model each iteration ended with, by iteration.

        An iteration's final eval is its last stage: after_final_healing (the last iteration's, with
        heal.final_tokens), else after_healing if there is one, else after_removal. The teacher is
        not an iteration.
        """
        finals: dict[int, tuple[int, dict]] = {}
        for (it, stage, p), rec in self.evals.items():
            if p != part or stage == "teacher":
                continue
            rank = STAGES.index(stage) if stage in STAGES else 0
            if it not in finals or rank > finals[it][0]:
                finals[it] = (rank, rec)
        return {it: rec for it, (_, rec) in sorted(finals.items())}

    def final_eval(self, part: str = REPORT) -> dict | None:
        """The final eval of the latest iteration that has one: the model as it stands (None before
        the first iteration is evaluated)."""
        finals = self.final_evals(part)
        return finals[max(finals)] if finals else None

    def retention(self, part: str = REPORT) -> float | None:
        """The latest final aggregate as a fraction of the teacher's (None while either is missing)."""
        final, teacher = self.final_eval(part), self.teacher_eval(part)
        if not final or not teacher or final["aggregate"] is None or not teacher["aggregate"]:
            return None
        return final["aggregate"] / teacher["aggregate"]

    def curve(self, part: str = REPORT) -> list[dict]:
        """The aggregate against layers removed (the paper's Figure 9): the teacher at 0, then each
        iteration's final eval, ``{removed, iteration, layers, params, aggregate}`` by ``removed``.

        ``removed`` is the teacher's depth minus the evaluated model's (its ``layers``), else the
        number of removals up to that iteration. An eval without an aggregate (a NaN) is left out.
        """
        order = {r["iteration"]: i + 1 for i, r in enumerate(self.removed)}
        points: dict[int, dict] = {}
        for it, rec in self.final_evals(part).items():
            if rec["aggregate"] is None:
                continue
            layers = rec.get("layers")
            removed = self.start_layers - layers if layers is not None and self.start_layers else order.get(it, it)
            points[removed] = {
                "removed": removed,
                "iteration": it,
                "layers": layers,
                "params": rec.get("params"),
                "aggregate": rec["aggregate"],
            }
        teacher = self.teacher_eval(part)
        if teacher is not None and teacher["aggregate"] is not None:
            points[0] = {
                "removed": 0,
                "iteration": 0,
                "layers": teacher.get("layers", self.start_layers),
                # run_started's count: runs before the fix logged the untied student's size here
                "params": self.start_params or teacher.get("params"),
                "aggregate": teacher["aggregate"],
            }
        return [points[k] for k in sorted(points)]

    def partial_layers(self, iteration: int) -> list[int]:
        """Layers ``iteration`` scored on part of the items only (racing stopped them early)."""
        rec = self.importance.get(iteration) or {}
        return [int(x) for x in rec.get("partial", ())]

    def train_curve(self) -> list[dict]:
        """Every healing step in ``(iteration, step)`` order (an iteration's final healing after its own); empty unless ``keep_train_steps``."""
        return [self.train_steps[k] for k in sorted(self.train_steps)]

    def best_aggregate(self, part: str = REPORT) -> float | None:
        """The best final aggregate of any iteration; the teacher's while no iteration has one."""
        values = [rec["aggregate"] for rec in self.final_evals(part).values() if rec["aggregate"] is not None]
        if values:
            return max(values)
        teacher = self.teacher_eval(part)
        return teacher["aggregate"] if teacher else None

    def eval_before(self, iteration: int | None, part: str = REPORT) -> dict | None:
        """The model's eval just before ``iteration``'s removal (None: now): the final eval of the
        latest earlier iteration, else the teacher's."""
        finals = self.final_evals(part)
        earlier = [it for it in finals if iteration is None or it < iteration]
        return finals[max(earlier)] if earlier else self.teacher_eval(part)

    def scores(self, iteration: int | None = None) -> dict[int, float | None]:
        """Importance scores ``{layer: score}`` for ``iteration`` (default: latest)."""
        if iteration is None and self.importance:
            iteration = max(self.importance)
        rec = self.importance.get(iteration)
        if not rec:
            return {}
        return {int(k): v for k, v in rec["scores"].items() if is_layer_key(k)}

    @property
    def last_checkpoint(self) -> dict | None:
        return self.checkpoints[max(self.checkpoints)] if self.checkpoints else None

    # -- folding ---------------------------------------------------------------------------------

    def apply(self, event: Any) -> bool:
        """Fold one event in; True if it was taken (a valid event of a known type). Never raises."""
        self.events_seen += 1
        kind = event.get("type") if type(event) is dict else None
        if type(kind) is not str:
            self.skipped += 1
            return False
        handler = _HANDLERS.get(kind)
        if handler is None:  # a newer engine's event
            return False
        if not is_valid(event):
            self.skipped += 1
            return False
        it = event.get("iteration")
        if it is not None:
            self.iteration = it
        handler(self, event, self.events_seen)  # before the clock moves on: a handler sees the previous event's time
        self.last_event_t = event["t"]
        self.last_seq = event["seq"]
        return True

    def _mark(self, kind: str, key: Any, n: int) -> None:
        self._order[(kind, key)] = n

    def _set_mode(self, mode: Any, seconds: Any = None) -> None:
        if isinstance(mode, str):
            self.mode = mode
            numeric = isinstance(seconds, (int, float)) and not isinstance(seconds, bool)
            self.mode_seconds = seconds if numeric else None


def fold(events: Iterable[Any], state: RunState | None = None) -> RunState:
    """Fold ``events`` into ``state`` (a new ``RunState`` if None) and return it."""
    state = state if state is not None else RunState()
    for ev in events:
        state.apply(ev)
    return state
