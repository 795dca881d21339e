"""The engine process: ``python -m engine.worker RUN_DIR``.

Also ``--create RUN_DIR`` (validate a JSON config from stdin and make the run directory, or say
in one line why not, leaving nothing behind) and ``--export RUN_DIR --out DIR`` (rebuild the
student from the last checkpoint and write it as a Hugging Face directory).

Exit codes: 0 done, 1 failed, 2 bad input (config, model spec, suite) or run already live.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

EXIT_FAILED, EXIT_USAGE = 1, 2

# OpenMP threads that spin while waiting make torch 5-10x slower whenever another process
# wants the same cores (a second run, a test worker, the dashboard); passive waiting costs ~nothing.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"ild: {message}", file=sys.stderr)
    return code


def _resolve(data: dict):
    """Validate everything a run needs before anything is written."""
    import yaml  # noqa: F401  (fail here, not later, on a broken install)

    from engine.config import ConfigError, validate_config
    from engine.models.errors import ModelSpecError, UnsupportedArchitecture
    from engine.models.loading import model_depth
    from engine.strategies import get_strategy
    from engine.tasks.spec import TaskFileError, load_suite

    try:
        get_strategy(data.get("strategy", ""))
        load_suite(data.get("suite", "default"))
        if "start_layers" not in data:
            data["start_layers"] = model_depth(data["model"])
        return validate_config(data)
    except (ConfigError, ModelSpecError, UnsupportedArchitecture, TaskFileError, ValueError) as exc:
        raise SystemExit(_fail(str(exc)))


def create(run_dir: Path, data: dict) -> int:
    import yaml

    from engine.runlog.layout import create as create_layout

    if run_dir.exists():
        return _fail(f"run directory {run_dir} already exists")
    config = _resolve(data)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    # Build it beside its final place and rename: a run directory is whole or absent.
    tmp = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.tmp-", dir=run_dir.parent))
    try:
        create_layout(tmp)
        (tmp / "config.yaml").write_text(yaml.safe_dump(config.model_dump(), sort_keys=False))
        os.rename(tmp, run_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(run_dir)
    return 0


def _setup_logging(run_dir: Path) -> None:
    handler = logging.FileHandler(run_dir / "engine.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    for noisy in ("transformers", "datasets", "accelerate", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:
        pass


def _load_config(run_dir: Path):
    import yaml

    from engine.config import ConfigError, validate_config

    path = run_dir / "config.yaml"
    if not path.is_file():
        raise SystemExit(_fail(f"{run_dir} is not a run directory (no config.yaml)"))
    try:
        return validate_config(yaml.safe_load(path.read_text()))
    except (ConfigError, yaml.YAMLError) as exc:
        raise SystemExit(_fail(f"{path}: {str(exc).splitlines()[0]}"))


def run(run_dir: Path) -> int:
    import signal

    from engine.runlog.lock import EngineLock, LockHeld

    # The engine outlives the terminal that started it: a hang-up is not a reason to stop.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    config = _load_config(run_dir)
    _quiet_libraries()
    _setup_logging(run_dir)
    lock = EngineLock(run_dir)
    try:
        lock.acquire()
    except LockHeld:
        return _fail(f"an engine is already running on {run_dir}")
    try:
        from engine.runner import Runner

        Runner(run_dir, config).run()
        return 0
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # recorded as run_failed by the runner; one line here
        logging.getLogger(__name__).exception("run failed")
        return _fail(f"run failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} (details in {run_dir / 'engine.log'})", EXIT_FAILED)
    finally:
        lock.release()


def export(run_dir: Path, out: Path) -> int:
    from engine.runlog.layout import RunDir

    config = _load_config(run_dir)
    _quiet_libraries()
    from engine.models.export import export_model
    from engine.models.loading import load_model
    from engine.models.surgery import remove_layers
    from engine.runlog.atomic import read_json

    latest = RunDir(run_dir).latest_checkpoint()
    record = read_json(Path(latest) / "checkpoint.json") if latest else {"removed": []}
    loaded = load_model(config.model, device="cpu")
    removed = [r["layer"] for r in record.get("removed", [])]
    if removed:
        remove_layers(loaded.model, removed)
    if latest and (Path(latest) / "layers.safetensors").is_file():
        from engine.runner import load_layer_tensors

        load_layer_tensors(loaded.model, Path(latest) / "layers.safetensors")
    export_model(loaded.model, loaded.tokenizer, out, {"teacher": config.model, "strategy": config.strategy, "run": config.name, "removal_order": removed})
    print(out)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.worker", description="The ild engine process.")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--create", action="store_true", help="validate a JSON config from stdin and create the run directory")
    parser.add_argument("--export", action="store_true", help="export the student of the last checkpoint")
    parser.add_argument("--out", type=Path, help="where --export writes")
    args = parser.parse_args(argv)
    if args.create:
        try:
            data = json.load(sys.stdin)
        except json.JSONDecodeError as exc:
            return _fail(f"bad config JSON on stdin: {exc}")
        return create(args.run_dir, data)
    if args.export:
        if args.out is None:
            return _fail("--export needs --out DIR")
        return export(args.run_dir, args.out)
    return run(args.run_dir)


if __name__ == "__main__":
    sys.exit(main())
