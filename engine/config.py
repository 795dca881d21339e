"""The resolved run configuration, validated before any run directory is made."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_serializer, model_validator

from .control import check_notify_cmd
from .distill.terms import TERMS, term_setting
from .runlog.strategies import get_metric, get_strategy


class ConfigError(ValueError):
    """One line, shown to the user as is."""


# Upper bounds a typo meets before the engine tries to start a million threads or processes: more
# threads than any CPU has, more engine processes on one host than any host has GPUs.
MAX_THREADS = 1024
MAX_PROCESSES = 256
# Tokens per forward batch of scoring and evaluation (memory against speed): the default everywhere.
BATCH_TOKENS = 4096


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CalibrationConfig(_Strict):
    """Text for Block Influence / loss drop: an embedded or local JSONL with a "text" column."""

    path: str = "distill_en.jsonl"  # never evaluation text: similarity, loss drop and bridges must not see it
    samples: int = Field(default=32, ge=1)
    max_tokens: int = Field(default=256, ge=8)


class ScoringSettings(_Strict):
    """How task drop scores the candidates."""

    racing: bool = True  # stop scoring candidates that can no longer be the least important
    # the forward-scored tasks share batches when several candidates are scored (a racing round's few
    # items a task fill a GPU's batch); None: on a GPU, off on a CPU (where it changes no speed)
    pack_tasks: bool | None = None


class LossSettings(_Strict):
    """The healing loss: ``KL(teacher || student) * kl_weight + MSE(hidden states) * mse_scale`` plus
    any other registered term (``engine.distill.terms``); every Table 1 variant of the paper is a
    value here (see ``engine.distill.losses``). A registered term's own settings are accepted too
    (checked against the registry), nothing else."""

    model_config = ConfigDict(extra="allow")

    kl_scale: float = Field(default=0.01, ge=0)
    # token_mean: the KL term weighs kl_scale * this (the paper's tokens per device)
    kl_reference_tokens: int = Field(default=4096, ge=1)
    mse_scale: float = Field(default=1.0, ge=0)
    mse_norm: Literal["none", "teacher"] = "none"  # "teacher": each layer's MSE over the teacher's mean square
    kl_input: Literal["log_probs", "logits"] = "log_probs"
    direction: Literal["forward", "reverse"] = "forward"
    temperature: float = Field(default=1.0, gt=0)
    reduction: Literal["token_mean", "sum"] = "token_mean"
    hidden: Literal["last_trainable+last", "last_trainable", "last", "all_trainable", "all", "none"] = (
        "last_trainable+last"
    )
    # "last" compares the final hidden state after the final norm (the paper's code)
    final_norm: bool = True

    @property
    def kl_weight(self) -> float:
        """What the reduced KL is multiplied by in the loss."""
        return self.kl_scale * (self.kl_reference_tokens if self.reduction == "token_mean" else 1)

    def setting(self, name: str):
        """A setting by name: a field, or a registered term's own (its default when not set)."""
        if name in type(self).model_fields or name in (self.model_extra or {}):
            return getattr(self, name)
        found = term_setting(name)
        if found is None:
            raise AttributeError(name)
        return found[1][1]

    @model_validator(mode="after")
    def _registered(self) -> LossSettings:
        for name, value in (self.model_extra or {}).items():
            found = term_setting(name)
            if found is None:
                raise ValueError(f"unknown setting {name}")
            try:
                self.model_extra[name] = TypeAdapter(found[1][0]).validate_python(value)
            except ValidationError as exc:
                raise ValueError(f"{name}: {exc.errors()[0]['msg']}") from None
        return self


class TrainableSettings(_Strict):
    """Which layers heal after a removal (``engine.distill.trainable``); everything else is frozen."""

    # all: every layer; adjacent: the k layers on each side of the newest gap (k = 1: the paper's
    # pair; k = 2 healed better at lr 1e-4 but went unstable at 3e-4); radius: k around every gap;
    # last: the last k layers. "all" since it was never measurably worse than the paper's pair and
    # ahead where the pair cannot undo a removal (paired on the report part, docs/results: 28, 27,
    # 26: 76.2 % of the teacher against 56.4 %; six removals healed once: 78.8 % against 73.2 %;
    # 14, 13, 12 and make demo's run: level), for 1.4-3x the healing steps' time on a CPU and AdamW
    # state for every layer (~16 bytes a parameter: "adjacent" where a GPU cannot hold it).
    choice: Literal["adjacent", "radius", "last", "all"] = "all"
    k: int = Field(default=1, ge=1)
    train_norm: bool = False
    # "untied": train the head where the student has its own (an untied model, or untie_head), else
    # the layers only; True on a tied head needs untie_head (training it would move the embedding)
    train_head: bool | Literal["untied"] = False
    untie_head: bool = False  # give the student its own LM head (needed to train a head tied to the embedding)


