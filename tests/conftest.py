"""Fixtures shared by the test modules (helpers are in tests/support.py)."""

import atexit
import os
import shutil
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

import pytest


@pytest.fixture(autouse=True)
def own_store(tmp_path_factory, monkeypatch):
    """Each test (and every engine it starts) with an empty teacher store and score cache."""
    monkeypatch.setenv("ILD_STORE_DIR", str(tmp_path_factory.mktemp("store")))


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
