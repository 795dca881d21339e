"""Using a run's results: ``ild export``, ``ild eval``, ``ild paired``, ``ild report``."""

from __future__ import annotations

import click

from .common import EXIT_FAILED, EXIT_USAGE, Failure, exit_with, find_or_fail, runs_dir_option


@click.command()
@click.argument("run_ref", metavar="RUN")
@click.option(
    "--out", type=click.Path(file_okay=False), required=True, help="Directory to write the Hugging Face model to."
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace an earlier export to which files were added (they are kept, never deleted).",
)
@click.option(
    "--from-checkpoint",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    help="Export checkpoint N (the student after iteration N) instead of the newest.",
)
@click.option("--push-to-hub", "push_to_hub", metavar="REPO", help="Then upload the export to this Hub model repo.")
@click.option("--private", is_flag=True, help="With --push-to-hub: create the repository private.")
@runs_dir_option
def export(run_ref, out, force, from_checkpoint, runs_dir, push_to_hub, private):
    """Write a run's student (its newest checkpoint, verified) as a Hugging Face model directory,
    with a model card (README.md); --push-to-hub uploads it.

    The export is the student or an error: a newest checkpoint that does not verify (its files,
    its manifest, the run's log, the teacher's weights) fails in one line, naming what; it never
    falls back to an older one. --out is never inside a run directory, above your home, or a
    directory holding files an export did not write."""
    from pathlib import Path

    from engine.runlog.layout import export_target_problem

    from ..hub_push import PushRefused, push_folder, push_problem

    if push_to_hub and push_problem(push_to_hub):
        raise Failure(push_problem(push_to_hub), EXIT_USAGE)

    from ..launch import LaunchError, export_run

    run_dir = find_or_fail(runs_dir, run_ref)
    problem = export_target_problem(run_dir.path, out, force)
    if problem:
        raise Failure(problem, EXIT_USAGE)
    try:
        export_run(run_dir.path, Path(out), force, from_checkpoint)
    except LaunchError as exc:
        raise Failure(str(exc), exc.code) from None
    click.echo(f"exported {run_dir.name} to {out}")
    if push_to_hub:
        try:
            click.echo(f"uploaded to {push_to_hub}: {push_folder(Path(out), push_to_hub, private)}")
        except PushRefused as exc:
            raise Failure(str(exc), EXIT_FAILED) from None


@click.command(name="eval")
@click.argument("refs", nargs=-1, required=True, metavar="MODEL|RUN...")
@click.option("--lm-eval", "lm_eval_tasks", required=True, metavar="TASKS", help="lm-eval task names, comma-separated.")
@click.option("--include", type=click.Path(file_okay=False, exists=True), help="A folder of lm-eval task YAMLs.")
@click.option("--num-fewshot", type=int, default=None, help="Shots (default: each task's own).")
@click.option("--limit", type=float, default=None, help="Items per task (a fraction below 1).")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--device", default=None, help="cpu, cuda, ... (default: cpu).")
@click.option("--no-teacher", is_flag=True, help="Score a run's student only.")
@runs_dir_option
def eval_command(refs, lm_eval_tasks, include, num_fewshot, limit, batch_size, device, no_teacher, runs_dir):
    """Score models with lm-evaluation-harness, side by side: a RUN stands for its exported student
    and its teacher (same settings); results are kept with the run and shown by `ild report`.

    Example: ild eval my-run --lm-eval hellaswag,arc_easy --limit 200
    """
    import json
    import subprocess
    from pathlib import Path

    from ..launch import ENGINE, engine_env
    from ..lm_eval_plan import PlanError, targets

    try:
        plan_targets = targets(list(refs), runs_dir, teacher=not no_teacher)
    except PlanError as exc:
        raise Failure(str(exc), EXIT_USAGE) from None
    plan = {
        "targets": plan_targets,
        "tasks": [t for t in lm_eval_tasks.split(",") if t],
        "include": str(Path(include).resolve()) if include else None,
        "num_fewshot": num_fewshot,
        "limit": int(limit) if limit is not None and limit >= 1 else limit,
        "batch_size": batch_size,
        "device": device,
    }
    result = subprocess.run([ENGINE[0], "-m", "engine.harness"], input=json.dumps(plan), text=True, env=engine_env())
    exit_with(result.returncode)


@click.command()
@click.argument("run_a", metavar="RUN_A")
@click.argument("run_b", metavar="RUN_B|teacher")
@click.option(
    "--part",
    type=click.Choice(["report", "select"]),
    default="report",
    show_default=True,
    help="Which items: the report part and the report suite, or the selection part.",
)
@click.option("--resamples", type=int, default=2000, show_default=True, help="Bootstrap resamples.")
@click.option("--level", type=float, default=0.95, show_default=True, help="The interval's coverage.")
@click.option("--device", default=None, help="cpu, cuda, ... (default: the best there is).")
@click.option(
    "--layers",
    type=click.IntRange(min=1),
    default=None,
    help="Compare both runs' students at this many layers (each run's last checkpoint with that many; "
    "default: each run's last student).",
)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Also write the result here.")
@runs_dir_option
def paired(run_a, run_b, part, resamples, level, device, layers, json_out, runs_dir):
    """Is RUN_A's student better than RUN_B's (or than its teacher), or just luckier?

    Both are scored item by item on the same items and compared by a paired bootstrap: each
    task's score difference and the aggregate's, with an interval and a p-value.

    Example: ild paired iterative-distill iterative-pruning --runs-dir study/runs [--layers 27]
    """
    from ..launch import run_engine_module

    paths = [str(find_or_fail(runs_dir, ref).path) if ref != "teacher" else ref for ref in (run_a, run_b)]
    args = [*paths, "--part", part, "--resamples", str(resamples), "--level", str(level)]
    for flag, value in (("--device", device), ("--json", json_out), ("--layers", layers)):
        if value:
            args += [flag, str(value)]
    exit_with(run_engine_module("engine.paired", args))


@click.command()
@click.argument("run_refs", metavar="RUN [RUN...]", nargs=-1, required=True)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    required=True,
    help="Directory for report.html, its PNGs and CSVs (made if missing; an earlier report there is replaced).",
)
@click.option(
    "--no-measure",
    "no_measure",
    is_flag=True,
    help="Skip timing the teacher and the exported students (parameters, tokens/s, peak memory).",
)
@click.option("--device", default=None, help="Where to measure: cpu, cuda, cuda:1 ... (default: the best there is).")
@click.option("--title", default=None, help="The page's title.")
@runs_dir_option
def report(run_refs, out, no_measure, device, title, runs_dir):
    """Write one self-contained HTML page (plus its PNGs and CSVs) on one or more runs.

    Aggregate against layers removed (Figure 9), how often each layer was removed (Figure 10),
    the importance heatmap and healing losses of each run, per-task scores per iteration (Table 3),
    one row per run with % of the teacher (Table 2), the selection part beside the report part, and
    what each exported student buys in speed and memory, measured here against its teacher.

    Example: ild report iterative-distill shortgpt --runs-dir study/runs --out study/report
    """
    from pathlib import Path

    from ..report import ReportError, write_report

    paths = [find_or_fail(runs_dir, ref).path for ref in run_refs]
    try:
        result = write_report(
            paths,
            Path(out),
            measure=not no_measure,
            device=device,
            title=title,
            progress=lambda text: click.echo(text, err=True),
        )
    except ReportError as exc:
        raise Failure(str(exc), EXIT_USAGE) from None
    for note in result.notes:
        click.echo(f"ild: note: {note}", err=True)
    click.echo(f"wrote {result.page} ({len(result.files)} files in {result.out})")
