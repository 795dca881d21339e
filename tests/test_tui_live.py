"""The live run screen driven with Pilot on canned run directories."""

import pytest

from engine.runlog.tailer import read_all
from ild_tui.live.decision import DecisionPanel
from ild_tui.live.heatmap import Heatmap
from ild_tui.messages import EventsBatch
from ild_tui.screens.dialogs import ConfirmScreen, HelpScreen, ModeScreen
from ild_tui.widgets.charts import BrailleChart
from tests.support import answer, append_events, burst, commands, hold_lock, open_live, wait_for
from tools.synthetic_runs import DEAD, FINISHED, LIVE, SHORTGPT, make_app

pytestmark = pytest.mark.usefixtures("tui_env")
SIZE = (160, 48)


def _question(app) -> str:
    return str(app.screen.query_one("#question").render())


def _title(panel: DecisionPanel) -> str:
    return str(panel.query_one("#decision-title").render())


async def _move_heatmap_to(pilot, hm: Heatmap, layer: int) -> None:
    hm.focus()
    for _ in range(40):
        if hm.cursor_layer == layer:
            return
        await pilot.press("down" if hm.cursor_layer < layer else "up")
    raise AssertionError(f"cursor never reached layer {layer}")


def _engine_decides(run, cmd: dict, layer: int, proposed: int = 23) -> None:
    remaining = [x for x in range(30) if x not in (21, 18, 25, 22, layer)]
    append_events(
        run,
        {"type": "command_applied", "command_id": cmd["id"], "name": cmd["name"], "args": cmd["args"], "by": cmd["by"]},
        {
            "type": "decision",
            "iteration": 5,
            "layer": layer,
            "by": "user",
            "proposed": proposed,
            "command_id": cmd["id"],
        },
        {
            "type": "layer_removed",
            "iteration": 5,
            "layer": layer,
            "remaining": remaining,
            "layers": 25,
            "params": 116_000_000,
        },
    )


async def test_live_decision_approve_round_trip(runs):
    run = runs / LIVE
    with hold_lock(run):
        app = make_app(runs, run, poll_interval=0.05)
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_live(app, pilot)
            await wait_for(pilot, lambda: screen.alive is True)
            assert screen.status == "awaiting decision"
            panel = screen.query_one(DecisionPanel)
            assert panel.display and panel.data.iteration == 5 and panel.data.layer == 23
            assert "auto-approve in 1:23" in _title(panel)
            assert screen.query_one(Heatmap).cursor_layer == 23  # the cursor starts on the proposal

            await pilot.press("a")
            assert isinstance(app.screen, ConfirmScreen)  # approving removes a layer: it asks first
            assert "remove original layer 23 in iteration 5: 26 -> 25 layers" in _question(app)
            await answer(app, pilot, "y")
            sent = commands(run)
            assert [(c["name"], c["args"], c["by"]) for c in sent] == [("approve", {"layer": 23}, "dashboard")]
            assert "waiting for the engine" in _title(panel)
            await pilot.press("a")  # already sent: not sent twice (and not asked again)
            assert len(commands(run)) == 1 and not isinstance(app.screen, ConfirmScreen)

            _engine_decides(run, sent[0], 23)
            await wait_for(pilot, lambda: not panel.display)
            hm = screen.query_one(Heatmap)
            await wait_for(pilot, lambda: 23 in hm.data.removed_at)
            assert hm.data.removed_at[23] == 5 and hm.data.proposal is None
            assert screen.check_action("approve", ()) is False  # the key leaves the footer
            lines = [line.text for line in screen.model.lines]
            assert any("decision: remove layer 23 (by user)" in t for t in lines)


async def test_override_from_the_heatmap_cursor_asks_first(runs):
    run = runs / LIVE
    with hold_lock(run):
        app = make_app(runs, run)
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_live(app, pilot)
            hm = screen.query_one(Heatmap)
            panel = screen.query_one(DecisionPanel)
            await _move_heatmap_to(pilot, hm, 24)
            assert panel.selected_layer == 24  # the list follows the heatmap cursor
            await pilot.press("o")
            assert isinstance(app.screen, ConfirmScreen)
            assert "remove original layer 24 in iteration 5: 26 -> 25 layers" in _question(app)
            await answer(app, pilot, "n")
            assert commands(run) == []
            await pilot.press("o")
            await answer(app, pilot, "y")
            await pilot.pause()
            assert [(c["name"], c["args"]) for c in commands(run)] == [("override", {"layer": 24})]


