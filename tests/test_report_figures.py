"""The report's figures: nothing cut at an edge (read back from the PNG), legends beside or below
the data, labelled colour bars, and runs of different teachers each against their own."""

from __future__ import annotations

import matplotlib.image
import pytest

from ild_tui.report import plots
from ild_tui.report.facts import load_runs
from tools.synthetic_runs import DEAD, FINISHED, LIVE, SHORTGPT, synth_run


@pytest.fixture
def all_runs(runs):
    synth_run(runs / "split", name="split", split=True, steps_per_iter=12, seed=7, target_layers=24)
    synth_run(runs / "narrow", name="narrow", start_layers=30, target_layers=28, steps_per_iter=4, seed=3)
    synth_run(runs / "other", name="other", model="another-model", target_layers=26, steps_per_iter=4, seed=5)
    return runs


@pytest.fixture
def figures(monkeypatch):
    """Every figure as saved, with the Figure object it was saved from."""
    saved = []
    save = plots._save

    def keep(fig, path):
        out = save(fig, path)
        saved.append((fig, out))
        return out

    monkeypatch.setattr(plots, "_save", keep)
    return saved


def _draw_all(runs, out):
    plots.aggregate_figure(runs, out / "fig9.png")
    plots.select_report_figure(runs, out / "select.png")
    plots.removal_figure(runs, out / "fig10.png")
    for r in runs:
        plots.importance_figure(r, out / f"heat-{r.label}.png")
        plots.loss_figure(r, out / f"loss-{r.label}.png")


def test_nothing_is_cut_at_an_edge_of_any_figure(all_runs, figures, tmp_path):
    names = (FINISHED, SHORTGPT, DEAD, LIVE, "split", "narrow")
    runs = load_runs([all_runs / n for n in names])
    _draw_all(runs, tmp_path)
    assert len(figures) >= 12
    for fig, path in figures:
        # Read back: the outermost pixels are background all round (a cut label reaches the edge).
        png = matplotlib.image.imread(path)
        frame = [png[:2].reshape(-1, png.shape[-1]), png[-2:].reshape(-1, png.shape[-1])]
        frame += [png[:, :2].reshape(-1, png.shape[-1]), png[:, -2:].reshape(-1, png.shape[-1])]
        for edge in frame:
            assert edge[:, :3].min() > 0.99, f"{path.name}: something drawn reaches the edge"
        # And by bounding boxes: every text, legend and axes lies inside the figure.
        renderer = fig.canvas.get_renderer()
        w, h = fig.bbox.width, fig.bbox.height
        for artist in [*fig.texts, *fig.legends, *fig.axes, *[t for ax in fig.axes for t in ax.texts]]:
            box = artist.get_window_extent(renderer)
            assert box.x0 >= -0.5 and box.y0 >= -0.5 and box.x1 <= w + 0.5 and box.y1 <= h + 0.5, (path.name, artist)
        for ax in fig.axes:
            box = ax.get_tightbbox(renderer)
            assert box.x0 >= -0.5 and box.y0 >= -0.5 and box.x1 <= w + 0.5 and box.y1 <= h + 0.5, path.name


def test_legends_stay_off_the_data_and_colour_bars_say_what_they_mean(all_runs, figures, tmp_path):
    runs = load_runs([all_runs / n for n in (FINISHED, SHORTGPT, "split")])
    _draw_all(runs, tmp_path)
    for fig, path in figures:
        renderer = fig.canvas.get_renderer()
        plot_axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
        legends = [*fig.legends, *[ax.get_legend() for ax in plot_axes if ax.get_legend()]]
        for legend in legends:
            lbox = legend.get_window_extent(renderer)
            for ax in plot_axes:
                assert not lbox.overlaps(ax.get_window_extent(renderer)), f"{path.name}: a legend covers the data"
        bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
        for bar in bars:
            assert bar.get_ylabel(), f"{path.name}: an unlabelled colour bar"
            assert [t.get_text() for t in bar.get_yticklabels()] == ["least", "middle", "most"]


def test_runs_of_different_teachers_are_drawn_against_their_own(all_runs, figures, tmp_path):
    same = load_runs([all_runs / n for n in (FINISHED, SHORTGPT)])
    assert not plots.relative(same, "report")
    mixed = load_runs([all_runs / n for n in (FINISHED, "other")])
    assert plots.relative(mixed, "report")
    plots.aggregate_figure(mixed, tmp_path / "fig9.png")
    fig, _ = figures[-1]
    ax = fig.axes[0]
    assert "own teacher" in ax.get_ylabel() and "teachers differ" in ax.get_title()
    first = [line for line in ax.get_lines() if line.get_label() in {r.label for r in mixed}]
    assert first and all(line.get_ydata()[0] == pytest.approx(100.0) for line in first)  # the teacher at 0 removed
