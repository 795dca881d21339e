"""``ild suite list`` and ``ild suite check``: the evaluation suites."""

from __future__ import annotations

import click

from .common import DEFAULT_MODEL, exit_with


@click.group()
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
@click.option("--model", default=DEFAULT_MODEL, show_default=True)
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
    from ..launch import run_engine_module

    args = ["--model", model, "--suite", suite_name, "--split-seed", str(split_seed)]
    for flag, value in (("--layers", layers), ("--device", device), ("--report-suite", report_suite)):
        if value:
            args += [flag, value]
    if data_only:
        args.append("--data-only")
    exit_with(run_engine_module("engine.suite_check", args))
