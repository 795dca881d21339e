"""Starting and continuing runs: ``ild run``, ``ild resume``, ``ild demo``.

The engine validates a run's config before any run directory exists (``launch.create_run``): an
option it gives a default is None here (unset) and left out of the config, and nothing it checks
is checked twice.
"""

from __future__ import annotations

import click

from engine.runlog.schema import MODES
from engine.runlog.strategies import DEFAULT_STRATEGY, IMPORTANCE_METRICS, STRATEGIES

from .common import (
    DEFAULT_MODEL,
    ENGINE_DEFAULT,
    EXIT_FAILED,
    EXIT_USAGE,
    Failure,
    find_or_fail,
    runs_dir_option,
)

# engine.config's bounds (not imported: it loads pydantic, and `ild --help` stays light).
MAX_THREADS, MAX_PROCESSES = 1024, 256
EXIT_INTERRUPTED = 130


def launch_options(processes_help: str, config_help: str):
    """``--processes`` and ``--accelerate-config``: how many engine processes start (run, resume)."""

    def decorate(f):
        f = click.option(
            "--accelerate-config", type=click.Path(exists=True, dir_okay=False), default=None, help=config_help
        )(f)
        return click.option(
            "--processes", type=click.IntRange(min=1, max=MAX_PROCESSES), default=None, help=processes_help
        )(f)

    return decorate


@click.command()
@click.option(
    "--model", default=DEFAULT_MODEL, show_default=True, help="Embedded name, Hub id, local HF directory or .gguf file."
)
@click.option("--strategy", default=DEFAULT_STRATEGY, show_default=True, help=f"One of: {', '.join(STRATEGIES)}.")
@click.option("--target-layers", type=int, default=None, help="Stop when the student has this many layers.")
@click.option(
    "--removals",
    default=None,
    metavar="L1,L2,...",
    help="Fixed removals: remove these original layers (no scoring), heal once after the last; instead of --target-layers.",
)
@click.option(
    "--min-retention",
    type=float,
    default=None,
    metavar="FRACTION",
    help="Quality floor: stop before the report aggregate falls below this fraction of the teacher's (e.g. 0.9) "
    "and export the last student above it.",
)
@click.option(
    "--suite",
    default=None,
    show_default=ENGINE_DEFAULT,
    help="Embedded suite name (default, mmlu, paper) or a suite/task file.",
)
@click.option(
    "--report-suite",
    default=None,
    metavar="NAME|FILE|none",
    help="A second suite evaluated after every iteration and never used to choose (default: the suite's own, "
    "e.g. default-report for default; none for none).",
)
@click.option(
    "--importance", default=None, help=f"Override the strategy's importance metric: {', '.join(IMPORTANCE_METRICS)}."
)
@click.option("--name", default=None, help="Run name (default: model-strategy-time).")
@runs_dir_option
@click.option(
    "--headless", is_flag=True, help="No dashboard: follow the run in this terminal (plain lines when piped)."
)
@click.option("--detach", is_flag=True, help="Start the engine in the background and return at once.")
@click.option(
    "--mode",
    "mode",
    type=click.Choice(MODES),
    default=None,
    help="Decision mode (default: manual with the dashboard, auto when headless or detached).",
)
@click.option(
    "--auto-after",
    "auto_after",
    type=float,
    default=None,
    metavar="SECONDS",
    help="With --mode auto-after: how long to wait for a person before taking the proposal.",
)
@click.option(
    "--notify-cmd",
    default=None,
    help="Command run (with ILD_EVENT, ILD_RUN, ILD_MESSAGE set) when a decision is awaited, the run finishes, fails or stalls.",
)
@click.option(
    "--batch-tokens",
    type=int,
    default=None,
    show_default=ENGINE_DEFAULT,
    help="Tokens per forward batch (memory vs speed).",
)
@click.option("--device", default=None, help="cpu, cuda, cuda:1 ... (default: the best there is).")
@click.option("--seed", type=int, default=None, show_default=ENGINE_DEFAULT)
@launch_options(
    "Engine processes, one per GPU (accelerate launch); on a CPU each takes its share of the cores.",
    "An `accelerate config` file (machines, processes): multi-node runs, see docs/distributed.md.",
)
@click.option(
    "--threads", type=click.IntRange(min=1, max=MAX_THREADS), default=None, help="CPU threads per engine process."
)
@click.option(
    "--create-only", is_flag=True, help="Make the run directory and print it; start it later (a scheduler, ild resume)."
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override any config value, e.g. --set heal.lr=3e-4 --set heal.hidden=last (repeatable).",
)
def run(
    model,
    strategy,
    target_layers,
    removals,
    min_retention,
    suite,
    report_suite,
    importance,
    name,
    runs_dir,
    headless,
    batch_tokens,
    device,
    seed,
    overrides=(),
    detach=False,
    mode=None,
    auto_after=None,
    notify_cmd=None,
    processes=None,
    accelerate_config=None,
    threads=None,
    create_only=False,
):
    """Start a pruning run.

    Example: ild run --model smollm2-135m --strategy iterative-pruning --target-layers 28 --headless
    """
    from pathlib import Path

    from ..headless import HeadlessView
    from ..launch import LaunchError, create_run, run_foreground
    from ..run_config import as_options, parse_settings, run_config
    from ..runs import new_run_id

    if removals is not None:
        try:
            removals = [int(x) for x in removals.split(",")]
        except ValueError:
            raise Failure(
                f"--removals expects original layer indices like 12,5 (got '{removals}')", EXIT_USAGE
            ) from None
    if mode is None:
        mode = "auto" if (headless or detach) else "manual"
    try:
        run_id = new_run_id(name, model, strategy)
        settings = parse_settings(overrides)
    except ValueError as exc:
        raise Failure(str(exc), EXIT_USAGE) from None
    run_dir = Path(runs_dir) / run_id
    config = run_config(
        run_id,
        model,
        strategy,
        settings=settings,
        processes=processes,
        accelerate_config=str(Path(accelerate_config).resolve()) if accelerate_config else None,
        target_layers=target_layers,
        removals=removals,
        min_retention=min_retention,
        suite=suite,
        report_suite=report_suite,
        importance=importance,
        mode=mode,
        auto_after_seconds=auto_after,
        notify_cmd=notify_cmd,
        batch_tokens=batch_tokens,
        device=device,
        seed=seed,
        threads=threads,
    )
    try:
        create_run(run_dir, config, here=not create_only)
    except LaunchError as exc:
        raise Failure(as_options(str(exc)), exc.code) from None
    if create_only:
        click.echo(run_dir)
        return
    if not headless:
        from ..launch import start_detached

        pid = start_detached(run_dir)
        if detach:
            click.echo(f"started run {run_id} (engine pid {pid}, mode {mode}) in {run_dir}")
            click.echo(f"attach with:  ild attach {run_id} --runs-dir {runs_dir}")
            return
        from .dashboard import attach

        click.get_current_context().invoke(attach, run_ref=str(run_dir))
        return
    with HeadlessView() as view:
        view.line(f"run directory {run_dir}")
        outcome = run_foreground(run_dir, view.handle)
    _fail_unless_done(view, outcome, run_id)


