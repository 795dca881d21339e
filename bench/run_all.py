"""Run every benchmark in bench/ in turn (each prints its own ratios against the plain way)."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    failed = 0
    for script in (
        "importance.py",
        "racing.py",
        "distill.py",
        "teacher_store.py",
        "eval_cache.py",
        "bridge.py",
        "tui.py",
        "scale.py",
    ):
        path = HERE / script
        if not path.exists():
            continue
        print(f"\n=== {script}", flush=True)
        failed |= subprocess.call([sys.executable, str(path)])
    sys.exit(failed)