async def test_override_from_the_candidate_list_and_refusals(runs):
    run = runs / LIVE
    with hold_lock(run):
        app = make_app(runs, run)
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_live(app, pilot)
            hm = screen.query_one(Heatmap)
            # a layer removed in an earlier iteration cannot be chosen
            await _move_heatmap_to(pilot, hm, 21)
            await pilot.press("o")
            assert not isinstance(app.screen, ConfirmScreen) and commands(run) == []
            # pick the second candidate in the list: the heatmap cursor follows
            panel = screen.query_one(DecisionPanel)
            panel.table.focus()
            await pilot.press("home", "down")
            await pilot.pause()
            second = panel.data.candidates[1].layer
            assert panel.selected_layer == second
            await wait_for(pilot, lambda: hm.cursor_layer == second)
            await pilot.press("o")
            await answer(app, pilot, "y")
            await pilot.pause()
            assert [(c["name"], c["args"]) for c in commands(run)] == [("override", {"layer": second})]


async def test_mode_pause_and_stop_commands(runs):
    run = runs / LIVE
    with hold_lock(run):
        app = make_app(runs, run)
        async with app.run_test(size=SIZE) as pilot:
            await open_live(app, pilot)
            await pilot.press("m")
            assert isinstance(app.screen, ModeScreen)
            await answer(app, pilot, "1")
            await pilot.press("m")
            await answer(app, pilot, "3")  # the mode the run has: picking it again sends nothing
            await pilot.press("p")
            await pilot.press("X")
            assert isinstance(app.screen, ConfirmScreen)
            assert "Stop run smollm2-distill-live" in _question(app)
            await answer(app, pilot, "y")
            await pilot.pause()
            got = [(c["name"], c["args"]) for c in commands(run)]
            assert got == [("set_mode", {"mode": "manual"}), ("pause", {}), ("stop", {})]


async def test_bursts_typed_before_a_dialog_shows_change_nothing(runs):
    """`o` Enter, `X` Enter, `m` Enter, `a` Enter and a lone `a` as one burst (tmux send-keys, a paste,
    a fast typist): every dialog opens on Cancel and takes no key typed before it was painted."""
    run = runs / LIVE
    with hold_lock(run):
        app = make_app(runs, run)
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_live(app, pilot)
            await _move_heatmap_to(pilot, screen.query_one(Heatmap), 24)
            for keys in (("o", "enter"), ("X", "enter"), ("o", "y"), ("X", "y"), ("m", "enter"), ("m", "2")):
                burst(app, *keys)
                await pilot.pause(0.3)
                assert app.screen is not screen, keys  # the dialog is still up, unanswered
                await answer(app, pilot, "escape")
                assert app.screen is screen
            for keys in (("a",), ("a", "enter"), ("a", "y")):
                burst(app, *keys)
                await pilot.pause(0.3)
                assert isinstance(app.screen, ConfirmScreen), keys
                await answer(app, pilot, "enter")  # on screen, Enter is the default: cancel
                assert app.screen is screen
            assert commands(run) == []


async def test_approve_one_key_setting(runs):
    run = runs / LIVE
    with hold_lock(run):
        app = make_app(runs, run)
        app.settings.approve_one_key = True
        async with app.run_test(size=SIZE) as pilot:
            await open_live(app, pilot)
            await pilot.press("a")
            assert [(c["name"], c["args"]) for c in commands(run)] == [("approve", {"layer": 23})]


async def test_second_dashboard_agrees_and_does_not_ask_again(runs):
    run = runs / LIVE
    with hold_lock(run):
        app = make_app(runs, run)
        async with app.run_test(size=SIZE) as pilot:
            first = await open_live(app, pilot)
            await pilot.press("a")
            await answer(app, pilot, "y")
            cmd = commands(run)[0]
            _engine_decides(run, cmd, 23)
            await wait_for(pilot, lambda: not first.query_one(DecisionPanel).display, timeout=5)
            state_a = first.model.state
    app2 = make_app(runs, run)
    async with app2.run_test(size=SIZE) as pilot:
        second = await open_live(app2, pilot)
        assert not second.query_one(DecisionPanel).display
        assert second.model.state == state_a
        assert second.status == "died"  # nobody holds the lock in this test


