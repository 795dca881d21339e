"""Braille line charts rendered to Rich ``Text`` lines: no plotting dependency, no Textual.

Each terminal cell holds 2 x 4 braille dots, so a 60 x 12 cell plot has 120 x 48 points of
resolution. Dense series (tens of thousands of training steps) are bucketed to one
``(min, max, last)`` per dot column on the full-resolution data before drawing, so noise
shows as a band instead of vanishing, and the cost of a frame does not grow with the run.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rich.style import Style
from rich.text import Text

_BITS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))  # [row][col]


@dataclass
class Series:
    name: str
    color: str
    points: Sequence[tuple[float, float]] = ()  # connected in order (sparse series)
    dense: Sequence[float] | None = None  # y per x = 0..len-1 (bucketed per dot column)
    kind: str = "line"  # line | points | linepoints
    marker: str = "●"
    legend: bool = True
    z: int = 0  # drawing order: higher is drawn later, on top (the legend keeps list order)
    # solid | dashed | dotted: told apart without colour (NO_COLOR, a monochrome terminal)
    dash: str = "solid"


# Which dot columns a line pattern keeps, and its legend symbol.
DASHES = {
    "solid": (None, "━━"),
    "dashed": (lambda x: (x // 4) % 2 == 0, "╍╍"),
    "dotted": (lambda x: x % 4 == 0, "┈┈"),
}


@dataclass
class HLine:
    y: float
    color: str
    label: str = ""
    dashed: bool = True


@dataclass
class VLine:
    x: float
    label: str = ""


@dataclass
class ChartSpec:
    series: list[Series] = field(default_factory=list)
    hlines: list[HLine] = field(default_factory=list)
    vlines: list[VLine] = field(default_factory=list)
    x_range: tuple[float, float] | None = None
    y_range: tuple[float, float] | None = None
    log_y: bool = False
    integer_x: bool = False
    x_format: Callable[[float], str] | None = None
    y_floor_zero: bool = False
    empty: str = "no data yet"
    axis_color: str = "#808080"
    legend_extra: str = ""


def _fmt_y(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e4 or a < 1e-3:
        return f"{v:.1e}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.3f}".rstrip("0").rstrip(".") if a < 1 else f"{v:.2f}"


def _nice_step(raw: float) -> float:
    if raw <= 0:
        return 1.0
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if m * mag >= raw:
            return m * mag
    return 10 * mag


def _y_ticks(t0: float, t1: float, n: int, log: bool) -> list[float]:
    """Tick positions (in transformed units): powers of ten on a log axis, round numbers otherwise."""
    if log and t1 - t0 >= 1:
        ks = list(range(math.ceil(t0), math.floor(t1) + 1))
        if len(ks) > n:
            stride = math.ceil(len(ks) / n)
            ks = ks[::stride]
        return [float(k) for k in ks]
    if log:
        return [t0 + (t1 - t0) * i / (n - 1) for i in range(n)]
    step = _nice_step((t1 - t0) / max(n, 1))
    while step > 0 and math.floor(t1 / step) - math.ceil(t0 / step) + 1 < min(3, n):
        step /= 2
    first = math.ceil(t0 / step) * step
    out = []
    v = first
    while v <= t1 + 1e-12 and len(out) < 2 * n:
        out.append(0.0 if abs(v) < step * 1e-9 else v)
        v += step
    return out or [t0, t1]


class _Canvas:
    def __init__(self, w: int, h: int) -> None:
        self.w, self.h = w, h
        self.bits = [[0] * w for _ in range(h)]
        self.color: list[list[str | None]] = [[None] * w for _ in range(h)]
        self.glyph: list[list[tuple[str, str] | None]] = [[None] * w for _ in range(h)]
        self.back: list[list[tuple[str, str] | None]] = [[None] * w for _ in range(h)]
        self.mask = None  # the current series' dash pattern: which dot columns it draws

    def dot(self, x: int, y: int, color: str) -> None:
        if self.mask is not None and not self.mask(x):
            return
        if 0 <= x < 2 * self.w and 0 <= y < 4 * self.h:
            cx, cy = x >> 1, y >> 2
            self.bits[cy][cx] |= _BITS[y & 3][x & 1]
            self.color[cy][cx] = color

    def vspan(self, x: int, y0: int, y1: int, color: str) -> None:
        if y0 > y1:
            y0, y1 = y1, y0
        for y in range(max(y0, 0), min(y1, 4 * self.h - 1) + 1):
            self.dot(x, y, color)

    def line(self, x0: int, y0: int, x1: int, y1: int, color: str) -> None:
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        n = 0
        while True:
            self.dot(x0, y0, color)
            if (x0 == x1 and y0 == y1) or n > 4000:
                break
            n += 1
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def put(self, cx: int, cy: int, ch: str, color: str) -> None:
        if 0 <= cx < self.w and 0 <= cy < self.h:
            self.glyph[cy][cx] = (ch, color)

    def put_back(self, cx: int, cy: int, ch: str, color: str) -> None:
        if 0 <= cx < self.w and 0 <= cy < self.h:
            self.back[cy][cx] = (ch, color)


def bucket(values: list[float], n: int, lo: int = 0, hi: int | None = None) -> list[tuple[float, float, float] | None]:
    """Split ``values[lo:hi]`` into ``n`` buckets of ``(min, max, last)``; None where empty or all NaN.

    Full-resolution data in, one bucket per dot column out: min/max keep the noise band that
    plain subsampling would drop, and builtin min/max over list slices keep it fast.
    """
    hi = len(values) if hi is None else hi
    total = hi - lo
    out: list[tuple[float, float, float] | None] = []
    if total <= 0 or n <= 0:
        return [None] * max(n, 0)
    for b in range(n):
        a = lo + (b * total) // n
        z = lo + ((b + 1) * total) // n
        if z <= a:
            out.append(None)
            continue
        chunk = values[a:z]
        mn, mx = min(chunk), max(chunk)
        if mn != mn or mx != mx:  # NaN inside: filter the slow way
            chunk = [v for v in chunk if v == v]
            if not chunk:
                out.append(None)
                continue
            mn, mx = min(chunk), max(chunk)
        last = chunk[-1]
        if last != last:
            last = mx
        out.append((mn, mx, last))
    return out


def _dense_range(values: Sequence[float], log: bool) -> tuple[float, float] | None:
    """(min, max) ignoring NaN (and, on a log axis, values <= 0), from bucket extremes: a few C-level
    passes instead of a Python loop over every point."""
    if not isinstance(values, list):
        values = list(values)
    bks = [b for b in bucket(values, min(256, len(values))) if b is not None]
    if not bks:
        return None
    if not log:
        return min(b[0] for b in bks), max(b[1] for b in bks)
    lows = [v for b in bks for v in b if v > 0]
    highs = [b[1] for b in bks if b[1] > 0]
    return (min(lows), max(highs)) if lows and highs else None


def render_chart(spec: ChartSpec, width: int, height: int, legend: bool = True) -> list[Text]:
    """The chart as ``height`` lines of at most ``width`` cells."""
    width, height = max(width, 1), max(height, 1)
    blank = [Text(" " * width) for _ in range(height)]
    log = spec.log_y
    tf = (lambda v: math.log10(v) if v > 0 else None) if log else (lambda v: v)

    # data ranges ---------------------------------------------------------------------------
    xs: list[float] = []
    ys: list[float] = []
    has_data = False
    for s in spec.series:
        if s.dense is not None and len(s.dense):
            r = _dense_range(s.dense, log)
            if r:
                has_data = True
                xs += [0, len(s.dense) - 1]
                ys += list(r)
        for x, y in s.points:
            if y is None or (log and y <= 0):
                continue
            has_data = True
            xs.append(x)
            ys.append(y)
    if not has_data:
        msg = spec.empty
        out = blank
        mid = height // 2
        out[mid] = Text(msg.center(width)[:width], style=Style(color=spec.axis_color, italic=True))
        return out
    for h in spec.hlines:
        if not (log and h.y <= 0):
            ys.append(h.y)
    x0, x1 = spec.x_range if spec.x_range else (min(xs), max(xs))
    if x1 <= x0:
        x0, x1 = x0 - 1, x1 + 1
    if spec.y_range:
        y0, y1 = spec.y_range
    else:
        y0, y1 = min(ys), max(ys)
        if spec.y_floor_zero and not log and y0 >= 0:
            y0 = 0.0
    ty0, ty1 = tf(y0), tf(y1)
    if ty0 is None or ty1 is None:
        ty0, ty1 = 0.0, 1.0
    if ty1 - ty0 < 1e-12:
        pad = abs(ty0) * 0.05 or 0.5
        ty0, ty1 = ty0 - pad, ty1 + pad
    else:
        pad = (ty1 - ty0) * 0.06
        ty0, ty1 = ty0 - (pad if not (spec.y_floor_zero and not log and y0 == 0) else 0), ty1 + pad

    # layout ----------------------------------------------------------------------------------
    n_label_rows = max(2, min(5, (height - 2) // 3 + 1))
    legend_rows = 1 if legend and height >= 5 else 0
    ph = height - 1 - legend_rows  # plot rows (one row of x labels)
    if ph < 1:
        return blank
    ticks_t = _y_ticks(ty0, ty1, n_label_rows, log)
    fmt_tick = _fmt_y
    if not log and len(ticks_t) > 1:
        step = abs(ticks_t[1] - ticks_t[0])
        decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 2
        if step > 0 and abs(round(step * 10**decimals) - step * 10**decimals) > 1e-6:
            decimals += 1  # 2.5, 0.25, ...
        if max(abs(ticks_t[0]), abs(ticks_t[-1])) < 1e4 and decimals <= 5:
            fmt_tick = lambda v, d=decimals: f"{v:.{d}f}"
    label_at: dict[int, str] = {}
    for tv in ticks_t:
        row = round((ty1 - tv) / (ty1 - ty0) * (ph - 1))
        if 0 <= row < ph and row not in label_at and (row - 1) not in label_at and (row + 1) not in label_at:
            label_at[row] = fmt_tick(10**tv if log else tv)
    gutter = max([len(t) for t in label_at.values()] + [1]) + 1
    pw = width - gutter - 1
    if pw < 4:
        return blank
    cv = _Canvas(pw, ph)
    W, H = 2 * pw, 4 * ph

    def mx(x: float) -> int:
        return round((x - x0) / (x1 - x0) * (W - 1))

    def my(y: float) -> int | None:
        t = tf(y)
        if t is None:
            return None
        return round((ty1 - t) / (ty1 - ty0) * (H - 1))

    # background: vertical markers, horizontal baselines ---------------------------------------
    label_end = -1
    for v in spec.vlines:
        if x0 <= v.x <= x1:
            cx = mx(v.x) >> 1
            for cy in range(ph):
                cv.put_back(cx, cy, "┊", spec.axis_color)
            if v.label and cx + 1 > label_end and cx + 1 + len(v.label) <= pw:
                for i, ch in enumerate(v.label):  # on top of the data: the top row is mostly padding
                    cv.put(cx + 1 + i, 0, ch, spec.axis_color)
                label_end = cx + 1 + len(v.label)
    for h in spec.hlines:
        yy = my(h.y)
        if yy is None or not (0 <= yy < H):
            continue
        for x in range(W):
            if not h.dashed or (x // 4) % 2 == 0:
                cv.dot(x, yy, h.color)

    # series ------------------------------------------------------------------------------------
    for s in sorted(spec.series, key=lambda s: s.z):
        color = s.color
        cv.mask = DASHES.get(s.dash, DASHES["solid"])[0]
        if s.dense is not None and len(s.dense):
            n = len(s.dense)
            lo = max(0, math.floor(x0))
            hi = min(n, math.ceil(x1) + 1)
            c0, c1 = mx(lo), mx(hi - 1)
            cols = max(c1 - c0 + 1, 1)
            bks = bucket(list(s.dense) if not isinstance(s.dense, list) else s.dense, cols, lo, hi)
            prev = None
            for i, b in enumerate(bks):
                if b is None:
                    continue
                a, z, last = (my(b[0]), my(b[1]), my(b[2]))
                if a is None or z is None:
                    continue
                cx = c0 + i
                cv.vspan(cx, z, a, color)
                if last is None:
                    last = a
                if prev is not None:
                    cv.line(prev[0], prev[1], cx, last, color)
                prev = (cx, last)
        pts = [(mx(x), my(y)) for x, y in s.points if y is not None and my(y) is not None]
        if s.kind in ("line", "linepoints"):
            for (ax, ay), (bx, by) in itertools.pairwise(pts):
                cv.line(ax, ay, bx, by, color)
            if len(pts) == 1:
                cv.dot(pts[0][0], pts[0][1], color)
        if s.kind in ("points", "linepoints"):
            for px, py in pts:
                cv.put(px >> 1, py >> 2, s.marker, color)
    cv.mask = None

    # assemble ----------------------------------------------------------------------------------
    axis = Style(color=spec.axis_color)
    lines: list[Text] = []
    for cy in range(ph):
        t = Text(no_wrap=True, overflow="crop")
        lab = label_at.get(cy)
        t.append((lab or "").rjust(gutter - 1) + " ", axis)
        t.append("┤" if lab else "│", axis)
        run_style, run = None, []
        for cx in range(pw):
            g = cv.glyph[cy][cx]
            if g is not None:
                ch, col = g
            elif cv.bits[cy][cx]:
                ch, col = chr(0x2800 + cv.bits[cy][cx]), cv.color[cy][cx]
            elif cv.back[cy][cx] is not None:
                ch, col = cv.back[cy][cx]
            else:
                ch, col = " ", None
            if col != run_style and run:
                t.append("".join(run), Style(color=run_style) if run_style else None)
                run = []
            run_style = col
            run.append(ch)
        if run:
            t.append("".join(run), Style(color=run_style) if run_style else None)
        lines.append(t)

    # x axis labels ---------------------------------------------------------------------------
    xl = [" "] * width
    fmt = spec.x_format or (lambda v: str(round(v)) if spec.integer_x or abs(v) >= 100 else _fmt_y(v))
    if spec.integer_x:
        span = x1 - x0
        step = max(1, math.ceil(span / max(pw // 6, 1)))
        for nice in (1, 2, 5, 10, 20, 25, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000):
            if nice >= step:
                step = nice
                break
        first = math.ceil(x0 / step) * step
        ticks = list(range(first, math.floor(x1) + 1, step))
    else:
        n_ticks = max(2, pw // 12)
        ticks = [x0 + (x1 - x0) * i / (n_ticks - 1) for i in range(n_ticks)]
    last_end = -1
    for v in ticks:
        pos = gutter + 1 + (mx(v) >> 1)
        label = fmt(v)
        start = max(min(pos - len(label) // 2, width - len(label)), gutter + 1)
        if start <= last_end:
            continue
        for i, ch in enumerate(label):
            if start + i < width:
                xl[start + i] = ch
        last_end = start + len(label)
    lines.append(Text("".join(xl), style=axis, no_wrap=True, overflow="crop"))

    if legend_rows:
        lg = Text(" " * (gutter + 1), no_wrap=True, overflow="crop")
        for s in spec.series:
            if not s.legend:
                continue
            line = DASHES.get(s.dash, DASHES["solid"])[1]
            sym = s.marker if s.kind == "points" else ("─" + s.marker + "─" if s.kind == "linepoints" else line)
            lg.append(sym, Style(color=s.color))
            lg.append(f" {s.name}  ", axis)
        for h in spec.hlines:
            if h.label:
                lg.append("┄┄" if h.dashed else "──", Style(color=h.color))
                lg.append(f" {h.label}  ", axis)
        if spec.legend_extra:
            lg.append(spec.legend_extra, axis)
        lines.append(lg)
    return lines[:height]