class DataSettings(_Strict):
    """The distillation text (``engine.distill.data``)."""

    # "embedded": Brown corpus prose (~70k tokens); "mixed": the mixed healing corpus (English prose,
    # Russian, code; tools/build_heal_corpus.py); a .jsonl[.xz]/.txt path; "hf:NAME[:CONFIG[:SPLIT]][?data_files=...]"
    source: str = "embedded"
    text_field: str = "text"
    seq_len: int = Field(default=256, ge=8)
    train_tokens: int = Field(default=32768, ge=8)  # per healing
    heldout_tokens: int = Field(default=2048, ge=8)
    max_documents: int = Field(default=20000, ge=1)  # read at most this many documents of a file or Hub dataset


# Parts of HealSettings and the flat names users set for their fields (``--set heal.lr=...``,
# config files, config.yaml): ``heal.<flat>`` is ``heal.<part>.<field>``; a field not named here
# keeps its own name. The flat names are the user-facing ones: a config is read and written flat.
_PARTS = {"loss": LossSettings, "trainable": TrainableSettings, "data": DataSettings}
_RENAMED = {("trainable", "choice"): "trainable", ("trainable", "k"): "trainable_k", ("data", "source"): "data"}


def _flat_names() -> dict[str, tuple[str, str]]:
    """{flat name: (part, field)}, registered loss terms' own settings included."""
    out = {_RENAMED.get((part, name), name): (part, name) for part, cls in _PARTS.items() for name in cls.model_fields}
    out.update({name: ("loss", name) for term in TERMS.values() for name in term.settings})
    return out


