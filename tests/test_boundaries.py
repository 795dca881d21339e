"""The architecture's import rules (README "Layout"), checked on the real import graph."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_import_linter_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_engine_package_init_is_empty():
    assert (ROOT / "engine" / "__init__.py").read_text().strip() == ""


def test_runlog_import_costs_nothing():
    result = _python(
        "import sys, engine.runlog.events, engine.runlog.tailer, engine.runlog.inbox, engine.runlog.lock,"
        " engine.runlog.fold, engine.runlog.reader, engine.runlog.strategies;"
        "heavy = [m for m in ('torch', 'transformers', 'textual', 'yaml', 'rich') if m in sys.modules];"
        "print(heavy)"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_cli_help_imports_neither_torch_nor_textual():
    result = _python(
        "import sys; from ild_tui.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "print([m for m in ('torch', 'transformers', 'textual', 'matplotlib') if m in sys.modules], file=sys.stderr)"
    )
    assert result.stderr.strip().splitlines()[-1] == "[]", result.stderr
    for command in (
        "run",
        "ls",
        "show",
        "attach",
        "approve",
        "override",
        "mode",
        "pause",
        "resume",
        "stop",
        "export",
        "report",
        "study",
        "demo",
    ):
        assert command in result.stdout


def test_cli_answers_through_the_console_script():
    ild = Path(sys.executable).with_name("ild")
    result = subprocess.run([str(ild), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "Iterative Layer-wise Distillation" in result.stdout


def test_the_cli_offers_the_strategies_and_modes_of_the_shared_tables():
    from click.testing import CliRunner

    from engine.runlog.schema import MODES
    from engine.runlog.strategies import STRATEGIES
    from ild_tui.cli import main

    text = " ".join(CliRunner().invoke(main, ["run", "--help"], terminal_width=400).output.split())
    assert ", ".join(STRATEGIES) in text and "|".join(MODES) in text
