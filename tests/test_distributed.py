"""Several engine processes on one run (accelerate launch, gloo on the CPU), against one process.

Two processes share a 2-core machine here, so these runs show equality, not speed: the same removed
layers, the same importance values (bit for bit: the candidates are shared out and each is scored in
the same batches), evaluations and healing losses equal within float tolerance, the same export; a
rank killed mid-run ends in ``run_failed`` and the run resumes on one process. bench/scale.py times it.
"""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from engine.distributed.evaluator import assign_candidates, candidate_cost, merge_item_scores
from engine.distributed.ranks import default_threads
from engine.distributed.supervise import launch_command
from engine.runlog.fold import fold
from engine.runlog.tailer import EventTailer, read_all
from engine.tasks.evaluate import ItemScores
from tests.support import ENGINE, TINY_HEAL, ild, run_args

# Each run below is two engine processes (plus the launcher) on a 2-core machine: never two at once.
pytestmark = pytest.mark.xdist_group("distributed")

HEAL = TINY_HEAL
# Fewer tasks than the shared tiny suite (every kind still there): each run here is two processes on two cores.
SUITE = """
name: tiny-dist
tasks:
  - {name: lm, kind: language_modeling, source: {type: jsonl, path: text.jsonl}, metric: next_token_probability, samples: 8}
  - name: mc
    kind: multiple_choice
    source: {type: jsonl, path: mc.jsonl}
    fields: {question: q, choices: options, answer: label}
    prompt: "{question} ?"
    metric: accuracy
    samples: 8
  - name: copy
    kind: generation
    source: {type: jsonl, path: text.jsonl}
    fields: {input: text, target: text}
    prompt: "copy {input} :"
    target: "{target}"
    metric: lcs_ratio
    max_new_tokens: 6
    stop: []
    samples: 6
"""


@pytest.fixture(scope="module")
def suite(tiny):
    path = tiny / "dist-suite.yaml"
    path.write_text(SUITE)
    return path


def _config(tiny, suite, name, strategy, **extra):
    return {
        "name": name,
        "model": str(tiny / "model"),
        "strategy": strategy,
        "target_layers": 4,
        "suite": str(suite),
        "heal": HEAL,
        **extra,
    }


