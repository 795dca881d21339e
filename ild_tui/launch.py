"""Starting the engine process from the CLI, which itself never imports torch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from engine.runlog.layout import RunDir
from engine.runlog.safefile import open_regular
from engine.runlog.tailer import EventTailer

ENGINE = [sys.executable, "-m", "engine.worker"]
# Starts a run's engine: itself (exec) for one process, `accelerate launch` for several (and then
# records a rank's death as run_failed).
SUPERVISOR = [sys.executable, "-m", "engine.distributed.supervise"]


def launch_args(processes: int | None = None, accelerate_config: str | None = None) -> list[str]:
    """What ``ild resume --processes`` passes on (None: what the run's config says)."""
    args = ["--processes", str(processes)] if processes is not None else []
    return [*args, *(["--accelerate-config", accelerate_config] if accelerate_config else [])]


class LaunchError(Exception):
    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def engine_env() -> dict:
    """The environment every engine process gets (quiet tokenizers and warnings, passive OpenMP)."""
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("PYTHONWARNINGS", "ignore")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see engine/worker.py
    return env


def create_run(run_dir: Path, config: dict, here: bool = True) -> Path:
    """Validate the config in the engine and make the run directory, or raise with its one line.

    ``here=False``: the run is for another host (``--create-only``), so a GPU it names need not be here.
    """
    payload = config if here else {**config, "_defer_device_check": True}
    result = subprocess.run(
        [*ENGINE, str(run_dir), "--create"],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        env=engine_env(),
        preexec_fn=ignore_hangup,
    )
    if result.returncode != 0:
        raise LaunchError(_engine_message(result.stderr, "engine failed"), 2 if result.returncode == 2 else 1)
    return run_dir


def _ild_line(text: str) -> str | None:
    """The engine's own one-line error (its last ``ild: ...`` line), or None."""
    mine = [line for line in text.splitlines() if line.startswith("ild: ")]
    return mine[-1].removeprefix("ild: ") if mine else None


def _engine_message(stderr: str, fallback: str) -> str:
    """The engine's own one-line error, else its last line."""
    return _ild_line(stderr) or (stderr.strip().splitlines() or [fallback])[-1]


def _open_out(rd: RunDir):
    """``engine.out`` for appending, its owner's only like the rest of the run directory.

    Raises ``LaunchError`` (one line) for a run directory holding a link or a FIFO where ild writes:
    no engine starts there (``RunDir.problem``).
    """
    problem = rd.problem()
    if problem:
        raise LaunchError(f"refusing to start an engine: {problem}", 2)
    return os.fdopen(open_regular(rd.out_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND), "ab")


@dataclass
class EngineExit:
    run_dir: Path
    code: int
    message: str | None  # the engine's own one-line reason (``ild: ...`` on its stderr), if it gave one
    signal: str | None = None  # a SIGTERM this process received and passed on (the engine stopped for it)


def run_foreground(run_dir: Path, on_event, poll: float = 0.2, launch: list[str] = ()) -> EngineExit:
    """Run the engine as a child and feed every event to ``on_event``; return how it ended.

    Ctrl-C is passed on to the engine, which records it; the run resumes later from its
    last checkpoint.
    """
    rd = RunDir(run_dir)
    log = _open_out(rd)
    start = log.tell()  # what this engine writes, not an earlier one's
    child = subprocess.Popen(
        [*SUPERVISOR, str(run_dir), *launch],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        env=engine_env(),
        preexec_fn=ignore_hangup,  # the engine outlives a foreground `ild run`/`ild study`'s terminal
    )
    tailer = EventTailer(rd.events_file)
    received: list[str] = []
    # SIGTERM (a scheduler's preemption, `kill`) is the engine's to handle: it stops at its next
    # safe point with a checkpoint, and this process follows it to the end.
    try:
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: _pass_on(child, signum, received))
    except ValueError:  # not the main thread: signals are not ours to take
        previous = None
    try:
        while True:
            for event in tailer.poll():
                on_event(event)
            if child.poll() is not None:
                for event in tailer.poll():
                    on_event(event)
                said = _said(rd.out_file, start) if child.returncode else None
                return EngineExit(run_dir, child.returncode, said, received[0] if received else None)
            time.sleep(poll)
    except KeyboardInterrupt:
        child.send_signal(signal.SIGINT)
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
        for event in tailer.poll():
            on_event(event)
        return EngineExit(run_dir, 130, None)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        log.close()


def _pass_on(child: subprocess.Popen, signum: int, received: list[str]) -> None:
    received.append(signal.Signals(signum).name)
    child.send_signal(signum)


def _said(path: Path, start: int) -> str | None:
    """The engine's ``ild: ...`` line among what it wrote to ``path`` from ``start`` on."""
    try:
        with os.fdopen(open_regular(path), "rb") as f:
            f.seek(start)
            text = f.read(1 << 20).decode("utf-8", "replace")
    except OSError:
        return None
    return _ild_line(text)


def ignore_hangup() -> None:
    """A ``preexec_fn``: the child ignores SIGHUP from its first instruction."""
    # Runs in the child before exec; an ignored signal stays ignored across exec, so the engine
    # is immune from its first instruction, not only once its own handler is installed.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


_started: list[subprocess.Popen] = []  # detached processes this process started and has not reaped yet


def reap_started() -> None:
    """Collect the exit status of started engines that have ended (no zombies while a dashboard runs)."""
    for child in list(_started):
        if child.poll() is not None:
            _started.remove(child)


def spawn_detached(command: list[str], log) -> subprocess.Popen:
    """Start ``command`` in its own session, writing to the open file ``log``: closing the terminal,
    SIGHUP or an SSH drop leave it running. An engine (``start_detached``) and a whole study
    (``ild study --detach``) start this way."""
    child = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        env=engine_env(),
        start_new_session=True,
        close_fds=True,
        preexec_fn=ignore_hangup,
    )
    _started.append(child)
    return child


def start_detached(run_dir: Path, launch: list[str] = ()) -> int:
    """Start a run's engine in its own session (see ``spawn_detached``); its pid."""
    with _open_out(RunDir(run_dir)) as log:
        return spawn_detached([*SUPERVISOR, str(run_dir), *launch], log).pid


def run_engine_module(module: str, args: list[str]) -> int:
    """``python -m MODULE ARGS`` of the engine (eval, paired, suite check) in the foreground; its exit code."""
    return subprocess.call([ENGINE[0], "-m", module, *args], env=engine_env())


def export_run(run_dir: Path, out: Path, force: bool = False, from_checkpoint: int | None = None) -> None:
    command = [*ENGINE, str(run_dir), "--export", "--out", str(out), *(["--force"] if force else [])]
    if from_checkpoint is not None:
        command += ["--from-checkpoint", str(from_checkpoint)]
    result = subprocess.run(command, capture_output=True, text=True, env=engine_env())
    if result.returncode != 0:
        raise LaunchError(_engine_message(result.stderr, "export failed"), result.returncode)
    for line in result.stderr.splitlines():  # the engine's notes and warnings (a Gemma student's runtimes)
        if line.startswith("ild: "):
            print(line, file=sys.stderr)
