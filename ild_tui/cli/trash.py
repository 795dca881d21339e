"""``ild trash`` and ``ild restore``: the CLI side of ``ild_tui.trash``."""

from __future__ import annotations

import time

import click

from .common import EXIT_USAGE, Failure, runs_dir_option


@click.command(name="trash")
@click.option("--empty", "empty_it", is_flag=True, help="Remove every trashed run for good (frees the space).")
@runs_dir_option
def trash(runs_dir, empty_it):
    """List the runs deleted from the dashboard (kept in RUNS_DIR/.trash), or empty the trash.

    Deleted runs stay for `trash_days` days (dashboard setting, default 30); `ild restore RUN`
    brings one back unchanged.
    """
    from ..settings import Settings
    from ..trash import empty, fmt_bytes, list_trash

    if empty_it:
        count, freed = empty(runs_dir)
        click.echo(f"removed {count} run{'s' if count != 1 else ''} for good, freed {fmt_bytes(freed)}")
        return
    entries = list_trash(runs_dir)
    if not entries:
        click.echo(f"the trash of {runs_dir} is empty")
        return
    days = Settings.load().trash_days
    now = time.time()
    width = max(len(e.entry) for e in entries)
    click.echo(f"{'entry':<{width}}  {'run':<24} {'deleted':<16} {'size':>9}  removed for good")
    for e in entries:
        left = e.expires(days) - now
        when = "at the next delete" if left <= 0 else f"in {left / 86400:.0f} days" if left >= 86400 else "today"
        click.echo(
            f"{e.entry:<{width}}  {e.name:<24} {time.strftime('%Y-%m-%d %H:%M', time.localtime(e.deleted_at)):<16} "
            f"{fmt_bytes(e.size):>9}  {when}"
        )
    total = sum(e.size for e in entries)
    click.echo(f"{len(entries)} in the trash, {fmt_bytes(total)}; `ild restore RUN` brings one back")


@click.command(name="restore")
@click.argument("run_ref", metavar="RUN")
@click.option("--as", "as_name", default=None, help="Restore under this directory name.")
@runs_dir_option
def restore(run_ref, as_name, runs_dir):
    """Bring a deleted run back from the trash (its name, or an entry `ild trash` lists)."""
    from ..runs import check_name
    from ..trash import TrashError
    from ..trash import restore as restore_run

    if as_name is not None:
        try:
            check_name(as_name)
        except ValueError as exc:
            raise Failure(str(exc), EXIT_USAGE) from None
    try:
        target = restore_run(runs_dir, run_ref, as_name)
    except TrashError as exc:
        raise Failure(str(exc), EXIT_USAGE) from None
    except OSError as exc:
        raise Failure(f"could not restore {run_ref}: {exc.strerror or exc}") from None
    click.echo(f"restored {target}")
