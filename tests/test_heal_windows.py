"""Healing data is spent, not re-read: successive healings take fresh windows of the data, a budget
beyond the data is said in one line, the final healing is its own stage, and all of it resumes exactly."""

import json
import os
import random
import signal
import subprocess
import time

import pytest
import torch

from engine.distill.data import HealingData
from engine.runlog.fold import fold
from engine.runlog.tailer import EventTailer, read_all
from tests.support import ENGINE, ild
from tests.tiny_suite import WORDS

SEQ = 16


def _data(blocks: int) -> HealingData:
    train = torch.arange(blocks * SEQ).view(blocks, SEQ)
    return HealingData(train, torch.zeros(2, SEQ, dtype=torch.long))


def test_successive_windows_take_fresh_blocks_before_any_repeats():
    data = _data(10)
    first = data.window(0, 4)
    second = data.window(first.end, 4)
    third = data.window(second.end, 4)  # blocks 8, 9, then 0, 1 again
    assert first.blocks[:, 0].tolist() == [0, 16, 32, 48]
    assert second.blocks[:, 0].tolist() == [64, 80, 96, 112]
    assert third.blocks[:, 0].tolist() == [128, 144, 0, 16]
    assert not first.repeats and not second.repeats and third.repeats
    assert [w.epochs for w in (first, second, third)] == [0.4, 0.8, 1.2]
    assert third.summary(SEQ) == {"tokens": 64, "start": 128, "data_tokens": 160, "epochs": 1.2}


def test_a_window_longer_than_the_data_holds_each_block_once_and_names_it_per_pass():
    window = _data(3).window(1, 7)
    assert window.blocks[:, 0].tolist() == [16, 32, 0]  # every block once: the teacher runs on it once
    assert window.index.tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert window.blocks[window.index][:, 0].tolist() == [16, 32, 0, 16, 32, 0, 16]
    assert window.epochs == pytest.approx(8 / 3)


def test_a_budget_beyond_the_data_is_said_in_one_line():
    data = _data(10)
    assert data.budget_note(160, "budget") is None
    note = data.budget_note(400, "this run's healing budget (2 x 200)")
    assert "\n" not in note and "400 tokens is 2.5 passes" in note and "160 tokens" in note


def _corpus(path, docs=24, words=30):
    rng = random.Random(1)
    rows = [{"text": " ".join(rng.choice(WORDS) for _ in range(words))} for _ in range(docs)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


HEAL = {"seq_len": SEQ, "batch_size": 4, "heldout_tokens": 64, "lr": 0.001, "train_tokens": 256}


def _create(run_dir, tiny, **heal):
    config = {
        "name": run_dir.name,
        "model": str(tiny / "model"),
        "strategy": "iterative-distill",
        "target_layers": 4,
        "suite": str(tiny / "suite.yaml"),
        "heal": {**HEAL, "data": str(_corpus(tiny / "heal.jsonl")), **heal},
    }
    result = subprocess.run(
        [*ENGINE, str(run_dir), "--create"], input=json.dumps(config), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return run_dir


FINAL = {"final_tokens": 512, "checkpoint_every_s": 0.001}


@pytest.fixture(scope="module")
def whole(tiny, tmp_path_factory):
    run = _create(tmp_path_factory.mktemp("whole") / "same", tiny, **FINAL)
    result = subprocess.run([*ENGINE, str(run)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return run


@pytest.mark.e2e
def test_each_healing_takes_the_next_window_and_the_final_healing_is_its_own_stage(whole):
    events = read_all(whole / "events.jsonl")
    healed = [e for e in events if e["type"] == "eval" and e["part"] == "report" and "healing" in e]
    assert [(e["iteration"], e["stage"]) for e in healed] == [
        (1, "after_healing"),
        (2, "after_healing"),
        (2, "after_final_healing"),
    ]
    data = healed[0]["healing"]["data_tokens"]  # 24 documents of 30 words + EOS, minus the held-out part
    assert 256 < data < 24 * 31
    assert [e["healing"]["start"] for e in healed] == [0, 256, 512]
    assert [e["healing"]["tokens"] for e in healed] == [256, 256, 512]
    assert healed[-1]["healing"]["epochs"] == pytest.approx(1024 // SEQ / (data // SEQ), abs=1e-4)
    logs = [e["message"] for e in events if e["type"] == "log"]
    said = [m for m in logs if "passes over the healing data (" in m]
    assert len(said) == 1 and "2 x heal.train_tokens 256 + heal.final_tokens 512" in said[0]
    assert any("repeating tokens" in m for m in logs)  # the final window runs past the data's end
    finals = [e for e in events if e["type"] == "train_step" and e.get("stage") == "final"]
    assert finals and all(e["iteration"] == 2 for e in finals) and finals[-1]["step"] == 512 // (SEQ * 4)
    state = fold(events)
    assert state.final_eval()["stage"] == "after_final_healing"
    manifest = json.loads((whole / "checkpoints" / "2" / "checkpoint.json").read_text())
    assert manifest["extra"]["final_healed"] is True and manifest["extra"]["heal_cursor"] == 1024 // SEQ
    shown = ild("show", str(whole))
    assert shown.returncode == 0 and "after_final_healing" in shown.stdout


@pytest.mark.e2e
def test_a_kill_during_the_final_healing_resumes_to_the_uninterrupted_run(whole, tiny, tmp_path):
    killed = _create(tmp_path / "runs" / "same", tiny, **FINAL)
    engine = subprocess.Popen([*ENGINE, str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tailer = EventTailer(killed / "events.jsonl")
    deadline = time.time() + 300
    while time.time() < deadline:
        if any(e["type"] == "train_step" and e.get("stage") == "final" and e["step"] >= 3 for e in tailer.poll()):
            break
        time.sleep(0.02)
    else:
        engine.kill()
        pytest.fail("the final healing never reached step 3")
    os.kill(engine.pid, signal.SIGKILL)
    engine.wait()
    assert "partial-2-" in (killed / "checkpoints" / "PARTIAL").read_text()
    resumed = ild("resume", str(killed))
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    assert "resuming the final healing at step" in resumed.stdout

    def outcome(run):
        events = read_all(run / "events.jsonl")
        evals = {
            json.dumps({k: v for k, v in e.items() if k not in ("seq", "t", "heldout")}, sort_keys=True)
            for e in events
            if e["type"] == "eval"
        }
        return fold(events).removed_layers, evals

    assert outcome(killed) == outcome(whole)
    from safetensors.torch import load_file

    a = load_file(str(whole / "export" / "model.safetensors"))
    b = load_file(str(killed / "export" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("strategy", "heal", "message"),
    [
        ("iterative-distill", {"train_tokens": 100}, "heal.train_tokens 100 is less than one sequence"),
        ("iterative-pruning", {"final_tokens": 10}, "heal.final_tokens 10 is less than one sequence"),
    ],
)
def test_a_healing_shorter_than_one_sequence_is_refused_in_one_line(strategy, heal, message):
    from engine.config import ConfigError, validate_config

    config = {"name": "x", "model": "m", "strategy": strategy, "target_layers": 3, "start_layers": 6, "heal": heal}
    with pytest.raises(ConfigError, match=message):
        validate_config(config)
    validate_config({**config, "heal": dict.fromkeys(heal, 256)})  # one whole sequence is enough
