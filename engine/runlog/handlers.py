"""How each event type changes a ``RunState`` (``engine.runlog.fold``): one handler a type.

A handler gets the state, the (already validated) event and its number in the fold, which orders
facts of different kinds (``RunState._order``). Per-iteration facts are keyed so that the last
writer wins (see the fold's docstring).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.runlog.jsonsafe import printable
from engine.runlog.schema import REPORT

if TYPE_CHECKING:
    from engine.runlog.fold import RunState

_MAX_LOGS = 500  # lines of log and alerts a state keeps


def record(event: dict) -> dict:
    """The event as stored: everything but the writer's bookkeeping (seq, type)."""
    return {k: v for k, v in event.items() if k != "seq" and k != "type"}


def _run_started(s: RunState, e: dict, n: int) -> None:
    s.run_info = record(e)
    s.outcome = s.finished = s.failure = None
    # Shown on terminals: never a control character from a copied log (engine.runlog.jsonsafe).
    s.name, s.model, s.strategy = printable(e["name"]), printable(e["model"]), printable(e["strategy"])
    s.start_layers = e["start_layers"]
    s.initial_layers = list(range(s.start_layers))
    s.target_layers = e["target_layers"]
    if "params" in e:
        s.start_params = s.params = e["params"]
    s._set_mode(e["mode"], e.get("mode_seconds"))


def _engine_started(s: RunState, e: dict, n: int) -> None:
    s.outcome = s.finished = s.failure = None
    s.paused = False
    # The session before this one ended at its last event.
    previous = s.session_start if s.session_start is not None else s.started
    if previous is not None and s.last_event_t is not None:
        s.engine_closed_s += max(0.0, s.last_event_t - previous)
    s.session_start = e["t"]


def _phase(s: RunState, e: dict, n: int) -> None:
    s.phase = e["phase"]


def _keyed(attr: str, mark: str):
    def handler(s: RunState, e: dict, n: int) -> None:
        getattr(s, attr)[e["iteration"]] = record(e)
        s._mark(mark, e["iteration"], n)

    return handler


def _awaiting(s: RunState, e: dict, n: int) -> None:
    _keyed("awaiting", "awaiting")(s, e, n)
    s._set_mode(e["mode"])  # the event names the mode, not the wait


def _layer_removed(s: RunState, e: dict, n: int) -> None:
    _keyed("removals", "removal")(s, e, n)
    if "params" in e:
        s.params = e["params"]


def _train_step(s: RunState, e: dict, n: int) -> None:
    s.last_train = e
    if s.keep_train_steps:  # last writer wins: a resumed engine re-emits the steps it redoes
        s.train_steps[(e["iteration"], int(e.get("stage") == "final"), e["step"])] = record(e)


def _eval(s: RunState, e: dict, n: int) -> None:
    key = (e["iteration"], e["stage"], e.get("part", REPORT))
    s.evals[key] = record(e)
    s._mark("eval", key, n)


def _checkpoint(s: RunState, e: dict, n: int) -> None:
    s.checkpoints[e["iteration"]] = record(e)


def _bounded(attr: str):
    def handler(s: RunState, e: dict, n: int) -> None:
        lines = getattr(s, attr)
        lines.append(record(e))
        if len(lines) > _MAX_LOGS:
            del lines[: len(lines) - _MAX_LOGS]

    return handler


def _command(s: RunState, e: dict, n: int) -> None:
    rec = record(e)
    rec["applied"] = e["type"] == "command_applied"
    s.commands[e["command_id"]] = rec
    if not rec["applied"]:
        return
    name, args = e["name"], e["args"]
    if name in ("approve", "override"):
        # The engine applies a decision only to the question it has open; a paused engine carries
        # it out when resumed, but the question is answered now.
        pending = s.pending_proposal
        if pending is not None:
            layer = args.get("layer")
            it = pending["iteration"]
            s.queued_decision = {
                "iteration": it,
                "layer": layer if layer is not None else pending.get("layer"),
                "name": name,
                "by": e.get("by"),
            }
            s._mark("queued", it, n)
        return
    if name == "set_mode":
        s._set_mode(args.get("mode"), args.get("seconds"))
    elif name == "pause":
        s.paused = True
    elif name == "resume":
        s.paused = False


def _run_finished(s: RunState, e: dict, n: int) -> None:
    s.finished = record(e)
    s.outcome = "stopped" if e["reason"] == "stopped" else "finished"
    rejected = e.get("rejected") or {}
    if e["reason"] == "floor" and isinstance(rejected.get("iteration"), int):
        # The student of that iteration fell below the floor and is not the answer: every view of
        # the run (layers, final and best aggregate) is of the student that was kept.
        it = rejected["iteration"]
        s.rejected = {
            "iteration": it,
            "removal": s.removals.pop(it, None),
            "decision": s.decisions.pop(it, None),
            "evals": {k: s.evals.pop(k) for k in [k for k in s.evals if k[0] == it]},
        }
    if "params" in e:
        s.params = e["params"]


def _run_failed(s: RunState, e: dict, n: int) -> None:
    s.failure = record(e)
    s.outcome = "failed"


HANDLERS = {
    "run_started": _run_started,
    "engine_started": _engine_started,
    "phase": _phase,
    "importance": _keyed("importance", "importance"),
    "proposal": _keyed("proposals", "proposal"),
    "awaiting_decision": _awaiting,
    "decision": _keyed("decisions", "decision"),
    "layer_removed": _layer_removed,
    "train_step": _train_step,
    "eval": _eval,
    "checkpoint": _checkpoint,
    "log": _bounded("logs"),
    "alert": _bounded("alerts"),
    "command_applied": _command,
    "command_rejected": _command,
    "run_finished": _run_finished,
    "run_failed": _run_failed,
}
