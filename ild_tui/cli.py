"""The ``ild`` command.

Startup stays cheap: this module imports only click and two tables of ``engine.runlog`` (standard
library) at the top; torch never loads in this process (the engine runs as ``python -m
engine.worker`` in its own process), and Textual loads only when a dashboard opens.

Exit codes: 0 done, 1 failed, 2 bad input or usage, 130 interrupted.
"""

from __future__ import annotations

import math
import os
import sys

import click

from engine.runlog.schema import MODES
from engine.runlog.strategies import DEFAULT_STRATEGY, IMPORTANCE_METRICS, STRATEGIES

EXIT_FAILED, EXIT_USAGE = 1, 2
DEFAULT_RUNS_DIR = "runs"
# engine.config's bounds (not imported: it loads pydantic, and `ild --help` stays light).
MAX_THREADS, MAX_PROCESSES = 1024, 256


# Commands whose issue has not landed yet: they say so instead of pretending.
class Failure(click.ClickException):
    """One clear line on stderr, then a non-zero exit."""

    def __init__(self, message: str, code: int = EXIT_FAILED):
        super().__init__(message)
        self.exit_code = code

    def show(self, file=None) -> None:
        click.echo(f"ild: {self.format_message()}", err=True)


def runs_dir_option(f):
    return click.option(
        "--runs-dir",
        type=click.Path(file_okay=False),
        default=lambda: os.environ.get("ILD_RUNS_DIR", DEFAULT_RUNS_DIR),
        show_default="./runs or $ILD_RUNS_DIR",
        help="Directory that holds the run directories.",
    )(f)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ild")
    except PackageNotFoundError:
        return "unknown"


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, invoke_without_command=True)
@click.version_option(version=_version(), prog_name="ild")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Compress an LLM by Iterative Layer-wise Distillation, and watch and steer the run.

    Run `ild COMMAND --help` for the options of a command.
    """
    if ctx.invoked_subcommand is None:
        from .terminal import missing

        if missing():  # piped: the commands on stdout, why no dashboard on stderr, and not a success
            click.echo(ctx.get_help())
        _open_dashboard(os.environ.get("ILD_RUNS_DIR", DEFAULT_RUNS_DIR), None, None)


def _open_dashboard(runs_dir: str, run_dir, theme: str | None) -> None:
    """Textual loads here, never at import time (`ild --help` stays light).

    Refuses without a terminal (it would write escape codes into a pipe and wait forever), and ends
    when its terminal goes away (see ``ild_tui.terminal``).
    """
    from . import terminal

    missing = terminal.missing()
    if missing:
        raise Failure(f"{missing}; without one use ild ls, ild show RUN or ild run --headless (ild --help)", EXIT_USAGE)
    from .app import IldApp
    from .launch import reap_started

    app = IldApp(runs_dir, run_dir, theme=theme)
    with terminal.Watch(app, sys.stdin.fileno(), reap_started):
        app.run()


@main.command()
@click.argument("run_ref", metavar="RUN", required=False)
@runs_dir_option
@click.option(
    "--theme",
    default=None,
    help="Dashboard theme: ild-dark, ild-light, ild-colorblind or a Textual theme "
    "(remembered for next time; `t` cycles it in the app).",
)
@click.pass_context
def attach(ctx, run_ref, runs_dir, theme):
    """Open the live dashboard on a run (by default the latest live run, else the latest run).

    RUN is a run directory or a run name in the runs directory. Quitting the dashboard leaves the
    run going; any number of dashboards may watch one run.
    """
    from pathlib import Path

    from engine.runlog.layout import list_runs
    from engine.runlog.lock import is_alive

    from .runs import RunNotFound, find_run

    if run_ref:
        try:
            run_dir = find_run(runs_dir, run_ref)
        except RunNotFound as exc:
            raise Failure(str(exc), EXIT_USAGE) from None
        source = ctx.get_parameter_source("runs_dir")
        if (
            source is not click.core.ParameterSource.COMMANDLINE
            and run_dir.path.resolve().parent != Path(runs_dir).resolve()
        ):
            runs_dir = str(run_dir.path.parent)  # the runs screen lists the run's neighbours
    else:
        runs = list_runs(runs_dir)
        if not runs:
            raise Failure(f"no runs in {runs_dir} (start one with `ild run`, or pass --runs-dir)", EXIT_USAGE)
        live = [r for r in runs if is_alive(r)]
        run_dir = (live or runs)[-1]
    if theme is not None:
        from textual.theme import BUILTIN_THEMES

        from .app import theme_names

        known = theme_names() + sorted(BUILTIN_THEMES)
        if theme not in known:
            raise Failure(f"unknown theme '{theme}' (known: {', '.join(known)})", EXIT_USAGE)
    _open_dashboard(runs_dir, run_dir, theme)


@main.command()
@click.option(
    "--model",
    default="smollm2-135m",
    show_default=True,
    help="Embedded name, Hub id, local HF directory or .gguf file.",
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
    default="default",
    show_default=True,
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
    "--batch-tokens", type=int, default=4096, show_default=True, help="Tokens per forward batch (memory vs speed)."
)
@click.option("--device", default=None, help="cpu, cuda, cuda:1 ... (default: the best there is).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--processes",
    type=click.IntRange(min=1, max=MAX_PROCESSES),
    default=None,
    help="Engine processes, one per GPU (accelerate launch); on a CPU each takes its share of the cores.",
)
@click.option(
    "--accelerate-config",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="An `accelerate config` file (machines, processes): multi-node runs, see docs/distributed.md.",
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

    from .headless import HeadlessView
    from .launch import LaunchError, create_run, run_foreground
    from .runs import new_run_id

    if strategy not in STRATEGIES:
        raise Failure(f"unknown strategy '{strategy}' (known: {', '.join(STRATEGIES)})", EXIT_USAGE)
    if target_layers is None and removals is None:
        raise Failure("--target-layers N (or --removals L1,L2,...) is needed", EXIT_USAGE)
    if target_layers is not None and target_layers < 1:
        raise Failure(f"--target-layers must be at least 1 (got {target_layers})", EXIT_USAGE)
    if removals is not None:
        try:
            removals = [int(x) for x in removals.split(",")]
        except ValueError:
            raise Failure(
                f"--removals expects original layer indices like 12,5 (got '{removals}')", EXIT_USAGE
            ) from None
    if mode is None:
        mode = "auto" if (headless or detach) else "manual"
    if mode == "auto-after" and not auto_after:
        raise Failure("--mode auto-after needs --auto-after SECONDS", EXIT_USAGE)
    if auto_after is not None and not (math.isfinite(auto_after) and 0 < auto_after <= 1e9):
        raise Failure(
            f"--auto-after must be a number of seconds above 0 and at most 1e9 (got {auto_after})", EXIT_USAGE
        )
    try:
        run_id = new_run_id(name, model, strategy)
    except ValueError as exc:
        raise Failure(str(exc), EXIT_USAGE) from None
    run_dir = Path(runs_dir) / run_id
    config = {
        "name": run_id,
        "model": model,
        "strategy": strategy,
        "suite": suite,
        "mode": mode,
        "batch_tokens": batch_tokens,
        "seed": seed,
    }
    for key, value in (
        ("target_layers", target_layers),
        ("removals", removals),
        ("min_retention", min_retention),
        ("report_suite", report_suite),
    ):
        if value is not None:
            config[key] = value
    if auto_after:
        config["auto_after_seconds"] = auto_after
    if notify_cmd:
        config["notify_cmd"] = notify_cmd
    if importance:
        config["importance"] = importance
    if device:
        config["device"] = device
    if threads:
        config["threads"] = threads
    if processes or accelerate_config:
        config["distributed"] = {
            **({"processes": processes} if processes else {}),
            **({"accelerate_config": str(Path(accelerate_config).resolve())} if accelerate_config else {}),
        }
    try:
        _apply_overrides(config, overrides)
    except ValueError as exc:
        raise Failure(str(exc), EXIT_USAGE) from None
    try:
        create_run(run_dir, config, here=not create_only)
    except LaunchError as exc:
        raise Failure(str(exc), exc.code) from None
    if create_only:
        click.echo(run_dir)
        return
    if not headless:
        from .launch import start_detached

        pid = start_detached(run_dir)
        if detach:
            click.echo(f"started run {run_id} (engine pid {pid}, mode {mode}) in {run_dir}")
            click.echo(f"attach with:  ild attach {run_id} --runs-dir {runs_dir}")
            return
        _attach_after_start(run_dir)
        return
    with HeadlessView() as view:
        view.line(f"run directory {run_dir}")
        outcome = run_foreground(run_dir, view.handle)
    code = outcome.code
    if code == 130:
        raise Failure(f"interrupted; continue with: ild resume {run_id}", 130)
    if code != 0:
        raise Failure(f"run failed: {_failure_reason(view, outcome)}", EXIT_FAILED)


def _failure_reason(view, outcome) -> str:
    """The run_failed event's error, else the engine's own one line, else where to look."""
    failed = view.failed or {}
    if failed.get("error"):
        return failed["error"]
    from engine.runlog.layout import RunDir

    log = RunDir(outcome.run_dir).log_file
    return outcome.message or f"engine exited with code {outcome.code} (see {log})"


def _apply_overrides(config: dict, overrides) -> None:
    """Dotted KEY=VALUE pairs into the nested config; values parsed as YAML (safely: plain data only)."""
    import yaml

    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or "" in key.split("."):
            raise ValueError(f"--set expects KEY=VALUE (got '{item}')")
        node = config
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {key}: '{part}' is not a section")
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            problem = str(getattr(exc, "problem", None) or "not valid YAML").strip()
            raise ValueError(f"--set {key}: {problem} in '{raw}'") from None


def _console():
    from rich.console import Console

    # Piped output keeps whole rows (for grep and logs) instead of wrapping at 80 columns.
    return Console() if sys.stdout.isatty() else Console(width=250, no_color=True)


@main.command()
@click.argument("run_ref", metavar="RUN", required=False)
@runs_dir_option
@click.option(
    "--processes",
    type=click.IntRange(min=1, max=MAX_PROCESSES),
    default=None,
    help="Continue on this many engine processes (default: as the run was started).",
)
@click.option(
    "--accelerate-config",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Continue with this accelerate config file.",
)
@click.option("--detach", is_flag=True, help="Continue the engine in the background and return at once.")
def resume(run_ref, runs_dir, processes=None, accelerate_config=None, detach=False):
    """Resume a paused run, or continue a stopped, failed or dead one from its last checkpoint."""
    from engine.runlog.lock import is_alive

    from .headless import HeadlessView
    from .launch import run_foreground
    from .runs import RunNotFound, find_run, summarise

    try:
        run_dir = find_run(runs_dir, run_ref)
    except RunNotFound as exc:
        raise Failure(str(exc), EXIT_USAGE) from None
    problem = run_dir.problem()  # a link or a FIFO where the engine writes: it would write elsewhere
    if problem:
        raise Failure(f"refusing to resume {run_dir.name}: {problem}", EXIT_USAGE)
    if is_alive(run_dir.path):
        _send_and_report(run_dir, "resume", {})
        return
    row, _ = summarise(run_dir)
    if row.status == "finished":
        raise Failure(f"run {run_dir.name} already finished", EXIT_USAGE)
    from .launch import launch_args

    if detach:
        from .launch import start_detached

        pid = start_detached(run_dir.path, launch=launch_args(processes, accelerate_config))
        click.echo(f"resumed run {run_dir.name} in the background (engine pid {pid})")
        click.echo(f"attach with:  ild attach {run_dir.name} --runs-dir {run_dir.path.parent}")
        return
    with HeadlessView() as view:
        view.line(f"resuming {run_dir.path}")
        outcome = run_foreground(run_dir.path, view.handle, launch=launch_args(processes, accelerate_config))
    if outcome.code == 130:
        raise Failure(f"interrupted; continue with: ild resume {run_dir.name}", 130)
    if outcome.code != 0:
        raise Failure(f"run failed: {_failure_reason(view, outcome)}", EXIT_FAILED)


def _attach_after_start(run_dir) -> None:
    click.get_current_context().invoke(attach, run_ref=str(run_dir))


def _send_and_report(run_dir, name: str, args: dict, timeout: float = 30.0) -> None:
    """Write a command to a live engine's inbox and print what the engine did with it."""
    from engine.runlog.inbox import send_command, validate_command, wait_for_reply
    from engine.runlog.lock import is_alive

    from .runs import summarise

    if not is_alive(run_dir.path):
        status = summarise(run_dir)[0].status
        raise Failure(f"no live engine holds {run_dir.name} (status: {status}); nothing was sent", EXIT_FAILED)
    problem = validate_command(name, args)
    if problem:
        raise Failure(problem, EXIT_USAGE)
    from engine.runlog.tailer import EventTailer

    offset = EventTailer(run_dir.events_file)
    try:
        offset.poll()
        command_id = send_command(run_dir.path, name, by="cli", **args)
    except OSError as exc:  # commands/ a link (never written through), or no room to write
        raise Failure(f"could not send {name}: {exc}", EXIT_FAILED) from None
    reply = wait_for_reply(run_dir.path, command_id, timeout, offset=offset.offset)
    if reply is None:
        raise Failure(
            f"the engine did not answer within {timeout:.0f}s (command {command_id} stays in its inbox)", EXIT_FAILED
        )
    if reply.get("type") == "command_rejected":
        raise Failure(f"rejected: {reply.get('reason')}", EXIT_FAILED)
    shown = " ".join(f"{k}={v}" for k, v in args.items())
    click.echo(f"{run_dir.name}: {name}{' ' + shown if shown else ''} applied")


