"""The README's picture of a report page: the report of three canned runs, rendered by headless Chromium.

.venv/bin/python -m tools.report_screenshot docs/screenshot-report.png
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ild_tui.report import write_report
from tools.synthetic_runs import DEAD, FINISHED, SHORTGPT, copy_all

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
]


def shoot(dest: Path, width: int = 1000, height: int = 1150) -> Path:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("no chromium here (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as tmp:
        runs = copy_all(Path(tmp) / "runs")
        result = write_report(
            [runs / n for n in (FINISHED, SHORTGPT, DEAD)],
            Path(tmp) / "report",
            measure=False,
            title="ild report: iterative-distill, shortgpt, iterative-pruning on smollm2-135m",
        )
        shot = Path(tmp) / "shot.png"
        subprocess.run(
            [
                browser,
                *FLAGS,
                f"--user-data-dir={tmp}/profile",
                f"--window-size={width},{height}",
                f"--screenshot={shot}",
                result.page.as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        from PIL import Image

        Image.open(shot).convert("RGB").quantize(colors=128).save(dest, optimize=True)
    return dest


if __name__ == "__main__":
    print("wrote", shoot(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshot-report.png")))
