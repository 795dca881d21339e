"""The dashboard's plain-Python parts: the incremental model, the views, charts, settings, themes."""

import math

import pytest

from engine.runlog.tailer import read_all
from ild_tui.live.decision import decision_view
from ild_tui.live.eventlog import describe
from ild_tui.live.heatmap import heatmap_view
from ild_tui.live.losses import LossSeries, Smoother, ema
from ild_tui.live.model import LiveModel
from ild_tui.live.scores import scores_view
from ild_tui.settings import Settings
from ild_tui.widgets.braille import ChartSpec, HLine, Series, VLine, bucket, render_chart
from ild_tui.widgets.palette import Palette, contrast, interpolate, shade
from tools.synthetic_runs import DEAD, FINISHED, FIXTURES, LIVE, SHORTGPT, build_fixtures


def _model(name: str) -> LiveModel:
    m = LiveModel()
    m.apply(read_all(FIXTURES / name / "events.jsonl"))
    return m


def test_finished_run_views():
    m = _model(FINISHED)
    s = m.state
    assert s.status(alive=False, now=0.0) == "finished"
    hm = heatmap_view(s)
    assert hm.layers == list(range(30)) and hm.iterations == list(range(1, 11))
    assert hm.planned == 10 and hm.proposal is None
    assert set(hm.removed_at) == set(s.removed_layers) and len(hm.removed_at) == 10
    # a removed layer is scored up to the iteration it goes in, and not after (a gap)
    layer, when = next(iter(hm.removed_at.items()))
    assert layer in hm.raw[when - 1] and all(layer not in col for col in hm.raw[when:])
    # the user's overrides are kept: iteration 4 removed 18 although something else was proposed
    assert s.decisions[4]["layer"] == 18 and s.decisions[4]["proposed"] != 18 and s.decisions[4]["by"] == "user"
    assert decision_view(s) is None  # a settled run asks nothing
    sv = scores_view(s)
    assert sv.teacher == pytest.approx(0.4708, abs=1e-3)
    assert [it for it, _ in sv.removal] == list(range(1, 11)) == [it for it, _ in sv.healing]
    assert sv.best_path[0][0] == 0 and len(sv.best_path) == 11 and sv.latest_label == "iter 10 after healing"
    assert len(m.loss) == 600 and [it for _, it in m.loss.boundaries()] == list(range(1, 11))


@pytest.mark.parametrize("norm", ["rank", "iteration", "global"])
def test_heatmap_normalisation_in_unit_range(norm):
    hm = heatmap_view(_model(FINISHED).state)
    cols = hm.normalised(norm)
    assert len(cols) == 10
    for col, raw in zip(cols, hm.raw):
        assert set(col) == set(raw)
        assert all(0.0 <= v <= 1.0 for v in col.values())
    if norm == "rank":  # the least important layer of each column is 0, the most 1
        for col, raw in zip(cols, hm.raw):
            lo = min(raw, key=lambda k: (raw[k], k))
            assert col[lo] == 0.0 and max(col.values()) == 1.0


def test_live_run_pending_decision():
    s = _model(LIVE).state
    d = decision_view(s)
    assert d is not None and d.iteration == 5 and d.layer == 23 and d.mode == "auto-after"
    assert d.deadline is not None and d.metric == "task_drop"
    assert len(d.candidates) == 26 and d.candidates[0].layer == 23 and d.candidates[0].proposed
    assert [c.rank for c in d.candidates] == list(range(1, 27))
    # deltas are against the model the iteration starts from: iteration 4 after healing
    before = s.evals[(4, "after_healing", "report")]
    c = d.candidates[1]
    imp = s.importance[5]
    assert c.task_deltas["lm"] == pytest.approx(imp["per_task"]["lm"][str(c.layer)] - before["tasks"]["lm"])
    assert c.delta == pytest.approx(imp["aggregates"][str(c.layer)] - before["aggregate"])
    assert d.tasks[:2] == ["lm", "ppl"]
    hm = heatmap_view(s)
    assert hm.proposal == (5, 23)


