"""SIGKILL the engine in the middle of healing, resume it, and compare with an uninterrupted run."""

import json
import os
import signal
import subprocess
import time

import pytest

from engine.runlog.fold import fold
from engine.runlog.tailer import EventTailer, read_all
from tests.support import ENGINE, TINY_HEAL, ild

pytestmark = pytest.mark.e2e  # starts engine processes

HEAL = TINY_HEAL


def _create(run_dir, tiny_root, name):
    config = {
        "name": name,
        "model": str(tiny_root / "model"),
        "strategy": "iterative-distill",
        "target_layers": 4,
        "suite": str(tiny_root / "suite.yaml"),
        "heal": HEAL,
    }
    result = subprocess.run(
        [*ENGINE, str(run_dir), "--create"], input=json.dumps(config), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def _key_events(events):
    keep = {"proposal", "decision", "layer_removed", "eval", "run_finished"}
    out = []
    for e in events:
        if e["type"] in keep:
            item = {k: v for k, v in e.items() if k not in ("seq", "t", "export", "heldout")}
            out.append(json.dumps(item, sort_keys=True))
    return out


def test_kill_during_healing_then_resume_matches_uninterrupted(tiny, tmp_path):
    whole, killed = tmp_path / "runs" / "whole", tmp_path / "runs" / "killed"
    _create(whole, tiny, "same")
    _create(killed, tiny, "same")
    assert subprocess.run([*ENGINE, str(whole)], capture_output=True).returncode == 0

    engine = subprocess.Popen([*ENGINE, str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tailer = EventTailer(killed / "events.jsonl")
    deadline = time.time() + 300
    while time.time() < deadline:
        if any(e["type"] == "train_step" and e["iteration"] == 2 and e["step"] >= 4 for e in tailer.poll()):
            break
        time.sleep(0.02)
    else:
        pytest.fail("healing never reached step 4 of iteration 2")
    os.kill(engine.pid, signal.SIGKILL)
    engine.wait()
    assert (killed / "checkpoints" / "PARTIAL").is_file()
    # What a kill between renaming a partial checkpoint and pointing PARTIAL at it leaves behind: the
    # resumed run reaches those steps again and must write over them.
    pointed = (killed / "checkpoints" / "PARTIAL").read_text().strip()
    steps = HEAL["train_tokens"] // (HEAL["batch_size"] * HEAL["seq_len"])
    for step in range(int(pointed.rsplit("-", 1)[1]) + 1, steps):
        orphan = killed / "checkpoints" / f"partial-2-{step}"
        orphan.mkdir(exist_ok=True)
        (orphan / "partial.json").write_text("{}")

    resumed = ild("resume", str(killed))
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    assert "resuming iteration 2 at healing step" in resumed.stdout

    a, b = read_all(whole / "events.jsonl"), read_all(killed / "events.jsonl")
    assert [e["seq"] for e in b] == list(range(len(b)))
    assert fold(a).removed_layers == fold(b).removed_layers and len(fold(b).removed_layers) == 2
    # Events after the partial checkpoint are emitted again on resume; the fold keeps the last.
    assert sorted(set(_key_events(a))) == sorted(set(_key_events(b)))
    evals = fold(b).evals
    assert {stage for _, stage, _ in evals} == {"teacher", "after_removal", "after_healing"}
    assert (
        json.loads((killed / "export" / "config.json").read_text())["ild_layer_map"]
        == json.loads((whole / "export" / "config.json").read_text())["ild_layer_map"]
    )
