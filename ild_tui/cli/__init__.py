"""The ``ild`` command: the group here, each command group in a module of its own.

Startup stays cheap: these modules import only click and tables of ``engine.runlog`` (standard
library) at the top; torch never loads in this process (the engine runs as ``python -m
engine.worker`` in its own process), and Textual loads only when a dashboard opens.

Exit codes: 0 done, 1 failed, 2 bad input or usage, 130 interrupted.
"""

from __future__ import annotations

import os

import click

from . import browse, control, dashboard, results, start, study, suite, trash
from .common import DEFAULT_RUNS_DIR


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
        from ..terminal import missing

        if missing():  # piped: the commands on stdout, why no dashboard on stderr, and not a success
            click.echo(ctx.get_help())
        dashboard.open_dashboard(os.environ.get("ILD_RUNS_DIR", DEFAULT_RUNS_DIR), None, None)


for _command in (
    dashboard.attach,
    start.run,
    start.resume,
    start.demo,
    control.approve,
    control.override,
    control.mode_command,
    control.pause,
    control.stop,
    browse.list_runs_command,
    browse.show,
    trash.trash,
    trash.restore,
    results.export,
    results.eval_command,
    results.paired,
    results.report,
    study.study,
    suite.suite,
):
    main.add_command(_command)