def test_decision_settled_by_a_later_event_is_not_asked_again():
    events = read_all(FIXTURES / LIVE / "events.jsonl")
    m = LiveModel()
    m.apply(events)
    assert decision_view(m.state) is not None
    seq = events[-1]["seq"]
    m.apply([{"seq": seq + 1, "t": 1.0, "type": "decision", "iteration": 5, "layer": 26, "by": "user", "proposed": 23}])
    assert decision_view(m.state) is None
    # replaying everything (a second dashboard attaching later) agrees
    again = LiveModel()
    again.apply(
        events
        + [{"seq": seq + 1, "t": 1.0, "type": "decision", "iteration": 5, "layer": 26, "by": "user", "proposed": 23}]
    )
    assert decision_view(again.state) is None and again.state == m.state


def test_awaiting_with_bare_candidate_numbers_keeps_the_proposal_details():
    m = _model(LIVE)
    it = 5
    m.apply(
        [
            {
                "seq": 10_000,
                "t": 2.0,
                "type": "awaiting_decision",
                "iteration": it,
                "layer": 23,
                "mode": "manual",
                "deadline": None,
                "candidates": [23, 26, 24],
            }
        ]
    )
    d = decision_view(m.state)
    assert d.mode == "manual" and d.deadline is None
    assert len(d.candidates) == 26 and d.candidates[0].score is not None and d.candidates[0].task_deltas


def test_dead_and_shortgpt_runs():
    dead = _model(DEAD).state
    assert dead.status(alive=False, now=0.0) == "died" and dead.status(alive=True, now=0.0) == "running"
    assert dead.status(alive=None, now=0.0) == "unknown"
    assert dead.removed_layers == [21, 25, 23] and decision_view(dead) is None
    sg = _model(SHORTGPT)
    assert len(sg.loss) == 0  # no healing, no train steps: the loss panel shows its empty state
    hm = heatmap_view(sg.state)
    assert hm.metric == "bi" and len(hm.iterations) == 10
    sv = scores_view(sg.state)
    assert sv.healing == [] and len(sv.removal) == 10


def test_loss_series_last_writer_wins_and_sorts():
    ls = LossSeries()
    ls.add({"iteration": 1, "step": 0, "loss": 2.0, "kl": 1.0, "mse": 1.0})
    ls.add({"iteration": 1, "step": 1, "loss": 1.5})
    ls.add({"iteration": 2, "step": 0, "loss": 1.8})
    gen = ls.generation
    ls.add({"iteration": 1, "step": 1, "loss": 1.2})  # a resumed engine re-emits a step
    assert len(ls) == 3 and ls.values["loss"][1] == 1.2 and ls.generation > gen
    ls.add({"iteration": 1, "step": 2, "loss": 1.0})  # late: sorted in before iteration 2
    assert ls.boundaries() == [(0, 1), (3, 2)]
    assert ls.values["loss"] == [2.0, 1.2, 1.0, 1.8]
    assert math.isnan(ls.values["kl"][1]) and ls.present["kl"]
    # the total is derived when only the parts are logged
    ls.add({"iteration": 3, "step": 0, "kl": 100.0, "mse": 0.5})
    assert ls.values["loss"][-1] == 100.5


def test_ema_is_debiased_and_incremental():
    vals = [10.0, 0.0, 0.0, 0.0]
    out, _ = ema(vals, 0.9)
    assert out[0] == pytest.approx(10.0)  # no pull toward 0 at the start
    assert out[-1] == pytest.approx(10 * 0.9**3 * 0.1 / (1 - 0.9**4))
    ls = LossSeries()
    sm = Smoother()
    for i in range(50):
        ls.add({"iteration": 1, "step": i, "loss": float(i % 7)})
    first = list(sm.get(ls, "loss", 0.9))
    for i in range(50, 80):
        ls.add({"iteration": 1, "step": i, "loss": float(i % 7)})
    incremental = sm.get(ls, "loss", 0.9)
    full, _ = ema(ls.values["loss"], 0.9)
    assert incremental[:50] == first and incremental == pytest.approx(full)
    assert sm.get(ls, "loss", 0.0) is ls.values["loss"]


