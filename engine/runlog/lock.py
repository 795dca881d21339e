"""Engine liveness and single ownership of a run, through ``flock``.

A lock *file's existence* says nothing (aim's "stuck in progress" runs after
a SIGKILL came from trusting one). An ``flock`` is held by an open file
description and the kernel drops it when the process dies, however it dies,
so "is it held?" is the liveness test, with no stale state to clean up. The
file is never deleted: deleting a lock file lets two processes lock two
different inodes.

Caveats: a child that inherited the descriptor by ``fork`` (not ``exec``:
the fd is close-on-exec) keeps the lock alive after the engine dies. On NFS,
Linux emulates ``flock`` with POSIX byte-range locks, which work across hosts.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from engine.runlog._fileio import FILE_MODE
from engine.runlog.layout import RunDir
from engine.runlog.safefile import open_regular, read_regular

__all__ = ["EngineLock", "LockHeld", "is_alive", "read_holder"]


class LockHeld(RuntimeError):
    """Another live process owns this run directory."""

    def __init__(self, run_dir: Path, holder: dict | None) -> None:
        self.run_dir = run_dir
        self.holder = holder
        who = ""
        if holder:
            who = f" by pid {holder.get('pid')} on {holder.get('host')}"
            if isinstance(holder.get("started"), (int, float)):
                who += " since " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["started"]))
        super().__init__(f"an engine is already running in {run_dir}{who}")


def read_holder(run_dir: str | os.PathLike, lock_file: Path | None = None) -> dict | None:
    """What the last (or current) engine wrote into ``engine.lock`` (or ``lock_file``), for humans.

    Only meaningful while ``is_alive`` is true; afterwards it names the
    engine that last held the lock.
    """
    try:
        obj = json.loads(read_regular(lock_file or RunDir(run_dir).lock_file, 4096))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


class EngineLock:
    """Exclusive ownership of a run directory for the engine's lifetime.

    ``lock_file``: another file of the directory to lock instead of ``engine.lock`` (a study's
    ``study.lock``: one process runs a study at a time)."""

    def __init__(self, run_dir: str | os.PathLike, lock_file: Path | None = None) -> None:
        self.run_dir = RunDir(run_dir)
        self.lock_file = lock_file or self.run_dir.lock_file
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, timeout: float = 0.5) -> EngineLock:
        """Take the lock or raise ``LockHeld``.

        Retries for up to ``timeout`` seconds only because ``is_alive`` in a
        dashboard briefly holds a shared lock: an engine starting at that
        instant should not fail. A real engine holds the lock far longer.
        """
        if self._fd is not None:
            return self
        fd = open_regular(self.lock_file, os.O_RDWR | os.O_CREAT, FILE_MODE)  # never through a link
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise LockHeld(self.run_dir.path, read_holder(self.run_dir, self.lock_file)) from None
                time.sleep(0.02)
            except BaseException:
                os.close(fd)
                raise
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Give the lock up (closing the descriptor releases it)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> EngineLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def is_alive(run_dir: str | os.PathLike, lock_file: Path | None = None) -> bool:
    """True while an engine holds ``engine.lock`` (or ``lock_file``); False if none does or no file.

    Takes a non-blocking *shared* lock on its own descriptor and releases it at
    once: getting it proves nobody holds the exclusive one.
    """
    try:
        fd = open_regular(lock_file or RunDir(run_dir).lock_file)
    except OSError:  # missing, or a link or FIFO no engine of ild would lock
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
