"""How many of the student's lowest layers are still the teacher's own.

Below the first layer that a removal or a healing touched, the student computes exactly what the
teacher computes: the same modules' weights on the same inputs. The teacher cache runs the teacher
over every training block anyway (for the final hidden state the KL needs), so the output of the
last shared layer can be kept from that pass, and the student's frozen prefix below the trainable
layers starts there instead of at the embeddings. In the first healing of a run the whole prefix
comes free; later ones run only the layers between the first changed one and the trainable ones.

Shared means bit-identical, never approximately: the same original index at the same position, the
same module classes, equal parameters and buffers, the same device and dtype. Anything not
comparable here (weights offloaded to disk or the meta device) counts as not shared.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.models.adapters import adapter_for


def _same_module(a: nn.Module, b: nn.Module) -> bool:
    mods_a, mods_b = list(a.modules()), list(b.modules())
    if len(mods_a) != len(mods_b) or any(type(x) is not type(y) for x, y in zip(mods_a, mods_b)):
        return False
    tensors_a = [*a.named_parameters(), *a.named_buffers()]
    tensors_b = [*b.named_parameters(), *b.named_buffers()]
    if [n for n, _ in tensors_a] != [n for n, _ in tensors_b]:
        return False
    for (_, x), (_, y) in zip(tensors_a, tensors_b):
        if x.device.type == "meta" or x.device != y.device or x.dtype != y.dtype or x.shape != y.shape:
            return False
        if not torch.equal(x, y):
            return False
    return True


@torch.no_grad()
def shared_depth(student: nn.Module, teacher: nn.Module, limit: int) -> int:
    """The number (at most ``limit``) of the student's lowest layers that are the teacher's, unchanged,
    with the embeddings: 0 when the embeddings differ or the two are not comparable."""
    s, t = adapter_for(student), adapter_for(teacher)
    try:
        if not _same_module(s.embed_tokens, t.embed_tokens) or not _same_module(s.rotary_emb, t.rotary_emb):
            return 0
        mapping = s.layer_map()
        depth = 0
        for j in range(min(limit, s.num_layers, t.num_layers)):
            if mapping[j] != j or s.layer_type(j) != t.layer_type(j) or not _same_module(s.layers[j], t.layers[j]):
                break
            depth += 1
        return depth
    except (RuntimeError, NotImplementedError):  # weights that cannot be read here
        return 0
