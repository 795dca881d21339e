"""What every command module of ``ild`` shares: the one-line failure, ``--runs-dir``, finding a run."""

from __future__ import annotations

import os
import sys

import click

EXIT_FAILED, EXIT_USAGE = 1, 2
DEFAULT_RUNS_DIR = "runs"
DEFAULT_MODEL = "smollm2-135m"  # the embedded teacher: what runs with no network and no GPU
ENGINE_DEFAULT = "engine default"  # show_default of an option the engine's config gives its default


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


def find_or_fail(runs_dir, run_ref):
    """The run ``run_ref`` names (``RunDir``), or a one-line failure, exit 2."""
    from ..runs import RunNotFound, find_run

    try:
        return find_run(runs_dir, run_ref)
    except RunNotFound as exc:
        raise Failure(str(exc), EXIT_USAGE) from None


def exit_with(code: int) -> None:
    """End with an engine tool's exit code (its own message is already on stderr)."""
    if code:
        sys.exit(code)


def console():
    from rich.console import Console

    # Piped output keeps whole rows (for grep and logs) instead of wrapping at 80 columns.
    return Console() if sys.stdout.isatty() else Console(width=250, no_color=True)
