"""Where and in what precision the engine computes."""

from __future__ import annotations

import torch


def best_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    # bf16 halves memory on GPUs; CPU kernels for bf16 are slow and lossy, so CPU stays fp32.
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def device_problem(spec: str, check_available: bool = True) -> str | None:
    """Why ``--device spec`` cannot run here, in one line, or None.

    Checked before a run is created (and again before an engine starts on it): a misspelt device or a
    GPU that is not there would otherwise fail deep inside torch, after the run directory exists.
    ``check_available=False`` checks the spelling only (a run created on a login node for a GPU node).
    """
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError, TypeError):
        return f"--device '{spec}' is not a device: use cpu, cuda, cuda:N or mps"
    if device.type not in ("cpu", "cuda", "mps"):
        return f"--device '{spec}': ild runs on cpu, cuda (cuda:N) or mps"
    if not check_available:
        return None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            built = "" if torch.version.cuda else " (this torch is built without CUDA)"
            return f"--device {spec}: no CUDA GPU is visible on this host{built}; use --device cpu"
        if device.index is not None and device.index >= count:
            return f"--device {spec}: this host has {count} visible GPU(s), cuda:0 to cuda:{count - 1}"
    if device.type == "mps" and not torch.backends.mps.is_available():
        return f"--device {spec}: MPS (Apple GPU) is not available on this host"
    return None