def test_bucket_keeps_the_band():
    vals = [float(i % 10) for i in range(1000)]
    b = bucket(vals, 10)
    assert len(b) == 10 and all(x == (0.0, 9.0, 9.0) for x in b)
    with_nan = [1.0, math.nan, 3.0, math.nan]
    assert bucket(with_nan, 2) == [(1.0, 1.0, 1.0), (3.0, 3.0, 3.0)]
    assert bucket([], 3) == [None, None, None]


def test_render_chart_shapes_and_empty_state():
    spec = ChartSpec(
        series=[
            Series("a", "#ff0000", dense=[math.sin(i / 50) + 2 for i in range(5000)]),
            Series("p", "#00ff00", points=[(0, 1.5), (4999, 2.5)], kind="linepoints"),
        ],
        hlines=[HLine(2.0, "#888888", "base")],
        vlines=[VLine(2500, "2")],
        integer_x=True,
    )
    lines = render_chart(spec, 60, 14)
    assert len(lines) == 14 and all(l.cell_len <= 60 for l in lines)
    text = "\n".join(l.plain for l in lines)
    assert any("\u2800" < ch <= "\u28ff" for ch in text)  # braille dots
    assert "┊" in text and "●" in text and "base" in lines[-1].plain
    log = render_chart(ChartSpec(series=[Series("a", "#ffffff", dense=[1e-3, 1e-2, 1e-1, 1.0])], log_y=True), 40, 8)
    assert "0.001" in "\n".join(l.plain for l in log)
    empty = render_chart(ChartSpec(empty="nothing to see"), 40, 8)
    assert "nothing to see" in "\n".join(l.plain for l in empty)


def test_describe_skips_chatter():
    assert describe({"type": "train_step", "loss": 1}) is None
    assert describe({"type": "phase", "phase": "scoring", "done": 3, "total": 9}) is None
    line = describe({"type": "decision", "iteration": 3, "layer": 7, "by": "user", "proposed": 9, "seq": 4, "t": 5.0})
    assert "overriding proposed 9" in line.text and line.level == "notice"
    assert describe({"type": "run_failed", "error": "boom", "hint": "resume", "seq": 5, "t": 6.0}).level == "error"


def test_fixtures_are_reproducible(tmp_path):
    build_fixtures(tmp_path)
    for name in (FINISHED, LIVE, DEAD, SHORTGPT):
        assert (tmp_path / name / "events.jsonl").read_bytes() == (FIXTURES / name / "events.jsonl").read_bytes(), (
            f"tests/fixtures/runs/{name} is stale: regenerate with `python -m tools.synthetic_runs`"
        )


def test_settings_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("ILD_CONFIG_DIR", str(tmp_path))
    assert Settings.load() == Settings()
    s = Settings(theme="ild-light", heatmap_norm="global", smoothing=0.9, log_y=True)
    assert s.save() == tmp_path / "config.toml"
    assert Settings.load() == s
    (tmp_path / "config.toml").write_text("this is [not toml")
    assert Settings.load() == Settings()


def test_theme_files_and_palettes(tmp_path):
    from ild_tui.app import THEMES_DIR, load_theme_files

    themes = load_theme_files([THEMES_DIR, tmp_path])
    assert {"ild-dark", "ild-light", "ild-colorblind"} <= set(themes)
    assert not themes["ild-light"][0].dark and themes["ild-dark"][0].dark
    cb = themes["ild-colorblind"][1]
    assert cb.heatmap[0] == "#00224e" and cb.loss == "#e69f00"  # cividis, Okabe-Ito
    # a user theme in the config directory is picked up; a broken one is skipped
    (tmp_path / "mine.toml").write_text(
        'name = "mine"\nprimary = "#123456"\n[heatmap]\ncolors = ["#000000", "#ffffff"]\n'
    )
    (tmp_path / "broken.toml").write_text("primary = ")
    themes = load_theme_files([THEMES_DIR, tmp_path])
    assert "mine" in themes and themes["mine"][1].heatmap == ["#000000", "#ffffff"]