def _live_run(runs_dir, run_ref):
    from .runs import RunNotFound, find_run

    try:
        return find_run(runs_dir, run_ref)
    except RunNotFound as exc:
        raise Failure(str(exc), EXIT_USAGE) from None


@main.command()
@click.argument("run_ref", metavar="RUN")
@click.option(
    "--layer", type=int, default=None, help="The layer (original index) being approved; default: the proposal."
)
@runs_dir_option
def approve(run_ref, layer, runs_dir):
    """Approve the engine's proposed layer removal."""
    _send_and_report(_live_run(runs_dir, run_ref), "approve", {} if layer is None else {"layer": layer})


@main.command()
@click.argument("run_ref", metavar="RUN")
@click.option("--layer", type=int, required=True, help="Remove this layer (original index) instead of the proposal.")
@runs_dir_option
def override(run_ref, layer, runs_dir):
    """Remove a different layer than the one proposed."""
    _send_and_report(_live_run(runs_dir, run_ref), "override", {"layer": layer})


@main.command(name="mode")
@click.argument("run_ref", metavar="RUN")
@click.argument("new_mode", metavar="MODE", type=click.Choice(MODES))
@click.argument("seconds", type=float, required=False)
@runs_dir_option
def mode_command(run_ref, new_mode, seconds, runs_dir):
    """Switch a run between manual, auto and auto-after SECONDS."""
    args = {"mode": new_mode}
    if new_mode == "auto-after":
        if seconds is None:
            raise Failure("auto-after needs SECONDS, e.g.: ild mode RUN auto-after 300", EXIT_USAGE)
        args["seconds"] = seconds
    _send_and_report(_live_run(runs_dir, run_ref), "set_mode", args)