def _one_process(run_dir, config):
    created = subprocess.run(
        [*ENGINE, str(run_dir), "--create"], input=json.dumps(config), capture_output=True, text=True
    )
    assert created.returncode == 0, created.stderr
    done = subprocess.run([*ENGINE, str(run_dir)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return read_all(run_dir / "events.jsonl")


def _of(events, kind):
    return [e for e in events if e["type"] == kind]


def _close(a, b, rel=1e-6, abs_=1e-9):
    return a == pytest.approx(b, rel=rel, abs=abs_)


def _export_tensors(run_dir):
    from safetensors.torch import load_file

    return {k: v for f in sorted((run_dir / "export").glob("*.safetensors")) for k, v in load_file(f).items()}


def _assert_same_healing(a, b, teacher_dir, run_dir):
    """Two students healed by Adam from one teacher on the same data, one of them with its gradients
    summed in another order (DDP's all-reduce of half-batches). Adam divides each step by the root of
    the gradient's running second moment, so where that is near zero a rounding difference in the
    gradient can move the element by up to a whole step, at most lr * (1 - b1) / sqrt(1 - b2) (3.2 lr);
    the bound is per step taken, whatever the CPU's vector width. Such elements are few: in norm the
    students differ by a small part of what healing moved (a lost optimiser state or a step taken
    twice on resume moves the whole update)."""
    from safetensors.torch import load_file

    assert a.keys() == b.keys()
    steps = len({(e["iteration"], e["step"]) for e in _of(read_all(run_dir / "events.jsonl"), "train_step")})
    bound = 3.2 * HEAL["lr"] * steps
    layer_map = json.loads((run_dir / "export" / "config.json").read_text())["ild_layer_map"]
    teacher = load_file(str(teacher_dir / "model.safetensors"))

    def original(key):  # the teacher's name of a student tensor (layers are renumbered after a removal)
        parts = key.split(".")
        if parts[:2] == ["model", "layers"]:
            parts[2] = str(layer_map[int(parts[2])])
        return ".".join(parts)

    moved = differ = 0.0
    for key in a:
        assert (a[key] - b[key]).abs().max() <= bound, key
        differ += float((a[key].double() - b[key].double()).pow(2).sum())
        moved += float((b[key].double() - teacher[original(key)].double()).pow(2).sum())
    assert moved > 0, "healing moved nothing: the comparison would be empty"
    assert differ**0.5 <= 0.05 * moved**0.5, (differ**0.5, moved**0.5)


def _evals(events):
    return {(e["iteration"], e["stage"], e["part"]): e for e in _of(events, "eval")}


def _wait(tailer, predicate, what, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for event in tailer.poll():
            if predicate(event):
                return event
        time.sleep(0.05)
    pytest.fail(f"never saw {what}")


def _rank(supervisor_pid, rank):
    import psutil

    for child in psutil.Process(supervisor_pid).children(recursive=True):
        try:
            if "engine.worker" in " ".join(child.cmdline()) and child.environ().get("RANK") == str(rank):
                return child
        except psutil.Error:
            continue
    raise AssertionError(f"no engine process of rank {rank} under {supervisor_pid}")


# --- the parts, without processes -------------------------------------------------------------------
def test_candidates_are_shared_out_by_layer_work():
    candidates = [None, *range(30)]
    for size in (2, 3, 8):
        shares = assign_candidates(candidates, 30, size)
        assert sorted((c for s in shares for c in s), key=lambda c: -1 if c is None else c) == candidates
        assert all(shares) and shares == assign_candidates(candidates, 30, size)  # every rank computes the same
        work = [max(candidate_cost(c, 30)[0] for c in s) + sum(candidate_cost(c, 30)[1] for c in s) for s in shares]
        one = 29 + sum(candidate_cost(c, 30)[1] for c in candidates)
        assert max(work) <= one / size + 29  # never more than one prefix above a perfect split
    # As many ranks as candidates: each scores one.
    assert sorted(map(len, assign_candidates([None, 0, 1], 3, 3))) == [1, 1, 1]


def test_item_scores_merge_into_one_process_order():
    a = ItemScores(items=[2, 0], values=[0.2, 0.0], weights=[2.0, 1.0], groups=["x", "y"])
    b = ItemScores(items=[3, 1], values=[0.3, 0.1], weights=[3.0, 1.0], groups=["x", "z"])
    merged = merge_item_scores([a, b], {0: 0, 1: 1, 2: 2, 3: 3})
    assert merged.items == [0, 1, 2, 3] and merged.values == [0.0, 0.1, 0.2, 0.3]
    assert merged.weights == [1.0, 1.0, 2.0, 3.0] and merged.groups == ["y", "z", "x", "x"]
    assert merged.predictions == []


def test_threads_and_launch_command(tmp_path):
    assert default_threads(1, cores=16) is None  # one process: torch's own choice
    assert default_threads(2, cores=16) == 8 and default_threads(4, cores=2) == 1
    command = launch_command(tmp_path, 2, threads=1)
    assert command[1:3] == ["-m", "accelerate.commands.launch"] and command[-3:] == [
        "-m",
        "engine.worker",
        str(tmp_path),
    ]
    assert "--num_processes" in command and command[command.index("--num_processes") + 1] == "2"
    assert command[command.index("--main_process_port") + 1] == "0"  # runs sharing a host never share a port
    multi = launch_command(tmp_path, 16, accelerate_config="cluster.yaml", machine_rank=1)
    assert multi[multi.index("--config_file") + 1] == "cluster.yaml" and multi[multi.index("--machine_rank") + 1] == "1"


def test_the_documented_accelerate_configs_load(tmp_path):
    from accelerate.commands.config.config_args import load_config_from_file

    from engine.distributed.supervise import processes_in

    docs = Path(__file__).resolve().parent.parent / "docs"
    for name, processes in (("8gpu.yaml", 8), ("2x8gpu.yaml", 4)):
        path = docs / "accelerate" / name
        assert load_config_from_file(str(path)).num_processes == processes == processes_in(str(path))
    sbatch = (docs / "ild-slurm.sbatch").read_text()
    assert "engine.distributed.supervise" in sbatch and "--signal=B:TERM" in sbatch and "scontrol requeue" in sbatch


@pytest.mark.e2e
@pytest.mark.parametrize(
    "args,message",
    [
        (["--processes", "3"], "heal.batch_size 4 does not divide among 3 processes"),
        (
            ["--processes", "2", "--set", "distributed.heal=fsdp", "--set", "heal.train_norm=true"],
            "fsdp shards the trainable decoder layers",
        ),
        (
            ["--set", "distributed.gpus_per_process=2", "--device", "cpu"],
            "gpus_per_process > 1 spreads a model over GPUs",
        ),
        # on a host without CUDA the missing GPU is said first
        (
            ["--processes", "2", "--device", "cuda:1"],
            "--device cuda:1 names one GPU" if torch.cuda.is_available() else "--device cuda:1: no CUDA GPU",
        ),
    ],
)
def test_bad_distributed_settings_are_one_line(tiny, suite, tmp_path, args, message):
    runs = tmp_path / "runs"
    result = ild(*run_args(tiny / "model", suite, runs, "bad", "--headless", *args, strategy="iterative-distill"))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (runs / "bad").exists()


# --- two processes against one ----------------------------------------------------------------------
@pytest.mark.e2e
def test_two_processes_score_decide_and_export_as_one(tiny, suite, tmp_path):
    """Manual decisions approved from the CLI, a pause and a resume, all broadcast from rank 0."""
    runs = tmp_path / "runs"
    reference = _one_process(runs / "one", _config(tiny, suite, "one", "iterative-pruning"))
    two = runs / "two"
    command = [
        *run_args(tiny / "model", suite, runs, "two"),
        "--processes",
        "2",
        "--threads",
        "1",
        "--mode",
        "manual",
        "--detach",
    ]
    started = ild(*command)
    assert started.returncode == 0, started.stderr
    tailer = EventTailer(two / "events.jsonl")
    for iteration in (1, 2):
        _wait(
            tailer,
            lambda e, i=iteration: e["type"] == "awaiting_decision" and e["iteration"] == i,
            f"a decision {iteration}",
        )
        if iteration == 2:
            assert ild("pause", "two", "--runs-dir", str(runs)).returncode == 0
            time.sleep(1.5)
            assert ild("approve", "two", "--runs-dir", str(runs)).returncode == 0  # taken, but not while paused
            time.sleep(1.5)
            assert not [e for e in tailer.poll() if e["type"] in ("decision", "layer_removed")]
            assert ild("resume", "two", "--runs-dir", str(runs)).returncode == 0
        else:
            assert ild("approve", "two", "--runs-dir", str(runs)).returncode == 0
    _wait(tailer, lambda e: e["type"] in ("run_finished", "run_failed"), "the end")
    events = read_all(two / "events.jsonl")
    assert _of(events, "run_finished")[-1]["reason"] == "target"
    started_event = _of(events, "engine_started")[0]
    assert started_event["processes"] == 2 and started_event["threads"] == 1
    assert "threads: 1" in (two / "config.yaml").read_text()

    assert fold(events).removed_layers == fold(reference).removed_layers
    assert [d["by"] for d in _of(events, "decision")] == ["user", "user"]
    # Importance: bit for bit (each candidate scored in the same batches as in one process).
    for mine, theirs in zip(_of(events, "importance"), _of(reference, "importance"), strict=True):
        assert mine["scores"] == theirs["scores"] and mine["per_task"] == theirs["per_task"]
    # Evaluations of the model itself share out its items: float tolerance.
    mine, theirs = _evals(events), _evals(reference)
    assert mine.keys() == theirs.keys()
    for key in theirs:
        assert _close(mine[key]["aggregate"], theirs[key]["aggregate"]), key
    a, b = _export_tensors(two), _export_tensors(runs / "one")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (two / "engine.rank1.log").read_text().count("Traceback")


@pytest.mark.e2e
def test_healing_on_two_processes_survives_a_killed_rank_and_resumes_on_one(tiny, suite, tmp_path):
    runs = tmp_path / "runs"
    # every step of every healing runs, so that a rank dies mid-healing (every layer trains by
    # default: at this tiny scale early stopping may end a healing within its first steps)
    heal = {**HEAL, "early_stop": False}
    reference = _one_process(runs / "one", _config(tiny, suite, "one", "iterative-distill", heal=heal))
    two = runs / "two"
    created = subprocess.run(
        [*ENGINE, str(two), "--create"],
        capture_output=True,
        text=True,
        input=json.dumps(_config(tiny, suite, "two", "iterative-distill", heal=heal, distributed={"processes": 2})),
    )
    assert created.returncode == 0, created.stderr
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "engine.distributed.supervise", str(two)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    tailer = EventTailer(two / "events.jsonl")
    _wait(
        tailer,
        lambda e: e["type"] == "train_step" and e["iteration"] == 2 and e["step"] >= 4,
        "healing step 4 of iteration 2",
    )
    _rank(supervisor.pid, 1).send_signal(signal.SIGKILL)
    assert supervisor.wait(timeout=120) == 1
    events = read_all(two / "events.jsonl")
    assert events[-1]["type"] == "run_failed" and events[-1]["iteration"] == 2
    assert (two / "checkpoints" / "PARTIAL").is_file()
    assert ild("ls", "--runs-dir", str(runs)).stdout.count("failed") == 1

    # DDP: one process's losses while both ran (each rank half of every batch, gradients averaged).
    ran = {(e["iteration"], e["step"]): e for e in _of(events, "train_step")}
    ref = {(e["iteration"], e["step"]): e for e in _of(reference, "train_step")}
    assert len(ran) >= 16
    for key, step in ran.items():
        assert _close(step["loss"], ref[key]["loss"], rel=1e-3), key
        assert _close(step["grad_norm"], ref[key]["grad_norm"], rel=1e-3), key

    resumed = ild("resume", "two", "--runs-dir", str(runs), "--processes", "1")
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    assert "resuming iteration 2 at healing step" in resumed.stdout
    events = read_all(two / "events.jsonl")
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert fold(events).removed_layers == fold(reference).removed_layers
    mine, theirs = _evals(events), _evals(reference)
    for key in theirs:
        assert _close(mine[key]["aggregate"], theirs[key]["aggregate"], rel=1e-3), key
    _assert_same_healing(_export_tensors(two), _export_tensors(runs / "one"), tiny / "model", two)


@pytest.mark.e2e
def test_sharded_healing_stops_on_sigterm_and_resumes_on_one_process(tiny, suite, tmp_path):
    """FSDP2 over the trainable layers (gloo); preemption: SIGTERM to the launching process ends the run
    as stopped with a partial checkpoint of gathered tensors, which one unsharded process continues."""
    runs = tmp_path / "runs"
    fixed = {"target_layers": None, "removals": [2]}  # no scoring: straight to healing
    reference = _one_process(runs / "one", _config(tiny, suite, "one", "iterative-distill", **fixed))
    run = runs / "term"
    created = subprocess.run(
        [*ENGINE, str(run), "--create"],
        capture_output=True,
        text=True,
        input=json.dumps(
            _config(tiny, suite, "term", "iterative-distill", **fixed, distributed={"processes": 2, "heal": "fsdp"})
        ),
    )
    assert created.returncode == 0, created.stderr
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "engine.distributed.supervise", str(run)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    tailer = EventTailer(run / "events.jsonl")
    _wait(tailer, lambda e: e["type"] == "train_step" and e["step"] >= 3, "healing step 3")
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=120) == 0
    events = read_all(run / "events.jsonl")
    assert events[-1]["type"] == "run_finished" and events[-1]["reason"] == "stopped"
    assert any(e["type"] == "checkpoint" and e.get("partial") for e in events)
    assert any("received SIGTERM" in e.get("message", "") for e in _of(events, "log"))

    resumed = ild("resume", "term", "--runs-dir", str(runs), "--processes", "1")
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    events = read_all(run / "events.jsonl")
    ran = {e["step"]: e for e in _of(events, "train_step")}
    ref = {e["step"]: e for e in _of(reference, "train_step")}
    assert ran.keys() == ref.keys()
    for key, step in ran.items():
        assert _close(step["loss"], ref[key]["loss"], rel=1e-3), key
    a, b = _export_tensors(run), _export_tensors(runs / "one")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-4) for k in a)