def test_palette_helpers():
    steps = interpolate(["#000000", "#ffffff"], 3)
    assert steps == ["#000000", "#808080", "#ffffff"]
    assert contrast("#fde725") == "#000000" and contrast("#440154") == "#ffffff"
    assert [shade(v) for v in (0.0, 0.3, 0.6, 1.0)] == ["░", "▒", "▓", "█"]
    p = Palette()
    assert p.color_at(0.0) == p.heatmap[0] and p.color_at(1.0) == p.heatmap[-1]


def test_views_of_the_fields_newer_engines_log(tmp_path):
    from ild_tui.live.inspector import inspect_text
    from ild_tui.live.losses import kl_share
    from tools.synthetic_runs import synth_run

    synth_run(tmp_path / "s", name="s", split=True, steps_per_iter=5, end="floor", end_iteration=3)
    m = LiveModel()
    m.apply(read_all(tmp_path / "s" / "events.jsonl"))
    s = m.state
    # importance scored on part of the items: still a value for every layer, marked
    hm = heatmap_view(s)
    assert len(hm.partial) == 3 and all(len(p) == 3 for p in hm.partial)
    assert all(p <= set(col) for p, col in zip(hm.partial, hm.raw))
    layer = sorted(hm.partial[0])[0]
    assert "partial (4 items)" in inspect_text(s, layer, 1).plain
    assert "partial" not in inspect_text(s, min(set(hm.raw[0]) - hm.partial[0]), 1).plain
    # scores: report leads, select is the second line
    sv = scores_view(s)
    assert [it for it, _ in sv.best_path] == [0, 1, 2, 3] == [it for it, _ in sv.select_path]
    assert all(sel > rep for (_, rep), (_, sel) in zip(sv.best_path, sv.select_path))
    assert sv.teacher == s.teacher_eval("report")["aggregate"] and sv.latest["part"] == "report"
    # losses: the weighted terms are what is plotted, and the KL's share of the loss
    assert m.loss.shown() == ("loss", "kl_term", "mse_term")
    last = m.loss.last
    assert kl_share(last) == pytest.approx(last["kl_term"] / (last["kl_term"] + last["mse_term"]))
    # old runs keep plotting raw KL and MSE
    assert _model(FINISHED).loss.shown() == ("loss", "kl", "mse") and kl_share(_model(FINISHED).loss.last) is None


def test_fixed_removals_are_decisions_without_a_proposal(tmp_path):
    from engine.runlog.layout import create
    from tests.support import append_events

    create(tmp_path / "f")
    append_events(
        tmp_path / "f",
        {
            "type": "run_started",
            "name": "f",
            "model": "m",
            "strategy": "iterative-distill",
            "start_layers": 6,
            "target_layers": 4,
            "mode": "auto",
        },
        {"type": "decision", "iteration": 1, "layer": 3, "by": "fixed", "proposed": None},
        {"type": "layer_removed", "iteration": 1, "layer": 3, "remaining": [0, 1, 2, 4, 5]},
    )
    m = LiveModel()
    m.apply(read_all(tmp_path / "f" / "events.jsonl"))
    assert decision_view(m.state) is None
    assert heatmap_view(m.state).removed_by == {3: "fixed"}
    assert any(line.text == "[1] decision: remove layer 3 (by fixed)" for line in m.lines)


def test_panels_redraw_on_registered_event_types_only():
    from engine.runlog.schema import EVENTS
    from ild_tui.live.decision import DecisionPanel
    from ild_tui.live.eventlog import EventLog
    from ild_tui.live.heatmap import HeatmapPanel
    from ild_tui.live.losses import LossPanel
    from ild_tui.live.scores import ScoresPanel
    from ild_tui.widgets.header import RunHeader

    panels = (RunHeader, HeatmapPanel, DecisionPanel, ScoresPanel, LossPanel, EventLog)
    for panel in panels:
        assert panel.EVENTS and set(EVENTS) >= panel.EVENTS, panel
    assert set().union(*(p.EVENTS for p in panels)) == set(EVENTS)  # every event shows somewhere
