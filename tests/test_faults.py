"""The fault suite: kills, full disks and signals at many points of a run; every resume ends where an
uninterrupted run ends (same removals, same evaluations, same exported weights, a gap-free log)."""

import json
import os
import random
import signal
import subprocess
import time

import pytest

from engine.runlog.fold import fold
from engine.runlog.tailer import read_all
from tests.support import ENGINE, TINY_HEAL

pytestmark = pytest.mark.e2e  # starts engine processes

HEAL = {**TINY_HEAL, "train_tokens": 768}  # every kill restarts an engine: half the healing
# Two cheap tasks: every kill restarts an engine, so the run itself must cost little.
LEAN_SUITE = """
name: lean
tasks:
  - {name: lm, kind: language_modeling, source: {type: jsonl, path: text.jsonl}, metric: next_token_probability, samples: 6}
  - name: mc
    kind: multiple_choice
    source: {type: jsonl, path: mc.jsonl}
    fields: {question: q, choices: options, answer: label}
    prompt: "{question} ?"
    metric: accuracy
    samples: 6
"""


def _create(run_dir, tiny_root, **extra):
    suite = tiny_root / "lean.yaml"
    if not suite.exists():
        suite.write_text(LEAN_SUITE)
    config = {
        "name": run_dir.name,
        "model": str(tiny_root / "model"),
        "strategy": "iterative-distill",
        "target_layers": 4,
        "suite": str(suite),
        "heal": HEAL,
        **extra,
    }
    result = subprocess.run(
        [*ENGINE, str(run_dir), "--create"], input=json.dumps(config), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return run_dir


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ILD_")}
    env.update(extra)
    return env


def _outcome(run_dir):
    from safetensors.torch import load_file

    events = read_all(run_dir / "events.jsonl")
    assert [e["seq"] for e in events] == list(range(len(events))), "seq has gaps or repeats"
    evals = sorted(
        {
            json.dumps({k: v for k, v in e.items() if k not in ("seq", "t", "heldout")}, sort_keys=True)
            for e in events
            if e["type"] == "eval"
        }
    )
    weights = load_file(str(run_dir / "export" / "model.safetensors"))
    return {
        "removed": fold(events).removed_layers,
        "evals": evals,
        "weights": weights,
        "finished": events[-1]["type"] == "run_finished",
    }


def _same(a, b):
    assert a["finished"] and b["finished"]
    assert a["removed"] == b["removed"]
    assert a["evals"] == b["evals"]
    assert a["weights"].keys() == b["weights"].keys()
    for key in a["weights"]:
        assert (a["weights"][key] == b["weights"][key]).all(), key


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
    run = _create(tmp_path_factory.mktemp("ref") / "whole", tiny)
    assert subprocess.run([*ENGINE, str(run)], capture_output=True, env=_env()).returncode == 0
    return _outcome(run)


def _wait_new(run_dir, offset, predicate, proc, timeout=120):
    """Wait until an event after ``offset`` matches, or the engine exits; True when it matched."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        events = read_all(run_dir / "events.jsonl")[offset:]
        if any(predicate(e) for e in events):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    raise AssertionError("engine neither reached the point nor ended")


KILLS = [
    # (what the kill waits for, extra environment)
    ("scoring", lambda e: e["type"] == "phase" and e.get("phase") == "scoring", {}),
    ("healing", lambda e: e["type"] == "train_step", {}),
    ("evaluating", lambda e: e["type"] == "phase" and e.get("phase") == "evaluating", {}),
    ("decision", lambda e: e["type"] == "decision", {}),
    ("checkpoint write", None, {"ILD_CRASH_AT": "checkpoint_write:1"}),
    ("before a checkpoint", None, {"ILD_CRASH_AT": "checkpoint:1"}),
    ("partial write", None, {"ILD_CRASH_AT": "partial_checkpoint:2"}),
    ("export write", None, {"ILD_CRASH_AT": "export_write:1"}),
]


def test_sigkill_at_twenty_points_then_resume_ends_as_an_uninterrupted_run(tiny, tmp_path, reference):
    run = _create(tmp_path / "killed", tiny)
    rng = random.Random(11)
    kills, log = 0, []
    while kills < 20:
        what, trigger, env = KILLS[kills % len(KILLS)] if kills < len(KILLS) else rng.choice(KILLS)
        offset = len(read_all(run / "events.jsonl"))
        proc = subprocess.Popen(
            [*ENGINE, str(run)], env=_env(**env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        if trigger is None:
            proc.wait(timeout=300)
        elif _wait_new(run, offset, trigger, proc):
            time.sleep(rng.uniform(0.0, 0.4))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        if proc.returncode == -signal.SIGKILL:
            kills += 1
            log.append(what)
        elif read_all(run / "events.jsonl")[-1]["type"] == "run_finished":
            # The run finished before this kill could land: start it over on a fresh directory, keep count.
            _same(_outcome(run), reference)
            run = _create(tmp_path / f"killed-{kills}", tiny)
    result = subprocess.run([*ENGINE, str(run)], capture_output=True, text=True, env=_env())
    assert result.returncode == 0, result.stderr
    _same(_outcome(run), reference)
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")], "half-written checkpoints left"


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(tiny, tmp_path, reference):
    run = _create(tmp_path / "full", tiny)
    # The second checkpoint (after iteration 1) meets a disk with no room left for its weights.
    proc = subprocess.run(
        [*ENGINE, str(run)], capture_output=True, text=True, env=_env(ILD_FULL_DISK_AT="checkpoint:2:4096")
    )
    assert proc.returncode != 0
    # Its last word names the cause, whatever torch or the OS called it ("unexpected pos", EFBIG). The
    # log is over the cap too here, so the run_failed event itself may find no room.
    assert "run failed: disk full" in proc.stderr.strip().splitlines()[-1], proc.stderr[-2000:]
    failed = [e for e in read_all(run / "events.jsonl") if e["type"] == "run_failed"]
    assert all(e["error"].startswith("disk full") for e in failed), failed
    assert (run / "LATEST").read_text().strip() == "0"
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    assert subprocess.run([*ENGINE, str(run)], capture_output=True, env=_env()).returncode == 0
    _same(_outcome(run), reference)


def test_sigterm_stops_with_a_checkpoint_and_resume_finishes_the_run(tiny, tmp_path, reference):
    run = _create(tmp_path / "term", tiny)
    proc = subprocess.Popen(
        [*ENGINE, str(run)], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    assert _wait_new(run, 0, lambda e: e["type"] == "train_step" and e["step"] >= 2, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, proc.stderr.read()
    events = read_all(run / "events.jsonl")
    assert events[-1]["type"] == "run_finished" and events[-1]["reason"] == "stopped"
    assert any("SIGTERM" in e.get("message", "") for e in events if e["type"] == "log")
    assert (run / "checkpoints" / "PARTIAL").is_file()  # the step it was on is saved
    assert subprocess.run([*ENGINE, str(run)], capture_output=True, env=_env()).returncode == 0
    _same(_outcome(run), reference)


def test_resume_with_a_stop_already_queued_ends_cleanly(tiny, tmp_path):
    from engine.runlog.inbox import send_command

    run = _create(tmp_path / "queued", tiny)
    send_command(run, "stop", by="test")
    result = subprocess.run([*ENGINE, str(run)], capture_output=True, text=True, env=_env())
    assert result.returncode == 0, result.stderr
    events = read_all(run / "events.jsonl")
    assert events[-1]["type"] == "run_finished" and events[-1]["reason"] == "stopped"


def test_a_run_directory_is_private(tiny, tmp_path):
    run = _create(tmp_path / "runs" / "private", tiny, target_layers=5, strategy="iterative-pruning")
    assert subprocess.run([*ENGINE, str(run)], capture_output=True, env=_env()).returncode == 0
    for path in [run, *run.rglob("*")]:
        mode = path.stat().st_mode & 0o777
        assert mode == (0o700 if path.is_dir() else 0o600), f"{path.relative_to(tmp_path)} is {oct(mode)}"


def test_export_of_a_run_whose_latest_is_broken_never_writes_the_teacher(tiny, tmp_path):
    run = _create(tmp_path / "broken", tiny, target_layers=5, strategy="iterative-pruning")
    assert subprocess.run([*ENGINE, str(run)], capture_output=True, env=_env()).returncode == 0
    for name in os.listdir(run / "checkpoints"):
        if name.isdigit():
            (run / "checkpoints" / name / "checkpoint.json").write_text("{")
    out = tmp_path / "out"
    result = subprocess.run(
        [*ENGINE, str(run), "--export", "--out", str(out)], capture_output=True, text=True, env=_env()
    )
    # The newest checkpoint is named and never replaced by an older one (or the teacher).
    assert result.returncode == 1 and "not exporting" in result.stderr and not out.exists()
    assert len(result.stderr.strip().splitlines()) == 1
