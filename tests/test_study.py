"""`ild study`: every strategy as an ordinary run, detached, killed mid-run, resumed without redoing a
finished strategy, then reported; other arguments on the same directory are refused."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import time

import pytest

from engine.runlog.tailer import read_all
from tests.support import ILD, ild

pytestmark = pytest.mark.e2e  # starts engine processes

STRATEGIES = ("shortgpt", "iterative-pruning")


def _args(tiny, out, *extra, strategies=",".join(STRATEGIES)):  # noqa: B008 (a constant)
    return [
        "study",
        "--model",
        str(tiny / "model"),
        "--suite",
        str(tiny / "suite.yaml"),
        "--strategies",
        strategies,
        "--target-layers",
        "3",
        "--out",
        str(out),
        "--no-measure",
        "--set",
        "heal.train_tokens=192",
        *extra,
    ]


def _events(run):
    path = run / "events.jsonl"
    return read_all(path) if path.is_file() else []


def _wait(predicate, timeout=300.0, what="the study"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} did not get there in {timeout:.0f}s")


def test_a_detached_study_killed_mid_run_resumes_without_redoing_a_finished_strategy(tiny, tmp_path):
    out = tmp_path / "study"
    first, second = (out / "runs" / s for s in STRATEGIES)
    started = ild(*_args(tiny, out, "--detach"))
    assert started.returncode == 0, started.stderr
    pid = int(re.search(r"\(pid (\d+)\)", started.stdout).group(1))
    assert json.loads((out / "study.json").read_text())["strategies"] == list(STRATEGIES)

    # Kill the whole study (its process group: the study and its engine) in the second run's
    # second iteration, after the first iteration's checkpoint.
    def second_iteration_scoring():
        return any(e["type"] == "phase" and e["iteration"] == 2 and e["phase"] == "scoring" for e in _events(second))

    _wait(second_iteration_scoring)
    os.killpg(pid, signal.SIGKILL)
    _wait(lambda: not (out / "study.lock").exists() or _lock_free(out), 30, "the lock")
    assert _events(first)[-1]["type"] == "run_finished"
    assert not any(e["type"] == "run_finished" for e in _events(second)), "the second run ended before the kill"
    finished_log = (first / "events.jsonl").read_bytes()
    listed = ild("ls", "--runs-dir", str(out / "runs"))
    assert re.search(r"shortgpt\s+finished", listed.stdout) and re.search(r"iterative-pruning\s+died", listed.stdout)

    again = ild(*_args(tiny, out))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "[1/2] shortgpt: finished already, skipped" in again.stdout
    assert f"[2/2] iterative-pruning: resuming {second}" in again.stdout
    assert (first / "events.jsonl").read_bytes() == finished_log  # not redone, not even touched
    events = _events(second)
    resumed = [e for e in events if e["type"] == "engine_started"]
    assert len(resumed) == 2 and resumed[1]["resumed_from"] == "1"
    assert [e["iteration"] for e in events if e["type"] == "layer_removed"] == [1, 2, 3]  # iteration 1 kept
    assert events[-1]["type"] == "run_finished"
    listed = ild("ls", "--runs-dir", str(out / "runs"))
    assert len(re.findall(r"\bfinished\b", listed.stdout)) == 2

    with open(out / "report" / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {(r["strategy"], r["layers"], r["part"]) for r in rows} == {
        (s, str(n), p) for s in STRATEGIES for n in (5, 4, 3) for p in ("select", "report")
    }
    assert (out / "report" / "report.html").is_file()
    _assert_best_two_paired(out, rows, again.stdout)
    log = (out / "study.log").read_text()  # what the detached study printed before the kill
    assert f"[1/2] shortgpt: starting {first}" in log and f"[2/2] iterative-pruning: starting {second}" in log

    # The same directory with other arguments: refused in one line, nothing run.
    other = ild(*_args(tiny, out, strategies="shortgpt"))
    assert other.returncode == 2 and len(other.stderr.strip().splitlines()) == 1
    assert "the study also holds iterative-pruning; name every one of its strategies" in other.stderr
    other = ild(*_args(tiny, out, "--seed", "1"))
    assert other.returncode == 2 and "seed: the engine's default in the study, 1 given" in other.stderr
    # Another order, and a strategy joining: the finished runs are kept, the new one runs, all reported.
    grown = ild(*_args(tiny, out, strategies="iterative-bi,iterative-pruning,shortgpt"))
    assert grown.returncode == 0, grown.stdout + grown.stderr
    assert f"[1/3] iterative-bi: starting {out / 'runs' / 'iterative-bi'}" in grown.stdout
    assert "[3/3] shortgpt: finished already, skipped" in grown.stdout
    assert (first / "events.jsonl").read_bytes() == finished_log
    assert json.loads((out / "study.json").read_text())["strategies"] == [
        "iterative-bi",
        "iterative-pruning",
        "shortgpt",
    ]
    with open(out / "report" / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["strategy"] for r in rows} == {"iterative-bi", *STRATEGIES}
    _assert_best_two_paired(out, rows, grown.stdout)


def _assert_best_two_paired(out, summary_rows, printed):
    """At each depth the two best strategies by the report's aggregate are paired: the files say the
    aggregates the report has, one pair a depth (an earlier pair at a depth is replaced)."""
    with open(out / "paired" / "best-two.csv", newline="") as f:
        paired = {int(r["layers"]): r for r in csv.DictReader(f)}
    assert sorted(paired) == [3, 4, 5]
    for layers, row in paired.items():
        at = sorted(
            (
                (float(r["aggregate"]), r["strategy"])
                for r in summary_rows
                if r["part"] == "report" and r["layers"] == str(layers)
            ),
            key=lambda x: (-x[0], x[1]),
        )
        assert [row["a"], row["b"]] == [at[0][1], at[1][1]]
        saved = json.loads((out / "paired" / row["file"].replace(".txt", ".json")).read_text())
        assert saved["layers"] == layers
        assert saved["aggregate"]["a"] == pytest.approx(at[0][0], abs=1e-6)
        assert saved["aggregate"]["b"] == pytest.approx(at[1][0], abs=1e-6)
        assert saved["aggregate"]["diff"] >= 0 and row["verdict"] in printed.replace("\n", " ")
        assert len(list((out / "paired").glob(f"best-two-{layers}-*"))) == 2  # its .txt and .json
    assert "paired, the two best at each depth" in printed
    # the report page shows them too, each row linking a file that exists next to the report
    page = (out / "report" / "report.html").read_text()
    assert "The two best at each depth, paired" in page
    links = re.findall(r'href="(\.\./paired/[^"]+)"', page)
    assert sorted(links) == sorted(f"../paired/{r['file']}" for r in paired.values())
    assert all((out / "report" / link).resolve().is_file() for link in links)


def test_sigterm_stops_the_running_strategy_and_the_study_not_only_the_run(tiny, tmp_path):
    """A scheduler's SIGTERM to `ild study` stops its current run at a safe point with a checkpoint
    and ends the study; it must not go on to start the next strategy."""
    import subprocess

    out = tmp_path / "study"
    first, second = (out / "runs" / s for s in STRATEGIES)
    study = subprocess.Popen([ILD, *_args(tiny, out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait(lambda: any(e["type"] == "phase" and e["iteration"] == 1 for e in _events(first)), what="the first run")
        study.send_signal(signal.SIGTERM)
        stdout, stderr = study.communicate(timeout=300)
    finally:
        study.kill()
    assert study.returncode == 130, stdout + stderr
    assert "interrupted; continue with the same `ild study` command" in stdout
    finished = _events(first)[-1]
    assert finished["type"] == "run_finished" and finished["reason"] == "stopped"
    assert not second.exists(), "the study started the next strategy after the stop"


def _lock_free(out) -> bool:
    from ild_tui.study import StudyLock

    return StudyLock(out).holder() is None


def test_bad_input_leaves_no_study_behind(tiny, tmp_path):
    out = tmp_path / "bad"
    unknown = ild(*_args(tiny, out, strategies="shortgpt,best-one"))
    assert unknown.returncode == 2 and "unknown strategy 'best-one'" in unknown.stderr and not out.exists()
    missing = ild(*[a.replace(str(tiny / "model"), "nope/missing-model") for a in _args(tiny, out)])
    assert missing.returncode == 2, missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1 and "cannot load model" in missing.stderr
    assert not out.exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    full = ild(*_args(tiny, tmp_path / "full"))
    assert full.returncode == 2 and "is not empty and holds no study" in full.stderr