@main.command()
@click.argument("run_ref", metavar="RUN")
@runs_dir_option
def pause(run_ref, runs_dir):
    """Pause a run at its next safe point (an evaluation batch or a training step)."""
    _send_and_report(_live_run(runs_dir, run_ref), "pause", {})


@main.command()
@click.argument("run_ref", metavar="RUN")
@runs_dir_option
def stop(run_ref, runs_dir):
    """Finish the current step, checkpoint and end the run (continue later with ild resume)."""
    _send_and_report(_live_run(runs_dir, run_ref), "stop", {})


def _fmt(value, digits=4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )


@main.command(name="ls")
@runs_dir_option
def list_runs_command(runs_dir):
    """List runs with status, model, strategy, layers and (report) aggregate: now and best."""
    import time

    from rich.table import Table
    from rich.text import Text

    from .runs import SKIPPED_NOTE, all_runs

    runs = all_runs(runs_dir)
    if not runs:
        click.echo(f"no runs in {runs_dir}")
        return
    table = Table(box=None, header_style="bold")
    for column in ("run", "status", "model", "strategy", "layers", "aggregate", "best", "started", "duration"):
        table.add_column(column, justify="right" if column in ("layers", "aggregate", "best") else "left")
    for r in runs:
        table.add_row(
            Text(r.shown_name),  # Text: a name like "[red]x" is shown as it is, not read as markup
            r.status,
            Text(r.model),
            Text(r.strategy),
            f"{r.layers_now}/{r.start_layers}" if r.start_layers else "-",
            _fmt(r.now),
            _fmt(r.best),
            time.strftime("%Y-%m-%d %H:%M", time.localtime(r.started)) if r.started else "-",
            _duration(r.duration),
        )
    _console().print(table)
    skipped = [f"{r.name} ({r.skipped})" for r in runs if r.skipped]
    if skipped:
        click.echo(f"{SKIPPED_NOTE}: {', '.join(skipped)}", err=True)
    for r in runs:
        if r.status == "unreadable":
            click.echo(f"ild: {r.name}: {r.note}", err=True)


