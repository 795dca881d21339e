"""The healing ablation's table keeps rows measured in an earlier session when their runs are gone.

A variant takes 10-13 minutes on a 2-core machine, so the table is filled over several sessions and
machines; a run directory does not survive a new machine, the CSV (committed) does.
"""

import csv
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _tool():
    spec = importlib.util.spec_from_file_location("healing_ablation", ROOT / "tools" / "healing_ablation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(variant: str, score: float) -> dict:
    return {"variant": variant, "removals": "14 13 12", "report_after_healing": score}


def test_new_rows_join_the_earlier_ones_in_the_listed_order(tmp_path):
    tool = _tool()
    out = tmp_path / "table.csv"
    tool._write(out, {"kl only": _row("kl only", 0.39306), "no healing": _row("no healing", 0.36539)})

    rows = tool._earlier_rows(out)
    rows["mse last"] = _row("mse last", 0.38)  # measured now; the earlier rows' runs are gone
    rows["default"] = _row("default", 0.4)  # measured again: replaces the earlier row
    tool._write(out, rows)

    with open(out, newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["variant"] for r in table] == ["no healing", "default", "kl only", "mse last"]
    assert [r["report_after_healing"] for r in table] == ["0.36539", "0.4", "0.39306", "0.38"]
    assert not list(tmp_path.glob("*.tmp"))


def test_no_table_yet_is_an_empty_start(tmp_path):
    assert _tool()._earlier_rows(tmp_path / "missing.csv") == {}


def test_a_row_of_a_variant_no_longer_listed_is_kept_last(tmp_path):
    tool = _tool()
    out = tmp_path / "table.csv"
    tool._write(out, {"retired": _row("retired", 0.1), "default": _row("default", 0.2)})
    with open(out, newline="") as f:
        assert [r["variant"] for r in csv.DictReader(f)] == ["default", "retired"]


def test_only_takes_whole_names_with_their_commas(tmp_path):
    tool = _tool()
    deep = "deep 28,27,26: lr 3e-4"
    assert deep in tool.VARIANTS  # a name that a comma-separated list would cut in three
    out = tmp_path / "table.csv"
    assert tool.main(["--table-only", "--only", deep, "--runs-dir", str(tmp_path / "runs"), "--out", str(out)]) == 0
    try:
        tool.main(["--table-only", "--only", "deep 28", "--runs-dir", str(tmp_path / "runs"), "--out", str(out)])
    except SystemExit as exc:
        assert "unknown variant 'deep 28'" in str(exc)
    else:
        raise AssertionError("an unknown variant was taken")