async def test_events_arriving_are_batched_and_drawn(runs):
    run = runs / LIVE
    batches = []
    with hold_lock(run):
        app = make_app(runs, run, poll_interval=0.05)
        async with app.run_test(
            size=SIZE, message_hook=lambda m: batches.append(m) if isinstance(m, EventsBatch) else None
        ) as pilot:
            screen = await open_live(app, pilot)
            before = len(screen.model.loss)
            append_events(
                run,
                *[
                    {
                        "type": "train_step",
                        "iteration": 5,
                        "step": i,
                        "loss": 1.0 / (i + 1),
                        "kl": 0.5,
                        "mse": 0.5,
                        "lr": 1e-4,
                        "tokens_per_s": 1000.0,
                    }
                    for i in range(300)
                ],
                {"type": "log", "level": "warning", "message": "hello from the engine"},
            )
            await wait_for(pilot, lambda: len(screen.model.loss) == before + 300)
            assert len({id(m) for m in batches}) <= 3  # one message per poll, not one per event
            await wait_for(pilot, lambda: "540 steps" in str(screen.query_one("#loss-panel").border_title))
            assert screen.model.lines[-1].text.endswith("hello from the engine")


async def test_finished_run_and_toggles(runs):
    app = make_app(runs, runs / FINISHED)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_live(app, pilot)
        assert screen.status == "finished" and not screen.query_one(DecisionPanel).display
        for action in ("approve", "override", "pause", "stop", "mode"):
            assert screen.check_action(action, ()) is False
        await pilot.press("a")
        assert commands(runs / FINISHED) == []
        hm = screen.query_one(Heatmap)
        assert hm.norm == "rank"
        await pilot.press("n")
        assert hm.norm == "iteration" and app.settings.heatmap_norm == "iteration"
        assert "min-max per iteration" in hm.legend().plain
        assert hm.effective_mode() == "blocks"
        await pilot.press("g")
        assert hm.effective_mode() == "shades"
        row = hm.render_line(1)  # layer 0, the most important: full blocks
        assert "█████" in "".join(seg.text for seg in row) and len({seg.style.bgcolor for seg in row}) == 1
        await pilot.press("s")
        assert app.settings.smoothing == 0.6
        await pilot.press("y")
        await pilot.pause(0.3)
        assert app.settings.log_y and "EMA 0.6 · log y" in str(screen.query_one("#loss-panel").border_title)
        await pilot.press("t")
        assert app.theme == "ild-light"
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert app.screen is screen
        # the inspector follows the cursor and shows the per-task breakdown
        await pilot.press("left")
        text = str(screen.query_one("#inspector").render())
        assert "iteration 9" in text and "translate" in text and "rank" in text


async def test_dead_run_and_no_healing_run(runs):
    app = make_app(runs, runs / DEAD)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_live(app, pilot)
        assert screen.status == "died"
        assert "engine dead" in str(screen.query_one("#run-header").render())
    app = make_app(runs, runs / SHORTGPT)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_live(app, pilot)
        chart = screen.query_one("#loss-chart", BrailleChart)
        assert "shortgpt does not heal" in str(chart.render())
        assert screen.query_one(Heatmap).data.metric == "bi"


async def test_escape_goes_to_the_runs_screen_and_back(runs):
    from ild_tui.screens.runs import RunsScreen

    app = make_app(runs, runs / FINISHED)
    async with app.run_test(size=SIZE) as pilot:
        await open_live(app, pilot)
        await pilot.press("r")
        assert isinstance(app.screen, RunsScreen)
        await wait_for(pilot, lambda: app.screen.scanned)
        assert len(app.screen.rows) == 4
        assert len(read_all(runs / FINISHED / "events.jsonl")) == 752


