"""A healing step's loss terms, read from any run's ``train_step`` events.

Engines log the terms of the loss by name (``terms``: weighted, they add up to ``loss``;
``unweighted``: before weighting). Older engines logged fixed fields instead (``kl_term``,
``mse_term``, ``kl``, ``mse``; the oldest only ``kl`` and ``mse``): they are read as the terms
``kl`` and ``mse``, so that every run on disk shows in the dashboard, ``ild show`` and the report.
"""

import math

# older runs' fixed fields: term -> (its weighted field, its unweighted field)
LEGACY_FIELDS = {"kl": ("kl_term", "kl"), "mse": ("mse_term", "mse")}


def _number(value) -> float | None:
    """A finite number, or None (a gap): a missing, null, non-finite or mistyped value."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _map(value) -> dict[str, float | None]:
    return {str(k): _number(v) for k, v in value.items()} if isinstance(value, dict) else {}


def step_terms(event: dict) -> tuple[dict[str, float | None], dict[str, float | None]]:
    """``(weighted, unweighted)``: {term: value} each, in the order logged; only the terms the step
    names (a value of None is a gap: null or not finite)."""
    weighted, unweighted = _map(event.get("terms")), _map(event.get("unweighted"))
    for name, (weighted_field, unweighted_field) in LEGACY_FIELDS.items():
        if name not in weighted and weighted_field in event:
            weighted[name] = _number(event[weighted_field])
        if name not in unweighted and unweighted_field in event:
            unweighted[name] = _number(event[unweighted_field])
    return weighted, unweighted


def shares(weighted: dict[str, float | None]) -> dict[str, float] | None:
    """Each term's share of the loss (the weighted terms' sum), or None when one is missing or they sum to 0."""
    if not weighted or any(v is None for v in weighted.values()):
        return None
    total = sum(weighted.values())
    if not total:
        return None
    return {k: v / total for k, v in weighted.items()}
