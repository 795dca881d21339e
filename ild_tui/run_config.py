"""A run's config as ild hands it to the engine, built in one place for ``ild run``, ``ild demo``
and every run of ``ild study``.

It holds only what the user chose: a setting left out takes the engine's default
(``engine/config.py``), and the engine validates the whole config before any run directory exists
(``launch.create_run``), so nothing here repeats its defaults or its checks.
"""

from __future__ import annotations

import copy


def parse_settings(overrides) -> dict:
    """``--set`` KEY=VALUE pairs as the nested mapping they make; values are YAML (safely: plain
    data only). Raises ValueError with one line."""
    import yaml

    settings: dict = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or "" in key.split("."):
            raise ValueError(f"--set expects KEY=VALUE (got '{item}')")
        node = settings
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {key}: '{part}' is not a section")
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            problem = str(getattr(exc, "problem", None) or "not valid YAML").strip()
            raise ValueError(f"--set {key}: {problem} in '{raw}'") from None
    return settings


def run_config(
    name: str,
    model: str,
    strategy: str,
    settings: dict | None = None,
    processes: int | None = None,
    accelerate_config: str | None = None,
    **values,
) -> dict:
    """The config of one run: the values given (None or "" is left to the engine), ``processes`` and
    ``accelerate_config`` under ``distributed``, then the ``--set`` settings over all of it."""
    config = {"name": name, "model": model, "strategy": strategy}
    config.update({key: value for key, value in values.items() if value not in (None, "")})
    distributed = {"processes": processes, "accelerate_config": accelerate_config}
    if any(distributed.values()):
        config["distributed"] = {key: value for key, value in distributed.items() if value}
    return merge(config, settings or {})


def merge(base: dict, extra: dict) -> dict:
    """``extra`` over ``base``, section by section (a copy: neither changes)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# The config keys `ild run`'s options set: the engine's one line names the key ("config
# target_layers: ..."), the user typed the option.
OPTIONS = {
    "target_layers": "--target-layers",
    "removals": "--removals",
    "min_retention": "--min-retention",
    "importance": "--importance",
    "auto_after_seconds": "--auto-after",
    "batch_tokens": "--batch-tokens",
    "seed": "--seed",
}


def as_options(message: str) -> str:
    """The engine's ``config KEY: why`` as ``--option: why`` where an option sets KEY."""
    head, sep, why = message.partition(": ")
    key = head.removeprefix("config ")
    return f"{OPTIONS[key]}: {why}" if sep and head.startswith("config ") and key in OPTIONS else message
