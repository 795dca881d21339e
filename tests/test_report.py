"""`ild report`: files, CSV rows against the events, the page in a real headless browser, and a
real timing of an exported student against its teacher."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from engine.runlog.tailer import read_all
from ild_tui.report import ReportError, write_report
from tests.support import ild
from tools.synthetic_runs import DEAD, FINISHED, LIVE, SHORTGPT, synth_run

CANNED = (FINISHED, SHORTGPT, DEAD, LIVE)
SPLIT = "split-distill"  # a newer engine's run: select and report parts, weighted loss terms, racing


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _num(text: str) -> float | None:
    return None if text == "" else float(text)


def _evals(run: Path) -> dict[tuple, dict]:
    """(iteration, stage, part) -> the last eval event with that key, straight from the log."""
    out = {}
    for e in read_all(run / "events.jsonl"):
        if e["type"] == "eval":
            out[(e["iteration"], e["stage"], e.get("part", "report"))] = e
    return out


def _finals(evals: dict[tuple, dict], part: str) -> dict[int, dict]:
    finals = {}
    for (it, stage, p), e in sorted(evals.items(), key=lambda kv: (kv[0][0], kv[0][1] != "after_healing")):
        if p == part and stage != "teacher" and it not in finals:
            finals[it] = e
    return finals


@pytest.fixture
def report_runs(runs):
    synth_run(
        runs / SPLIT, name=SPLIT, strategy="iterative-distill", split=True, steps_per_iter=12, seed=7, target_layers=24
    )
    return runs


@pytest.fixture(scope="module")
def canned_report(tmp_path_factory):
    """One report of the canned runs (and a split one), shared by the checks that only read it."""
    from tools.synthetic_runs import copy_all

    root = tmp_path_factory.mktemp("report")
    runs = copy_all(root / "runs")
    synth_run(
        runs / SPLIT, name=SPLIT, strategy="iterative-distill", split=True, steps_per_iter=12, seed=7, target_layers=24
    )
    paths = [runs / n for n in (*CANNED, SPLIT)]
    result = write_report(paths, root / "out", measure=False)
    return paths, result


def test_the_report_writes_every_file_and_the_page_embeds_every_figure(canned_report):
    _paths, result = canned_report
    out = result.out
    for name in (
        "report.html",
        "summary.csv",
        "runs.csv",
        "evals.csv",
        "importance.csv",
        "removals.csv",
        "train_steps.csv",
        "fig9_aggregate.png",
        "fig10_removals.png",
        "select_vs_report.png",
        "report.json",
    ):
        assert (out / name).is_file(), name
    for label in (*CANNED, SPLIT):
        assert (out / f"importance_{label}.png").is_file()
    assert (out / f"loss_{FINISHED}.png").is_file() and not (out / f"loss_{SHORTGPT}.png").exists()  # no healing
    assert not (out / "cost.csv").exists()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert json.loads((out / "report.json").read_text())["files"] == result.files[:-1]
    assert set(pngs) <= set(result.files)

    page = (out / "report.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', page)
    assert len(images) == len(pngs) and all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r'(src|href)="(?!data:)[a-z]+://', page) and "<script" not in page
    for label in (*CANNED, SPLIT):
        assert label in page
    assert "Not measured" in page
    assert "At 20 layers of <code>smollm2-135m</code> the best is <b>iterative-distill</b>" in page


def test_csv_rows_match_the_events(canned_report):
    paths, result = canned_report
    out = result.out
    eval_rows = _csv(out / "evals.csv")
    summary = _csv(out / "summary.csv")
    run_rows = {r["run"]: r for r in _csv(out / "runs.csv")}
    importance = _csv(out / "importance.csv")
    steps = _csv(out / "train_steps.csv")
    for run in paths:
        label = run.name
        events = read_all(run / "events.jsonl")
        evals = _evals(run)
        mine = {(int(r["iteration"]), r["stage"], r["part"]): r for r in eval_rows if r["run"] == label}
        assert set(mine) == set(evals)
        for key, e in evals.items():
            assert _num(mine[key]["aggregate"]) == e["aggregate"]
            assert {t: _num(mine[key][t]) for t in e["tasks"]} == e["tasks"]

        parts = {p for (_, _, p) in evals}
        assert parts == ({"report", "select"} if label == SPLIT else {"report"})
        for part in parts:
            teacher = evals[(0, "teacher", part)]["aggregate"]
            finals = _finals(evals, part)
            rows = [r for r in summary if r["run"] == label and r["part"] == part]
            assert [(int(r["layers"]), _num(r["aggregate"])) for r in rows] == [
                (e["layers"], e["aggregate"]) for _, e in sorted(finals.items())
            ]
            assert all(_num(r["teacher_aggregate"]) == teacher and r["strategy"] == events[2]["strategy"] for r in rows)
            last = finals[max(finals)]["aggregate"]
            prefix = "" if part == "report" else "select_"
            assert _num(run_rows[label][f"{prefix}aggregate"]) == last
            assert _num(run_rows[label][f"{prefix}retention_pct"]) == pytest.approx(100 * last / teacher)

        scored = {}
        for e in events:
            if e["type"] == "importance":
                scored[e["iteration"]] = e
        mine = [r for r in importance if r["run"] == label]
        assert len(mine) == sum(len(e["scores"]) for e in scored.values())
        removed = {e["iteration"]: e["layer"] for e in events if e["type"] == "layer_removed"}
        assert {(int(r["iteration"]), int(r["layer"])) for r in mine if r["removed_here"] == "1"} == {
            (it, layer) for it, layer in removed.items() if it in scored
        }
        if label == SPLIT:
            partial = {(it, layer) for it, e in scored.items() for layer in e.get("partial", [])}
            assert partial and {(int(r["iteration"]), int(r["layer"])) for r in mine if r["partial"] == "1"} == partial

        train = {(e["iteration"], e["step"]): e for e in events if e["type"] == "train_step"}
        mine = {(int(r["iteration"]), int(r["step"])): r for r in steps if r["run"] == label}
        assert set(mine) == set(train)
        assert all(_num(mine[k]["loss"]) == e["loss"] for k, e in train.items())

    counts = {int(r["layer"]): int(r["count"]) for r in _csv(out / "removals.csv")}
    every = [e["layer"] for run in paths for e in read_all(run / "events.jsonl") if e["type"] == "layer_removed"]
    assert counts == {layer: every.count(layer) for layer in range(30)}


def test_the_summary_has_the_columns_the_study_results_need(canned_report):
    _, result = canned_report
    with open(result.out / "summary.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header[:5] == ["strategy", "layers", "part", "aggregate", "teacher_aggregate"]


def _chromium() -> tuple[str, str] | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    return found if all(found) else None


def test_the_page_opens_in_a_headless_browser_without_errors(canned_report, tmp_path):
    found = _chromium()
    if found is None:
        if os.geteuid() == 0 and shutil.which("apt-get"):
            pytest.fail(
                "chromium and chromedriver are missing on a root machine with apt-get: `make test` installs "
                "them (apt-get install -y chromium chromium-driver)"
            )
        pytest.skip("no chromium/chromedriver here and no root apt-get to install them: the browser check cannot run")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = found
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        driver.get((canned_report[1].page).resolve().as_uri())
        assert driver.title.startswith("ild report")
        widths = driver.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])"
        )
        assert len(widths) == len(list(canned_report[1].out.glob("*.png")))
        broken = [alt for alt, complete, width in widths if not complete or width == 0]
        assert not broken, f"images that did not load: {broken}"
        tables = driver.execute_script("return document.querySelectorAll('table').length")
        assert tables == 1 + len(canned_report[0])  # Table 2, then Table 3 of each run
        severe = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert not severe, severe
    finally:
        driver.quit()


def test_a_report_replaces_an_earlier_one_and_refuses_a_foreign_directory(report_runs, tmp_path):
    out = tmp_path / "out"
    write_report([report_runs / FINISHED, report_runs / SHORTGPT], out, measure=False)
    assert (out / f"importance_{SHORTGPT}.png").is_file()
    (out / "mine.txt").write_text("a user's file")
    write_report([report_runs / FINISHED], out, measure=False)
    assert not (out / f"importance_{SHORTGPT}.png").exists() and (out / "mine.txt").is_file()
    assert [r["run"] for r in _csv(out / "runs.csv")] == [FINISHED]

    with pytest.raises(ReportError, match="not empty and holds no earlier ild report"):
        write_report([report_runs / FINISHED], report_runs / DEAD, measure=False)
    twice = tmp_path / "twice"
    write_report([report_runs / FINISHED, report_runs / FINISHED], twice, measure=False)
    assert [r["run"] for r in _csv(twice / "runs.csv")] == [FINISHED, f"{FINISHED}-2"]


def test_more_sections_come_after_the_page_and_their_failure_costs_only_them(report_runs, tmp_path):
    """A study's pairing (minutes of rescoring) runs once the page is written; a disk error there
    leaves the page as it was, with a note, instead of no page at all."""
    out = tmp_path / "out"
    seen = []

    def section(report: Path) -> list[str]:
        seen.append((report / "report.html").is_file() and (report / "summary.csv").is_file())
        return ['<section id="mine">paired</section>']

    write_report([report_runs / FINISHED], out, measure=False, more_sections=section)
    assert seen == [True] and '<section id="mine">paired</section>' in (out / "report.html").read_text()

    def failing(report: Path) -> list[str]:
        raise OSError(28, "No space left on device")

    result = write_report([report_runs / FINISHED], out, measure=False, more_sections=failing)
    page = (out / "report.html").read_text()
    assert 'id="mine"' not in page and "No space left on device" in page
    assert any("extra sections were not written" in n for n in result.notes)
    assert json.loads((out / "report.json").read_text())["files"][0] == "report.html"


def test_the_cli_writes_a_report_and_says_bad_input_in_one_line(report_runs, tmp_path):
    out = tmp_path / "cli"
    done = ild(
        "report", FINISHED, str(report_runs / SPLIT), "--runs-dir", str(report_runs), "--out", str(out), "--no-measure"
    )
    assert done.returncode == 0, done.stderr
    assert f"wrote {out / 'report.html'}" in done.stdout
    assert [r["run"] for r in _csv(out / "runs.csv")] == [FINISHED, SPLIT]
    for args, message in ((["nosuch"], "no run 'nosuch'"), ([FINISHED, "--out", str(report_runs / DEAD)], "not empty")):
        args = args if "--out" in args else [*args, "--out", str(tmp_path / "x")]
        bad = ild("report", *args, "--runs-dir", str(report_runs), "--no-measure")
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and message in bad.stderr, bad.stderr


@pytest.mark.e2e
def test_the_cost_is_measured_on_the_exported_student(tiny, tmp_path):
    """The teacher and the exported student are loaded and timed for real (a tiny random llama); a
    teacher shared by two runs is measured once, a run with no export says so."""
    import torch
    from transformers import AutoModelForCausalLM

    from tests.tiny_models import tiny_config

    runs = tmp_path / "runs"
    teacher = str(tiny / "model")
    for name in ("with-export", "no-export"):
        synth_run(
            runs / name, name=name, strategy="iterative-pruning", start_layers=6, target_layers=4, model=teacher, seed=3
        )
    export = runs / "with-export" / "export"
    shutil.copytree(tiny / "model", export)  # the tokenizer
    config = tiny_config("llama")
    config.num_hidden_layers = 4
    torch.manual_seed(1)
    student = AutoModelForCausalLM.from_config(config)
    student.save_pretrained(export)
    expected = {
        "teacher": (6, sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(teacher).parameters())),
        "student": (4, sum(p.numel() for p in student.parameters())),
    }

    out = tmp_path / "out"
    done = ild("report", "with-export", "no-export", "--runs-dir", str(runs), "--out", str(out), "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert "no-export: no exported student yet" in done.stderr
    rows = _csv(out / "cost.csv")
    assert [(r["role"], r["run"]) for r in rows] == [("teacher", ""), ("student", "with-export")]
    assert rows[0]["model"] == teacher and rows[1]["model"] == str(export)
    for row in rows:
        assert (int(row["layers"]), int(row["params"])) == expected[row["role"]]
        assert float(row["prefill_tokens_per_s"]) > 0 and float(row["decode_tokens_per_s"]) > 0
        assert int(row["peak_memory_bytes"]) > 50 * 2**20 and row["device"] == "cpu" and row["note"] == ""
    t, s = rows
    assert float(s["params_pct"]) == pytest.approx(100 * int(s["params"]) / int(t["params"]))
    assert float(s["decode_speedup"]) == pytest.approx(
        float(s["decode_tokens_per_s"]) / float(t["decode_tokens_per_s"])
    )
    page = (out / "report.html").read_text()
    assert "What the compression buys" in page and "decode" in page and (out / "cost.png").is_file()


def test_figure_9_draws_a_parameter_line_for_each_weight_a_strategy_gives():
    # reverse-order unties SmolLM2's tied head, so its students weigh 28 M more at every depth: one
    # shared line would hide that; runs that weigh the same share a line and pool their depths.
    from types import SimpleNamespace

    from ild_tui.report.plots import _params

    def run(strategy, params, model="smol"):
        points = [{"removed": k, "params": v} for k, v in params.items()]
        return SimpleNamespace(model=model, strategy=strategy, state=SimpleNamespace(curve=lambda part: points))

    runs = [
        run("iterative-distill", {0: 135, 1: 131, 2: 127}),
        run("shortgpt", {0: 135, 3: 123}),
        run("reverse-order", {0: 163, 1: 159}),
        run("replaceme", {2: 127}),
        run("iterative-distill", {0: 1000, 1: 900}, model="other"),
        run("single", {0: 135}, model="lonely"),  # one point is no line
    ]
    assert _params(runs) == [
        (["iterative-distill", "shortgpt", "replaceme"], {0: 135, 1: 131, 2: 127, 3: 123}),
        (["reverse-order"], {0: 163, 1: 159}),
        (["iterative-distill"], {0: 1000, 1: 900}),
    ]
