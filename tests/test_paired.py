"""``ild paired``: a difference between two students with its paired-bootstrap interval."""

import json
import random
import shutil

import pytest

from engine.paired import aligned, paired_bootstrap
from engine.tasks.evaluate import ItemScores
from engine.tasks.spec import TaskSpec
from tests.support import ild


def _spec(name: str, metric: str = "accuracy") -> TaskSpec:
    return TaskSpec.model_validate(
        {"name": name, "kind": "multiple_choice", "source": {"type": "jsonl", "path": "x.jsonl"}, "metric": metric}
    )


def _scores(values: list[float], order: list[int] | None = None) -> ItemScores:
    order = order or list(range(len(values)))
    return ItemScores(items=order, values=[values[i] for i in order], weights=[1.0] * len(values))


def test_the_same_student_differs_by_nothing():
    rng = random.Random(1)
    values = [rng.random() for _ in range(40)]
    specs = {"t": _spec("t")}
    result = paired_bootstrap(specs, {"t": _scores(values)}, {"t": _scores(values, list(reversed(range(40))))}, 300)
    d = result.aggregate
    assert (d.diff, d.low, d.high, d.p) == (0.0, 0.0, 0.0, 1.0)
    assert result.items == {"t": 40}


def test_pairing_finds_a_small_steady_gain_among_very_unequal_items():
    """Items from 0 to 1 (a hard and an easy half) and A better by 0.02 on every one: unpaired, the
    spread of the items (a standard error near 0.07) would hide it; paired, it is all there is."""
    rng = random.Random(2)
    b = [rng.choice([0.05, 0.9]) + rng.uniform(0, 0.05) for _ in range(50)]
    a = [v + 0.02 for v in b]
    specs = {"t": _spec("t"), "u": _spec("u")}
    result = paired_bootstrap(
        specs, {"t": _scores(a), "u": _scores(b)}, {"t": _scores(b), "u": _scores(b)}, resamples=500, seed=3
    )
    t = result.tasks["t"]
    assert t.diff == pytest.approx(0.02) and t.low == pytest.approx(0.02) and t.high == pytest.approx(0.02)
    assert t.p == 0.0
    assert result.tasks["u"].diff == 0.0
    assert result.aggregate.diff == pytest.approx(0.01)  # the plain mean over the two tasks
    assert result.aggregate.low > 0


def test_a_noisy_difference_is_inside_its_interval_and_the_draws_repeat():
    rng = random.Random(4)
    a = [float(rng.random() < 0.6) for _ in range(40)]
    b = [float(rng.random() < 0.6) for _ in range(40)]
    specs = {"t": _spec("t")}
    one = paired_bootstrap(specs, {"t": _scores(a)}, {"t": _scores(b)}, resamples=400, seed=5)
    again = paired_bootstrap(specs, {"t": _scores(a)}, {"t": _scores(b)}, resamples=400, seed=5)
    assert one == again
    d = one.aggregate
    assert d.low < d.diff < d.high and d.low < 0 < d.high and 0.05 < d.p <= 1.0


def test_students_scored_on_other_items_are_refused():
    with pytest.raises(ValueError, match="different items"):
        aligned(_scores([0.1, 0.2]), ItemScores(items=[0, 5], values=[0.1, 0.2], weights=[1.0, 1.0]))
    with pytest.raises(ValueError, match="different tasks"):
        paired_bootstrap({"t": _spec("t")}, {"t": _scores([0.1])}, {"u": _scores([0.1])}, 100)


