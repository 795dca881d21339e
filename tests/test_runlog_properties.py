"""No input makes the readers raise: the event tailer, the fold (and the views drawn from it), the
command parser. Property-based (Hypothesis): arbitrary bytes, arbitrary JSON values, nested
structures, and events built from the registry's own types with values that are valid, odd, or wrong."""

import json
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints, is_typeddict

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.runlog import schema
from engine.runlog.fold import RunState, fold
from engine.runlog.inbox import Command, CommandInbox, MalformedCommand, _load, validate_command
from engine.runlog.layout import create
from engine.runlog.tailer import EventTailer, read_all

SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=6)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4) | st.sampled_from("0123"), inner, max_size=4)
    ),
    max_leaves=12,
)
LAYER_KEYS = st.sampled_from(["0", "1", "2", "3", "4", "12", "lm", "", "-1", "٣"])


def _from_type(tp: Any) -> st.SearchStrategy:
    """Values of a registry type: mostly valid, small, and colliding often (few layers, few iterations)."""
    tp = schema._plain(tp)
    origin = get_origin(tp)
    if tp is Any:
        return json_values
    if tp is int:
        return st.integers(0, 5)
    if tp is float:
        return st.floats(-1, 2, allow_nan=False) | st.integers(0, 1)
    if tp is str:
        return st.sampled_from(["a", "lm", "3", "task_drop", "iterative-distill", "nope"])
    if tp is bool:
        return st.booleans()
    if tp is type(None):
        return st.none()
    if origin is Literal:
        return st.sampled_from(get_args(tp))
    if origin in (Union, types.UnionType):
        return st.one_of([_from_type(a) for a in get_args(tp)])
    if origin is list:
        return st.lists(_from_type(get_args(tp)[0]), max_size=5)
    if origin is dict:
        return st.dictionaries(LAYER_KEYS, _from_type(get_args(tp)[1]), max_size=5)
    if is_typeddict(tp):
        return _mapping(tp)
    raise TypeError(tp)


def _mapping(cls) -> st.SearchStrategy:
    hints = get_type_hints(cls, include_extras=True)
    required = {k: _from_type(v) for k, v in hints.items() if k in cls.__required_keys__}
    optional = {k: _from_type(v) for k, v in hints.items() if k not in cls.__required_keys__}
    return st.fixed_dictionaries(required, optional=optional)


valid_events = st.one_of(
    [
        st.builds(lambda fields, kind=kind: {"type": kind, **fields}, _mapping(spec.fields))
        for kind, spec in schema.EVENTS.items()
    ]
)
# A registry field given a value of any JSON type: what a buggy or hostile writer could leave.
wrong_events = st.builds(
    lambda event, key, value: {**event, key: value},
    valid_events,
    st.sampled_from(
        [
            "iteration",
            "layer",
            "stage",
            "aggregate",
            "scores",
            "candidates",
            "by",
            "mode",
            "command_id",
            "args",
            "remaining",
            "tasks",
            "reason",
            "partial",
            "items",
        ]
    ),
    json_values,
)
any_events = st.one_of(
    valid_events,
    wrong_events,
    json_values,
    st.dictionaries(st.sampled_from(["type", "seq", "t", "iteration"]), json_values),
)


def _log(events: list) -> list:
    """Give each dict the envelope a real log has (seq, t), unless it is junk anyway."""
    out = []
    for i, e in enumerate(events):
        if isinstance(e, dict) and isinstance(e.get("type"), str) and e["type"] in schema.EVENTS:
            e = {"seq": i, "t": 1000.0 + i, **e}
        out.append(e)
    return out


