"""Which layers heal after a removal; everything else stays frozen.

Embeddings, the final norm and the LM head are frozen unless asked for, and tied embeddings are
never trained by accident: training the head of a tied model would move the input embedding too,
so ``train_head`` refuses a tied model unless ``untie_head`` is set (the runner unties it first).
"""

from __future__ import annotations

from torch import nn

from engine.config import TrainableSettings
from engine.models.adapters import adapter_for
from engine.models.surgery import head_is_tied


def gaps(layer_map: list[int], teacher_layers: int) -> list[int]:
    """Gap positions in the current model: g means 'between current layers g-1 and g'."""
    out = []
    if layer_map and layer_map[0] > 0:
        out.append(0)
    for j in range(1, len(layer_map)):
        if layer_map[j] - layer_map[j - 1] > 1:
            out.append(j)
    if layer_map and layer_map[-1] < teacher_layers - 1:
        out.append(len(layer_map))
    return out


def newest_gap(layer_map: list[int], removed_original: int) -> int:
    """Where the layer just removed used to sit, as a gap position in the current model."""
    return sum(1 for o in layer_map if o < removed_original)


def choose_trainable(
    layer_map: list[int], teacher_layers: int, removed_original: int | list[int], config: TrainableSettings
) -> list[int]:
    """Current indices of the layers to train; ``removed_original``: the layer(s) this healing
    repairs (adjacent trains the ``k`` layers on each side of each of their gaps: k = 1 is the
    paper's pair of neighbours)."""
    n = len(layer_map)
    if config.choice == "all":
        return list(range(n))
    if config.choice == "last":
        return list(range(max(0, n - config.k), n))
    removed = [removed_original] if isinstance(removed_original, int) else list(removed_original)
    centres = (
        [newest_gap(layer_map, o) for o in removed] if config.choice == "adjacent" else gaps(layer_map, teacher_layers)
    )
    radius = config.k
    chosen = set()
    for g in centres:
        for j in range(g - radius, g + radius):
            if 0 <= j < n:
                chosen.add(j)
    return sorted(chosen)


def freeze_except(model: nn.Module, trainable: list[int], config: TrainableSettings) -> list[nn.Parameter]:
    """Set requires_grad so that exactly the chosen parts train; return those parameters."""
    adapter = adapter_for(model)
    for p in model.parameters():
        p.requires_grad_(False)
    params: list[nn.Parameter] = []
    for j in trainable:
        for p in adapter.layers[j].parameters():
            p.requires_grad_(True)
            params.append(p)
    if config.train_norm:
        for p in adapter.norm.parameters():
            p.requires_grad_(True)
            params.append(p)
    if config.train_head:
        tied = head_is_tied(model)
        if tied and config.train_head == "untied":  # the head trains only where it is the student's own
            return params
        if tied and not config.untie_head:
            raise ValueError(
                "the LM head is tied to the input embedding: training it moves the embedding too "
                "(heal.untie_head gives the student its own head)"
            )
        for p in adapter.lm_head.parameters():
            p.requires_grad_(True)
            params.append(p)
    return params
