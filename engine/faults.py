"""Crash points for the fault tests, in the style of SQLite's crash tests.

``ILD_CRASH_AT=NAME[:N]`` makes the engine SIGKILL itself the N-th time (default: the first) it
passes the point NAME: a kill at an exact instruction that a random kill would rarely hit (between
writing a checkpoint's files and renaming them into place, in the middle of an export). Unset, a
point costs one environment lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "ILD_CRASH_AT"
POINTS = ("checkpoint", "checkpoint_write", "partial_checkpoint", "export", "export_write")
_passed: dict[str, int] = {}


def point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, nth = spec.partition(":")
    if target != name:
        return
    _passed[name] = _passed.get(name, 0) + 1
    if _passed[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
