"""The study's ranking of strategies at each depth, and a depth that cannot be compared is a note."""

from __future__ import annotations

import csv

import pytest

from ild_tui.study_paired import PairedDepths, pair_best_two, ranked, section

FIELDS = ["strategy", "layers", "part", "aggregate", "layers_removed"]


def _summary(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for r in rows:
            writer.writerow(dict(zip(FIELDS, r, strict=True)))
    return path


def test_ranked_by_the_report_part_best_first_ties_by_name(tmp_path):
    summary = _summary(
        tmp_path / "summary.csv",
        [
            ("b", 29, "report", 0.40, 1),
            ("a", 29, "report", 0.40, 1),  # tied with b: the name decides, not the file's order
            ("c", 29, "report", 0.41, 1),
            ("c", 29, "select", 0.99, 1),  # the selection part never ranks
            ("d", 29, "report", 0.50, 1),  # not in the study
            ("a", 28, "report", 0.30, 2),
            ("a", 30, "report", 0.45, 0),  # the teacher's depth: no student
        ],
    )
    assert ranked(summary, ["a", "b", "c"]) == {
        29: [("c", 0.41), ("a", 0.40), ("b", 0.40)],
        28: [("a", 0.30)],
    }


@pytest.mark.e2e  # starts engine.paired
def test_a_depth_that_cannot_be_compared_is_a_note_not_a_failure(tmp_path):
    summary = _summary(
        tmp_path / "summary.csv",
        [("a", 29, "report", 0.4, 1), ("b", 29, "report", 0.3, 1), ("a", 28, "report", 0.3, 2)],
    )
    runs = {"a": tmp_path / "runs" / "a", "b": tmp_path / "runs" / "b"}  # not run directories
    paired = pair_best_two(tmp_path, summary, runs)
    assert paired.rows == []
    assert (
        paired.notes[0].startswith("29 layers (a against b) not compared: ")
        and "not a run directory" in paired.notes[0]
    )
    assert paired.notes[1] == "28 layers: only a got there; nothing to compare"
    assert (tmp_path / "paired" / "best-two.csv").read_text().startswith("layers,a,b,")
    assert not list((tmp_path / "paired").glob("*.tmp"))


def test_the_report_section_lists_each_pair_and_the_notes():
    row = {
        "layers": 27,
        "a": "block-distill",
        "b": "iterative-<distill>",
        "a_aggregate": 0.41,
        "b_aggregate": 0.39,
        "diff": 0.02,
        "low": -0.001,
        "high": 0.04,
        "p": "0.06",
        "verdict": "noise",
        "file": "best-two-27-block-distill_vs_iterative-distill.txt",
    }
    html = section(PairedDepths([row], ["26 layers: only a got there; nothing to compare"]), "../paired")
    assert '<a href="../paired/best-two-27-block-distill_vs_iterative-distill.txt">noise</a>' in html
    assert "iterative-&lt;distill&gt;" in html and "+0.0200 [-0.0010, +0.0400]" in html
    assert "26 layers: only a got there" in html
    assert section(PairedDepths([], []), "../paired") == ""
