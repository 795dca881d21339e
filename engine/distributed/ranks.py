"""The processes of one run: who is who, the collectives they share, and their threads and devices.

A run started by ``accelerate launch`` (``ild run --processes N``) has N engine processes, the
*ranks*. They run the same recipe in lockstep; rank 0 alone writes the run directory. Everything
they exchange goes through accelerate's object collectives (``gather_object``,
``broadcast_object_list``) over the process group accelerate's ``PartialState`` sets up (gloo on
CPU, NCCL on GPUs), with a timeout (``distributed.timeout_s``) so a collective whose peer is stuck
fails instead of hanging.

A single process is a ``Ranks`` of size 1: every collective is then the identity and nothing of
torch.distributed is touched.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from dataclasses import dataclass, field
from datetime import timedelta


class DistributedError(ValueError):
    """A distributed setting that cannot work here; one line for the user."""


@dataclass
class Ranks:
    size: int = 1
    rank: int = 0
    local_rank: int = 0
    local_size: int = 1
    # Payload of the object collectives, pickled bytes this rank sent (bench/scale.py reports it).
    sent_bytes: int = field(default=0, compare=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    # --- collectives (every rank must call them in the same order) --------------------------------
    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        if self.size == 1:
            return [obj]
        from accelerate.utils import gather_object

        self.sent_bytes += len(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
        # gather_object concatenates lists: one element per rank.
        return list(gather_object([obj]))

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if self.size == 1:
            return obj
        from accelerate.utils import broadcast_object_list

        if self.is_main:
            self.sent_bytes += len(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
        box = [obj if self.is_main else None]
        broadcast_object_list(box, from_process=0)
        return box[0]

    def barrier(self) -> None:
        if self.size > 1:
            from accelerate import PartialState

            PartialState().wait_for_everyone()

    @contextlib.contextmanager
    def main_first(self):
        """Rank 0 runs the block first (downloads, GGUF dequantisation, caches), then the others."""
        if self.size == 1:
            yield
            return
        from accelerate import PartialState

        with PartialState().main_process_first():
            yield

    def reduce_mean(self, tensor):
        """The mean of ``tensor`` over the ranks (an all-reduce; the tensor's own device)."""
        if self.size == 1:
            return tensor
        from accelerate.utils import reduce

        return reduce(tensor, reduction="mean")


SINGLE = Ranks()


def launched_size() -> int:
    """How many processes the launcher started (1 when started plainly)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def from_environment(cpu: bool, timeout_s: float) -> Ranks:
    """The ranks of this run: join the launcher's process group when there is one."""
    if launched_size() == 1:
        return Ranks()
    from accelerate import PartialState

    state = PartialState(cpu=cpu, timeout=timedelta(seconds=timeout_s))
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", state.num_processes))
    return Ranks(
        size=state.num_processes, rank=state.process_index, local_rank=state.local_process_index, local_size=local_size
    )


def available_cores() -> int:
    """Cores this process may run on (its affinity: taskset, cgroups, SLURM's binding)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads(local_processes: int, cores: int | None = None) -> int | None:
    """One process: None (torch's own choice). N processes on one host: the cores shared out, since
    oversubscribed threads cost far more than they bring (two 2-thread processes on 2 cores ran ~3x
    slower each, not 2x)."""
    if local_processes <= 1:
        return None
    return max(1, (cores or available_cores()) // local_processes)


def apply_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)
        # Inter-op threads only serve independent ops; one keeps the process within its share.
        with contextlib.suppress(RuntimeError):  # allowed only before the first parallel work
            torch.set_num_interop_threads(1)


def resolve_device(requested: str | None, ranks: Ranks, gpus_per_process: int = 1):
    """The torch device of this rank's model (the first of its GPUs when it spans several).

    One process: the requested device or the best there is. Several: each takes its own GPU(s) in
    local-rank order (``cuda:local_rank`` with one GPU a process), or the CPU.
    """
    import torch

    from engine.models.device import best_device

    if not ranks.distributed and gpus_per_process == 1:
        return torch.device(requested) if requested else best_device()
    kind = torch.device(requested).type if requested else best_device().type
    if requested and requested.startswith("cuda:") and ranks.distributed:
        raise DistributedError(
            f"--device {requested} names one GPU, but every process takes its own "
            "(cuda:LOCAL_RANK); choose the GPUs with CUDA_VISIBLE_DEVICES"
        )
    if kind != "cuda":
        if gpus_per_process > 1:
            raise DistributedError("distributed.gpus_per_process > 1 places a model across GPUs; there are none here")
        return torch.device(kind)
    first = ranks.local_rank * gpus_per_process
    needed = (ranks.local_rank + 1) * gpus_per_process
    if torch.cuda.device_count() < needed:
        raise DistributedError(
            f"{ranks.local_size} processes x {gpus_per_process} GPU(s) each need {ranks.local_size * gpus_per_process} "
            f"GPUs on this host; {torch.cuda.device_count()} are visible"
        )
    torch.cuda.set_device(first)
    return torch.device("cuda", first)


def gpus_of(device, gpus_per_process: int) -> list[int]:
    """The GPU indices a rank's model is spread over (its rank group's GPUs)."""
    if getattr(device, "type", None) != "cuda":
        return []
    first = device.index or 0
    return list(range(first, first + gpus_per_process))