def _views(state: RunState) -> None:
    """Everything a client asks of a folded state."""
    from ild_tui.live.decision import decision_view
    from ild_tui.live.heatmap import heatmap_view
    from ild_tui.live.inspector import inspect_text
    from ild_tui.live.scores import scores_view
    from ild_tui.runs import summarise_state
    from ild_tui.screens.compare import ComparedRun

    for alive in (None, False, True):
        state.status(alive, 2000.0)
        state.duration(2000.0, alive)
        summarise_state(Path("r"), state, alive, 2000.0)
    for part in schema.PARTS:
        state.best_aggregate(part)
        state.final_evals(part)
        state.eval_before(None, part)
        state.eval_before(3, part)
    _ = state.layers, state.layers_now, state.removed, state.pending_proposal, state.last_checkpoint, state.scores()
    hm = heatmap_view(state)
    for norm in ("rank", "iteration", "global"):
        hm.normalised(norm)
    for layer in [*hm.layers[:3], None]:
        for it in [*hm.iterations[:3], None]:
            inspect_text(state, layer, it)
    decision_view(state)
    scores_view(state)
    ComparedRun("r", "r", state, "died").curve()


@SETTINGS
@given(st.lists(any_events, max_size=25))
def test_fold_and_views_never_raise(events):
    from ild_tui.live.model import LiveModel

    events = _log(events)
    state = fold(events)
    assert state.events_seen == len(events)
    _views(state)
    model = LiveModel()
    model.apply(events)
    assert model.state == state


@SETTINGS
@given(st.lists(valid_events, max_size=25))
def test_valid_events_fold_to_consistent_answers(events):
    events = _log(events)
    state = fold(events)
    assert state.skipped == 0
    finals = state.final_evals()
    values = [r["aggregate"] for r in finals.values() if r["aggregate"] is not None]
    teacher = state.teacher_eval()
    assert state.best_aggregate() == (max(values) if values else (teacher["aggregate"] if teacher else None))
    assert all(r["stage"] in ("after_removal", "after_healing", "after_final_healing") for r in finals.values())
    if state.outcome is not None:
        assert state.pending_proposal is None
    _views(state)


@SETTINGS
@given(st.lists(valid_events, max_size=8))
def test_the_writer_accepts_what_readers_accept(tmp_path_factory, events):
    from engine.runlog.events import EventWriter

    path = tmp_path_factory.mktemp("w") / "events.jsonl"
    with EventWriter(path) as w:
        for e in events:
            w.emit(e["type"], **{k: v for k, v in e.items() if k != "type"})
    back = read_all(path)
    assert [e["type"] for e in back] == [e["type"] for e in events]
    assert all(schema.problem(e) is None for e in back)


@SETTINGS
@given(
    st.lists(st.binary(max_size=200) | st.builds(lambda v: json.dumps(v).encode(), json_values), max_size=12),
    st.integers(1, 50),
)
def test_tailer_never_raises_on_any_bytes(tmp_path_factory, chunks, cut):
    path = tmp_path_factory.mktemp("t") / "events.jsonl"
    data = b"\n".join(chunks)
    tailer = EventTailer(path)
    got = []
    with open(path, "wb") as f:  # arriving in pieces, as a writer's appends do
        for i in range(0, len(data) + 1, cut):
            f.write(data[i : i + cut])
            f.flush()
            got += tailer.poll()
    got += tailer.poll()
    assert all(type(e) is dict for e in got)
    assert got == read_all(path)
    fold(got)
    EventTailer(path, offset=len(data) // 2).poll()


@SETTINGS
@given(
    st.binary(max_size=300)
    | st.builds(lambda v: json.dumps(v).encode(), json_values)
    | st.builds(lambda depth: b"[" * depth + b"]" * depth, st.integers(900, 20_000))
)
def test_command_parser_never_raises(tmp_path_factory, content):
    rd = create(tmp_path_factory.mktemp("c") / "run")
    path = rd.commands_dir / "1-x.json"
    path.write_bytes(content)
    cmd = _load(path)
    assert isinstance(cmd, (Command, MalformedCommand))
    reason = CommandInbox(rd).validate(cmd)
    assert reason is None or (isinstance(reason, str) and len(reason) < 300)
    assert CommandInbox(rd).done(cmd) is not None


@SETTINGS
@given(json_values, json_values)
def test_validate_command_never_raises(name, args):
    for candidate in (name, "override", "set_mode", "approve"):
        reason = validate_command(candidate, args)
        assert reason is None or (isinstance(reason, str) and len(reason) < 300)