@main.command()
@click.argument("run_ref", metavar="RUN", required=False)
@runs_dir_option
def show(run_ref, runs_dir):
    """Print a run's iteration table: layers by original index, the report aggregate and per-task
    scores (and the aggregate of the items that chose the layers, when the run logs them)."""
    from rich.table import Table
    from rich.text import Text

    from engine.runlog.jsonsafe import printable
    from engine.runlog.schema import REPORT, SELECT, STAGES

    from .runs import FINISH_NOTES, SKIPPED_NOTE, RunNotFound, find_run, summarise

    try:
        row, s = summarise(find_run(runs_dir, run_ref))
    except RunNotFound as exc:
        raise Failure(str(exc), EXIT_USAGE) from None
    if s.unreadable:
        raise Failure(f"{row.name}: {row.note}", EXIT_FAILED)
    console = _console()
    console.print(
        Text.assemble(
            (row.name, "bold"),
            f"  {row.status}  model {s.model}  strategy {s.strategy}  "
            f"layers {row.layers_now}/{s.start_layers} (target {s.target_layers})",
        ),
        highlight=False,
    )
    report = sorted(
        ((it, stage, rec) for (it, stage, part), rec in s.evals.items() if part == REPORT),
        key=lambda x: (x[0], STAGES.index(x[1])),
    )
    select = {(it, stage): rec for (it, stage, part), rec in s.evals.items() if part == SELECT}
    tasks: list[str] = []
    for _, _, rec in report:
        tasks += [t for t in rec["tasks"] if t not in tasks]
    table = Table(header_style="bold")
    columns = [
        "iter",
        "removed",
        "by",
        "stage",
        "layers",
        "params",
        "aggregate",
        *(["select"] if select else []),
        *tasks,
    ]
    for column in columns:
        table.add_column(column, justify="left" if column in ("by", "stage") else "right")
    teacher = s.teacher_eval() or {}
    by_iteration = {r["iteration"]: r for r in s.removed}
    for iteration, stage, record in report:
        removal = by_iteration.get(iteration, {})
        params = record.get("params")
        cells = []
        for task in tasks:
            value = record["tasks"].get(task)
            base = teacher.get("tasks", {}).get(task)
            delta = f" ({value - base:+.3f})" if stage != "teacher" and value is not None and base is not None else ""
            cells.append(f"{_fmt(value, 3)}{delta}")
        chosen = [] if not select else [_fmt((select.get((iteration, stage)) or {}).get("aggregate"))]
        table.add_row(
            str(iteration),
            "-" if stage == "teacher" else str(removal.get("layer", "-")),
            "-" if stage == "teacher" else str(removal.get("by") or "-"),
            stage,
            str(record.get("layers", "-")),
            f"{params / 1e6:.1f}M" if params else "-",
            _fmt(record["aggregate"]),
            *chosen,
            *cells,
        )
    console.print(table)
    if s.finished and s.finished["reason"] in FINISH_NOTES:
        console.print(f"finished at the {s.finished['reason']}: {FINISH_NOTES[s.finished['reason']]}", highlight=False)
    if s.failure:
        why = printable(f"{s.failure['error']} — {s.failure.get('hint', '')}")
        console.print(Text.assemble(("failed:", "red"), f" {why}"), highlight=False)
    if row.skipped:
        console.print(f"{row.skipped} {SKIPPED_NOTE}", highlight=False, markup=False)


