"""The dashboard's own Textual messages, as dataclasses: what a background worker hands the UI thread.

A widget's messages about itself stay nested in the widget (``Heatmap.CursorMoved``): Textual
names their handlers after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from textual.message import Message

if TYPE_CHECKING:
    from .live.model import LiveModel
    from .runs import RunRow
    from .screens.compare import ComparedRun


@dataclass
class RunsScanned(Message):
    """The runs screen's scan of the runs directory, one row per run."""

    rows: list[RunRow]


@dataclass
class Compared(Message):
    """The compare screen's runs, each folded from its log."""

    runs: list[ComparedRun]


@dataclass
class Loaded(Message):
    """The live screen's replayed log, folded in the tail thread; the model now belongs to the UI thread."""

    model: LiveModel
    alive: bool
    seconds: float


@dataclass
class EventsBatch(Message):
    """Everything one poll of the log found (never one message per event)."""

    events: list[dict]


@dataclass
class EngineStatus(Message):
    """Whether the run's engine is alive, as the live screen's tail thread last saw it."""

    alive: bool
