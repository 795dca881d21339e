"""The events of ``events.jsonl``: one registry that every writer and reader shares.

Each event type is a ``TypedDict`` (its fields, their JSON types, which are required, and a few
words on each) plus an ``EventSpec`` (what the event says, whether it is fsynced at once, and one
readable line for a person's event log). From this one registry:

* ``EventWriter.emit`` refuses an unknown type, an unknown field, a missing required field or a
  value of the wrong type, before anything is written;
* readers (``RunState.apply``, the headless view) check each event with ``problem``/``is_valid``
  and skip one whose fields have the wrong type, so one bad line never breaks a client; fields
  they do not know are ignored (an older client can follow a newer engine);
* ``describe`` gives the dashboard's event-log line;
* ``markdown`` writes docs/events.md (``python -m engine.runlog.schema > docs/events.md``).

Layers are always named by their *original* teacher index. JSON object keys are strings, so maps
keyed by layer (``scores``, ``per_task``, ...) have the layer index as a decimal string.
"""

import reprlib
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import (
    Annotated,
    Any,
    Literal,
    NotRequired,
    Required,
    Union,
    get_args,
    get_origin,
    get_type_hints,
    is_typeddict,
)

__all__ = [
    "DECIDERS",
    "EVENTS",
    "FINISH_REASONS",
    "MODES",
    "PARTS",
    "REPORT",
    "SELECT",
    "STAGES",
    "EventSpec",
    "describe",
    "is_valid",
    "markdown",
    "problem",
]

from .event_fields import (  # noqa: F401 - re-exported: the names every reader imports from here
    DECIDERS,
    FINISH_REASONS,
    MODES,
    PARTS,
    REPORT,
    SELECT,
    STAGES,
    Alert,
    AwaitingDecision,
    ByLayer,
    ByTask,
    Candidate,
    Checkpoint,
    CommandApplied,
    CommandRejected,
    Decider,
    Decision,
    EngineStarted,
    Envelope,
    Eval,
    FinishReason,
    Importance,
    LayerRemoved,
    Log,
    Mode,
    Part,
    Phase,
    Proposal,
    RunFailed,
    RunFinished,
    RunStarted,
    Score,
    Stage,
    TrainStep,
)

# -- one readable line per event ----------------------------------------------------------------


def _at(e: dict) -> str:
    return f"[{e['iteration']}] " if "iteration" in e else ""


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _least_important(e: dict) -> str:
    scored = sorted(((k, v) for k, v in e["scores"].items() if v is not None), key=lambda kv: kv[1])[:3]
    low = ", ".join(f"{k} ({v:.4g})" for k, v in scored)
    return f"{_at(e)}importance {e['metric']}{' (reused)' if e.get('reused') else ''}: least important {low}"


def _decision(e: dict) -> str:
    proposed = e.get("proposed")
    note = "" if proposed in (None, e["layer"]) else f", overriding proposed {proposed}"
    return f"{_at(e)}decision: remove layer {e['layer']} (by {e['by']}{note})"


def _removed(e: dict) -> str:
    params = e.get("params")
    n = e.get("layers", len(e["remaining"]) if "remaining" in e else "?")
    return f"{_at(e)}removed layer {e['layer']}: {n} layers" + (f", {params / 1e6:.1f}M params" if params else "")


def _eval(e: dict) -> str:
    part = " (select)" if e.get("part") == SELECT else ""
    return f"{_at(e)}eval {e['stage']}{part}: aggregate {_fmt(e['aggregate'])}"


def _applied(e: dict) -> str:
    args = "".join(f"{k}={v} " for k, v in e["args"].items())
    return f"command {e['name']} {args}applied"


def _finished(e: dict) -> str:
    """How the run ended, never "None layers" (a run stopped before the model loaded has no depth)."""
    stopped = e["reason"] == "stopped"
    head = "run stopped at a safe point" if stopped else f"run finished ({e['reason']})"
    if e.get("layers") is not None:
        head += f": {e['layers']} layers"
    elif not e.get("removed"):
        head += ": before any layer was removed"
    return head + ("; `ild resume` continues it" if stopped else "")