@main.command()
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

    from .hub_push import PushRefused, push_folder, push_problem

    if push_to_hub and push_problem(push_to_hub):
        raise Failure(push_problem(push_to_hub), EXIT_USAGE)

    from .launch import LaunchError, export_run
    from .runs import RunNotFound, find_run

    try:
        run_dir = find_run(runs_dir, run_ref)
    except RunNotFound as exc:
        raise Failure(str(exc), EXIT_USAGE) from None
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


@main.command(name="eval")
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

    from .launch import ENGINE, _engine_env
    from .lm_eval_plan import PlanError, targets

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
    result = subprocess.run([ENGINE[0], "-m", "engine.harness"], input=json.dumps(plan), text=True, env=_engine_env())
    if result.returncode:
        sys.exit(result.returncode)


@main.command()
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
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Also write the result here.")
@runs_dir_option
def paired(run_a, run_b, part, resamples, level, device, json_out, runs_dir):
    """Is RUN_A's student better than RUN_B's (or than its teacher), or just luckier?

    Both are scored item by item on the same items and compared by a paired bootstrap: each
    task's score difference and the aggregate's, with an interval and a p-value.

    Example: ild paired iterative-distill iterative-pruning --runs-dir study/runs
    """
    import subprocess

    from .launch import ENGINE, _engine_env
    from .runs import RunNotFound, find_run

    try:
        paths = [str(find_run(runs_dir, ref).path) if ref != "teacher" else ref for ref in (run_a, run_b)]
    except RunNotFound as exc:
        raise Failure(str(exc), EXIT_USAGE) from None
    command = [ENGINE[0], "-m", "engine.paired", *paths, "--part", part, "--resamples", str(resamples)]
    command += ["--level", str(level)]
    for flag, value in (("--device", device), ("--json", json_out)):
        if value:
            command += [flag, value]
    code = subprocess.call(command, env=_engine_env())
    if code:
        sys.exit(code)


