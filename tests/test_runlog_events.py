"""Event writer and tailer: round trips, torn lines, crashes."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from engine.runlog.events import EventWriter
from engine.runlog.tailer import EventTailer, read_all


def seqs(events):
    return [e["seq"] for e in events]


def test_round_trip_and_seq_gap_free(tmp_path):
    p = tmp_path / "events.jsonl"
    tailer = EventTailer(p)
    assert tailer.poll() == []  # no file yet
    with EventWriter(p) as w:
        first = w.emit("run_started", name="r", model="m", strategy="s", start_layers=30, target_layers=20, mode="auto")
        assert first["seq"] == 0 and first["type"] == "run_started" and isinstance(first["t"], float)
        for i in range(10):
            w.emit("train_step", iteration=1, step=i, loss=1.0 / (i + 1))
        got = tailer.poll()
        assert seqs(got) == list(range(11))
        assert got[0]["name"] == "r" and got[5]["step"] == 4
        assert tailer.poll() == []
        w.emit("eval", iteration=1, stage="after_healing", aggregate=0.5, tasks={"a": 0.5})
    assert seqs(tailer.poll()) == [11]
    assert seqs(read_all(p)) == list(range(12))
    # every line is one complete, strict JSON object
    for line in p.read_bytes().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))


def test_writer_continues_seq_after_reopen(tmp_path):
    p = tmp_path / "events.jsonl"
    with EventWriter(p) as w:
        for _ in range(3):
            w.emit("log", level="info", message="x")
    with EventWriter(p) as w:
        assert w.next_seq == 3 and w.repaired_bytes == 0
        assert w.emit("log", message="y")["seq"] == 3
    assert seqs(read_all(p)) == [0, 1, 2, 3]


def test_unknown_type_and_reserved_fields_rejected(tmp_path):
    p = tmp_path / "events.jsonl"
    with EventWriter(p) as w:
        with pytest.raises(ValueError, match="unknown event type"):
            w.emit("bogus")
        with pytest.raises(ValueError, match="seq"):
            w.emit("log", seq=5)
        with pytest.raises(TypeError, match=r"\$\.config\.obj"):
            w.emit(
                "run_started",
                name="r",
                model="m",
                strategy="s",
                start_layers=3,
                target_layers=2,
                mode="auto",
                config={"obj": object()},
            )
        assert w.emit("log", message="ok")["seq"] == 0  # failures used no seq
    assert seqs(read_all(p)) == [0]


@pytest.mark.parametrize(
    "kind, fields, fragment",
    [
        ("log", {"message": "m", "colour": "red"}, "no field(s) colour"),
        ("log", {}, "missing field(s) message"),
        ("eval", {"iteration": 1, "stage": "after_lunch", "aggregate": 0.5, "tasks": {}}, "'stage'"),
        ("eval", {"iteration": 1, "stage": "teacher", "aggregate": "0.5", "tasks": {}}, "'aggregate'"),
        ("eval", {"iteration": 1, "stage": "teacher", "aggregate": 0.5, "tasks": {}, "part": "both"}, "'part'"),
        ("decision", {"iteration": 1, "layer": 3, "by": "nobody"}, "'by'"),
        ("decision", {"iteration": True, "layer": 3, "by": "user"}, "'iteration'"),
        ("importance", {"iteration": 1, "metric": "bi", "scores": {"3": "low"}}, "'scores'"),
        ("importance", {"iteration": 1, "metric": "bi", "scores": {}, "partial": ["3"]}, "'partial'"),
        ("train_step", {"iteration": 1, "step": 0, "lr": math.nan}, None),  # NaN is null: lr may be null
        ("run_finished", {"reason": "bored"}, "'reason'"),
        (
            "awaiting_decision",
            {"iteration": 1, "layer": 3, "mode": "auto", "candidates": [{"layer": 3}]},
            "'candidates'",
        ),
    ],
)
def test_writer_checks_fields_against_the_registry(tmp_path, kind, fields, fragment):
    with EventWriter(tmp_path / "events.jsonl") as w:
        if fragment is None:
            w.emit(kind, **fields)
            return
        with pytest.raises(ValueError, match=re.escape(fragment)):
            w.emit(kind, **fields)
        assert w.next_seq == 0
    assert read_all(tmp_path / "events.jsonl") == []


def test_the_fields_engines_log_since_the_report_split_are_accepted(tmp_path):
    with EventWriter(tmp_path / "events.jsonl") as w:
        w.emit("eval", iteration=2, stage="after_healing", part="select", aggregate=0.5, tasks={"a": 0.5})
        w.emit("train_step", iteration=2, step=3, loss=1.5, kl=20.0, mse=0.5, kl_term=1.0, mse_term=0.5)
        w.emit(
            "importance",
            iteration=2,
            metric="task_drop",
            scores={"3": 0.1, "4": 0.2},
            partial=[4],
            items={"3": 64, "4": 16},
        )
        w.emit("decision", iteration=2, layer=12, by="fixed", proposed=None)
        w.emit("run_finished", reason="floor", layers=20)
    assert [e["type"] for e in read_all(tmp_path / "events.jsonl")] == [
        "eval",
        "train_step",
        "importance",
        "decision",
        "run_finished",
    ]


def test_nan_and_inf_become_null(tmp_path):
    p = tmp_path / "events.jsonl"
    with EventWriter(p) as w:
        rec = w.emit("train_step", iteration=1, step=0, loss=math.nan, kl=math.inf)
        nested = w.emit(
            "importance", iteration=1, metric="bi", scores={"1": -math.inf}, also={"angular": {"1": math.nan}}
        )
    assert rec["loss"] is None and nested["also"] == {"angular": {"1": None}}
    text = p.read_text()
    assert "NaN" not in text and "Infinity" not in text
    (ev, imp) = read_all(p)
    assert ev["loss"] is None and ev["kl"] is None and imp["scores"] == {"1": None}


def test_unicode_survives(tmp_path):
    p = tmp_path / "events.jsonl"
    with EventWriter(p) as w:
        w.emit("log", message="задача ✓")
    assert read_all(p)[0]["message"] == "задача ✓"


def test_partial_line_in_two_halves(tmp_path):
    p = tmp_path / "events.jsonl"
    with EventWriter(p) as w:
        w.emit("log", message="a")
    tailer = EventTailer(p)
    assert seqs(tailer.poll()) == [0]
    line = json.dumps({"seq": 1, "t": 1.0, "type": "log", "message": "b"}).encode() + b"\n"
    with open(p, "ab") as f:
        f.write(line[:10])
    assert tailer.poll() == []
    assert tailer.partial == line[:10]
    with open(p, "ab") as f:
        f.write(line[10:])
    got = tailer.poll()
    assert seqs(got) == [1] and got[0]["message"] == "b"
    assert tailer.partial == b"" and tailer.offset == p.stat().st_size


def test_bad_json_line_skipped_and_counted(tmp_path):
    p = tmp_path / "events.jsonl"
    with EventWriter(p) as w:
        w.emit("log", message="a")
    with open(p, "ab") as f:
        f.write(b"{not json\n[1, 2]\n")
    tailer = EventTailer(p)
    assert seqs(tailer.poll()) == [0]
    assert tailer.bad_lines == 2
    with open(p, "ab") as f:
        f.write(json.dumps({"seq": 1, "t": 0.0, "type": "log", "message": "b"}).encode() + b"\n")
    assert seqs(tailer.poll()) == [1]
    assert tailer.bad_lines == 2  # not recounted on later polls


def test_replay_from_saved_offset_equals_tail_of_read_all(tmp_path):
    p = tmp_path / "events.jsonl"
    w = EventWriter(p)
    tailer = EventTailer(p)
    offsets = []
    for i in range(50):
        w.emit("train_step", iteration=0, step=i, loss=float(i))
        if i % 7 == 3:
            tailer.poll()
            offsets.append((tailer.offset, i + 1))
    w.close()
    everything = read_all(p)
    for off, n_before in offsets:
        assert EventTailer(p, offset=off).poll() == everything[n_before:]
    # an offset in mid-line is moved to the next line start
    mid = offsets[0][0] + 5
    assert EventTailer(p, offset=mid).poll() == everything[offsets[0][1] + 1 :]


def test_writer_repairs_torn_and_unparsable_tail(tmp_path):
    p = tmp_path / "events.jsonl"
    with EventWriter(p) as w:
        for _ in range(4):
            w.emit("log", message="x")
    good_size = p.stat().st_size
    with open(p, "ab") as f:
        f.write(b"garbage line\n" + b'{"seq": 4, "t": 1.0, "ty')
    tailer = EventTailer(p)
    assert seqs(tailer.poll()) == [0, 1, 2, 3] and tailer.bad_lines == 1
    w = EventWriter(p)
    assert w.repaired_bytes > 0 and p.stat().st_size == good_size and w.next_seq == 4
    for _ in range(3):
        w.emit("log", message="after repair, a longer line than the garbage that was here")
    w.close()
    # the tailer had judged the cut line bad; it re-reads and misses nothing
    assert seqs(tailer.poll()) == [4, 5, 6]
    assert tailer.bad_lines == 0
    assert seqs(read_all(p)) == list(range(7))


def test_tailer_survives_file_cut_below_its_offset(tmp_path):
    p = tmp_path / "events.jsonl"
    with EventWriter(p) as w:
        for _ in range(5):
            w.emit("log", message="x")
    tailer = EventTailer(p)
    assert len(tailer.poll()) == 5
    lines = p.read_bytes().splitlines(keepends=True)
    p.write_bytes(b"".join(lines[:2]) + lines[2][:7])  # hand-edited / replaced: shorter, mid-line
    assert tailer.poll() == [] and tailer.offset == len(lines[0]) + len(lines[1])
    with EventWriter(p) as w:
        w.emit("log", message="new")
    assert [(e["seq"], e["type"]) for e in tailer.poll()] == [(2, "log")]


def test_empty_and_all_garbage_files(tmp_path):
    p = tmp_path / "events.jsonl"
    p.write_bytes(b"")
    assert EventWriter(p).next_seq == 0
    p.write_bytes(b"\x00\x00\x00")  # zero-filled tail after a power loss
    w = EventWriter(p)
    assert w.next_seq == 0 and w.repaired_bytes == 3
    w.emit("log", message="x")
    w.close()
    assert seqs(read_all(p)) == [0]


def test_thread_safety(tmp_path):
    import threading

    p = tmp_path / "events.jsonl"
    w = EventWriter(p)

    def work():
        for i in range(200):
            w.emit("train_step", iteration=1, step=i)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    w.close()
    assert seqs(read_all(p)) == list(range(800))


def test_parse_100k_events(tmp_path):
    """Correctness at scale; the speed is measured by bench/tui.py (paint of a 100k-event run)."""
    p = tmp_path / "events.jsonl"
    line = {"t": 1.0, "type": "train_step", "iteration": 3, "step": 0, "loss": 1.2345, "kl": 0.1, "lr": 1e-4}
    with open(p, "wb") as f:
        f.write(b"".join(json.dumps({"seq": i, **line}).encode() + b"\n" for i in range(100_000)))
    events = read_all(p)
    assert len(events) == 100_000 and events[-1]["seq"] == 99_999
    assert [e["seq"] for e in events[:3]] == [0, 1, 2]


REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}

WRITER_SCRIPT = textwrap.dedent(
    """
    import sys
    from engine.runlog.events import EventWriter
    w = EventWriter(sys.argv[1])
    print("ready", flush=True)
    i = 0
    while True:
        w.emit("log", message="x" * (i % 300), iteration=0)
        i += 1
    """
)


def test_sigkilled_writer_then_torn_line_then_resume(tmp_path):
    p = tmp_path / "events.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, str(p)], stdout=subprocess.PIPE, env=ENV)
    try:
        assert proc.stdout.readline().strip() == b"ready"
        tailer = EventTailer(p)
        seen = []
        deadline = time.monotonic() + 10
        while len(seen) < 2000 and time.monotonic() < deadline:
            seen += tailer.poll()  # reading while it writes
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert len(seen) >= 2000
    with open(p, "ab") as f:
        f.write(b'{"seq": 999999999, "t": 1.0, "type": "train_s')  # a torn write
    seen += tailer.poll()
    assert seqs(seen) == list(range(len(seen)))
    before = read_all(p)
    n = len(before)
    assert seqs(before) == list(range(n))

    w = EventWriter(p)
    assert w.next_seq == n and w.repaired_bytes > 0
    for _ in range(5):
        w.emit("log", message="x")
    w.close()
    seen += tailer.poll()
    after = read_all(p)
    assert seqs(after) == list(range(n + 5))
    assert seqs(seen) == list(range(n + 5))
    assert p.read_bytes().endswith(b"\n")
