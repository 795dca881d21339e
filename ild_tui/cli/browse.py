"""``ild ls`` and ``ild show``: what the runs directory holds, from each run's event log."""

from __future__ import annotations

import click

from .common import EXIT_FAILED, Failure, console, find_or_fail, runs_dir_option


@click.command(name="ls")
@runs_dir_option
def list_runs_command(runs_dir):
    """List runs with status, model, strategy, layers and (report) aggregate: now and best."""
    from ..runs import SKIPPED_NOTE, all_runs
    from .tables import runs_table

    runs = all_runs(runs_dir)
    if not runs:
        click.echo(f"no runs in {runs_dir}")
        return
    console().print(runs_table(runs))
    skipped = [f"{r.name} ({r.skipped})" for r in runs if r.skipped]
    if skipped:
        click.echo(f"{SKIPPED_NOTE}: {', '.join(skipped)}", err=True)
    for r in runs:
        if r.status == "unreadable":
            click.echo(f"ild: {r.name}: {r.note}", err=True)


@click.command()
@click.argument("run_ref", metavar="RUN", required=False)
@runs_dir_option
def show(run_ref, runs_dir):
    """Print a run's iteration table: layers by original index, the report aggregate and per-task
    scores (and the aggregate of the items that chose the layers, when the run logs them)."""
    from rich.text import Text

    from engine.runlog.jsonsafe import printable

    from ..runs import FINISH_NOTES, SKIPPED_NOTE, summarise
    from .tables import iteration_table, run_heading

    row, s = summarise(find_or_fail(runs_dir, run_ref))
    if s.unreadable:
        raise Failure(f"{row.name}: {row.note}", EXIT_FAILED)
    out = console()
    out.print(run_heading(row, s), highlight=False)
    out.print(iteration_table(s))
    if s.finished and s.finished["reason"] in FINISH_NOTES:
        out.print(f"finished at the {s.finished['reason']}: {FINISH_NOTES[s.finished['reason']]}", highlight=False)
    if s.failure:
        why = printable(f"{s.failure['error']} — {s.failure.get('hint', '')}")
        out.print(Text.assemble(("failed:", "red"), f" {why}"), highlight=False)
    if row.skipped:
        out.print(f"{row.skipped} {SKIPPED_NOTE}", highlight=False, markup=False)
