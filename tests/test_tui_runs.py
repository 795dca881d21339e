"""The runs screen and the compare screen, driven with Pilot."""

import pytest

from ild_tui.screens.compare import ComparedRun, CompareScreen, removal_bars
from ild_tui.screens.dialogs import ConfirmScreen
from ild_tui.screens.runs import RunsScreen
from ild_tui.widgets.palette import Palette
from tests.support import answer, burst, hold_lock, open_live, wait_for
from tools.synthetic_runs import DEAD, FINISHED, FIXTURES, LIVE, SHORTGPT, copy_fixture, make_app

pytestmark = pytest.mark.usefixtures("tui_env")
SIZE = (160, 48)


async def _runs_screen(app, pilot) -> RunsScreen:
    await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.scanned)
    await pilot.pause()
    return app.screen


def _names(screen: RunsScreen) -> list[str]:
    return [r.name for r in screen.shown]


async def test_runs_list_sort_filter_open(runs):
    with hold_lock(runs / LIVE):
        app = make_app(runs)
        async with app.run_test(size=SIZE) as pilot:
            screen = await _runs_screen(app, pilot)
            assert _names(screen) == [LIVE, DEAD, FINISHED, SHORTGPT]  # newest start first
            by_name = {r.name: r for r in screen.rows}
            assert by_name[LIVE].status == "awaiting decision" and by_name[DEAD].status == "died"
            assert by_name[FINISHED].status == "finished" and by_name[FINISHED].layers_now == 20
            assert by_name[FINISHED].best is not None and by_name[FINISHED].duration > 0
            assert "awaiting a decision" in by_name[LIVE].pending

            await pilot.press("s")  # sort by name
            assert screen.sort_key == "name" and _names(screen) == sorted(_names(screen), reverse=True)
            await pilot.press("S")
            assert _names(screen) == sorted(_names(screen))

            await pilot.press("slash")
            await pilot.press(*"distill")
            assert _names(screen) == [FINISHED, LIVE]
            await pilot.press("enter")  # back to the table, filter kept
            assert _names(screen) == [FINISHED, LIVE]
            await pilot.press("escape")
            assert len(_names(screen)) == 4

            # open the highlighted run, come back
            screen.query_one("#runs-table").move_cursor(row=_names(screen).index(DEAD))
            await pilot.press("enter")
            live = await open_live(app, pilot)
            assert live.run_dir.name == DEAD
            await pilot.press("escape")
            assert app.screen is screen


async def test_runs_screen_sees_new_runs_and_shows_an_empty_state(tmp_path):
    empty = tmp_path / "nothing"
    empty.mkdir()
    app = make_app(empty)
    async with app.run_test(size=SIZE) as pilot:
        screen = await _runs_screen(app, pilot)
        assert screen.rows == [] and "No runs in" in str(screen.query_one("#runs-empty").render())
        copy_fixture(FINISHED, empty)
        screen.rescan()
        await wait_for(pilot, lambda: len(screen.rows) == 1)
        assert screen.rows[0].name == FINISHED


async def test_delete_asks_and_never_deletes_a_live_run(runs):
    with hold_lock(runs / LIVE):
        app = make_app(runs)
        async with app.run_test(size=SIZE) as pilot:
            screen = await _runs_screen(app, pilot)
            table = screen.query_one("#runs-table")
            table.move_cursor(row=_names(screen).index(LIVE))
            await pilot.press("d")
            assert not isinstance(app.screen, ConfirmScreen)  # refused outright
            assert (runs / LIVE).is_dir()
            table.move_cursor(row=_names(screen).index(DEAD))
            await pilot.press("d")
            assert isinstance(app.screen, ConfirmScreen)
            assert "trash" in str(app.screen.query_one("#question").render())
            await answer(app, pilot, "n")
            assert (runs / DEAD).is_dir()
            await pilot.press("d")
            await answer(app, pilot, "y")
            await wait_for(pilot, lambda: not (runs / DEAD).exists() and len(screen.rows) == 3)


def _tree(root) -> dict:
    """Every file under ``root`` with its bytes and mode, and every directory, by relative path."""
    import os

    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        st = os.lstat(path)
        out[rel] = ("dir", st.st_mode) if path.is_dir() else (path.read_bytes(), st.st_mode)
    return out


