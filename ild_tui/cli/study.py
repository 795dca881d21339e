"""``ild study``: every strategy with the same suite, split, seed and budget, then their report
(the work is ``ild_tui.study``'s)."""

from __future__ import annotations

import os

import click

from engine.runlog.strategies import STRATEGIES

from .common import DEFAULT_MODEL, ENGINE_DEFAULT, EXIT_USAGE, Failure, exit_with


@click.command()
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="The teacher every strategy starts from.")
@click.option("--strategies", required=True, help=f"Comma-separated, from: {', '.join(STRATEGIES)}.")
@click.option("--target-layers", type=int, required=True, help="Every run stops at this many layers.")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    required=True,
    help="The study's directory: study.json, runs/<strategy>/, report/.",
)
@click.option("--suite", default=None, show_default=ENGINE_DEFAULT, help="Embedded suite name or a suite/task file.")
@click.option("--seed", type=int, default=None, show_default=ENGINE_DEFAULT)
@click.option(
    "--split-seed",
    type=int,
    default=None,
    show_default=ENGINE_DEFAULT,
    help="Which items of each task choose the layers and which report (the same for every run).",
)
@click.option("--batch-tokens", type=int, default=None, show_default=ENGINE_DEFAULT, help="Tokens per forward batch.")
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

    from ..headless import HeadlessView
    from ..run_config import as_options, parse_settings
    from ..study import Plan, StudyError, finish, local_or_as_given, parse_strategies, prepare, start_detached

    try:
        settings = parse_settings(overrides)
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
        raise Failure(as_options(str(exc)), exc.code) from None
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
    exit_with(code)


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
