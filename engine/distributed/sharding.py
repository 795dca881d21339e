"""Healing with the trainable layers sharded over the ranks (``distributed.heal=fsdp``): torch FSDP2.

What healing adds to memory is what trains: the trainable layers' gradients and their AdamW state
(twice their weights again, in float32). FSDP2 (``fully_shard``, the engine behind accelerate's
``fsdp_version: 2``) splits exactly that over the ranks: each trainable decoder layer is replaced,
for the iteration, by a sharded copy (its weights, gradients and optimiser state 1/N on each rank,
gathered for its forward and backward, gradients reduce-scattered); the frozen layers around it run
as they are. After the iteration the trained weights are gathered back into the model's own layers,
so scoring, checkpoints and export see a plain model again.

Checkpoints hold full tensors (gathered), in the layout one process writes: a partial checkpoint
written by N sharded ranks resumes on M ranks, sharded or not, and the other way round.
Works over gloo on the CPU (tested) and NCCL on GPUs.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .ranks import Ranks


def _dtensor_type():
    from torch.distributed.tensor import DTensor

    return DTensor


def full(value):
    """A plain tensor of ``value``, gathered from its shards if it is sharded (a collective)."""
    if isinstance(value, _dtensor_type()):
        return value.full_tensor()
    return value


def put_full(param: nn.Parameter, value: torch.Tensor) -> None:
    """Write a full tensor into a parameter, sharded or not (same value on every rank)."""
    with torch.no_grad():
        if isinstance(param, _dtensor_type()):
            from torch.distributed.tensor import distribute_tensor

            param.copy_(distribute_tensor(value.to(param.dtype), param.device_mesh, param.placements))
        else:
            param.copy_(value)


class ShardedLayers:
    """The trainable decoder layers of ``model`` swapped for sharded copies, until ``restore``."""

    def __init__(self, model: nn.Module, trainable: list[int], ranks: Ranks):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        from engine.models.adapters import adapter_for

        self.layers = adapter_for(model).layers
        device = next(model.parameters()).device
        mesh = init_device_mesh(device.type, (ranks.size,))
        self.originals: dict[int, nn.Module] = {}
        for j in trainable:
            original = self.layers[j]
            shard = copy.deepcopy(original)
            for p in shard.parameters():
                p.requires_grad_(True)
            fully_shard(shard, mesh=mesh)
            self.originals[j] = original
            self.layers[j] = shard

    def parameters(self) -> list[nn.Parameter]:
        return [p for j in sorted(self.originals) for p in self.layers[j].parameters()]

    def restore(self) -> None:
        """The trained weights, gathered, into the model's own layers; the copies dropped."""
        for j, original in self.originals.items():
            shard = self.layers[j]
            with torch.no_grad():
                for (_, mine), (_, theirs) in zip(original.named_parameters(), shard.named_parameters(), strict=True):
                    mine.copy_(full(theirs.detach()))
            self.layers[j] = original
        self.originals.clear()


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """``optimizer.state_dict()`` with every sharded state tensor gathered: what one process saves."""
    saved = optimizer.state_dict()
    saved["state"] = {i: {k: full(v) for k, v in state.items()} for i, state in saved["state"].items()}
    return saved


def shard_optimizer_state(saved: dict, params: list[nn.Parameter]) -> dict:
    """A full optimizer state (any writer) laid out like ``params`` (sharded ones sharded)."""
    from torch.distributed.tensor import distribute_tensor

    DTensor = _dtensor_type()
    out = {**saved, "state": {}}
    for i, state in saved["state"].items():
        p = params[int(i)]
        if isinstance(p, DTensor):
            state = {
                k: distribute_tensor(v.to(p.device), p.device_mesh, p.placements)
                if torch.is_tensor(v) and v.shape == p.shape
                else v
                for k, v in state.items()
            }
        out["state"][i] = state
    return out