async def test_a_burst_of_d_enter_deletes_nothing_and_a_deleted_run_comes_back_byte_for_byte(runs):
    from ild_tui.cli import main
    from ild_tui.trash import list_trash

    before = _tree(runs / DEAD)
    app = make_app(runs)
    async with app.run_test(size=SIZE) as pilot:
        screen = await _runs_screen(app, pilot)
        screen.query_one("#runs-table").move_cursor(row=_names(screen).index(DEAD))
        burst(app, "d", "enter")  # as tmux send-keys d Enter, a paste or a fast typist sends it
        await pilot.pause(0.3)
        assert isinstance(app.screen, ConfirmScreen)  # still asking: the Enter was not an answer
        await answer(app, pilot, "escape")
        assert app.screen is screen
        burst(app, "d", "y")
        await pilot.pause(0.3)
        assert isinstance(app.screen, ConfirmScreen)
        await answer(app, pilot, "escape")
        assert (runs / DEAD).is_dir() and _tree(runs / DEAD) == before

        await pilot.press("d")
        await pilot.pause(0.1)
        await pilot.press("enter")  # the default answer, on screen: keep
        assert (runs / DEAD).is_dir() and app.screen is screen

        await pilot.press("d")
        await answer(app, pilot, "y")
        await wait_for(pilot, lambda: not (runs / DEAD).exists() and DEAD not in _names(screen))
    [entry] = list_trash(runs)
    assert entry.name == DEAD and entry.path.parent == runs / ".trash"

    from click.testing import CliRunner

    listed = CliRunner().invoke(main, ["trash", "--runs-dir", str(runs)])
    assert listed.exit_code == 0 and entry.entry in listed.output
    restored = CliRunner().invoke(main, ["restore", DEAD, "--runs-dir", str(runs)])
    assert restored.exit_code == 0, restored.output
    assert _tree(runs / DEAD) == before and list_trash(runs) == []
    again = CliRunner().invoke(main, ["restore", DEAD, "--runs-dir", str(runs)])
    assert again.exit_code == 2 and "no run" in again.output


def test_trash_empty_and_retention(runs):
    from click.testing import CliRunner

    from ild_tui.cli import main
    from ild_tui.trash import empty, list_trash, move_to_trash

    move_to_trash(runs / DEAD, runs, now=1_000_000.0)
    move_to_trash(runs / SHORTGPT, runs, now=1_000_000.0 + 20 * 86400)
    assert [e.name for e in list_trash(runs)] == [DEAD, SHORTGPT]
    assert empty(runs, older_than_days=30, now=1_000_000.0 + 31 * 86400)[0] == 1  # only the older one
    assert [e.name for e in list_trash(runs)] == [SHORTGPT]
    with hold_lock(runs / LIVE):
        from ild_tui.trash import TrashError

        with pytest.raises(TrashError, match="running"):
            move_to_trash(runs / LIVE, runs)
    out = CliRunner().invoke(main, ["trash", "--empty", "--runs-dir", str(runs)])
    assert out.exit_code == 0 and "removed 1 run" in out.output
    assert list_trash(runs) == [] and not any((runs / ".trash").iterdir())


async def test_filter_gets_every_key_of_a_fast_burst(runs):
    app = make_app(runs)
    async with app.run_test(size=SIZE) as pilot:
        screen = await _runs_screen(app, pilot)
        burst(app, "slash", "d", "e", "a", "d")
        await wait_for(pilot, lambda: screen.filter_text == "dead")
        await pilot.pause(0.2)
        assert screen.query_one("#runs-filter").value == "dead"
        assert app.screen is screen  # the `d`s went into the box, not to "delete"
        # what the status column shows ("engine dead") is what the filter matches: the two dead runs
        assert sorted(_names(screen)) == sorted([DEAD, LIVE])


async def test_statuses_shown_and_copied_runs_told_apart(runs):
    import shutil

    from tests.support import append_events

    shutil.copytree(runs / FINISHED, runs / "finished-copy")
    append_events(runs / LIVE, {"type": "command_applied", "command_id": "c", "name": "pause", "args": {}, "by": "x"})
    with hold_lock(runs / LIVE):
        app = make_app(runs)
        async with app.run_test(size=SIZE) as pilot:
            screen = await _runs_screen(app, pilot)
            by_dir = {r.dirname: r for r in screen.rows}
            assert by_dir[LIVE].status == "paused" and by_dir[LIVE].label == "paused"
            assert by_dir["finished-copy"].shown_name == f"{FINISHED} (dir finished-copy)"
            assert by_dir[FINISHED].shown_name == FINISHED
            await pilot.press("slash")
            await pilot.press(*"paused")
            assert _names(screen) == [LIVE]


