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

from engine.runlog.layout import RunDir

EXIT_FAILED, EXIT_USAGE = 1, 2

# OpenMP threads that spin while waiting make torch 5-10x slower whenever another process
# wants the same cores (a second run, a test worker, the dashboard); passive waiting costs ~nothing.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"ild: {message}", file=sys.stderr)
    return code


def _resolve(data: dict):
    """Validate everything a run needs before anything is written: the config, the model's depth,
    the suites' data files and templates, the distillation data."""
    import yaml  # noqa: F401  (fail here, not later, on a broken install)

    from engine.config import ConfigError, validate_config
    from engine.hub_data import check_suites
    from engine.models.errors import ModelSpecError, UnsupportedArchitecture
    from engine.models.loading import model_depth
    from engine.runlog.strategies import get_strategy
    from engine.tasks.check import check_suite_data
    from engine.tasks.spec import TaskFileError, load_report_suite, load_suite

    try:
        strategy = get_strategy(data.get("strategy", ""))
        for section in ("heal", "distributed"):
            if data.get(section) is not None and not isinstance(data[section], dict):
                raise ValueError(
                    f"{section} is a section of settings, not {data[section]!r}: set one of them, "
                    f"e.g. --set {section}.KEY=VALUE"
                )
        # The strategy's own healing choices first; what the user set explicitly wins.
        data["heal"] = {**strategy.heal_settings, **(data.get("heal") or {})}
        if isinstance(data.get("report_suite"), str) and data["report_suite"].lower() == "none":
            data["report_suite"] = ""  # no report suite, not even the suite's own
        if isinstance(data.get("model"), str):
            # A relative --model means the same directory from anywhere the run is resumed or exported.
            from engine.models.identity import absolute_spec

            data["model"] = absolute_spec(data["model"])
        suite = load_suite(data.get("suite", "default"))
        check_suite_data(suite)
        report = load_report_suite(suite, data.get("report_suite"))
        if report is not None:
            check_suite_data(report)
        if isinstance(data.get("device"), str):
            from engine.models.device import device_problem

            problem = device_problem(data["device"], check_available=not data.pop("_defer_device_check", False))
            if problem:
                raise ValueError(problem)
        data.pop("_defer_device_check", None)
        check_suites([suite, report])  # every Hub dataset opened, one row read
        if "start_layers" not in data:
            data["start_layers"] = model_depth(data["model"])
        config = validate_config(data)
        if strategy.heal or config.heal.final_tokens:
            _check_distill_data(config)
        return config
    except (ConfigError, ModelSpecError, UnsupportedArchitecture, TaskFileError, ValueError) as exc:
        raise SystemExit(_fail(str(exc))) from None


def _check_distill_data(config) -> None:
    """The healing text must exist and hold the text field, before a model is loaded."""
    from engine.config import DataSettings
    from engine.distill.data import load_texts

    source = config.heal.data.source
    if source.startswith("hf:"):
        from engine.hub_data import heal_row

        if config.heal.text_field not in heal_row(source):
            raise ValueError(f"heal.data {source}: no '{config.heal.text_field}' field in a row")
        return
    try:
        texts = load_texts(DataSettings(source=source, text_field=config.heal.text_field, max_documents=10**9))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        detail = (
            f"no '{config.heal.text_field}' field in a row" if isinstance(exc, KeyError) else str(exc).splitlines()[0]
        )
        raise ValueError(f"heal.data {source}: {detail}") from None
    if not texts:
        raise ValueError(f"heal.data {source}: no text")