def _engine_started(e: dict) -> str:
    resumed = e.get("resumed_from")
    return f"engine started (pid {e['pid']} on {e['host']})" + (
        f", resumed from checkpoint {resumed}" if resumed else ""
    )


def _phase(e: dict) -> str | None:
    if "done" in e:  # a progress tick, not a new phase
        return None
    return f"{_at(e)}{e['phase']} {e.get('detail', '')}".rstrip()


# -- the registry -------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventSpec:
    name: str
    fields: type  # the TypedDict
    says: str  # what the event means, one line
    durable: bool  # fsynced at once: a person or a resumed engine acts on it
    level: str  # how an event log shows it: debug | info | notice | warning | error; "" = the event's own level
    wording: Callable[[dict], str | None] | None  # its event-log line; None: too chatty to show


# fmt: off
EVENTS: dict[str, EventSpec] = {s.name: s for s in (
    EventSpec("engine_started", EngineStarted, "an engine process took the run (a fresh start or a resume)",
              False, "info", _engine_started),
    EventSpec("run_started", RunStarted, "the run's identity, once, before anything else of the run",
              True, "info", lambda e: f"run {e['name']} started: {e['model']}, {e['strategy']}, "
                                      f"{e['start_layers']} -> {e['target_layers']} layers, mode {e['mode']}"),
    EventSpec("phase", Phase, "what the engine is doing now, and progress ticks within it",
              False, "debug", _phase),
    EventSpec("importance", Importance, "every remaining layer scored",
              False, "info", _least_important),
    EventSpec("proposal", Proposal, "the layer the engine would remove, with the ranked candidates",
              True, "notice", lambda e: f"{_at(e)}proposal: remove layer {e['layer']}"),
    EventSpec("awaiting_decision", AwaitingDecision, "the engine waits for a person (manual, auto-after)",
              True, "notice", lambda e: f"{_at(e)}awaiting a decision on layer {e['layer']} (mode {e['mode']})"),
    EventSpec("decision", Decision, "which layer goes, and who said so",
              True, "notice", _decision),
    EventSpec("layer_removed", LayerRemoved, "the layer is gone from the student",
              True, "info", _removed),
    EventSpec("train_step", TrainStep, "one healing step",
              False, "debug", None),
    EventSpec("eval", Eval, "a model evaluated on the suite",
              True, "info", _eval),
    EventSpec("checkpoint", Checkpoint, "what a resume needs is on disk",
              True, "debug", lambda e: f"{_at(e)}checkpoint {e['name']}"),
    EventSpec("log", Log, "a line for people",
              False, "", lambda e: f"{_at(e)}{e['message']}"),
    EventSpec("alert", Alert, "something needs attention (a stall, a non-finite loss)",
              False, "", lambda e: f"{_at(e)}{e['message']}"),
    EventSpec("command_applied", CommandApplied, "the answer to a command that took effect",
              True, "info", _applied),
    EventSpec("command_rejected", CommandRejected, "the answer to a command that did not",
              True, "warning", lambda e: f"command {e.get('name')} rejected: {e['reason']}"),
    EventSpec("run_finished", RunFinished, "the run ended by design",
              True, "notice", lambda e: _finished(e)),
    EventSpec("run_failed", RunFailed, "the run ended on an error",
              True, "error", lambda e: f"run failed: {e['error']}" + (f" — {e['hint']}" if e.get("hint") else "")),
)}
# fmt: on

_DEFAULT_LEVEL = {"log": "info", "alert": "warning"}


def describe(event: dict) -> tuple[str, str] | None:
    """``(level, text)`` of a *valid* event for a person's event log, or None for chatter."""
    spec = EVENTS[event["type"]]
    text = spec.wording(event) if spec.wording else None
    if text is None:
        return None
    return spec.level or event.get("level") or _DEFAULT_LEVEL[spec.name], text


# -- types -------------------------------------------------------------------------------------


def _plain(tp: Any) -> Any:
    """The JSON type under Required/NotRequired/Annotated."""
    while get_origin(tp) in (Required, NotRequired, Annotated):
        tp = get_args(tp)[0]
    return tp


