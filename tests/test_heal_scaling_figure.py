"""tools/heal_scaling_figure.py: one line per schedule from the CSV, log x, unfinished rows left out."""

import csv
import importlib.util
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("heal_scaling_figure", ROOT / "tools" / "heal_scaling_figure.py")
figure = importlib.util.module_from_spec(spec)
spec.loader.exec_module(figure)


def _table(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["variant", "schedule", "data", "tokens_trained", "retention_report"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_series_by_schedule_sorted_by_tokens(tmp_path):
    table = _table(
        tmp_path / "t.csv",
        [
            {
                "variant": "once 393216 mixed",
                "schedule": "once",
                "data": "mixed",
                "tokens_trained": 393216,
                "retention_report": 0.75,
            },
            {
                "variant": "once 196608 mixed",
                "schedule": "once",
                "data": "mixed",
                "tokens_trained": 196608,
                "retention_report": 0.7315,
            },
            {
                "variant": "iterative 196608 mixed",
                "schedule": "iterative",
                "data": "mixed",
                "tokens_trained": 196608,
                "retention_report": 0.70,
            },
            {
                "variant": "once + final 196608 mixed final-all",
                "schedule": "once + final",
                "data": "mixed",
                "tokens_trained": 196608,
                "retention_report": 0.76,
            },
            {"variant": "half", "schedule": "once", "data": "mixed", "tokens_trained": "", "retention_report": ""},
        ],
    )
    series = figure.read_points(table)
    assert series == {
        "once (mixed)": [(196608, 0.7315), (393216, 0.75)],
        "iterative (mixed)": [(196608, 0.70)],
        "once + final (mixed, final-all)": [(196608, 0.76)],
    }
    out = tmp_path / "fig.png"
    assert figure.main([str(table), str(out)]) == 0
    with Image.open(out) as image:
        assert image.size == (770, 462)  # 7 x 4.2 inches at 110 dpi


def test_no_table_is_one_line_and_nonzero(tmp_path, capsys):
    assert figure.main([str(tmp_path / "missing.csv"), str(tmp_path / "f.png")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    empty = _table(tmp_path / "empty.csv", [])
    assert figure.main([str(empty), str(tmp_path / "f.png")]) == 1
    assert not (tmp_path / "f.png").exists()


def test_excluded_variants_are_not_drawn(tmp_path):
    """A row kept in the table as measured but known not to measure its budget (an artefact) can be
    left out of the figure by its variant name; an unknown name is an error, not silence."""
    row = {"schedule": "once + final", "data": "mixed", "retention_report": 0.80}
    table = _table(
        tmp_path / "t.csv",
        [
            {**row, "variant": "once + final 393216 mixed final-all", "tokens_trained": 393216},
            {
                **row,
                "variant": "once + final 786432 mixed final-all",
                "tokens_trained": 491520,
                "retention_report": 0.72,
            },
        ],
    )
    series = figure.read_points(table, exclude={"once + final 786432 mixed final-all"})
    assert series == {"once + final (mixed, final-all)": [(393216, 0.80)]}
    out = tmp_path / "fig.png"
    assert figure.main([str(table), str(out), "--exclude", "once + final 786432 mixed final-all"]) == 0
    assert figure.main([str(table), str(tmp_path / "g.png"), "--exclude", "no such row"]) == 2
    assert not (tmp_path / "g.png").exists()