@main.command()
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

    from .report import ReportError, write_report
    from .runs import RunNotFound, find_run

    try:
        paths = [find_run(runs_dir, ref).path for ref in run_refs]
    except RunNotFound as exc:
        raise Failure(str(exc), EXIT_USAGE) from None
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


@main.command()
@click.option("--model", default="smollm2-135m", show_default=True, help="The teacher every strategy starts from.")
@click.option("--strategies", required=True, help=f"Comma-separated, from: {', '.join(STRATEGIES)}.")
@click.option("--target-layers", type=int, required=True, help="Every run stops at this many layers.")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    required=True,
    help="The study's directory: study.json, runs/<strategy>/, report/.",
)
@click.option("--suite", default="default", show_default=True, help="Embedded suite name or a suite/task file.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--split-seed",
    type=int,
    default=0,
    show_default=True,
    help="Which items of each task choose the layers and which report (the same for every run).",
)
@click.option("--batch-tokens", type=int, default=4096, show_default=True, help="Tokens per forward batch.")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 ... for the runs and the measurement.")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config value in every run, e.g. --set heal.train_tokens=65536 (repeatable).",
)
@click.option("--detach", is_flag=True, help="Run the whole study in the background (it outlives the terminal).")
@click.option("--no-measure", "no_measure", is_flag=True, help="Write the report without timing the models.")
def study(
    model, strategies, target_layers, out, suite, seed, split_seed, batch_tokens, device, overrides, detach, no_measure
):
    """Run several strategies with the same suite, split, seed and budget, one after another, then
    write their report (the paper's Table 2 in one command).

    Each strategy is an ordinary run in OUT/runs/<strategy> (`ild ls --runs-dir OUT/runs`, `ild attach`
    and the dashboard follow it). The same command again continues: finished runs are skipped,
    unfinished ones resume from their last checkpoint. Other arguments on the same OUT are refused.

    \b
    Example:
      ild study --model smollm2-135m --strategies shortgpt,iterative-pruning,iterative-distill \\
                --target-layers 24 --out studies/smollm2-24
    """
    from pathlib import Path

    from .headless import HeadlessView
    from .study import Plan, StudyError, finish, local_or_as_given, parse_strategies, prepare, start_detached

    if target_layers < 1:
        raise Failure(f"--target-layers must be at least 1 (got {target_layers})", EXIT_USAGE)
    settings: dict = {}
    try:
        _apply_overrides(settings, overrides)
        names = parse_strategies(strategies)
    except (ValueError, StudyError) as exc:
        raise Failure(str(exc), EXIT_USAGE) from None
    plan = Plan(
        model=local_or_as_given(model),
        strategies=names,
        target_layers=target_layers,
        suite=local_or_as_given(suite, files_only=True),
        seed=seed,
        split_seed=split_seed,
        batch_tokens=batch_tokens,
        device=device,
        settings=settings,
    )
    out_dir = Path(out)
    try:
        new = prepare(out_dir, plan)
        if detach:
            pid = start_detached(out_dir, measure=not no_measure)
    except StudyError as exc:
        raise Failure(str(exc), exc.code) from None
    if detach:
        click.echo(f"{'started' if new else 'continuing'} study in {out_dir} (pid {pid}): {', '.join(names)}")
        click.echo(
            f"follow it with:  ild ls --runs-dir {out_dir / 'runs'}   ild attach --runs-dir {out_dir / 'runs'}"
            f"   tail -f {out_dir / 'study.log'}"
        )
        return
    _survive_hangup()
    with HeadlessView() as view:
        code = finish(out_dir, view, measure=not no_measure)
    if code:
        sys.exit(code)


