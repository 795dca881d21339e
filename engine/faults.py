"""Crash points for the fault tests, in the style of SQLite's crash tests.

``ILD_CRASH_AT=NAME[:N]`` makes the engine SIGKILL itself the N-th time (default: the first) it
passes the point NAME: a kill at an exact instruction that a random kill would rarely hit (between
writing a checkpoint's files and renaming them into place, in the middle of an export).
``ILD_FULL_DISK_AT=NAME:N:BYTES`` instead caps the size of every file the engine writes from then on
(RLIMIT_FSIZE; the worker ignores SIGXFSZ, so writes fail with EFBIG as on a full disk). Unset, a
point costs two environment lookups.
"""

from __future__ import annotations

import os
import resource
import signal

CRASH_ENV = "ILD_CRASH_AT"
FULL_DISK_ENV = "ILD_FULL_DISK_AT"
POINTS = ("checkpoint", "checkpoint_write", "partial_checkpoint", "export", "export_write")
_passed: dict[str, int] = {}


def point(name: str) -> None:
    crash, full = os.environ.get(CRASH_ENV), os.environ.get(FULL_DISK_ENV)
    if not crash and not full:
        return
    _passed[name] = _passed.get(name, 0) + 1
    if crash:
        target, _, nth = crash.partition(":")
        if target == name and _passed[name] == int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)
    if full:
        target, nth, limit = full.split(":")
        if target == name and _passed[name] == int(nth):
            resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
