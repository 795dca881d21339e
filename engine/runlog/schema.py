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
    TypedDict,
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

Mode = Literal["manual", "auto", "auto-after"]
Stage = Literal["teacher", "after_removal", "after_healing", "after_final_healing"]
Part = Literal["select", "report"]
Decider = Literal["user", "auto", "timeout", "fixed"]
FinishReason = Literal["target", "stopped", "floor"]

MODES: tuple[str, ...] = get_args(Mode)
STAGES: tuple[str, ...] = get_args(Stage)
PARTS: tuple[str, ...] = get_args(Part)
SELECT, REPORT = PARTS
DECIDERS: tuple[str, ...] = get_args(Decider)
FINISH_REASONS: tuple[str, ...] = get_args(FinishReason)

# A score that may be missing: a NaN is written as null (strict JSON has no NaN).
Score = float | None
ByLayer = dict[str, Score]  # {"<original layer>": score}
ByTask = dict[str, Score]  # {task: score}


# -- the events -------------------------------------------------------------------------------


class EngineStarted(TypedDict, total=False):
    pid: Required[Annotated[int, "the engine's process id"]]
    host: Required[Annotated[str, "the host it runs on"]]
    resumed_from: Annotated[str | None, "the checkpoint it continues from, or null for a fresh start"]
    processes: Annotated[int, "engine processes (ranks) sharing the run, when more than one"]
    threads: Annotated[int, "CPU threads of each engine process"]


class RunStarted(TypedDict, total=False):
    name: Required[Annotated[str, "the run's name"]]
    model: Required[Annotated[str, "the model spec as given"]]
    model_version: Annotated[str | None, "what exactly was loaded (a file's digest, a Hub revision)"]
    strategy: Required[Annotated[str, "the strategy preset (engine/runlog/strategies.py)"]]
    importance: Annotated[str, "the importance metric in use"]
    start_layers: Required[Annotated[int, "decoder layers of the teacher"]]
    target_layers: Required[Annotated[int, "the run ends at this many layers"]]
    mode: Required[Annotated[Mode, "the decision mode at the start"]]
    mode_seconds: Annotated[float | None, "auto-after: how long the engine waits for a person"]
    params: Annotated[int, "the teacher's parameter count"]
    config: Annotated[dict[str, Any], "the resolved run configuration"]


class Phase(TypedDict, total=False):
    iteration: Required[Annotated[int, "the iteration (0 before the first removal)"]]
    phase: Required[Annotated[str, "loading, preparing, evaluating, scoring, healing, exporting"]]
    detail: Annotated[str, "what exactly"]
    done: Annotated[int, "progress: units done (a progress tick, not a new phase)"]
    total: Annotated[int, "progress: units in all"]


class Importance(TypedDict, total=False):
    iteration: Required[Annotated[int, "the iteration scored"]]
    metric: Required[Annotated[str, "task_drop, bi, angular, loss_nll, loss_kl, position or block_distance"]]
    scores: Required[Annotated[ByLayer, "{layer: score} for every remaining layer; lowest = least important"]]
    per_task: Annotated[dict[str, ByLayer], "task_drop: {task: {layer: task score with the layer skipped}}"]
    aggregates: Annotated[ByLayer, "task_drop: {layer: aggregate with the layer skipped}"]
    also: Annotated[dict[str, ByLayer], "other metrics computed on the way: {metric: {layer: score}}"]
    reused: Annotated[bool, "a one-shot strategy re-used its first scores"]
    partial: Annotated[list[int], "layers scored on part of the items only (racing stopped them early)"]
    items: Annotated[dict[str, int], "{layer: number of items scored}"]
    racing: Annotated[dict[str, Any], "racing: layer-forwards used and saved, rounds, the confidence bound"]
    block: Annotated[list[int], "block_distance: the contiguous block chosen for removal, in order"]
    block_distance: Annotated[ByLayer, "block_distance: {first layer of a block: distance of its input to its output}"]


class Candidate(TypedDict, total=False):
    layer: Required[Annotated[int, "original layer index"]]
    score: Annotated[Score, "its importance score"]
    tasks: Annotated[ByTask, "task_drop: {task: task score with the layer skipped}"]


class Proposal(TypedDict, total=False):
    iteration: Required[Annotated[int, "the iteration"]]
    layer: Required[Annotated[int, "the layer the engine proposes to remove"]]
    metric: Annotated[str, "the importance metric that ranked them"]
    candidates: Annotated[list[Candidate], "every remaining layer, least important first"]


class AwaitingDecision(TypedDict, total=False):
    iteration: Required[Annotated[int, "the iteration"]]
    layer: Required[Annotated[int, "the proposed layer"]]
    mode: Required[Annotated[Mode, "the decision mode"]]
    deadline: Annotated[float | None, "auto-after: unix time at which the proposal is taken"]
    remaining: Annotated[list[int], "the layers a person may choose from"]
    candidates: Annotated[list[int], "the first candidates, least important first"]


class Decision(TypedDict, total=False):
    iteration: Required[Annotated[int, "the iteration"]]
    layer: Required[Annotated[int, "the layer that goes"]]
    by: Required[Annotated[Decider, "who decided: a person, the engine, the auto-after clock, a fixed list"]]
    proposed: Annotated[int | None, "what the engine proposed (null for fixed removals)"]
    command_id: Annotated[str | None, "the command that decided it"]


