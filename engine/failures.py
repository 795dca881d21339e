"""What a failure is called in ``run_failed`` and on the engine's last line: one line a person can act on.

A full disk surfaces in many disguises: ``OSError`` ENOSPC from a plain write, EFBIG under a file-size
limit, EDQUOT over a quota, and from ``torch.save`` a ``RuntimeError`` "[enforce fail at
inline_container.cc] unexpected pos 1472 vs 1360" (its zip writer's count of bytes written). All of
them read "disk full" here, with where it happened when that is known.
"""

from __future__ import annotations

import errno

DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
_TORCH_SHORT_WRITE = ("unexpected pos", "PytorchStreamWriter failed writing", "file write failed")
DISK_FULL_HINT = "free some space (or raise the file-size limit or quota), then `ild resume RUN` continues"


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def disk_full(exc: BaseException) -> str | None:
    """A one-line "disk full" description when ``exc`` (or what caused it) is one, else None."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
            where = f" writing {e.filename}" if e.filename else ""
            return f"disk full{where}: {e.strerror or errno.errorcode.get(e.errno, e.errno)}"
        if isinstance(e, RuntimeError) and any(s in str(e) for s in _TORCH_SHORT_WRITE):
            return "disk full: torch could not write the whole file (no space left, or a file-size limit)"
    return None


def describe(exc: BaseException) -> str:
    """``run_failed``'s error: "disk full: ..." for a full disk, else "Type: first line"."""
    full = disk_full(exc)
    if full:
        return full
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
