"""Fixtures shared by the test modules (helpers are in tests/support.py).

Two tiers: ``make test-fast`` runs ``-m "not e2e and not slow"``, ``make test`` everything. A test is
marked ``e2e`` (explicitly, in its module) when it starts an engine process: ``python -m engine.*``
directly, through the CLI in-process, or an ``ild run``/``resume``/``study`` subprocess. The fixture
``engine_processes_only_in_e2e`` below keeps that true: an unmarked test that starts one fails.
``slow`` marks the long in-process tests (the embedded SmolLM2 model, long training).
"""

import atexit
import itertools
import os
import shutil
import subprocess
import tempfile

# Must be set before torch loads: spinning OpenMP threads slow torch 5-10x when pytest-xdist
# workers (or the engine subprocesses the tests start) share the two cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# What the engine keeps across runs (the teacher store, the score cache) lives in the user's cache;
# the tests keep their own, one per test (the fixture below), so that no test reads what another
# computed; this one is for code outside a test (removed by the process that made it).
if "ILD_STORE_DIR" not in os.environ:
    os.environ["ILD_STORE_DIR"] = tempfile.mkdtemp(prefix="ild-store-")
    atexit.register(shutil.rmtree, os.environ["ILD_STORE_DIR"], ignore_errors=True)

import time
from pathlib import Path

import pytest

# ``ild`` subcommands that always start an engine process (the others may refuse before one).
ENGINE_SUBCOMMANDS = ("run", "resume", "study")


@pytest.fixture(autouse=True)
def own_store(tmp_path_factory, monkeypatch):
    """Each test (and every engine it starts) with an empty teacher store and score cache."""
    monkeypatch.setenv("ILD_STORE_DIR", str(tmp_path_factory.mktemp("store")))


def _starts_an_engine(args) -> str | None:
    """What in a command line starts an engine process, or None."""
    argv = [os.fspath(a) for a in args] if isinstance(args, (list, tuple)) else [os.fspath(args)]
    for word, following in itertools.pairwise(argv):
        if word == "-m" and following.split(".")[0] == "engine":
            return f"python -m {following}"
    if len(argv) > 1 and Path(argv[0]).name == "ild" and argv[1] in ENGINE_SUBCOMMANDS:
        return f"ild {argv[1]}"
    return None


@pytest.fixture(autouse=True)
def engine_processes_only_in_e2e(request, monkeypatch):
    """A test not marked ``e2e`` that starts an engine process fails (at teardown, so that the test
    itself runs unchanged and no caught exception can hide it): the fast tier stays fast."""
    if request.node.get_closest_marker("e2e"):
        yield
        return
    started: list[str] = []
    real = subprocess.Popen.__init__

    def watched(self, args, *rest, **kwargs):
        what = _starts_an_engine(args)
        if what:
            started.append(what)
        real(self, args, *rest, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", watched)
    yield
    if started:
        pytest.fail(f"starts an engine process ({', '.join(started)}): mark it @pytest.mark.e2e", pytrace=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny llama saved as a local HF directory, and a small suite over files next to it."""
    from tests.tiny_models import tiny_model
    from tests.tiny_suite import tiny_suite

    root = tmp_path_factory.mktemp("tiny")
    _, tokenizer = tiny_suite(root)
    model = tiny_model("llama")
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return root


@pytest.fixture
def runs(tmp_path):
    """A private copy of every canned run (tests may append events, lock or delete them)."""
    from tools.synthetic_runs import copy_all

    return copy_all(tmp_path / "runs")


@pytest.fixture
def tui_env(tmp_path):
    """UTC clock formatting, a private config directory, colours on."""
    saved = {k: os.environ.get(k) for k in ("TZ", "ILD_CONFIG_DIR", "NO_COLOR")}
    os.environ["TZ"] = "UTC"
    os.environ["ILD_CONFIG_DIR"] = str(tmp_path / "ild-config")
    os.environ.pop("NO_COLOR", None)
    time.tzset()
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    time.tzset()
