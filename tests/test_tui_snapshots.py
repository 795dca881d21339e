"""SVG snapshots of the main screens at fixed sizes (pytest-textual-snapshot).

Deterministic by construction: canned runs, a fixed clock (``live_now``), UTC, liveness from a
function instead of the real lock, and the heatmap's colour mode fixed (auto would follow the
terminal). Regenerate after a deliberate change with ``pytest tests/test_tui_snapshots.py
--snapshot-update`` and look at the SVGs before committing them.

Every main screen at 80x24 (the smallest terminal the dashboard promises to fit: one main panel at
a time), 120x40 and 200x60; themes and NO_COLOR once each.
"""

import os

import pytest

from ild_tui.live.screen import LiveScreen
from ild_tui.screens.compare import CompareScreen
from ild_tui.screens.runs import RunsScreen
from tools.synthetic_runs import DEAD, FINISHED, FIXTURES, LIVE, SHORTGPT, make_app

pytestmark = pytest.mark.usefixtures("tui_env")
SIZES = [(80, 24), (120, 40), (200, 60)]
SIZE_IDS = ["80x24", "120x40", "200x60"]


@pytest.fixture(autouse=True)
def _in_fixtures(monkeypatch):
    monkeypatch.chdir(FIXTURES.parent)  # paths on screen read "runs/..." wherever the checkout is


def _alive(rd) -> bool:
    return rd.name == LIVE


def _app(run=None, **kw):
    kw.setdefault("liveness", _alive)
    return make_app("runs", run and os.path.join("runs", run), **kw)


async def _until(pilot, predicate, timeout=10.0):
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "screen never got ready"
        await pilot.pause(0.02)
    await pilot.pause(0.1)


async def _live_painted(pilot):
    await _until(pilot, lambda: isinstance(pilot.app.screen, LiveScreen) and pilot.app.screen.painted)
    # Let the 4 Hz redraw pass that follows the replay land even on a loaded machine (a snapshot
    # taken between the two flaked once in CI-like conditions).
    await pilot.pause(0.6)
    await pilot.wait_for_scheduled_animations()


async def _runs_scanned(pilot):
    await _until(pilot, lambda: isinstance(pilot.app.screen, RunsScreen) and pilot.app.screen.scanned)


@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
def test_live_decision(snap_compare, size):
    assert snap_compare(_app(LIVE), terminal_size=size, run_before=_live_painted)


@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
def test_live_finished(snap_compare, size):
    assert snap_compare(_app(FINISHED), terminal_size=size, run_before=_live_painted)


@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
def test_runs_screen(snap_compare, size):
    assert snap_compare(_app(), terminal_size=size, run_before=_runs_scanned)


@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
def test_compare_screen(snap_compare, size):
    paths = [os.path.join("runs", n) for n in (FINISHED, SHORTGPT, DEAD, LIVE)]

    async def ready(pilot):
        await _until(pilot, lambda: isinstance(pilot.app.screen, CompareScreen) and pilot.app.screen.loaded)

    assert snap_compare(_app(compare=paths), terminal_size=size, run_before=ready)


def test_no_color_live_decision_loss_panel(snap_compare, monkeypatch):
    """What NO_COLOR terminals get: shade glyphs on the heatmap, loss series told apart by dash."""
    monkeypatch.setenv("NO_COLOR", "1")

    async def ready(pilot):
        await _live_painted(pilot)
        await pilot.press("3")
        await pilot.pause(0.3)

    assert snap_compare(_app(LIVE, heatmap_mode="auto"), terminal_size=(120, 40), run_before=ready)


def test_finished_run_light_theme(snap_compare):
    assert snap_compare(_app(FINISHED, theme="ild-light"), terminal_size=(160, 48), run_before=_live_painted)


def test_dead_run_colorblind_theme(snap_compare):
    assert snap_compare(_app(DEAD, theme="ild-colorblind"), terminal_size=(120, 40), run_before=_live_painted)


def test_help_screen(snap_compare):
    async def ready(pilot):
        await _live_painted(pilot)
        await pilot.press("question_mark")
        await pilot.pause(0.1)

    assert snap_compare(_app(FINISHED), terminal_size=(120, 48), run_before=ready)
