"""The dashboard's terminal: refuse to start without one, and end when it goes away.

Over SSH the terminal disappears with the connection. The kernel then sends SIGHUP and hangs the
tty up: reads return end-of-file at once and terminal ioctls fail with EIO. Textual's input thread
takes an end-of-file for a pause in piped input and polls again, so a dashboard whose terminal has
gone spins a core forever; SIGHUP may never come (it can be ignored, or go to another process
group). ``watch`` ends the app on either sign, and meanwhile reaps engine processes this process
started (``launch.start_detached``), which would otherwise stay zombies for as long as it lives.
"""

from __future__ import annotations

import os
import signal
import sys
import termios
import threading
from collections.abc import Callable

CHECK_S = 0.5
EXIT_GRACE_S = 5.0  # after asking the app to exit, how long a terminal-less shutdown may take


def missing() -> str | None:
    """Why the dashboard cannot open here (no terminal on stdin or stdout), or None."""
    if sys.stdin.isatty() and sys.stdout.isatty():
        return None
    which = [name for name, f in (("stdin", sys.stdin), ("stdout", sys.stdout)) if not f.isatty()]
    return f"the dashboard needs a terminal ({' and '.join(which)} {'is' if len(which) == 1 else 'are'} not one)"


def is_gone(fd: int) -> bool:
    """True when ``fd`` is no longer a working terminal (hung up, closed)."""
    try:
        termios.tcgetattr(fd)
    except (termios.error, OSError, ValueError):
        return True
    return False


class Watch:
    """While the app runs: end it on SIGHUP or a hung-up terminal; reap finished child engines."""

    def __init__(self, app, fd: int, reap: Callable[[], None] = lambda: None) -> None:
        self.app = app
        self.fd = fd
        self.reap = reap
        self.hangup = threading.Event()
        self.done = threading.Event()
        self.why: str | None = None
        self._previous = None
        self._thread = threading.Thread(target=self._run, name="ild-terminal-watch", daemon=True)

    def __enter__(self) -> Watch:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGHUP, lambda signum, frame: self.hangup.set())
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self._thread.join(timeout=2)
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
        self.reap()

    def _run(self) -> None:
        while not self.done.wait(CHECK_S):
            self.reap()
            if self.hangup.is_set() or is_gone(self.fd):
                self.why = "hangup" if self.hangup.is_set() else "terminal gone"
                break
        else:
            return
        # call_from_thread waits for the app's loop; if that loop is stuck, this thread must not be.
        threading.Thread(target=self._ask_exit, daemon=True).start()
        # Restoring a terminal that is gone can block or fail; the run itself is not ours to stop.
        if not self.done.wait(EXIT_GRACE_S):
            self.reap()
            os._exit(129)

    def _ask_exit(self) -> None:
        try:
            self.app.call_from_thread(self.app.exit)
        except Exception:  # the app is already shutting down
            pass