def create(run_dir: Path, data: dict) -> int:
    import yaml

    from engine.runlog.layout import create as create_layout
    from engine.runlog.layout import make_private_dir

    if run_dir.exists():
        return _fail(f"run directory {run_dir} already exists")
    config = _resolve(data)
    os.umask(0o077)  # a run directory is the user's alone: models, prompts and commands inside
    make_private_dir(run_dir.parent)
    # Build it beside its final place and rename: a run directory is whole or absent.
    tmp = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.tmp-", dir=run_dir.parent))
    try:
        create_layout(tmp)
        RunDir(tmp).config_file.write_text(yaml.safe_dump(config.model_dump(), sort_keys=False))
        _record_teacher(tmp, config.model)
        os.rename(tmp, run_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(run_dir)
    return 0


def _record_teacher(run_dir: Path, spec: str) -> str | None:
    """Record the run's teacher (or compare with the one recorded); the one-line reason it is not
    the run's teacher, or None."""
    from engine.models.identity import TeacherChanged, check_teacher

    try:
        check_teacher(run_dir, spec)
    except TeacherChanged as exc:
        return str(exc)
    return None


def _log_file(run_dir: Path, rank: int = 0) -> Path:
    """Rank 0 writes the run's engine.log; the other ranks of a multi-process run one each."""
    log_file = RunDir(run_dir).log_file
    return log_file if rank == 0 else log_file.with_name(f"{log_file.stem}.rank{rank}{log_file.suffix}")


def _setup_logging(run_dir: Path, rank: int = 0) -> None:
    from engine.runlog.safefile import open_regular

    # Not logging.FileHandler: that follows a link planted where engine.log belongs.
    stream = os.fdopen(open_regular(_log_file(run_dir, rank), os.O_WRONLY | os.O_CREAT | os.O_APPEND), "a")
    handler = logging.StreamHandler(stream)
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
    from engine.runlog.safefile import UnsafeFile, read_regular

    path = RunDir(run_dir).config_file
    try:
        text = read_regular(path).decode("utf-8")
    except (FileNotFoundError, NotADirectoryError):
        raise SystemExit(_fail(f"{run_dir} is not a run directory (no config.yaml)")) from None
    except (UnsafeFile, UnicodeDecodeError) as exc:
        raise SystemExit(_fail(f"{path}: {exc}")) from None
    try:
        return validate_config(yaml.safe_load(text))
    except (ConfigError, yaml.YAMLError) as exc:
        raise SystemExit(_fail(f"{path}: {str(exc).splitlines()[0]}")) from None


def _join_ranks(config):
    """This process's place among the run's processes (one, or those ``accelerate launch`` started),
    with its share of the CPU threads."""
    import torch

    from engine.config import ConfigError, check_processes
    from engine.distributed.ranks import (
        DistributedError,
        apply_threads,
        default_threads,
        from_environment,
        launched_size,
        resolve_device,
    )

    settings = config.distributed
    cuda = torch.cuda.is_available() and (config.device or "cuda").startswith("cuda")
    # An accelerate config's own engines: FSDP is ours to apply (to the trainable layers, see
    # engine.distributed.sharding), not accelerate's to wrap the whole student with.
    if os.environ.pop("ACCELERATE_USE_FSDP", "false").lower() == "true":
        settings.heal = "fsdp"
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        raise SystemExit(
            _fail("DeepSpeed is not supported: use distributed_type MULTI_GPU (DDP) or FSDP in the accelerate config")
        )
    try:
        if settings.gpus_per_process > 1 and not cuda:
            raise DistributedError("distributed.gpus_per_process > 1 spreads a model over GPUs and this host has none")
        check_processes(config, launched_size())
    except (DistributedError, ConfigError) as exc:
        raise SystemExit(_fail(str(exc))) from None
    if settings.gpus_per_process > 1:
        os.environ["ACCELERATE_BYPASS_DEVICE_MAP"] = "true"  # DDP over processes whose model spans several GPUs
    ranks = from_environment(cpu=not cuda, timeout_s=settings.timeout_s)
    try:
        resolve_device(config.device, ranks, settings.gpus_per_process)  # enough GPUs for every rank?
    except DistributedError as exc:
        raise SystemExit(_fail(str(exc))) from None
    apply_threads(config.threads or default_threads(ranks.local_size))
    return ranks


def run(run_dir: Path) -> int:
    import signal

    from engine.runlog.lock import EngineLock, LockHeld

    # The engine outlives the terminal that started it: a hang-up is not a reason to stop.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # A file-size limit then fails the write (EFBIG) instead of killing the engine mid-checkpoint.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    os.umask(0o077)

    problem = RunDir(run_dir).problem()  # a link or a FIFO where the engine writes: never followed
    if problem:
        return _fail(f"refusing to run: {problem}")
    config = _load_config(run_dir)
    if config.device:
        from engine.models.device import device_problem

        problem = device_problem(config.device)
        if problem:  # a run created for another host (--create-only), started on this one
            return _refuse_run(run_dir, problem, "start it where that device exists, or change device: in config.yaml")
    _quiet_libraries()
    ranks = _join_ranks(config)
    _setup_logging(run_dir, ranks.rank)
    who = f"rank {ranks.rank}: " if ranks.rank else ""
    lock = EngineLock(run_dir)
    refused = None
    if ranks.is_main:  # rank 0 owns the run directory; the others follow its answer
        try:
            lock.acquire()
        except LockHeld:
            refused = f"an engine is already running on {run_dir}"
        refused = refused or _record_teacher(run_dir, config.model)
    refused = ranks.broadcast(refused)
    if refused:
        return _fail(refused) if ranks.is_main else EXIT_USAGE
    try:
        from engine.runner import Runner

        Runner(run_dir, config, ranks).run()
        return 0
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # recorded as run_failed by the runner (rank 0); one line here
        from engine.failures import describe

        logging.getLogger(__name__).exception("run failed")
        return _fail(f"{who}run failed: {describe(exc)} (details in {_log_file(run_dir, ranks.rank)})", EXIT_FAILED)
    finally:
        lock.release()


def _refuse_run(run_dir: Path, error: str, hint: str) -> int:
    """End a run that cannot start here with ``run_failed`` (its last word in the log) and one line."""
    from engine.runlog.events import EventWriter
    from engine.runlog.lock import EngineLock, LockHeld

    try:
        with EngineLock(run_dir), EventWriter(RunDir(run_dir).events_file) as writer:
            writer.emit("run_failed", error=error, hint=hint)
    except LockHeld:
        return _fail(f"an engine is already running on {run_dir}")
    return _fail(error, EXIT_FAILED)


def export(run_dir: Path, out: Path, force: bool = False, from_checkpoint: int | None = None) -> int:
    """The run's newest checkpoint (or ``from_checkpoint``) as a Hugging Face directory, or exit 1
    with the one-line reason: never an older checkpoint in silence, never other teacher weights."""
    from engine.checkpoints import CheckpointError, CheckpointStore
    from engine.models.export import ExportRefused, check_export_target
    from engine.runlog.tailer import read_all

    config = _load_config(run_dir)
    try:
        check_export_target(out, force, run_dir=run_dir)
        checkpoint = CheckpointStore(run_dir).newest(read_all(RunDir(run_dir).events_file), from_checkpoint)
    except (ExportRefused, CheckpointError) as exc:
        return _fail(str(exc), EXIT_FAILED)
    except OSError as exc:
        return _fail(f"{run_dir}: cannot read the run ({exc.strerror or exc})", EXIT_FAILED)
    refused = _record_teacher(run_dir, config.model)
    if refused:
        return _fail(refused, EXIT_FAILED)
    _quiet_libraries()
    from engine.models.export import export_model
    from engine.models.loading import load_model

    loaded = load_model(config.model, device="cpu")
    try:
        CheckpointStore(run_dir).restore(loaded.model, checkpoint)
        export_model(
            loaded.model,
            loaded.tokenizer,
            out,
            {
                "teacher": config.model,
                "strategy": config.strategy,
                "run": config.name,
                "removal_order": checkpoint.removed_layers,
                "checkpoint": checkpoint.name,
            },
            force=force,
            run_dir=run_dir,
            iteration=checkpoint.iteration,
        )
    except (ExportRefused, CheckpointError) as exc:
        return _fail(str(exc), EXIT_FAILED)
    from engine.models.model_card import export_warning

    if export_warning(loaded.model.config):
        print(f"ild: {export_warning(loaded.model.config)}", file=sys.stderr)
    print(out)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.worker", description="The ild engine process.")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument(
        "--create", action="store_true", help="validate a JSON config from stdin and create the run directory"
    )
    parser.add_argument("--export", action="store_true", help="export the student of the last checkpoint")
    parser.add_argument("--out", type=Path, help="where --export writes")
    parser.add_argument(
        "--force", action="store_true", help="--export may replace an earlier export holding files it did not write"
    )
    parser.add_argument("--from-checkpoint", type=int, default=None, help="--export this checkpoint, not the newest")
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
        return export(args.run_dir, args.out, args.force, args.from_checkpoint)
    return run(args.run_dir)


if __name__ == "__main__":
    sys.exit(main())
