"""The rule that keeps the fast tier fast (tests/conftest.py): which command lines start an engine."""

import sys
from pathlib import Path

from tests.conftest import _starts_an_engine
from tests.support import ENGINE, ILD


def test_engine_entry_points_and_engine_subcommands_are_engines():
    assert _starts_an_engine([*ENGINE, "/runs/r"]) == "python -m engine.worker"
    assert _starts_an_engine([sys.executable, "-m", "engine.distributed.supervise", "x"]) is not None
    assert _starts_an_engine((sys.executable, "-m", "engine.measure", "spec")) == "python -m engine.measure"
    for sub in ("run", "resume", "study"):
        assert _starts_an_engine([ILD, sub, "--help"]) == f"ild {sub}"
    assert _starts_an_engine([Path(ILD), "run"]) == "ild run"


def test_other_processes_are_not():
    assert _starts_an_engine([sys.executable, "-c", "import engine.worker"]) is None
    assert _starts_an_engine([sys.executable, "-m", "engineering"]) is None
    assert _starts_an_engine([ILD, "ls"]) is None and _starts_an_engine([ILD, "export", "r"]) is None
    assert _starts_an_engine(["true"]) is None and _starts_an_engine("ls -l") is None