class LayerRemoved(TypedDict, total=False):
    iteration: Required[Annotated[int, "the iteration"]]
    layer: Required[Annotated[int, "the removed layer"]]
    remaining: Annotated[list[int], "the layers left, in model order"]
    layers: Annotated[int, "how many are left"]
    params: Annotated[int, "the student's parameter count now"]
    bridge: Annotated[dict[str, Any], "a least-squares bridge replaced the layer: into, relative_residual, cosine, ..."]


class TrainStep(TypedDict, total=False):
    iteration: Required[Annotated[int, "the iteration being healed"]]
    step: Required[Annotated[int, "the optimiser step"]]
    steps: Annotated[int, "steps planned this iteration"]
    loss: Annotated[Score, "the total loss (= kl_term + mse_term)"]
    kl: Annotated[Score, "the KL divergence to the teacher, unweighted"]
    mse: Annotated[Score, "the hidden-state MSE, unweighted (relative to the teacher's mean square with mse_norm)"]
    kl_term: Annotated[Score, "the KL's weighted share of the loss"]
    mse_term: Annotated[Score, "the MSE's weighted share of the loss"]
    lr: Annotated[Score, "the learning rate"]
    grad_norm: Annotated[Score, "the gradient norm before clipping"]
    tokens_per_s: Annotated[Score, "training throughput"]
    heldout_loss: Annotated[Score, "an early-stopping check: the held-out distillation loss after this step"]
    stage: Annotated[Literal["final"], "a step of the final healing (heal.final_tokens); absent: the iteration's own"]


class Eval(TypedDict, total=False):
    iteration: Required[Annotated[int, "the iteration (0: the teacher)"]]
    stage: Required[Annotated[Stage, "which model was evaluated"]]
    part: Annotated[
        Part,
        "report (held-out items and the report suite; every headline number) or select "
        "(the items that chose the layers); absent in older runs: report",
    ]
    aggregate: Required[Annotated[Score, "the mean of the task scores"]]
    tasks: Required[Annotated[ByTask, "{task: score}"]]
    layers: Annotated[int, "layers of the evaluated model"]
    params: Annotated[int, "its parameter count"]
    heldout: Annotated[
        dict[str, ByTask],
        "after healing: the held-out distillation loss before and after ({loss, kl, mse, kl_term, "
        "mse_term, mse_raw} each; mse_raw: the MSE without mse_norm, absent in older runs)",
    ]
    healing: Annotated[
        ByTask,
        "after healing: the data it took: {tokens, start (its first token in the run's stream), "
        "data_tokens (what the data holds), epochs (passes over the data once it was done)}",
    ]


class Checkpoint(TypedDict, total=False):
    iteration: Required[Annotated[int, "the iteration"]]
    name: Required[Annotated[str, "its directory's name under checkpoints/"]]
    path: Annotated[str, "its path"]
    partial: Annotated[bool, "a mid-healing checkpoint"]
    step: Annotated[int, "partial: the healing step"]
    removed: Annotated[list[int], "the original layers removed so far, in order"]
    manifest_sha256: Annotated[
        str, "SHA-256 of its checkpoint.json: the log vouches for the manifest, which vouches for the tensors"
    ]


class Log(TypedDict, total=False):
    message: Required[Annotated[str, "the text"]]
    level: Annotated[str, "debug, info, warning or error (default info)"]
    iteration: Annotated[int, "the iteration"]


class Alert(TypedDict, total=False):
    message: Required[Annotated[str, "the text"]]
    level: Annotated[str, "warning or error (default warning)"]
    iteration: Annotated[int, "the iteration"]
    kind: Annotated[str, "e.g. stall"]


class CommandApplied(TypedDict, total=False):
    command_id: Required[Annotated[str, "the command's id"]]
    name: Required[Annotated[str, "approve, override, set_mode, pause, resume or stop"]]
    args: Required[Annotated[dict[str, Any], "its arguments"]]
    by: Annotated[str | None, "who sent it"]


class CommandRejected(TypedDict, total=False):
    command_id: Required[Annotated[str, "the command's id (its file name for an unreadable one)"]]
    name: Annotated[str | None, "its name, when it had one"]
    reason: Required[Annotated[str, "why"]]


class RunFinished(TypedDict, total=False):
    reason: Required[Annotated[FinishReason, "target layers reached, stopped by a person, or the retention floor"]]
    layers: Annotated[int, "layers of the final student"]
    params: Annotated[int, "its parameter count"]
    removed: Annotated[list[int], "the removed layers, in order"]
    export: Annotated[str | None, "where the exported model is"]
    iteration: Annotated[int, "the last iteration"]
    rejected: Annotated[dict[str, Any], "floor: the removal that fell below it {iteration, layer, aggregate}"]


class RunFailed(TypedDict, total=False):
    error: Required[Annotated[str, "what went wrong"]]
    hint: Annotated[str, "what to do about it"]
    iteration: Annotated[int, "the iteration"]


class Envelope(TypedDict):
    seq: Annotated[int, "0, 1, 2, ... with no gaps (set by the writer)"]
    t: Annotated[float, "unix time (set by the writer)"]
    type: Annotated[str, "the event type"]


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