async def test_panels_show_what_newer_engines_log(tmp_path):
    from tools.synthetic_runs import synth_run

    runs = tmp_path / "runs"
    synth_run(runs / "split", name="split", split=True, steps_per_iter=8, end="floor", end_iteration=3)
    app = make_app(runs, runs / "split")
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_live(app, pilot)
        assert "~ partial" in str(screen.query_one("#heat-legend").render())
        hm = screen.query_one(Heatmap)
        assert any(seg.text.strip() == "~" for y in range(1, 31) for seg in hm.render_line(y))
        assert "% kl, " in str(screen.query_one("#loss-status").render())  # each term's share of the total
        chart = str(screen.query_one("#loss-chart", BrailleChart).render())
        assert "kl term" in chart and "mse term" in chart
        assert "select" in str(screen.query_one("#score-chart", BrailleChart).render())
        assert screen.status == "finished"
        assert any("run finished (floor)" in line.text for line in screen.model.lines)


async def test_a_fixed_removal_run_while_it_heals(tmp_path):
    """``--removals``: nothing is scored, so the heatmap names the removals instead of an empty
    grid; healing emits steps, not phases, so the header counts steps (not the teacher cache's 0/1)."""
    from engine.runlog.layout import create

    run = tmp_path / "runs" / "fixed"
    create(run)
    started = {"type": "run_started", "name": "fixed", "model": "m", "strategy": "iterative-distill"}
    events = [{**started, "start_layers": 30, "target_layers": 27, "mode": "auto"}]
    remaining = list(range(30))
    for it, layer in enumerate([14, 13, 12], start=1):
        remaining.remove(layer)
        events += [
            {"type": "decision", "iteration": it, "layer": layer, "by": "fixed", "proposed": None},
            {"type": "layer_removed", "iteration": it, "layer": layer, "remaining": list(remaining)},
        ]
    events += [
        {"type": "phase", "iteration": 3, "phase": "healing", "detail": "layers [10, 11, 15, 16] (original)"},
        {"type": "phase", "iteration": 3, "phase": "healing", "detail": "teacher cache", "done": 0, "total": 1},
    ]
    events += [
        {"type": "train_step", "iteration": 3, "step": s, "steps": 64, "loss": 2.0, "kl_term": 1.5, "mse_term": 0.5}
        for s in (1, 2, 3)
    ]
    append_events(run, *events)
    with hold_lock(run):
        app = make_app(run.parent, run)
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_live(app, pilot)
            hm = screen.query_one(Heatmap)
            assert "fixed removals, nothing scored: 14, 13, 12" in "".join(seg.text for seg in hm.render_line(1))
            header = str(screen.query_one("#run-header").render())
            assert "healing (step 3/64)" in header and "teacher cache" not in header


async def test_paused_then_approved_from_the_cli_is_not_asked_again(runs):
    """Manual mode, `p`, then `ild approve` from a shell: the engine applies the approve while paused
    and removes the layer only when resumed. The question is answered: no panel, no a/o, and the
    header says what will happen; a re-attached dashboard agrees."""
    run = runs / LIVE
    append_events(
        run,
        {"type": "command_applied", "command_id": "c1", "name": "pause", "args": {}, "by": "dashboard"},
        {"type": "command_applied", "command_id": "c2", "name": "approve", "args": {}, "by": "cli"},
    )
    with hold_lock(run):
        for _attach in range(2):
            app = make_app(runs, run)
            async with app.run_test(size=SIZE) as pilot:
                screen = await open_live(app, pilot)
                await wait_for(pilot, lambda s=screen: s.alive is True)
                await pilot.pause(0.3)
                assert screen.status == "paused"
                assert not screen.query_one(DecisionPanel).display
                assert screen.check_action("approve", ()) is False and screen.check_action("override", ()) is False
                assert screen.check_action("resume_engine", ()) is True  # p resumes it
                assert screen.check_action("pause", ()) is False
                header = str(screen.query_one("#run-header").render())
                assert "paused" in header and "approve 23 taken: the engine removes it when resumed" in header
                await pilot.press("o")
                await pilot.press("a")
                assert not isinstance(app.screen, ConfirmScreen) and commands(run) == []
                if _attach == 1:
                    await pilot.press("p")
                    assert [c["name"] for c in commands(run)] == ["resume"]