def _doc(tp: Any) -> str:
    while get_origin(tp) in (Required, NotRequired):
        tp = get_args(tp)[0]
    return get_args(tp)[1] if get_origin(tp) is Annotated else ""


def _type_name(tp: Any) -> str:
    tp = _plain(tp)
    origin = get_origin(tp)
    if tp is Any:
        return "any JSON"
    if tp is type(None):
        return "null"
    if isinstance(tp, type) and not origin:
        return tp.__name__
    if origin is Literal:
        return " \\| ".join(f'"{a}"' for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        return f"list[{_type_name(get_args(tp)[0])}]"
    if origin is dict:
        k, v = get_args(tp)
        return f"{{{_type_name(k)}: {_type_name(v)}}}"
    return str(tp)


# -- checking ----------------------------------------------------------------------------------
# Each field compiles once into a test of its value. Scalar fields are tested by type alone, so an
# event whose fields are all scalar (train_step, phase: nearly every line of a long log) is
# checked by looking up its shape - its keys and their value types - in a cache.


def _compile(tp: Any) -> tuple[frozenset[type] | None, Callable[[Any], bool]]:
    """``(types, test)``: ``types`` is the set of value types when the type alone decides, else None."""
    tp = _plain(tp)
    if tp is Any:
        return None, lambda v: True
    if tp in (int, str, bool):
        return frozenset({tp}), lambda v, t=tp: type(v) is t
    if tp is float:
        # An int is a number too (JSON writes 1.0 as 1.0, but a hand-made event may say 1).
        return frozenset({float, int}), lambda v: type(v) is float or type(v) is int
    if tp is type(None):
        return frozenset({type(None)}), lambda v: v is None
    origin = get_origin(tp)
    if origin is Literal:
        allowed = frozenset(get_args(tp))
        return None, lambda v: type(v) is str and v in allowed
    if origin in (Union, types.UnionType):
        parts = [_compile(a) for a in get_args(tp)]
        tests = [test for _, test in parts]
        if all(ts is not None for ts, _ in parts):
            scalar = frozenset().union(*(ts for ts, _ in parts))
            return scalar, lambda v: type(v) in scalar
        return None, lambda v: any(test(v) for test in tests)
    if origin is list:
        _, item = _compile(get_args(tp)[0])
        return None, lambda v: type(v) is list and all(map(item, v))
    if origin is dict:
        _, value = _compile(get_args(tp)[1])
        return None, lambda v: type(v) is dict and all(type(k) is str for k in v) and all(map(value, v.values()))
    if is_typeddict(tp):
        check = _MappingCheck(tp)
        return None, lambda v: type(v) is dict and check.problem(v) is None
    raise TypeError(f"no JSON check for {tp!r}")


class _MappingCheck:
    """The compiled fields of one TypedDict."""

    def __init__(self, cls: type) -> None:
        hints = get_type_hints(cls, include_extras=True)
        self.required = frozenset(cls.__required_keys__)
        self.tests: dict[str, Callable[[Any], bool]] = {}
        self.names: dict[str, str] = {}
        self.scalar = True
        for name, tp in hints.items():
            types_, test = _compile(tp)
            self.tests[name] = test
            self.names[name] = _type_name(tp).replace(" \\|", " |")
            self.scalar &= types_ is not None
        self._shapes: dict[tuple, bool] = {}

    def problem(self, obj: dict) -> str | None:
        tests = self.tests
        for key, value in obj.items():
            test = tests.get(key)
            if test is not None and not test(value):
                return f"field {key!r} is not {self.names[key]} (got {_excerpt(value)})"
        missing = self.required.difference(obj)
        if missing:
            return f"missing field(s) {', '.join(sorted(missing))}"
        return None


def _excerpt(value: Any) -> str:
    """A short, printable picture of a value for an error message (never the whole of it)."""
    text = _SHORT.repr(value)
    return "".join(c if c.isprintable() else "?" for c in text)


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxdict, _SHORT.maxlist = 2, 3, 3
_SHORT.maxstring = _SHORT.maxother = _SHORT.maxlong = 30
_MAX_SHAPES = 4096


class _Compiled:
    """Every event type's fields compiled, and the envelope's."""

    def __init__(self) -> None:
        self.envelope = _MappingCheck(Envelope)
        self.events = {name: _MappingCheck(spec.fields) for name, spec in EVENTS.items()}


_compiled: _Compiled | None = None  # on first use: importing the registry (``ild --help`` does) stays cheap


def _checks() -> _Compiled:
    global _compiled
    if _compiled is None:
        _compiled = _Compiled()
    return _compiled


def problem(event: Any) -> str | None:
    """Why ``event`` is not a well-formed event, or None. An unknown type is a problem too."""
    if type(event) is not dict:
        return f"not a JSON object ({type(event).__name__})"
    kind = event.get("type")
    if type(kind) is not str or kind not in EVENTS:
        return f"unknown event type {kind!r}"[:120]
    c = _checks()
    return c.envelope.problem(event) or c.events[kind].problem(event)


def is_valid(event: dict) -> bool:
    """``problem(event) is None`` for a dict of a registered type, fast for the common scalar events."""
    c = _compiled or _checks()
    check = c.events[event["type"]]
    if check.scalar:
        shape = (tuple(event), tuple(map(type, event.values())))
        ok = check._shapes.get(shape)
        if ok is None:
            ok = c.envelope.problem(event) is None and check.problem(event) is None
            if len(check._shapes) < _MAX_SHAPES:
                check._shapes[shape] = ok
        return ok
    return c.envelope.problem(event) is None and check.problem(event) is None


def field_problem(kind: str, fields: dict) -> str | None:
    """The writer's check: an unknown field is refused as well as a wrong one."""
    check = _checks().events[kind]
    unknown = sorted(set(fields) - set(check.tests))
    if unknown:
        return (
            f"event {kind!r} has no field(s) {', '.join(unknown)}; "
            "add them to engine/runlog/schema.py (the contract every client reads)"
        )
    reason = check.problem(fields)
    return f"event {kind!r}: {reason}" if reason else None


# -- docs -------------------------------------------------------------------------------------


def _field_rows(cls: type) -> list[str]:
    hints = get_type_hints(cls, include_extras=True)
    rows = []
    for name, tp in hints.items():
        doc = _doc(tp)
        need = "yes" if name in cls.__required_keys__ else ""
        rows.append(f"| `{name}` | {_type_name(tp)} | {need} | {doc.replace('|', chr(92) + '|')} |")
    return rows


def markdown() -> str:
    """docs/events.md, generated from the registry (a test keeps the file current)."""
    out = [
        "# Events",
        "",
        "<!-- generated by `python -m engine.runlog.schema > docs/events.md`; do not edit by hand -->",
        "",
        "`events.jsonl` holds one JSON object a line. The writer (`engine.runlog.events.EventWriter`) refuses",
        "an unknown type, an unknown field, a missing required field or a value of the wrong type; readers skip",
        "(and count) an event whose fields have the wrong type and ignore fields they do not know. Layers are",
        "named by their original teacher index; maps keyed by layer use the index as a decimal string. A NaN",
        "or infinite number is written as `null`. *Durable* events are fsynced as soon as they are written.",
        "",
        "Every event carries:",
        "",
        "| field | type | required | meaning |",
        "|---|---|---|---|",
        *_field_rows(Envelope),
        "",
    ]
    for spec in EVENTS.values():
        out += [
            f"## `{spec.name}`",
            "",
            f"{spec.says[0].upper()}{spec.says[1:]}." + (" Durable." if spec.durable else ""),
            "",
            "| field | type | required | meaning |",
            "|---|---|---|---|",
            *_field_rows(spec.fields),
            "",
        ]
    out += [
        "## `Candidate` (in `proposal.candidates`)",
        "",
        "| field | type | required | meaning |",
        "|---|---|---|---|",
        *_field_rows(Candidate),
        "",
    ]
    return "\n".join(out)


if __name__ == "__main__":
    print(markdown(), end="")
