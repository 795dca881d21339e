"""Engine lock: held = alive, and the kernel frees it on SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine.runlog.layout import create
from engine.runlog.lock import EngineLock, LockHeld, is_alive, read_holder

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}

HOLDER = textwrap.dedent(
    """
    import sys, time
    from engine.runlog.lock import EngineLock
    EngineLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(60)
    """
)


def test_no_lock_file_means_not_alive(tmp_path):
    rd = create(tmp_path / "r")
    assert not rd.lock_file.exists()
    assert is_alive(rd) is False
    assert is_alive(tmp_path / "missing") is False


def test_in_process_acquire_release(tmp_path):
    rd = create(tmp_path / "r")
    with EngineLock(rd) as lock:
        assert lock.held and is_alive(rd)
        holder = read_holder(rd)
        assert holder["pid"] == os.getpid() and holder["host"]
        with pytest.raises(LockHeld):
            EngineLock(rd).acquire(timeout=0)
    assert not is_alive(rd)
    assert rd.lock_file.exists()  # never deleted
    EngineLock(rd).acquire(timeout=0).release()


def test_subprocess_holder_then_sigkill(tmp_path):
    rd = create(tmp_path / "r")
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(rd.path)], stdout=subprocess.PIPE, env=ENV)
    try:
        assert proc.stdout.readline().strip() == b"locked"
        assert is_alive(rd) is True
        with pytest.raises(LockHeld) as info:
            EngineLock(rd).acquire(timeout=0.1)
        assert str(proc.pid) in str(info.value)
        assert info.value.holder["pid"] == proc.pid
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert is_alive(rd) is False
    with EngineLock(rd):
        assert is_alive(rd)
