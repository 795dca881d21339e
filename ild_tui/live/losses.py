"""The loss panel: healing losses across iterations, kept incrementally, drawn as braille curves.

``LossSeries`` holds one point per ``train_step`` (last writer wins per ``(iteration, step)``, so a
resumed engine's re-emitted steps replace the old ones) in step order across iterations; the
chart buckets the full-resolution series per dot column, and ``Smoother`` extends its debiased
EMA as points arrive, so a 100,000-step run stays cheap to follow.

The loss is a sum of named terms (``train_step.terms``; ``kl`` and ``mse`` by default, any other
registered in ``engine.distill.terms``; older runs' fixed fields are read as those two). When the
engine logs the weighted terms, the panel plots them - the balance between them is what the weights
set - and says each one's share; colours and dashes go to the terms in turn.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from rich.style import Style
from rich.text import Text
from textual.containers import Vertical
from textual.widgets import Static

from engine.runlog.loss_terms import shares, step_terms
from engine.runlog.strategies import STRATEGIES

from ..widgets.braille import ChartSpec, Series, VLine
from ..widgets.charts import BrailleChart

if TYPE_CHECKING:
    from .model import LiveModel

SMOOTHING_STEPS = (0.0, 0.6, 0.9, 0.97, 0.99)
_NAN = math.nan
_isfinite = math.isfinite
DASHES = ("dashed", "dotted")  # the terms' curves, told apart without colour too


def label(column: str) -> str:
    """A column's legend: ``loss`` the total, ``<term>_term`` a weighted term, ``<term>`` an unweighted one."""
    return "total" if column == "loss" else column.removesuffix("_term") + (" term" if column.endswith("_term") else "")


def term_colors(pal) -> tuple[str, ...]:
    """The colours the terms take in turn (the total has its own)."""
    return (pal.kl, pal.mse, pal.after_healing, pal.after_removal, pal.teacher)


class LossSeries:
    """Training losses in step order across iterations; x is the point's index.

    Columns: ``loss``, and for each term a run logs (in the order they first appear) ``<term>_term``
    (weighted) and ``<term>`` (unweighted); a step without a column's value has NaN there."""

    def __init__(self) -> None:
        self.keys: list[tuple[int, int]] = []  # (iteration, step)
        self.iterations: list[int] = []
        self.names: list[str] = []  # the terms, in the order they first appeared
        self.values: dict[str, list[float]] = {"loss": []}
        self.present: dict[str, bool] = {"loss": False}
        self.last: dict | None = None
        self.generation = 0  # bumps when points are replaced or re-sorted (caches restart)
        self._index: dict[tuple, int] = {}
        self._sorted = True
        self._bounds: tuple | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def _column(self, name: str) -> list[float]:
        column = self.values.get(name)
        if column is None:  # a term seen for the first time: a gap at every earlier step
            column = self.values[name] = [_NAN] * len(self.keys)
            self.present[name] = False
        return column

    def add(self, event: dict) -> None:
        """One *valid* train_step event (see ``RunState``): its fields have their registered types."""
        it = event["iteration"]
        key = (it, event["step"])
        weighted, unweighted = step_terms(event)  # older runs' fixed fields included
        for name in (*weighted, *unweighted):
            if name not in self.names:
                self.names.append(name)
        loss = event.get("loss")
        if loss is not None and not _isfinite(loss):  # NaN or inf from a hand-written log: a gap
            loss = None
        if loss is None:  # the total is derived when only the parts are logged
            parts = list(weighted.values()) or list(unweighted.values())
            if parts and None not in parts:
                loss = sum(parts)
        got = {"loss": loss, **{f"{n}_term": v for n, v in weighted.items()}, **unweighted}
        self.last = event
        for name in got:
            self._column(name)
        i = self._index.get(key)
        if i is not None:
            for name, column in self.values.items():
                v = got.get(name)
                column[i] = _NAN if v is None else v
                self.present[name] |= v is not None
            self.generation += 1
            return
        if self.keys and key < self.keys[-1]:
            self._sorted = False
        self._index[key] = len(self.keys)
        self.keys.append(key)
        self.iterations.append(it)
        present = self.present
        for name, column in self.values.items():
            v = got.get(name)
            if v is None:
                column.append(_NAN)
            else:
                column.append(v)
                if not present[name]:
                    present[name] = True

    def ensure_sorted(self) -> None:
        if self._sorted:
            return
        order = sorted(range(len(self.keys)), key=self.keys.__getitem__)
        self.keys = [self.keys[i] for i in order]
        self.iterations = [self.iterations[i] for i in order]
        for name, vs in self.values.items():
            self.values[name] = [vs[i] for i in order]
        self._index = {k: i for i, k in enumerate(self.keys)}
        self._sorted = True
        self.generation += 1

    def boundaries(self) -> list[tuple[int, int]]:
        """``(x, iteration)`` where each iteration's steps start (extended as points arrive)."""
        self.ensure_sorted()
        cache = self._bounds
        if cache is None or cache[0] != self.generation or cache[1] > len(self.iterations):
            cache = (self.generation, 0, [])
        _, done, out = cache
        prev: object = self.iterations[done - 1] if done else object()
        iterations = self.iterations
        for x in range(done, len(iterations)):
            it = iterations[x]
            if it != prev:
                out.append((x, it))
                prev = it
        self._bounds = (self.generation, len(iterations), out)
        return list(out)

    def shown(self) -> tuple[str, ...]:
        """What the chart plots: the weighted terms when logged (they add up to the total), else the unweighted ones."""
        weighted = [f"{n}_term" for n in self.names if self.present.get(f"{n}_term")]
        parts = weighted or [n for n in self.names if self.present.get(n)]
        return tuple(["loss"] if self.present["loss"] else []) + tuple(parts)


