"""The dashboard: ``ild attach`` and bare ``ild`` open it (Textual loads only then)."""

from __future__ import annotations

import sys

import click

from .common import EXIT_USAGE, Failure, find_or_fail, runs_dir_option


def open_dashboard(runs_dir: str, run_dir, theme: str | None) -> None:
    """Textual loads here, never at import time (`ild --help` stays light).

    Refuses without a terminal (it would write escape codes into a pipe and wait forever), and ends
    when its terminal goes away (see ``ild_tui.terminal``).
    """
    from .. import terminal

    missing = terminal.missing()
    if missing:
        raise Failure(f"{missing}; without one use ild ls, ild show RUN or ild run --headless (ild --help)", EXIT_USAGE)
    from ..app import IldApp
    from ..launch import reap_started

    app = IldApp(runs_dir, run_dir, theme=theme)
    with terminal.Watch(app, sys.stdin.fileno(), reap_started):
        app.run()


@click.command()
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

    if run_ref:
        run_dir = find_or_fail(runs_dir, run_ref)
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

        from ..app import theme_names

        known = theme_names() + sorted(BUILTIN_THEMES)
        if theme not in known:
            raise Failure(f"unknown theme '{theme}' (known: {', '.join(known)})", EXIT_USAGE)
    open_dashboard(runs_dir, run_dir, theme)
