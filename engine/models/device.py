"""Where and in what precision the engine computes."""

from __future__ import annotations

import torch


def best_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    # bf16 halves memory on GPUs; CPU kernels for bf16 are slow and lossy, so CPU stays fp32.
    return torch.bfloat16 if device.type == "cuda" else torch.float32
