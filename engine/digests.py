"""Content digests for what the engine keeps across runs (the teacher store, the score cache): a
stored result is read back only under a key made of everything that decides it."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import torch

SAMPLE = 4096
ENGINE = Path(__file__).resolve().parent


def store_root() -> Path:
    """Where results kept across runs live: ``$ILD_STORE_DIR`` (the tests set it), else the user cache."""
    env = os.environ.get("ILD_STORE_DIR")
    if env:
        return Path(env)
    from engine.models.loading import cache_root

    return cache_root() / "store"


def weights_digest(model: torch.nn.Module) -> str:
    """A digest of the weights, their dtype and the device kind they compute on.

    Every tensor enters by its name, shape, dtype and a strided sample of its values (at most
    ``SAMPLE`` plus its last element), so a 70B model is keyed in seconds. A change that leaves every
    sampled value alone would go unnoticed; removing a layer renames the tensors above it, and
    training or fusing a linear map moves every value of the matrices it touches."""
    digest = hashlib.blake2b(digest_size=16)
    device = next(model.parameters()).device
    digest.update(f"device {device.type}".encode())
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        digest.update(f"{name} {tuple(tensor.shape)} {tensor.dtype}".encode())
        if flat.numel() == 0:
            continue
        stride = max(1, flat.numel() // SAMPLE)
        sample = torch.cat([flat[::stride][:SAMPLE], flat[-1:]]).to("cpu", torch.float64)
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()


def tensor_digest(tensor: torch.Tensor) -> str:
    values = tensor.detach().to("cpu").contiguous()
    head = f"{tuple(values.shape)} {values.dtype}".encode()
    return hashlib.blake2b(head + values.numpy().tobytes(), digest_size=16).hexdigest()


def value_digest(value) -> str:
    """A digest of anything JSON can write (sorted keys)."""
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


@functools.cache
def code_digest(*parts: str) -> str:
    """A digest of the engine's source files under ``parts`` (files or folders, relative to the
    package), and of torch's version: results computed by other code are not read back."""
    digest = hashlib.blake2b(f"torch {torch.__version__}".encode(), digest_size=16)
    for part in parts:
        path = ENGINE / part
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(str(file.relative_to(ENGINE)).encode() + file.read_bytes())
    return digest.hexdigest()
