"""``python -m engine.distributed.supervise RUN_DIR``: start a run's engine processes and answer for them.

One process (the default): this process becomes the engine (``python -m engine.worker RUN_DIR``,
exec'd in place), exactly as a plain start.

Several (``distributed.processes`` > 1 in the run's config, ``--processes N``, or an accelerate
config file): ``accelerate launch`` starts them (torchrun underneath: one process per GPU, or per
share of the CPU cores), and this process waits. When a rank dies, the launcher tears the others
down, possibly while rank 0 is blocked in a collective and cannot say why; so when the launcher
ends and the event log has no final event from this engine, this process writes ``run_failed`` --
only once it holds the engine lock, which rank 0 held until it ended, so the log never has two
writers. ``ild resume`` continues the run from its last checkpoint, on any number of processes.

SIGTERM and SIGINT sent here go to the launcher, which passes them to every rank; each stops at its
next safe point (rank 0 writes a partial checkpoint when it is healing). The launcher runs in a
process group of its own, so a Ctrl-C in a terminal reaches the ranks once, through it.

Standard library, PyYAML and the run-log contract only: no torch in this process.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

EXIT_FAILED, EXIT_USAGE = 1, 2
FINAL = ("run_finished", "run_failed")
WORKER = ["-m", "engine.worker"]


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"ild: {message}", file=sys.stderr, flush=True)
    return code


def _config(run_dir: Path):
    import yaml

    from engine.config import ConfigError, validate_config

    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ValueError(f"{run_dir} is not a run directory (no config.yaml)")
    try:
        return validate_config(yaml.safe_load(path.read_text()))
    except (ConfigError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: {str(exc).splitlines()[0]}") from None


def processes_in(accelerate_config: str) -> int:
    """``num_processes`` of an accelerate config file (all machines together), or 1."""
    import yaml

    try:
        data = yaml.safe_load(Path(accelerate_config).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"accelerate config {accelerate_config}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ValueError(f"accelerate config {accelerate_config}: not a mapping")
    return int(data.get("num_processes") or 1)


def one_host_flags(processes: int) -> list[str]:
    """``accelerate launch`` flags for ranks on this machine alone: torchrun's launcher
    (accelerate's --multi_gpu path; on a CPU-only host the ranks then join over gloo), and a free
    port so that several runs can share a host."""
    return [
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--main_process_port",
        "0",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]


def launch_command(
    run_dir: Path,
    processes: int,
    accelerate_config: str | None = None,
    machine_rank: int | None = None,
    threads: int | None = None,
    explicit_processes: bool = False,
    main_process_ip: str | None = None,
    main_process_port: int | None = None,
) -> list[str]:
    """The ``accelerate launch`` command line that starts the engine's ranks."""
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if accelerate_config:
        command += ["--config_file", accelerate_config]
        if explicit_processes:
            command += ["--num_processes", str(processes)]
        if machine_rank is not None:
            command += ["--machine_rank", str(machine_rank)]
        if main_process_ip:  # a scheduler knows the first node only when the job starts
            command += ["--main_process_ip", main_process_ip]
        if main_process_port:
            command += ["--main_process_port", str(main_process_port)]
    else:
        command += one_host_flags(processes)
    if threads:
        command += ["--num_cpu_threads_per_process", str(threads)]
    return [*command, *WORKER, str(run_dir)]


class _Output:
    """Passes the launcher's output through and keeps what explains a failure."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.said: str | None = None  # the last "ild: ..." line of a rank
        self.root_cause: dict[str, str] = {}  # torchrun's first observed failure: rank, exitcode
        self._in_root_cause = False
        self.thread = threading.Thread(target=self._pump, name="ild-launcher-output", daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        out = sys.stdout.buffer
        for raw in iter(self.stream.readline, b""):
            out.write(raw)
            out.flush()
            line = raw.decode("utf-8", "replace").strip()
            if line.startswith("ild: "):
                self.said = line.removeprefix("ild: ")
            if line.startswith("Root Cause"):
                self._in_root_cause = True
            found = re.match(r"(rank|exitcode)\s*:\s*(.+)", line)
            if self._in_root_cause and found:
                self.root_cause.setdefault(found.group(1), found.group(2).strip())

    @property
    def cause(self) -> str | None:
        """Which rank ended first and how (torchrun's root cause), else a rank's own last words."""
        rank, code = self.root_cause.get("rank"), self.root_cause.get("exitcode")
        if rank and code:
            code = " ".join(re.sub(r"[(]pid: [0-9]+[)]", "", code).split())
            return f"rank {rank.split()[0]} exited first, exit code {code}"
        return self.said

    def join(self) -> None:
        self.thread.join(timeout=5)


def _events_from(path: Path, offset: int) -> list[dict]:
    from engine.runlog.tailer import EventTailer

    return EventTailer(path, offset=offset).poll()


def supervise(run_dir: Path, command: list[str], machine_rank: int | None = None) -> int:
    from engine.runlog.layout import RunDir

    rd = RunDir(run_dir)
    offset = rd.events_file.stat().st_size if rd.events_file.exists() else 0
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    launcher = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, process_group=0
    )
    output = _Output(launcher.stdout)
    last_forward = [0.0]

    def forward(signum, frame) -> None:
        # A terminal's Ctrl-C can arrive twice (here and through ild); the ranks must see one.
        now = time.monotonic()
        if now - last_forward[0] > 1.0:
            last_forward[0] = now
            try:
                launcher.send_signal(signum)
            except ProcessLookupError:
                pass

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    code = launcher.wait()
    output.join()
    if machine_rank:  # rank 0 and its lock live on machine 0: its supervisor answers for the run
        return 0 if code == 0 else EXIT_FAILED
    events = _events_from(rd.events_file, offset)
    final = [e for e in events if e.get("type") in FINAL]
    if final and final[-1].get("reason") == "stopped" and code and not last_forward[0] and output.cause:
        # Nobody asked for a stop: a rank died and the launcher stopped the others with SIGTERM,
        # which rank 0 took for a stop (it cannot tell the two apart). Say what happened.
        message = f"{output.cause}; the launcher then stopped the other ranks. `ild resume` continues the run"
        _write_as_engine(rd, offset, "alert", {"level": "error", "message": message}, after_final=True)
        return _fail(message, EXIT_FAILED)
    if final:
        return 0 if final[-1]["type"] == "run_finished" else EXIT_FAILED
    if not any(e.get("type") == "engine_started" for e in events):
        # The engine refused to start (bad input, run already live): its ranks said why.
        return (EXIT_USAGE if output.said else EXIT_FAILED) if code else 0
    detail = output.cause
    error = f"an engine process ended without a final event (launcher exit code {code})" + (
        f": {detail}" if detail else ""
    )
    hint = "the run can be resumed from its last checkpoint with `ild resume RUN` (any number of processes)"
    if not _write_as_engine(rd, offset, "run_failed", {"error": error, "hint": hint}):
        return _fail(f"{error}; an engine process still holds {rd.lock_file}, so nothing was written", EXIT_FAILED)
    return _fail(f"run failed: {error}", EXIT_FAILED)


def _write_as_engine(rd, offset: int, kind: str, fields: dict, after_final: bool = False, wait_s: float = 60.0) -> bool:
    """Append one event for the engine that ended, as the run's only writer: holding its lock, which
    rank 0 held until it ended. Nothing when the lock stays held, or (unless ``after_final``) when
    rank 0 wrote its final event meanwhile. True when the log has its word."""
    from engine.runlog.events import EventWriter
    from engine.runlog.lock import EngineLock, LockHeld

    lock = EngineLock(rd.path)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            lock.acquire(timeout=1.0)
            break
        except LockHeld:
            if time.monotonic() > deadline:
                return False
    try:
        events = _events_from(rd.events_file, offset)
        if not after_final and any(e.get("type") in FINAL for e in events):
            return True
        iteration = max((e["iteration"] for e in events if isinstance(e.get("iteration"), int)), default=0)
        with EventWriter(rd.events_file) as writer:
            writer.emit(kind, **fields, iteration=iteration)
    finally:
        lock.release()
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engine.distributed.supervise",
        description="Start a run's engine processes (accelerate launch) and answer for them.",
    )
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--processes", type=int, help="engine processes (default: the run's distributed.processes)")
    parser.add_argument("--accelerate-config", help="an accelerate config file (machines, processes, FSDP, ...)")
    parser.add_argument(
        "--machine-rank", type=int, help="this machine's rank in a multi-node run (with --accelerate-config)"
    )
    parser.add_argument("--main-process-ip", help="the first machine's address (overrides the accelerate config's)")
    parser.add_argument("--main-process-port", type=int, help="its port (overrides the accelerate config's)")
    args = parser.parse_args(argv)
    try:
        config = _config(args.run_dir)
        settings = config.distributed
        accelerate_config = args.accelerate_config or settings.accelerate_config
        if args.processes is not None and args.processes < 1:
            raise ValueError("--processes must be at least 1")
        processes = args.processes or (processes_in(accelerate_config) if accelerate_config else settings.processes)
        from engine.config import check_processes

        check_processes(config, processes)
    except ValueError as exc:
        return _fail(str(exc))
    if processes == 1 and not accelerate_config:
        worker = [sys.executable, *WORKER, str(args.run_dir)]
        sys.stdout.flush()
        os.execv(sys.executable, worker)
    threads = config.threads
    if threads is None and not accelerate_config:
        from engine.distributed.ranks import default_threads

        threads = default_threads(processes)
    command = launch_command(
        args.run_dir,
        processes,
        accelerate_config,
        args.machine_rank,
        threads,
        explicit_processes=args.processes is not None,
        main_process_ip=args.main_process_ip,
        main_process_port=args.main_process_port,
    )
    return supervise(args.run_dir, command, args.machine_rank)


if __name__ == "__main__":
    sys.exit(main())
