"""Steering a live run from a shell: ``ild approve``, ``override``, ``mode``, ``pause``, ``stop``.

Each writes one command to the engine's inbox (``engine.runlog.inbox``) and prints what the engine
did with it.
"""

from __future__ import annotations

import click

from engine.runlog.schema import MODES

from .common import EXIT_FAILED, EXIT_USAGE, Failure, find_or_fail, runs_dir_option


def send_and_report(run_dir, name: str, args: dict, timeout: float = 30.0) -> None:
    """Write a command to a live engine's inbox and print what the engine did with it."""
    from engine.runlog.inbox import send_command, validate_command, wait_for_reply
    from engine.runlog.lock import is_alive
    from engine.runlog.tailer import EventTailer

    from ..runs import summarise

    if not is_alive(run_dir.path):
        status = summarise(run_dir)[0].status
        raise Failure(f"no live engine holds {run_dir.name} (status: {status}); nothing was sent", EXIT_FAILED)
    problem = validate_command(name, args)
    if problem:
        raise Failure(problem, EXIT_USAGE)
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


@click.command()
@click.argument("run_ref", metavar="RUN")
@click.option(
    "--layer", type=int, default=None, help="The layer (original index) being approved; default: the proposal."
)
@runs_dir_option
def approve(run_ref, layer, runs_dir):
    """Approve the engine's proposed layer removal."""
    send_and_report(find_or_fail(runs_dir, run_ref), "approve", {} if layer is None else {"layer": layer})


@click.command()
@click.argument("run_ref", metavar="RUN")
@click.option("--layer", type=int, required=True, help="Remove this layer (original index) instead of the proposal.")
@runs_dir_option
def override(run_ref, layer, runs_dir):
    """Remove a different layer than the one proposed."""
    send_and_report(find_or_fail(runs_dir, run_ref), "override", {"layer": layer})


@click.command(name="mode")
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
    send_and_report(find_or_fail(runs_dir, run_ref), "set_mode", args)


@click.command()
@click.argument("run_ref", metavar="RUN")
@runs_dir_option
def pause(run_ref, runs_dir):
    """Pause a run at its next safe point (an evaluation batch or a training step)."""
    send_and_report(find_or_fail(runs_dir, run_ref), "pause", {})


@click.command()
@click.argument("run_ref", metavar="RUN")
@runs_dir_option
def stop(run_ref, runs_dir):
    """Finish the current step, checkpoint and end the run (continue later with ild resume)."""
    send_and_report(find_or_fail(runs_dir, run_ref), "stop", {})
