"""Which tensors a checkpoint holds, and how they go back into a student.

A checkpoint keeps only the modules that differ from the teacher's, each named by its group:
``layer.<original index>`` (a decoder layer), ``head`` (an untied LM head) or ``norm``; a tensor is
``<group>.<parameter name>``. Naming layers by their original index lets a student whose other
layers were removed since take them back.
"""

from __future__ import annotations

import torch

from engine.checkpoint_files import CheckpointError
from engine.models.adapters import adapter_for


def module_tensors(model, groups: list[str]) -> dict[str, torch.Tensor]:
    """Tensors of the named groups: ``layer.<original>`` (a decoder layer) or ``head``, ``norm``."""
    adapter = adapter_for(model)
    mapping = adapter.layer_map()
    out = {}
    for group in groups:
        module = _module(adapter, mapping, group)
        if module is None:
            continue
        for pname, p in module.named_parameters():
            out[f"{group}.{pname}"] = p.detach().to("cpu").contiguous()
    return out


def load_module_tensors(model, tensors: dict[str, torch.Tensor]) -> None:
    """Copy saved tensors into a student whose layers were already removed."""
    from engine.models.surgery import head_is_tied, untie_head

    adapter = adapter_for(model)
    mapping = adapter.layer_map()
    if any(key.startswith("head.") for key in tensors) and head_is_tied(model):
        untie_head(model)
    with torch.no_grad():
        for key, value in tensors.items():
            group, name = _split_key(key)
            module = _module(adapter, mapping, group)
            if module is None:
                raise CheckpointError(f"checkpoint tensor {key} names a layer the student does not have")
            params = dict(module.named_parameters())
            if name not in params or params[name].shape != value.shape:
                raise CheckpointError(f"checkpoint tensor {key} does not fit the student")
            params[name].copy_(value)


def _split_key(key: str) -> tuple[str, str]:
    head, _, rest = key.partition(".")
    if head == "layer":
        index, _, name = rest.partition(".")
        return f"layer.{index}", name
    if head in ("head", "norm"):
        return head, rest
    # Format 1 wrote "<original>.<parameter>" for layers.
    return f"layer.{head}", rest


def _module(adapter, mapping: list[int], group: str):
    if group == "head":
        return adapter.lm_head
    if group == "norm":
        return adapter.norm
    original = int(group.split(".", 1)[1])
    return adapter.layers[mapping.index(original)] if original in mapping else None


def layer_group(original: int) -> str:
    return f"layer.{original}"