def _fail_unless_done(view, outcome, name: str) -> None:
    """A foreground engine's end: nothing when it finished its work, else one line and its exit code."""
    if outcome.code == EXIT_INTERRUPTED:
        raise Failure(f"interrupted; continue with: ild resume {name}", EXIT_INTERRUPTED)
    if outcome.code != 0:
        raise Failure(f"run failed: {_failure_reason(view, outcome)}", EXIT_FAILED)


def _failure_reason(view, outcome) -> str:
    """The run_failed event's error, else the engine's own one line, else where to look."""
    failed = view.failed or {}
    if failed.get("error"):
        return failed["error"]
    from engine.runlog.layout import RunDir

    log = RunDir(outcome.run_dir).log_file
    return outcome.message or f"engine exited with code {outcome.code} (see {log})"


@click.command()
@click.argument("run_ref", metavar="RUN", required=False)
@runs_dir_option
@launch_options(
    "Continue on this many engine processes (default: as the run was started).",
    "Continue with this accelerate config file.",
)
@click.option("--detach", is_flag=True, help="Continue the engine in the background and return at once.")
def resume(run_ref, runs_dir, processes=None, accelerate_config=None, detach=False):
    """Resume a paused run, or continue a stopped, failed or dead one from its last checkpoint."""
    from engine.runlog.lock import is_alive

    from ..headless import HeadlessView
    from ..launch import launch_args, run_foreground, start_detached
    from ..runs import summarise
    from .control import send_and_report

    run_dir = find_or_fail(runs_dir, run_ref)
    problem = run_dir.problem()  # a link or a FIFO where the engine writes: it would write elsewhere
    if problem:
        raise Failure(f"refusing to resume {run_dir.name}: {problem}", EXIT_USAGE)
    if is_alive(run_dir.path):
        send_and_report(run_dir, "resume", {})
        return
    row, _ = summarise(run_dir)
    if row.status == "finished":
        raise Failure(f"run {run_dir.name} already finished", EXIT_USAGE)
    if detach:
        pid = start_detached(run_dir.path, launch=launch_args(processes, accelerate_config))
        click.echo(f"resumed run {run_dir.name} in the background (engine pid {pid})")
        click.echo(f"attach with:  ild attach {run_dir.name} --runs-dir {run_dir.path.parent}")
        return
    with HeadlessView() as view:
        view.line(f"resuming {run_dir.path}")
        outcome = run_foreground(run_dir.path, view.handle, launch=launch_args(processes, accelerate_config))
    _fail_unless_done(view, outcome, run_dir.name)


@click.command()
@runs_dir_option
@click.option("--target-layers", type=int, default=28, show_default=True)
@click.pass_context
def demo(ctx, runs_dir, target_layers):
    """Prune the embedded SmolLM2-135M offline with the paper's method, then print the run's table.

    `iterative-distill`: task-drop importance re-scored every iteration, each removal healed by
    distillation against the teacher; no network, no GPU.
    """
    import time

    from .browse import show

    name = f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    # Every other option of `ild run` at its default (the engine's, where it owns one).
    ctx.invoke(
        run,
        model=DEFAULT_MODEL,
        strategy="iterative-distill",
        target_layers=target_layers,
        name=name,
        runs_dir=runs_dir,
        headless=True,
    )
    ctx.invoke(show, run_ref=name, runs_dir=runs_dir)
    click.echo(f"\nexported model: {runs_dir}/{name}/export  (reload with AutoModelForCausalLM.from_pretrained)")
