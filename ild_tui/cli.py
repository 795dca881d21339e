"""The ``ild`` command.

Startup stays cheap: this module imports only click at the top; torch never loads in this process
(the engine runs as ``python -m engine.worker`` in its own process), and Textual loads only when a
dashboard opens.

Exit codes: 0 done, 1 failed, 2 bad input or usage, 3 stopped, 130 interrupted.
"""

from __future__ import annotations

import os
import sys

import click

EXIT_FAILED, EXIT_USAGE, EXIT_STOPPED = 1, 2, 3
DEFAULT_RUNS_DIR = "runs"

# Commands whose issue has not landed yet: they say so instead of pretending.
PLANNED = {
    "run": ("start a pruning run (headless, detached, or with the dashboard)", 3),
    "ls": ("list runs with status, model, strategy, layers and aggregate", 3),
    "show": ("print a run's iteration table", 3),
    "attach": ("open the live dashboard on a run", 6),
    "approve": ("approve the engine's proposed layer removal", 5),
    "override": ("remove a different layer than the one proposed", 5),
    "mode": ("switch a run between manual, auto and auto-after SECONDS", 5),
    "pause": ("pause a run after its current step", 5),
    "resume": ("resume a paused run, or restart a dead one from its last checkpoint", 4),
    "stop": ("finish the current step, checkpoint and end a run", 5),
    "export": ("write a run's student as a Hugging Face model directory", 3),
    "report": ("write a report of a run (tables and plots)", 6),
    "demo": ("prune the embedded SmolLM2-135M with the paper's method", 4),
}


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
        click.echo(ctx.get_help())


def _planned(name: str, summary: str, issue: int) -> click.Command:
    @click.command(
        name=name,
        help=f"{summary[0].upper()}{summary[1:]}. [not built yet: arrives with issue #{issue}]",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        add_help_option=True,
    )
    @click.pass_context
    def command(ctx: click.Context) -> None:
        raise Failure(f"'ild {name}' is not built yet (it arrives with issue #{issue}: {summary})", EXIT_USAGE)

    return command


for _name, (_summary, _issue) in PLANNED.items():
    if _name not in main.commands:
        main.add_command(_planned(_name, _summary, _issue))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
