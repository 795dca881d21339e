"""The fields of every event of ``events.jsonl``, in the order of a run's life: starting, choosing
a layer, removing it, healing and evaluating, checkpoints, words for people, commands, the end.

Each event type is a ``TypedDict`` (its fields, their JSON types, which are required, and a few
words on each); ``engine.runlog.schema`` registers them (and re-exports every name here).
"""

from typing import Annotated, Any, Literal, Required, TypedDict, get_args

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
    loss: Annotated[Score, "the total loss (= the sum of terms)"]
    terms: Annotated[
        dict[str, Score],
        "{term: its weighted value}: the terms of the healing loss (engine/distill/terms.py: kl, mse and "
        "any other registered), which add up to loss",
    ]
    unweighted: Annotated[
        dict[str, Score],
        "{term: its value before weighting}: kl the KL divergence to the teacher, mse the hidden-state "
        "MSE (relative to the teacher's mean square with mse_norm)",
    ]
    kl: Annotated[Score, "older runs (before terms): unweighted['kl']"]
    mse: Annotated[Score, "older runs: unweighted['mse']"]
    kl_term: Annotated[Score, "older runs: terms['kl']"]
    mse_term: Annotated[Score, "older runs: terms['mse']"]
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
        "after healing: the held-out distillation loss before and after ({loss, then for each term of "
        "the loss TERM unweighted and TERM_term weighted (kl, kl_term, mse, mse_term, ...), mse_raw} each; "
        "mse_raw: the MSE without mse_norm, absent in older runs)",
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