@pytest.mark.e2e
def test_the_command_on_a_tiny_run(tiny, tmp_path):
    """A fixed-removal run's student against its teacher and against itself, as a user calls it."""
    runs = tmp_path / "runs"
    made = ild(
        "run",
        "--model",
        str(tiny / "model"),
        "--suite",
        str(tiny / "suite.yaml"),
        "--strategy",
        "iterative-pruning",  # no healing: the student is the teacher less the removed layers
        "--removals",
        "2,1",
        "--runs-dir",
        str(runs),
        "--name",
        "cut",
        "--headless",
    )
    assert made.returncode == 0, made.stderr

    out = tmp_path / "vs-teacher.json"
    vs_teacher = ild("paired", "cut", "teacher", "--runs-dir", str(runs), "--resamples", "200", "--json", str(out))
    assert vs_teacher.returncode == 0, vs_teacher.stderr
    assert "cut (A) against cut's teacher (B), report part, 200 paired resamples" in vs_teacher.stdout
    saved = json.loads(out.read_text())
    assert saved["b"] == "cut's teacher" and set(saved["tasks"]) and saved["resamples"] == 200
    logged = [json.loads(line) for line in (runs / "cut" / "events.jsonl").read_text().splitlines() if '"eval"' in line]
    final = [e for e in logged if e["type"] == "eval" and e.get("part") == "report"][-1]
    teacher = next(e for e in logged if e["type"] == "eval" and e.get("part") == "report" and e["stage"] == "teacher")
    # The students scored here are the ones the run scored: the same aggregates as its log.
    assert saved["aggregate"]["a"] == pytest.approx(final["aggregate"], abs=1e-6)
    assert saved["aggregate"]["b"] == pytest.approx(teacher["aggregate"], abs=1e-6)

    itself = ild("paired", "cut", "cut", "--runs-dir", str(runs), "--resamples", "100")
    assert itself.returncode == 0 and "aggregate difference +0.0000: inside the noise" in itself.stdout

    for args, said in (
        (("paired", "nothing-here", "teacher"), "nothing-here"),
        (("paired", "cut", "teacher", "--resamples", "5"), "--resamples"),
    ):
        bad = ild(*args, "--runs-dir", str(runs))
        assert bad.returncode == 2 and said in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.e2e
def test_layers_picks_each_runs_student_of_that_depth(tiny, tmp_path):
    """--layers N scores each run's student with N layers (its checkpoint of that iteration), the
    one the run logged at that depth; a depth a run never had is a one-line error."""
    runs = tmp_path / "runs"
    common = ["--model", str(tiny / "model"), "--suite", str(tiny / "suite.yaml"), "--runs-dir", str(runs)]
    for name, strategy in (("scored", "iterative-pruning"), ("bi", "iterative-bi")):
        made = ild("run", *common, "--strategy", strategy, "--target-layers", "4", "--name", name, "--headless")
        assert made.returncode == 0, made.stderr
    out = tmp_path / "at5.json"
    at5 = ild(
        "paired", "scored", "bi", "--layers", "5", "--runs-dir", str(runs), "--resamples", "200", "--json", str(out)
    )
    assert at5.returncode == 0, at5.stderr
    assert "scored (A) against bi (B) at 5 layers, report part" in at5.stdout
    saved = json.loads(out.read_text())
    assert saved["layers"] == 5

    def logged(run: str, iteration: int) -> float:
        events = [json.loads(line) for line in (runs / run / "events.jsonl").read_text().splitlines()]
        evals = [e for e in events if e["type"] == "eval" and e.get("part") == "report" and e["iteration"] == iteration]
        return evals[-1]["aggregate"]

    # the students scored are the runs' own at 5 layers (iteration 1), not their last (4 layers)
    assert saved["aggregate"]["a"] == pytest.approx(logged("scored", 1), abs=1e-6)
    assert saved["aggregate"]["b"] == pytest.approx(logged("bi", 1), abs=1e-6)
    assert logged("scored", 1) != pytest.approx(logged("scored", 2), abs=1e-6)

    # The per-item scores stay in the run directories: the same comparison again needs no weights.
    stored = sorted(p.name for p in (runs / "scored" / "paired-items").iterdir())
    assert stored == ["1-report.json.xz"]
    for run in ("scored", "bi"):
        shutil.rmtree(runs / run / "checkpoints")
    again = ild("paired", "scored", "bi", "--layers", "5", "--runs-dir", str(runs), "--resamples", "200")
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[-2:] == at5.stdout.splitlines()[-2:]
    # a student never compared before, weights gone: one line, no traceback
    gone = ild("paired", "scored", "bi", "--runs-dir", str(runs), "--resamples", "100")
    assert gone.returncode == 2 and "checkpoint" in gone.stderr and len(gone.stderr.strip().splitlines()) == 1

    for depth in ("6", "3"):  # the teacher's own depth is no student's; 3 layers was never reached
        bad = ild("paired", "scored", "bi", "--layers", depth, "--runs-dir", str(runs), "--resamples", "100")
        assert bad.returncode == 2 and "has no checkpoint of a student with" in bad.stderr
        assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
