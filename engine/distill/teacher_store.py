"""The teacher's hidden states on the distillation data, kept on disk across runs.

Every run of a study or of the healing ablation distils from the same teacher on the same blocks of
text, and recomputed the teacher's forward over them (on the embedded model, 65,536 tokens: about
200 of the 1,000 seconds a fixed-removal run takes on 2 CPU cores). The outputs depend only on the
teacher's weights, the token ids, the dtype and the device kind, so they are stored once under a key
made of exactly those and read back (memory-mapped) by every later run, resume included.

The weights enter the key through ``engine.digests.weights_digest`` (a strided sample of every
tensor: a 70B teacher is keyed in seconds), with the code that runs the teacher's layers and torch's
version. The store holds at most ``limit`` bytes: the entries used longest ago go first.
It lives in ``engine.digests.store_root()/teacher``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
import torch

from engine.digests import code_digest, tensor_digest, value_digest

FORMAT = 1  # part of every key: a change to what is stored must not read old entries
TEACHER_CODE = ("models/adapters.py", "models/cpu_linear.py")  # what runs the teacher's layers


class TeacherStore:
    """One folder an entry (named by the digest of its key), one file per stored array and a meta.json."""

    def __init__(self, root: Path, limit_bytes: int) -> None:
        self.root, self.limit = Path(root), limit_bytes
        self._used: int | None = None  # bytes on disk as last counted, plus what this process added since

    def entry(self, teacher: str, blocks: torch.Tensor, batch_size: int) -> StoreEntry:
        """Where the outputs of the teacher with ``weights_digest`` ``teacher`` on ``blocks``, run
        ``batch_size`` blocks at a time, live. The batching is part of the key because a GEMM's
        sums may be ordered differently for another number of rows: what is read back is bit for
        bit what this run would compute (and what the student's shared prefix computes)."""
        key = value_digest([FORMAT, teacher, tensor_digest(blocks), batch_size, code_digest(*TEACHER_CODE)])
        return StoreEntry(self, self.root / key)

    def used_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.root.glob("*/*.bin") if f.is_file())

    def added(self, nbytes: int, keep: Path) -> None:
        """``nbytes`` were just stored (in ``keep``): evict if the store may be over its limit. The
        count is kept between saves (a store of a run's stream batches holds thousands of entries,
        and counting them all at every save would cost more than the saves), and counted afresh
        before anything is dropped."""
        if self._used is None:
            self._used = self.used_bytes()
        else:
            self._used += nbytes
        if self._used > self.limit:
            self.evict(keep)

    def evict(self, keep: Path) -> None:
        """Drop whole entries, least recently used first, until the store fits its limit."""
        entries = sorted((d for d in self.root.iterdir() if d.is_dir() and d != keep), key=_last_used)
        used = self.used_bytes()
        for entry in entries:
            if used <= self.limit:
                break
            size = sum(f.stat().st_size for f in entry.glob("*.bin") if f.is_file())
            shutil.rmtree(entry, ignore_errors=True)
            used -= size
        self._used = used


def _last_used(entry: Path) -> float:
    try:
        return (entry / "meta.json").stat().st_mtime
    except OSError:
        return 0.0


class StoreEntry:
    def __init__(self, store: TeacherStore, path: Path) -> None:
        self.store, self.path = store, path

    def load(self, name: str, shape: tuple[int, ...]) -> np.memmap | None:
        """The stored array ``name`` of ``shape`` (float32), read-only, or None."""
        file = self.path / f"{name}.bin"
        try:
            meta = json.loads((self.path / "meta.json").read_text())
            if meta.get("arrays", {}).get(name) != list(shape):
                return None
            array = np.memmap(file, dtype=np.float32, mode="r", shape=tuple(shape))
        except (OSError, ValueError):
            return None
        os.utime(self.path / "meta.json")  # used now: evicted last
        return array

    def save(self, name: str, shape: tuple[int, ...], rows) -> None:
        """Write ``rows`` (an indexable of float32 rows, e.g. a BlockStore) as ``name``; a failure to
        store (a full disk, a store too small for it) costs the next run the computation, nothing else."""
        nbytes = int(np.prod(shape)) * 4
        if nbytes > self.store.limit:
            return
        tmp = self.path / f".{name}.{uuid.uuid4().hex}.tmp"
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            step = max(1, (64 << 20) // max(1, nbytes // shape[0]))  # copy in chunks of ~64 MiB
            # Plain writes, not a memory map: on a full disk a write fails with ENOSPC, where a store
            # into a mapped page that the file system cannot back kills the engine with SIGBUS.
            with open(tmp, "wb") as f:
                for start in range(0, shape[0], step):
                    f.write(np.ascontiguousarray(rows[start : start + step].float().numpy(), dtype=np.float32))
            if tmp.stat().st_size != nbytes:
                raise OSError(f"{tmp}: wrote {tmp.stat().st_size} of {nbytes} bytes")
            os.replace(tmp, self.path / f"{name}.bin")
            self._record(name, shape)
            self.store.added(nbytes, keep=self.path)
        except OSError:
            tmp.unlink(missing_ok=True)

    def _record(self, name: str, shape: tuple[int, ...]) -> None:
        meta_file = self.path / "meta.json"
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError):
            meta = {"format": FORMAT, "created": time.time(), "arrays": {}}
        meta["arrays"][name] = list(shape)
        tmp = self.path / f".meta.{uuid.uuid4().hex}.tmp"
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, meta_file)