class HealSettings(_Strict):
    """Healing by distillation: the one declaration of its settings and their defaults, used as is by
    ``engine.distill`` (the loss reads ``loss``, the choice of layers ``trainable``, the text ``data``).

    Users set the flat names (``heal.kl_scale``, ``heal.trainable``, ``heal.data``, ...; see
    ``_RENAMED``: ``heal.trainable`` is ``trainable.choice``, ``heal.data`` is ``data.source``), and a
    config is written back flat; the nested form (``heal.loss.kl_scale``) is accepted too. Reading a
    flat name off the object works as well (``settings.train_tokens``), but for those two, which
    name the parts.
    """

    # 3x the paper's 1e-4: the healing ablation's best on both removal sets (14, 13, 12: 89.0 % of the
    # teacher against 86.0 %; 28, 27, 26: 68.1 % against 54.2 %); 1e-3 stopped early and healed less
    lr: float = Field(default=3e-4, gt=0)
    warmup_steps: int = Field(default=2, ge=0)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)  # the cosine ends at this share of lr
    weight_decay: float = Field(default=0.0, ge=0)
    batch_size: int = Field(default=4, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    clip: float = Field(default=1.0, ge=0)
    # After the last removal, one more healing of this many tokens (0: none), of these layers:
    # "gaps" every layer next to a gap, "all" every layer. Logged as the stage after_final_healing.
    final_tokens: int = Field(default=0, ge=0)
    final_trainable: Literal["gaps", "all"] = "gaps"
    # With --removals or a prune-then-heal strategy (block-distill): heal after each removal, as an
    # iterative run does (false: once, after the last)
    each_removal: bool = False
    cached: bool = True
    # the cached loop's head + KL fused and chunked (where the loss allows it)
    fused_head: bool = True
    # the fused head's matmuls: "bf16", "fp32" or "auto" (bf16 on CUDA and on CPUs with native bf16)
    head_matmul: Literal["auto", "bf16", "fp32"] = "auto"
    teacher_topk: int = Field(default=0, ge=0)  # > 0: store the teacher's top-k tokens instead of its logits
    cache_limit_mb: int = Field(default=1024, ge=1)
    # the teacher's outputs on the distillation data, kept across runs (~/.cache/ild/store/teacher); 0: off
    teacher_store_mb: int = Field(default=4096, ge=0)
    checkpoint_every_s: float = Field(default=120.0, gt=0)
    # Early stopping: the held-out distillation loss every ``eval_every`` steps (0: about eight checks
    # an iteration); stop after ``patience`` checks without a relative gain of ``min_delta``, and keep
    # the best weights seen (the weights from before healing when it never helped). train_tokens is
    # then a cap.
    early_stop: bool = True
    eval_every: int = Field(default=0, ge=0)
    patience: int = Field(default=2, ge=1)
    min_delta: float = Field(default=0.002, ge=0)
    # No stop before this share of a healing's steps (its checks still keep the best weights): with
    # every layer trainable the held-out loss first rises, then falls. make demo's first healing
    # (layer 14 removed, 32 steps): 5.44 -> 6.03 at step 4, 5.97 at 12, 4.61 at 32; patience 2 from
    # the start stopped it at step 8 and kept the weights from before it. 0: stop from the start.
    early_stop_from: float = Field(default=0.5, ge=0, le=1)
    loss: LossSettings = Field(default_factory=LossSettings)
    trainable: TrainableSettings = Field(default_factory=TrainableSettings)
    data: DataSettings = Field(default_factory=DataSettings)

    @model_validator(mode="before")
    @classmethod
    def _nest(cls, data):
        """Flat names into their parts."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for flat, (part, name) in _flat_names().items():
            if flat not in out or (flat in _PARTS and isinstance(out[flat], dict | BaseModel)):
                continue  # not set, or the part itself (heal.trainable as a section, not a choice)
            value = out.pop(flat)
            given = out.get(part)
            given = given.model_dump() if isinstance(given, BaseModel) else dict(given or {})
            if name in given:
                raise ValueError(f"{flat} is set twice (as heal.{flat} and heal.{part}.{name})")
            out[part] = {**given, name: value}
        return out

    @model_serializer(mode="wrap")
    def _flatten(self, handler):
        out = {}
        for key, value in handler(self).items():
            if key in _PARTS and isinstance(value, dict):
                out.update({_RENAMED.get((key, name), name): v for name, v in value.items()})
            else:
                out[key] = value
        return out

    def __getattr__(self, name: str):
        where = _flat_names().get(name)
        if where is None:
            return super().__getattr__(name)
        return getattr(getattr(self, where[0]), where[1]) if where[0] != "loss" else self.loss.setting(where[1])

    @staticmethod
    def flat_name(part: str, name: str) -> str:
        """The user-facing name of ``heal.<part>.<name>``."""
        return _RENAMED.get((part, name), name)


class DistributedSettings(_Strict):
    """How many engine processes share a run, and how (see docs/distributed.md).

    ``processes`` and ``accelerate_config`` are how ``ild run`` launched the run and what ``ild
    resume`` launches again unless told otherwise: a run can continue on another number of
    processes from its checkpoints.
    """

    processes: int = Field(
        default=1, ge=1, le=MAX_PROCESSES
    )  # engine processes on this host, one per GPU (accelerate launch)
    accelerate_config: str | None = None  # an `accelerate config` file: machines, processes, ... (multi-node)
    # > 1: each process spreads its model over that many GPUs (device_map)
    gpus_per_process: int = Field(default=1, ge=1)
    heal: Literal["ddp", "fsdp"] = "ddp"  # how the ranks share healing: replicas (DDP) or shards (FSDP, GPUs only)
    timeout_s: float = Field(default=900.0, gt=0)  # a collective waiting longer fails the run instead of hanging


class RunConfig(_Strict):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    model: str
    strategy: str
    target_layers: int | None = Field(default=None, ge=1)  # with `removals`: the start depth minus their count
    start_layers: int = Field(ge=1)
    removals: list[int] | None = None  # fixed-removal mode: remove these original layers, no scoring, heal once
    report_suite: str | None = None  # evaluated after every iteration, never used to choose
    min_retention: float | None = Field(default=None, gt=0, le=1)  # stop before the report aggregate falls below
    suite: str = "default"
    importance: str | None = None  # a registered importance metric (engine.runlog.strategies.METRICS)
    split_seed: int = 0  # which items of each task are the selection part and which the report part
    scoring: ScoringSettings = Field(default_factory=lambda: ScoringSettings())
    mode: Literal["auto", "manual", "auto-after"] = "auto"
    # A NaN or an infinity would wait for a person forever; 1e9 s is the command inbox's bound too.
    auto_after_seconds: float | None = Field(default=None, gt=0, le=1e9, allow_inf_nan=False)
    seed: int = 0
    batch_tokens: int = Field(default=BATCH_TOKENS, ge=64)
    score_cache: bool = True  # scores of weights already scored on the same items are read back
    # MiB of hidden states kept so that an evaluation runs only the layers above the lowest one that
    # changed (engine/tasks/depth_cache.py; exact); 0: off; None: ILD_EVAL_CACHE_MB, else 1024
    eval_cache_mb: int | None = Field(default=None, ge=0)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    heal: HealSettings = Field(default_factory=HealSettings)
    device: str | None = None
    notify_cmd: str | None = None
    stall_seconds: float = Field(default=900.0, gt=0)
    # CPU threads per engine process (None: torch's choice, or cores / processes)
    threads: int | None = Field(default=None, ge=1, le=MAX_THREADS)
    distributed: DistributedSettings = Field(default_factory=DistributedSettings)

    def importance_metric(self) -> str:
        return self.importance or get_strategy(self.strategy).importance


def validate_config(data: dict) -> RunConfig:
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(p) for p in first["loc"]]
        if loc[:1] == ["heal"] and len(loc) > 2 and loc[1] in _PARTS:  # the name the user set
            loc = ["heal", HealSettings.flat_name(loc[1], loc[2]), *loc[3:]]
        where = ".".join(loc)
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = "unknown setting"
        raise ConfigError(f"config {where}: {message}") from None
    try:
        get_strategy(config.strategy)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if config.removals is not None:
        _check_removals(config)
    _check_heal_tokens(config)
    if config.target_layers is None:
        raise ConfigError("--target-layers is needed (or --removals)")
    if config.notify_cmd is not None:
        try:
            check_notify_cmd(config.notify_cmd)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if config.importance is not None:
        try:
            get_metric(config.importance)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if config.target_layers >= config.start_layers:
        raise ConfigError(
            f"--target-layers {config.target_layers} must be below the model's current depth ({config.start_layers} layers)"
        )
    if config.mode == "auto-after" and not config.auto_after_seconds:
        raise ConfigError("mode auto-after needs a number of seconds")
    check_processes(config, config.distributed.processes)
    return config


def check_processes(config: RunConfig, processes: int) -> None:
    """What running on ``processes`` engine processes needs of the config; one line when it cannot.

    Healing keeps the global batch whatever the number of processes, each taking an equal slice
    (so that their averaged gradient is one process's): the batch must divide among them."""
    if processes > 1 and get_strategy(config.strategy).heal and config.heal.batch_size % processes:
        raise ConfigError(
            f"heal.batch_size {config.heal.batch_size} does not divide among {processes} processes: "
            f"set --set heal.batch_size to a multiple of {processes}"
        )
    settings = config.distributed
    if processes > 1 and (config.device or "").startswith("cuda:"):
        raise ConfigError(
            f"--device {config.device} names one GPU, but each of the {processes} processes takes its own "
            "(cuda:LOCAL_RANK); choose the GPUs with CUDA_VISIBLE_DEVICES"
        )
    if settings.heal == "fsdp" and (config.heal.train_norm or config.heal.train_head):
        raise ConfigError(
            "distributed.heal=fsdp shards the trainable decoder layers; heal.train_norm and heal.train_head "
            "need distributed.heal=ddp"
        )
    if settings.heal == "fsdp" and settings.gpus_per_process > 1:
        raise ConfigError(
            "distributed.heal=fsdp and distributed.gpus_per_process > 1 are two ways to fit a model: choose one"
        )
    if settings.gpus_per_process > 1 and config.device == "cpu":
        raise ConfigError("distributed.gpus_per_process > 1 spreads a model over GPUs; it cannot with --device cpu")


def _check_heal_tokens(config: RunConfig) -> None:
    """A healing is whole sequences: a budget under one would silently train on a whole one."""
    heal = config.heal
    budgets = [("final_tokens", heal.final_tokens)] if heal.final_tokens else []
    if get_strategy(config.strategy).heal:
        budgets.insert(0, ("train_tokens", heal.train_tokens))
    for name, tokens in budgets:
        if tokens < heal.seq_len:
            raise ConfigError(f"heal.{name} {tokens} is less than one sequence (heal.seq_len {heal.seq_len})")


def _check_removals(config: RunConfig) -> None:
    removals = config.removals
    if not removals:
        raise ConfigError("--removals needs at least one layer")
    if len(set(removals)) != len(removals):
        raise ConfigError(f"--removals names a layer twice: {removals}")
    bad = [o for o in removals if not 0 <= o < config.start_layers]
    if bad:
        raise ConfigError(
            f"--removals: layer {bad[0]} does not exist (the model has layers 0-{config.start_layers - 1})"
        )
    target = config.start_layers - len(removals)
    if target < 1:
        raise ConfigError("--removals would remove every layer")
    if config.target_layers is not None and config.target_layers != target:
        raise ConfigError(
            f"--target-layers {config.target_layers} disagrees with --removals ({len(removals)} of {config.start_layers} layers leave {target})"
        )
    config.target_layers = target
