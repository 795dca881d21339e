"""The registry of healing loss terms: the loss is the sum of its registered terms, each weighted.

A term is a name, a function giving its unweighted value on one batch, the weight it enters the
loss with (from the loss settings), and the settings it brings. The built-in ``kl`` and ``mse``
are registered in ``engine.distill.losses``; their settings are fields of
``engine.config.LossSettings``. A new term is one module that registers it: its settings are either
fields added to ``LossSettings`` or declared here with the term (``LossTerm.settings``), which the
config then accepts as ``heal.<name>`` (and ``--set heal.<name>=...``) and checks against the
declared type. Each healing step logs every active term by name (``train_step.terms``); the
dashboard, the headless view and the report show whatever terms a run logged.

This module imports no torch: the config (and so ``ild --help``) reads it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TermBatch:
    """What a term may compare on one batch. ``student_logits``/``teacher_logits`` are None where
    the fused head computed the KL (``kl`` then holds it); hidden states are keyed by the current
    index of each compared layer (``hidden_pairs``)."""

    student_logits: Any
    teacher_logits: Any
    student_hidden: dict
    teacher_hidden: dict
    mask: Any
    kl: Any = None


@dataclass(frozen=True)
class LossTerm:
    name: str  # its key in train_step.terms and in the held-out figures
    value: Callable[[TermBatch, Any], Any]  # (batch, loss settings) -> the unweighted value, a 0-d tensor
    weight: Callable[[Any], float]  # loss settings -> what the value is multiplied by in the loss
    about: str = ""  # one line for people
    # its own settings, beyond LossSettings' fields: {name: (type, default)}; accepted as heal.<name>
    settings: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    # computed (and logged) even at weight 0; a term that is not is off at weight 0 and costs nothing
    always: bool = False
    # (loss settings) -> whether the value is a sum over the batch, not a mean: data parallelism
    # then sums it over the ranks instead of averaging it
    summed: Callable[[Any], bool] = lambda settings: False
    # where it is summed and logged: the built-ins first (kl 0, mse 1), then the others in the order
    # registered; a fixed order keeps the loss the same float whatever imported what first
    order: int = 100

    def active(self, settings) -> bool:
        return self.always or self.weight(settings) != 0


TERMS: dict[str, LossTerm] = {}


def register(term: LossTerm) -> LossTerm:
    """Add a term (a module's import does it); registering a name a second time replaces it, so
    that a reloaded module does not fail. Readers name a term's columns ``<name>`` (unweighted) and
    ``<name>_term`` (weighted), hence the rule on names."""
    if not term.name.isidentifier() or term.name == "loss" or term.name.endswith("_term"):
        raise ValueError(f"loss term name {term.name!r}: a Python identifier, not 'loss', not ending in '_term'")
    TERMS[term.name] = term
    return term


def unregister(name: str) -> None:
    TERMS.pop(name, None)


def term_setting(name: str) -> tuple[LossTerm, tuple[Any, Any]] | None:
    """The registered term that declares setting ``name``, and the setting's (type, default)."""
    for term in TERMS.values():
        if name in term.settings:
            return term, term.settings[name]
    return None