async def test_mark_and_compare(runs):
    app = make_app(runs)
    async with app.run_test(size=SIZE) as pilot:
        screen = await _runs_screen(app, pilot)
        table = screen.query_one("#runs-table")
        table.move_cursor(row=_names(screen).index(FINISHED))
        await pilot.press("space")
        table.move_cursor(row=_names(screen).index(SHORTGPT))
        await pilot.press("space")
        assert len(screen.marked) == 2
        await pilot.press("c")
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.loaded)
        cmp = app.screen
        assert [r.name for r in cmp.runs] == [FINISHED, SHORTGPT]
        assert cmp.query_one("#compare-table").row_count == 2
        assert "Fig. 9" in str(cmp.query_one("#fig9").border_title)
        await pilot.press("escape")
        assert app.screen is screen


def test_compare_figures_data():
    from engine.runlog.reader import read_run

    runs = [ComparedRun(str(FIXTURES / n), n, read_run(FIXTURES / n), "finished") for n in (FINISHED, SHORTGPT, DEAD)]
    curve = runs[0].curve()
    assert [x for x, _ in curve] == list(range(11))  # teacher, then one point per layer removed
    assert curve[0][1] == pytest.approx(0.4708, abs=1e-3)
    assert [x for x, _ in runs[2].curve()] == [0, 1, 2, 3]
    text = removal_bars(runs, Palette(), 100, 12).plain
    assert "original layer index" in text and "3 ┤" in text  # layer 21 went in all three runs


async def test_w_writes_a_report_of_the_marked_runs(runs, tmp_path):
    import csv

    from ild_tui.screens.dialogs import ReportScreen

    out = tmp_path / "from-the-dashboard"
    app = make_app(runs)
    said: list[str] = []
    notify = app.notify
    app.notify = lambda message, **kw: (said.append(str(message)), notify(message, **kw))[1]
    async with app.run_test(size=SIZE) as pilot:
        screen = await _runs_screen(app, pilot)
        table = screen.query_one("#runs-table")
        table.move_cursor(row=_names(screen).index(SHORTGPT))
        await pilot.press("space")
        table.move_cursor(row=_names(screen).index(FINISHED))
        await pilot.press("space")
        await pilot.press("w")
        await wait_for(pilot, lambda: isinstance(app.screen, ReportScreen))
        dialog = app.screen
        box = dialog.query_one("#report-dir")
        assert "/reports/report-" in box.value  # a default beside the runs directory
        assert not dialog.query_one("#report-measure").value
        box.value = str(out)
        await pilot.press("enter")
        assert app.screen is screen
        await wait_for(pilot, lambda: any("report written" in m for m in said), timeout=60)
        with open(out / "runs.csv", newline="") as f:
            assert [r["run"] for r in csv.DictReader(f)] == [SHORTGPT, FINISHED]  # in the order marked
        assert (out / "report.html").is_file() and not (out / "cost.csv").exists()

        # the same key on a directory that holds something else: an error notice, the dashboard goes on
        await pilot.press("w")
        await wait_for(pilot, lambda: isinstance(app.screen, ReportScreen))
        app.screen.query_one("#report-dir").value = str(runs / DEAD)
        await pilot.press("enter")
        await wait_for(pilot, lambda: any("no report" in m and "not empty" in m for m in said), timeout=60)
        assert app.screen is screen


async def test_compare_draws_runs_of_different_teachers_against_their_own(runs):
    from tools.synthetic_runs import synth_run

    synth_run(runs / "other", name="other", model="another-model", target_layers=26, steps_per_iter=4, seed=5)
    app = make_app(runs, compare=[str(runs / FINISHED), str(runs / "other")])
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.loaded)
        await pilot.pause(0.2)
        chart = app.screen.query_one("#fig9-chart")
        assert "own teacher" in chart.spec.legend_extra
        assert all(s.points[0] == (0, pytest.approx(100.0)) for s in chart.spec.series)


async def test_enter_on_the_report_dialogs_checkbox_writes_and_space_toggles(tmp_path):
    from ild_tui.screens.dialogs import ReportScreen
    from tests.support import wait_for as _wait

    app = make_app(tmp_path)
    answers = []
    async with app.run_test(size=SIZE) as pilot:
        await _runs_screen(app, pilot)
        app.push_screen(ReportScreen(["a"], str(tmp_path / "out")), answers.append)
        await _wait(pilot, lambda: getattr(app.screen, "armed", False))
        box = app.screen.query_one("#report-measure")
        box.focus()
        await pilot.pause()
        await pilot.press("space")
        assert box.value is True
        await pilot.press("enter")
        await _wait(pilot, lambda: answers)
    assert answers == [(str(tmp_path / "out"), True)]
