"""tools/heal_scaling.py on a tiny model: one budget, two schedules, rows merged into the CSV."""

import csv
import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from tests.tiny_suite import WORDS

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("heal_scaling", ROOT / "tools" / "heal_scaling.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_schedule_spends_the_same_total_budget():
    tool = _tool()
    for schedule in tool.SCHEDULES:
        heal = tool.heal_settings(schedule, 1200, 6)
        healings = 6 if heal.get("each_removal") else 1
        assert healings * heal["train_tokens"] + heal.get("final_tokens", 0) == 1200


@pytest.mark.e2e
def test_a_tiny_dry_run_writes_one_row_per_schedule_and_keeps_earlier_rows(tiny, tmp_path):
    tool = _tool()
    out = tmp_path / "heal_scaling.csv"
    earlier = dict.fromkeys(tool.COLUMNS, "") | {"variant": "measured elsewhere", "schedule": "once"}
    earlier |= {"budget_tokens": "1", "data": "embedded"}
    tool._write(out, {"measured elsewhere": earlier})
    data = tmp_path / "heal.jsonl"
    words = WORDS
    data.write_text(
        "".join(json.dumps({"text": " ".join(words[i:] + words[:i])}) + "\n" for i in range(len(words))) * 3
    )
    args = ["--model", str(tiny / "model"), "--suite", str(tiny / "suite.yaml"), "--removals", "4,1"]
    args += ["--budgets", "256", "--data", str(data), "--runs-dir", str(tmp_path / "runs"), "--out", str(out)]
    args += ["--heal", "seq_len=16", "--heal", "batch_size=4", "--heal", "heldout_tokens=32", "--no-paired"]
    assert tool.main([*args, "--only", "iterative + final", "--only", "once"]) == 0
    rows = {r["variant"]: r for r in csv.DictReader(out.open())}
    assert set(rows) == {"measured elsewhere", f"once 256 {data}", f"iterative + final 256 {data}"}
    once, iterative = rows[f"once 256 {data}"], rows[f"iterative + final 256 {data}"]
    assert (once["healings"], iterative["healings"]) == ("1", "3")  # two removals healed, then the final healing
    assert (iterative["per_removal_tokens"], iterative["final_tokens"]) == ("64", "128")
    for r in (once, iterative):
        assert 0 < float(r["retention_report"]) < 2 and float(r["tokens_trained"]) <= 256
        assert 0.1 < float(r["epochs"]) < 0.5  # 256 tokens of the ~1,100 the data holds
    # a finished run is not run again: its row is read back from its events
    logs = {p: p.stat().st_size for p in (tmp_path / "runs").glob("*/events.jsonl")}
    assert len(logs) == 2
    assert tool.main([*args, "--only", "once"]) == 0
    assert {p: p.stat().st_size for p in logs} == logs
    assert {r["variant"]: r for r in csv.DictReader(out.open())} == rows
    # the rows are measured on the layers next to the gaps, whatever the engine's default
    configs = [yaml.safe_load((run / "config.yaml").read_text()) for run in (tmp_path / "runs").iterdir()]
    assert {(c["heal"]["trainable"], c["heal"]["early_stop_from"]) for c in configs} == {("adjacent", 0.0)}


def test_bad_budgets_are_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        _tool().main(["--budgets", "0.2M"])
    assert "comma-separated integers" in str(exc.value)


def test_a_label_keeps_runs_with_other_settings_apart():
    tool = _tool()
    assert tool.variant_name("once + final", 196608, "mixed") == "once + final 196608 mixed"
    labelled = tool.variant_name("once + final", 196608, "mixed", "final-all")
    assert labelled == "once + final 196608 mixed final-all"
    assert tool.slug(labelled) == "once-final-196608-mixed-final-all"
