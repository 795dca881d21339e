"""The dashboard's user preferences, in ``config.toml`` under the platform's config directory.

``$ILD_CONFIG_DIR`` overrides the directory (tests use it; so can a shared login). The file is
small and flat, read with ``tomllib`` and written by hand (atomically), so no TOML writer is
needed. A broken or unreadable file never stops the dashboard: it falls back to the defaults.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

APP_NAME = "ild"
DEFAULT_THEME = "ild-dark"


def config_dir() -> Path:
    env = os.environ.get("ILD_CONFIG_DIR")
    if env:
        return Path(env)
    from platformdirs import user_config_dir

    return Path(user_config_dir(APP_NAME, appauthor=False))


def config_file() -> Path:
    return config_dir() / "config.toml"


@dataclass
class Settings:
    theme: str = DEFAULT_THEME
    heatmap_norm: str = "rank"  # rank | iteration | global
    smoothing: float = 0.0  # loss-curve EMA weight; 0 = raw
    log_y: bool = False
    # `a` approves at once instead of asking first (off: approving removes a layer, so it asks).
    approve_one_key: bool = False
    trash_days: float = 30.0  # deleted runs stay this long in <runs dir>/.trash before they go for good

    @classmethod
    def load(cls, path: Path | None = None) -> Settings:
        path = path or config_file()
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return cls()
        s = cls()
        section = data.get("dashboard", data)
        for f in fields(cls):
            v = section.get(f.name)
            if v is None:
                continue
            if f.type in ("float",) and isinstance(v, (int, float)) and not isinstance(v, bool):
                setattr(s, f.name, float(v))
            elif (f.type == "bool" and isinstance(v, bool)) or (f.type == "str" and isinstance(v, str)):
                setattr(s, f.name, v)
        return s

    def save(self, path: Path | None = None) -> Path | None:
        """Write the file; returns None (and keeps going) if the directory is not writable."""
        path = path or config_file()
        lines = ["# ild dashboard preferences (written by the dashboard; safe to edit)", "[dashboard]"]
        for k, v in asdict(self).items():
            if isinstance(v, bool):
                lines.append(f"{k} = {'true' if v else 'false'}")
            elif isinstance(v, (int, float)):
                lines.append(f"{k} = {v!r}")
            else:
                lines.append(f'{k} = "{_escape(str(v))}"')
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
            os.replace(tmp, path)
        except OSError:
            return None
        return path


def _escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')
