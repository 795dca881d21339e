"""The resolved run configuration, validated before any run directory is made."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .strategies import IMPORTANCE_METRICS, get_strategy


class ConfigError(ValueError):
    """One line, shown to the user as is."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CalibrationConfig(_Strict):
    """Text for Block Influence / loss drop: an embedded or local JSONL with a "text" column."""

    path: str = "lm_heldout_en.jsonl"
    samples: int = Field(default=32, ge=1)
    max_tokens: int = Field(default=256, ge=8)


class HealSettings(_Strict):
    """Healing by distillation; every Table 1 variant of the paper is a value here."""

    lr: float = Field(default=1e-4, gt=0)
    warmup_steps: int = Field(default=2, ge=0)
    batch_size: int = Field(default=4, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    clip: float = Field(default=1.0, ge=0)
    seq_len: int = Field(default=256, ge=8)
    train_tokens: int = Field(default=32768, ge=8)
    heldout_tokens: int = Field(default=2048, ge=8)
    data: str = "embedded"
    text_field: str = "text"
    trainable: Literal["adjacent", "radius", "last", "all"] = "adjacent"
    trainable_k: int = Field(default=1, ge=1)
    train_norm: bool = False
    train_head: bool = False
    kl_scale: float = 0.01
    mse_scale: float = 1.0
    kl_input: Literal["log_probs", "logits"] = "log_probs"
    direction: Literal["forward", "reverse"] = "forward"
    temperature: float = Field(default=1.0, gt=0)
    reduction: Literal["token_mean", "sum"] = "token_mean"
    hidden: Literal["last_trainable+last", "last_trainable", "last", "all_trainable", "all", "none"] = "last_trainable+last"
    final_norm: bool = True
    cached: bool = True
    fused_head: bool = True
    head_matmul: Literal["auto", "bf16", "fp32"] = "auto"
    teacher_topk: int = Field(default=0, ge=0)
    cache_limit_mb: int = Field(default=1024, ge=1)
    checkpoint_every_s: float = Field(default=120.0, gt=0)


class RunConfig(_Strict):
    name: str
    model: str
    strategy: str
    target_layers: int = Field(ge=1)
    start_layers: int = Field(ge=1)
    suite: str = "default"
    importance: Literal["task_drop", "bi", "angular", "loss_nll", "loss_kl"] | None = None
    mode: Literal["auto", "manual", "auto-after"] = "auto"
    auto_after_seconds: float | None = None
    seed: int = 0
    batch_tokens: int = Field(default=4096, ge=64)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    heal: HealSettings = Field(default_factory=HealSettings)
    device: str | None = None
    notify_cmd: str | None = None
    stall_seconds: float = Field(default=900.0, gt=0)

    def importance_metric(self) -> str:
        return self.importance or get_strategy(self.strategy).importance


def validate_config(data: dict) -> RunConfig:
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = "unknown setting"
        raise ConfigError(f"config {where}: {message}") from None
    try:
        get_strategy(config.strategy)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if config.importance is not None and config.importance not in IMPORTANCE_METRICS:
        raise ConfigError(f"unknown importance metric '{config.importance}'")
    if config.target_layers >= config.start_layers:
        raise ConfigError(
            f"--target-layers {config.target_layers} must be below the model's current depth ({config.start_layers} layers)"
        )
    if config.mode == "auto-after" and not config.auto_after_seconds:
        raise ConfigError("mode auto-after needs a number of seconds")
    return config