async def test_a_dead_run_offers_no_steering_and_queues_nothing(runs):
    app = make_app(runs, runs / DEAD)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_live(app, pilot)
        assert screen.status == "died"
        for action in ("approve", "override", "pause", "stop", "mode"):
            assert screen.check_action(action, ()) is False, action
        for key in ("p", "m", "X", "a", "o"):
            await pilot.press(key)
            await pilot.pause(0.05)
            assert app.screen is screen, key
        assert commands(runs / DEAD) == []
    # the live run, its engine gone, with its question still open: not offered either
    app = make_app(runs, runs / LIVE)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_live(app, pilot)
        assert screen.status == "died" and not screen.query_one(DecisionPanel).display
        await pilot.press("a")
        await pilot.press("p")
        assert app.screen is screen and commands(runs / LIVE) == []


async def test_a_new_run_is_starting_until_its_engine_speaks_never_dead(tmp_path):
    """The engine takes its lock, then writes its first event; the dashboard polls the log four times
    a second and the lock once a second: the first event must not be shown as from a dead engine."""
    from engine.runlog.layout import create

    run = tmp_path / "runs" / "fresh"
    create(run)
    engine = {"alive": False}
    app = make_app(run.parent, run, liveness=lambda rd: engine["alive"], poll_interval=0.05)
    app.clock = __import__("time").time  # the starting grace counts from the directory's real mtime
    seen: list[str] = []
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_live(app, pilot)
        for _ in range(10):
            seen.append(screen.status)
            await pilot.pause(0.02)
        engine["alive"] = True
        append_events(run, {"type": "engine_started", "pid": 1, "host": "h", "resumed_from": None})
        for _ in range(75):
            seen.append(screen.status)
            header = str(screen.query_one("#run-header").render())
            assert "engine dead" not in header
            await pilot.pause(0.02)
    assert seen[0] == "starting" and seen[-1] == "running" and "died" not in seen, seen


async def test_at_80x24_every_panel_is_reachable_and_fits(runs):
    """Small terminals show one main panel at a time; 1-4 pick one, z zooms the focused one."""
    app = make_app(runs, runs / FINISHED)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_live(app, pilot)
        assert screen.has_class("-compact")
        for key, panel_id in (("1", "heat-panel"), ("2", "scores-panel"), ("3", "loss-panel"), ("4", "event-log")):
            await pilot.press(key)
            await pilot.pause(0.1)
            panel = screen.query_one(f"#{panel_id}")
            assert panel.display and panel.region.width > 0 and panel.region.height >= 4, panel_id
            assert panel.region.right <= 80 and panel.region.bottom <= 24, (panel_id, panel.region)
            tabs = str(screen.query_one("#panel-tabs").render())
            assert f"{key} " in tabs and "▸" in tabs
        await pilot.press("3")
        await pilot.press("z")
        await pilot.pause(0.1)
        assert screen.maximized is screen.query_one("#loss-panel")
        assert screen.query_one("#loss-panel").region.height >= 18
        await pilot.press("z")
        assert screen.maximized is None
    for size in ((60, 20), (100, 30), (120, 30)):  # where the loss panel vanished, the scores ran off
        app = make_app(runs, runs / LIVE, liveness=lambda rd: True)
        async with app.run_test(size=size) as pilot:
            screen = await open_live(app, pilot)
            for key in "1234":
                await pilot.press(key)
                await pilot.pause(0.05)
                for widget in screen.query(".panel, #event-log, #decision"):
                    if widget.display and widget.region.area:
                        r = widget.region
                        assert r.right <= size[0] and r.bottom <= size[1], (size, key, widget.id, r)
            panel = screen.query_one("#loss-panel")
            await pilot.press("3")
            assert panel.display and panel.region.height >= 3, size
    app = make_app(runs, runs / FINISHED)
    async with app.run_test(size=(160, 48)) as pilot:
        screen = await open_live(app, pilot)
        assert not screen.has_class("-compact")
        assert all(screen.query_one(f"#{p}").display for p in ("heat-panel", "scores-panel", "loss-panel"))