def _survive_hangup() -> None:
    """A foreground study outlives its terminal (an SSH drop): on SIGHUP its output goes to /dev/null
    from then on (a write to a hung-up terminal fails) and the remaining runs and the report go on."""
    import signal

    def on_hangup(signum, frame) -> None:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)

    signal.signal(signal.SIGHUP, on_hangup)


@main.command()
@runs_dir_option
@click.option("--target-layers", type=int, default=28, show_default=True)
@click.pass_context
def demo(ctx, runs_dir, target_layers):
    """Prune the embedded SmolLM2-135M offline with the paper's method, then print the run's table.

    `iterative-distill`: task-drop importance re-scored every iteration, each removal healed by
    distillation against the teacher; no network, no GPU.
    """
    import time as _time

    name = f"demo-{_time.strftime('%Y%m%d-%H%M%S')}"
    ctx.invoke(
        run,
        model="smollm2-135m",
        strategy="iterative-distill",
        target_layers=target_layers,
        suite="default",
        importance=None,
        name=name,
        runs_dir=runs_dir,
        headless=True,
        batch_tokens=4096,
        device=None,
        seed=0,
    )
    ctx.invoke(show, run_ref=name, runs_dir=runs_dir)
    click.echo(f"\nexported model: {runs_dir}/{name}/export  (reload with AutoModelForCausalLM.from_pretrained)")


@main.group()
def suite():
    """Evaluation suites: list them, check that one separates layers."""


@suite.command(name="list")
def suite_list():
    """The embedded suites (pass a path to --suite for your own)."""
    from pathlib import Path

    import yaml

    import engine.runlog

    root = Path(engine.runlog.__file__).resolve().parent.parent / "tasks" / "suites"
    for path in sorted(root.glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        names = ", ".join(t.get("name", "?") if isinstance(t, dict) else str(t) for t in data.get("tasks", []))
        click.echo(f"{path.stem:10} {data.get('description', '')}\n{'':10} tasks: {names}")


@suite.command(name="check", context_settings={"ignore_unknown_options": True})
@click.option("--model", default="smollm2-135m", show_default=True)
@click.option("--suite", "suite_name", default="default", show_default=True)
@click.option(
    "--layers", default=None, help="Original layers to skip, comma-separated (default: 1 and the middle one)."
)
@click.option("--device", default=None)
@click.option("--report-suite", default=None, help="A report suite (default: the suite's own).")
@click.option(
    "--split-seed", type=int, default=0, show_default=True, help="Which items are the selection / report part."
)
@click.option("--data-only", is_flag=True, help="Check the data and print what would be loaded; load no model.")
def suite_check(model, suite_name, layers, device, report_suite, split_seed, data_only):
    """Score a suite's selection part, report part and report suite on the full model, with layer 1
    skipped and with a middle layer skipped (or check its data only)."""
    import subprocess

    from .launch import ENGINE, _engine_env

    command = [
        ENGINE[0],
        "-m",
        "engine.suite_check",
        "--model",
        model,
        "--suite",
        suite_name,
        "--split-seed",
        str(split_seed),
    ]
    for flag, value in (("--layers", layers), ("--device", device), ("--report-suite", report_suite)):
        if value:
            command += [flag, value]
    if data_only:
        command.append("--data-only")
    code = subprocess.call(command, env=_engine_env())
    if code:
        sys.exit(code)


from .trash_cli import register as _register_trash  # noqa: E402  (ild trash, ild restore)

_register_trash(main, Failure, runs_dir_option)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
