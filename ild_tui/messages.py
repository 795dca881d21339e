"""The dashboard's own Textual messages, as dataclasses: what a background worker hands the UI thread.

A widget's messages about itself stay nested in the widget (``Heatmap.CursorMoved``): Textual
names their handlers after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from textual.message import Message

if TYPE_CHECKING:
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
