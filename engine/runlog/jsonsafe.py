"""Strict JSON for the run directory.

Python's ``json`` writes ``NaN`` and ``Infinity`` by default, which are not
JSON: other readers (jq, browsers, Rust's serde) reject the whole line. A
diverging loss is exactly when someone needs to read the log, so non-finite
floats become ``null`` instead. Objects JSON cannot represent raise a
``TypeError`` that names where in the payload they sit, because the default
message ("Object of type Tensor is not JSON serializable") does not say which
of forty fields was the culprit.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["dumps", "encode_line", "printable", "sanitize"]


def printable(text: str) -> str:
    """``text`` with every character a terminal would act on shown escaped instead (``\\x1b``).

    A run name, a model path or an error message comes from a run directory that may have been
    copied from anyone; printed raw, an escape sequence in it would retitle, clear or rewrite the
    user's terminal. Letters of any script stay as they are.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def sanitize(obj: Any, _path: str = "$", _active: set[int] | None = None) -> Any:
    """Return a copy of ``obj`` that ``json.dumps(allow_nan=False)`` accepts.

    Non-finite floats become ``None``; tuples become lists; anything that is
    not a str/int/float/bool/None/list/tuple/dict raises ``TypeError`` naming
    its path (for example ``$.scores.3``).
    """
    if obj is None or isinstance(obj, (str, bool, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (dict, list, tuple)):
        active = _active if _active is not None else set()
        if id(obj) in active:
            raise ValueError(f"circular reference at {_path}")
        active.add(id(obj))
        try:
            if isinstance(obj, dict):
                out = {}
                for k, v in obj.items():
                    if not isinstance(k, (str, int, float, bool)) and k is not None:
                        raise TypeError(f"JSON object key at {_path} has type {type(k).__name__}; use str or int keys")
                    out[k] = sanitize(v, f"{_path}.{k}", active)
                return out
            return [sanitize(v, f"{_path}[{i}]", active) for i, v in enumerate(obj)]
        finally:
            active.discard(id(obj))
    raise TypeError(
        f"value at {_path} has type {type(obj).__module__}.{type(obj).__qualname__}, "
        "which is not JSON serialisable; convert it to a plain number, str, list or dict "
        "(e.g. tensor.item() / tensor.tolist())"
    )


def dumps(obj: Any) -> tuple[Any, str]:
    """Serialise ``obj`` as one compact line of strict JSON.

    Returns ``(clean_obj, text)`` where ``clean_obj`` is what the text
    encodes, so a caller can hand back exactly what was written. The common
    case (already clean) takes the C fast path and walks nothing.
    """
    try:
        return obj, json.dumps(obj, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except (ValueError, TypeError):
        clean = sanitize(obj)
        return clean, json.dumps(clean, allow_nan=False, ensure_ascii=False, separators=(",", ":"))


def encode_line(text: str) -> bytes:
    """UTF-8 bytes of one JSON line plus ``\\n``.

    A lone surrogate (possible in str from broken decoders) cannot be UTF-8
    encoded; fall back to ASCII escapes for that line rather than fail.
    """
    try:
        return text.encode("utf-8") + b"\n"
    except UnicodeEncodeError:
        return json.dumps(json.loads(text), ensure_ascii=True, separators=(",", ":")).encode("ascii") + b"\n"
