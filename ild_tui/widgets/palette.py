"""The dashboard's own colours (heatmap scale, series), one ``Palette`` per theme.

Textual themes colour the chrome; a ``Palette`` colours the data. Themes in ``themes/*.toml``
carry both; a Textual built-in theme chosen by name gets ``DEFAULT`` (viridis, which survives
quantisation to 256 colours inside tmux).
"""

from __future__ import annotations

from dataclasses import dataclass, field

SHADES = "░▒▓█"


def _rgb(hex_color: str) -> tuple[int, int, int]:
    h = hex_color.lstrip("#")
    if len(h) == 3:
        h = "".join(c * 2 for c in h)
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


def _hex(rgb: tuple[float, float, float]) -> str:
    return "#" + "".join(f"{max(0, min(255, round(c))):02x}" for c in rgb)


def interpolate(stops: list[str], steps: int) -> list[str]:
    """``steps`` colours evenly along the piecewise-linear RGB path through ``stops``."""
    if not stops:
        stops = DEFAULT.heatmap
    if len(stops) == 1 or steps <= 1:
        return [stops[0]] * max(steps, 1)
    rgbs = [_rgb(s) for s in stops]
    out = []
    for i in range(steps):
        pos = i / (steps - 1) * (len(rgbs) - 1)
        k = min(int(pos), len(rgbs) - 2)
        f = pos - k
        a, b = rgbs[k], rgbs[k + 1]
        out.append(_hex(tuple(a[j] + (b[j] - a[j]) * f for j in range(3))))
    return out


def _norm(color) -> str | None:
    """``#rgb`` or ``#rrggbb`` as ``#rrggbb``; None for anything else."""
    if not isinstance(color, str) or not color.startswith("#") or len(color) not in (4, 7):
        return None
    try:
        return _hex(_rgb(color))
    except ValueError:
        return None


def contrast(hex_color: str) -> str:
    """Black or white, whichever reads better on ``hex_color``."""
    r, g, b = _rgb(hex_color)
    lum = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return "#000000" if lum > 140 else "#ffffff"


@dataclass
class Palette:
    heatmap: list[str] = field(default_factory=lambda: ["#440154", "#3b528b", "#21918c", "#5ec962", "#fde725"])
    loss: str = "#ffaf5f"
    kl: str = "#5fafff"
    mse: str = "#d787d7"
    teacher: str = "#bcbcbc"
    after_removal: str = "#ff875f"
    after_healing: str = "#5fd787"
    axis: str = "#808080"
    good: str = "#5fd787"
    bad: str = "#ff5f5f"
    runs: list[str] = field(
        default_factory=lambda: ["#5fafff", "#ffaf5f", "#5fd787", "#d787d7", "#ffd75f", "#ff5f5f", "#87d7d7", "#afafaf"]
    )
    _steps: list[str] | None = field(default=None, repr=False, compare=False)

    def scale(self, steps: int = 48) -> list[str]:
        if self._steps is None or len(self._steps) != steps:
            self._steps = interpolate(self.heatmap, steps)
        return self._steps

    def color_at(self, value: float, steps: int = 48) -> str:
        s = self.scale(steps)
        i = int(max(0.0, min(1.0, value)) * (len(s) - 1) + 0.5)
        return s[i]

    def run_color(self, i: int) -> str:
        return self.runs[i % len(self.runs)]

    @classmethod
    def from_dict(cls, data: dict) -> Palette:
        """Colours from a theme file's [heatmap] and [series] tables; bad values keep the default."""
        p = cls()
        heat = data.get("heatmap")
        if isinstance(heat, dict):
            heat = heat.get("colors")
        if isinstance(heat, list) and heat:
            colors = [_norm(c) for c in heat]
            if all(colors):
                p.heatmap = colors
        series = data.get("series") if isinstance(data.get("series"), dict) else {}
        for name in ("loss", "kl", "mse", "teacher", "after_removal", "after_healing", "axis", "good", "bad"):
            c = _norm(series.get(name))
            if c:
                setattr(p, name, c)
        runs = series.get("runs")
        if isinstance(runs, list) and runs:
            colors = [_norm(c) for c in runs]
            if all(colors):
                p.runs = colors
        return p


DEFAULT = Palette()


def shade(value: float) -> str:
    """One of ░▒▓█ for a value in [0, 1] (for NO_COLOR and 256-colour terminals)."""
    i = int(max(0.0, min(1.0, value)) * len(SHADES))
    return SHADES[min(i, len(SHADES) - 1)]