def kl_share(step: dict) -> float | None:
    """The KL's share of the loss in one step (weighted terms), or None when not logged."""
    split = shares(step_terms(step)[0])
    return split.get("kl") if split else None


def ema(
    values: list[float],
    alpha: float,
    start: int = 0,
    prev: tuple[float, float] | None = None,
    out: list[float] | None = None,
) -> tuple[list[float], tuple[float, float]]:
    """Debiased EMA (TensorBoard's fix for the bias toward the first value); NaNs pass through.

    ``prev``/``out`` continue a previous call from ``start`` so appending stays O(new points).
    Returns the smoothed list and the running ``(accumulator, weight)``.
    """
    acc, weight = prev if prev else (0.0, 0.0)
    out = out if out is not None else []
    for v in values[start:]:
        if v != v:  # NaN
            out.append(v)
            continue
        acc = alpha * acc + (1 - alpha) * v
        weight = alpha * weight + (1 - alpha)
        out.append(acc / weight if weight else v)
    return out, (acc, weight)


class Smoother:
    """Caches the smoothed copy of a series and extends it when points are appended."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple] = {}

    def get(self, series: LossSeries, name: str, alpha: float) -> list[float]:
        values = series.values[name]
        if alpha <= 0:
            return values
        cached = self._cache.get(name)
        if cached and cached[0] == (series.generation, alpha) and cached[1] <= len(values):
            _, done, out, run = cached
            if done < len(values):
                out, run = ema(values, alpha, done, run, out)
        else:
            out, run = ema(values, alpha)
        self._cache[name] = ((series.generation, alpha), len(values), out, run)
        return out


class LossPanel(Vertical, can_focus=True):
    """The chart and a status line with the last step's numbers."""

    EVENTS = frozenset({"train_step", "run_started"})

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._smoother = Smoother()

    def compose(self):
        yield BrailleChart(id="loss-chart")
        yield Static(id="loss-status")

    def on_mount(self) -> None:
        self.border_title = "Loss"

    def draw(self, model: LiveModel) -> None:
        pal = self.app.palette
        settings = self.app.settings
        state = model.state
        loss = model.loss
        loss.ensure_sorted()
        alpha = settings.smoothing
        cycle = term_colors(pal)
        series = []
        for n in loss.shown():
            k = loss.names.index(n.removesuffix("_term")) if n != "loss" else -1  # the term's place: its colour
            series.append(
                Series(
                    label(n),
                    pal.loss if k < 0 else cycle[k % len(cycle)],
                    dense=self._smoother.get(loss, n, alpha),
                    z=1 if k < 0 else 0,
                    dash="solid" if k < 0 else DASHES[k % len(DASHES)],
                )
            )
        bounds = loss.boundaries()
        vlines = [VLine(x, str(it)) for x, it in bounds[1:]] if len(bounds) > 1 else []
        strategy = STRATEGIES.get(state.strategy or "")
        if strategy is not None and not strategy.heal:
            empty = f"no loss curves: {state.strategy} does not heal"
        else:
            empty = "no training steps yet"
        spec = ChartSpec(
            series=series,
            vlines=vlines,
            log_y=settings.log_y,
            integer_x=True,
            axis_color=pal.axis,
            y_floor_zero=True,
            empty=empty,
            legend_extra="┊ iteration start" if vlines else "",
        )
        self.query_one("#loss-chart", BrailleChart).set_spec(spec)
        bits = []
        if alpha:
            bits.append(f"EMA {alpha:g}")
        if settings.log_y:
            bits.append("log y")
        if len(loss):
            bits.append(f"{len(loss):,} steps")
        self.border_title = "Loss" + "".join(f" · {b}" for b in bits)
        self.border_subtitle = "s smooth · y log" if len(loss) else ""
        self._last = loss.last
        self._restatus()

    def _restatus(self) -> None:
        status = self.query_one("#loss-status", Static)
        status.update(self._status(getattr(self, "_last", None), status.content_size.width or 200))

    def on_resize(self, event) -> None:
        self.call_after_refresh(self._restatus)  # the status line's wrapping follows the width

    @staticmethod
    def _status(last: dict | None, width: int = 200) -> Text:
        """The last step, compactly; a second line takes the items that do not fit (never half of one)."""
        st = Text(no_wrap=True, overflow="ellipsis", style=Style(dim=True))
        if not last:
            return st
        items = [f"it {last['iteration']} step {last['step']}"]
        weighted, unweighted = step_terms(last)
        split = shares(weighted)
        if last.get("loss") is not None:
            item = f"tot {last['loss']:.3g}"
            if split:  # beside the total, how the terms split it
                item += " (" + ", ".join(f"{v:.0%} {n}" for n, v in split.items()) + ")"
            items.append(item)
        items += [f"{n} {v:.3g}" for n, v in unweighted.items() if v is not None]
        if last.get("lr") is not None:
            items.append(f"lr {last['lr']:.0e}")
        if last.get("grad_norm") is not None:
            items.append(f"|g| {last['grad_norm']:.3g}")
        if last.get("tokens_per_s") is not None:
            items.append(f"{last['tokens_per_s'] / 1000:.1f}k tok/s")
        lines = [items[0]]
        for item in items[1:]:
            if len(lines[-1]) + 3 + len(item) <= width:
                lines[-1] += " · " + item
            else:
                lines.append(item)
        st.append("\n".join(lines))
        return st
