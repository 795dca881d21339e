"""Block-indexed tensor stores that stay in memory while small and spill to disk when large.

The teacher's outputs on the distillation data never change, and the student's frozen prefix
changes only once per iteration, so both are computed once and read back every step.
"""

from __future__ import annotations

import errno
import os
import uuid
from pathlib import Path

import numpy as np
import torch

# numpy has no bfloat16: such a store is kept as float32 on disk.
_ON_DISK = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.float32, torch.int32: np.int32}
_AS_TORCH = {np.float32: torch.float32, np.float16: torch.float16, np.int32: torch.int32}


class BlockStore:
    """``n`` blocks of shape ``shape``; RAM up to ``limit_bytes``, else a memory-mapped file."""

    def __init__(self, n: int, shape: tuple[int, ...], dtype: torch.dtype, spill_dir: Path | None, limit_bytes: int):
        self.n, self.shape, self.dtype = n, tuple(shape), dtype
        numel = n * int(np.prod(shape))
        nbytes = numel * torch.tensor([], dtype=dtype).element_size()
        self.path: Path | None = None
        if nbytes > limit_bytes and spill_dir is not None:
            spill_dir.mkdir(parents=True, exist_ok=True)
            self.path = spill_dir / f"{uuid.uuid4().hex}.bin"
            np_dtype = _ON_DISK[dtype]
            _allocate(self.path, numel * np.dtype(np_dtype).itemsize)
            self._array = np.memmap(self.path, dtype=np_dtype, mode="r+", shape=(n, *shape))
            self._tensor = None
        else:
            self._tensor = torch.empty((n, *shape), dtype=dtype)

    @classmethod
    def over(cls, array: np.ndarray) -> BlockStore:
        """A read-only store over an array kept elsewhere (the teacher store's): ``close`` leaves it."""
        store = cls.__new__(cls)
        store.n, store.shape, store.dtype = array.shape[0], tuple(array.shape[1:]), _AS_TORCH[array.dtype.type]
        store.path, store._array, store._tensor = None, array, None
        return store

    @property
    def on_disk(self) -> bool:
        return self.path is not None

    def __setitem__(self, index, value: torch.Tensor) -> None:
        value = value.detach().to("cpu")
        if self._tensor is not None:
            self._tensor[index] = value.to(self.dtype)
        else:
            self._array[index] = value.to(_AS_TORCH[self._array.dtype.type]).numpy()

    def __getitem__(self, index) -> torch.Tensor:
        if self._tensor is not None:
            return self._tensor[index]
        rows = self._array[index]
        # torch cannot share a read-only buffer: the stored teacher's rows are copied
        return torch.from_numpy(np.ascontiguousarray(rows) if rows.flags.writeable else np.array(rows))

    def close(self) -> None:
        if self.path is not None:
            del self._array
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            self.path = None


def _allocate(path: Path, nbytes: int) -> None:
    """Create ``path`` with ``nbytes`` of disk space really reserved, or raise ``OSError`` (ENOSPC).

    A memory-mapped file made by extending it is sparse: its pages get disk space only when first
    written, and a page the file system cannot back then kills the process with SIGBUS (no event, no
    last word). Reserving the space first turns a full disk into an ordinary error here.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.posix_fallocate(fd, 0, nbytes)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise OSError(exc.errno, exc.strerror, str(path)) from None  # says which file had no room
            os.ftruncate(fd, nbytes)  # a file system that cannot reserve: as before
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
