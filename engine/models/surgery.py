"""Removing decoder layers in place, named by their original (teacher) index.

The current-to-original map lives on the config as ``ild_layer_map`` so it travels with every
checkpoint and export and survives a reload.
"""

from __future__ import annotations

from torch import nn

from .adapters import adapter_for
from .errors import SurgeryError


def layer_map(model: nn.Module) -> list[int]:
    return adapter_for(model).layer_map()


def current_index(model: nn.Module, original: int) -> int:
    mapping = layer_map(model)
    if original not in mapping:
        teacher_depth = getattr(model.config, "ild_teacher_layers", None) or len(mapping)
        if 0 <= original < max(teacher_depth, max(mapping, default=-1) + 1):
            raise SurgeryError(f"layer {original} was already removed")
        raise SurgeryError(f"layer {original} does not exist (remaining: {_ranges(mapping)})")
    return mapping.index(original)


def remove_layers(model: nn.Module, originals: list[int] | int) -> list[int]:
    """Remove layers by original index; return the new current->original map."""
    originals = [originals] if isinstance(originals, int) else list(originals)
    if len(set(originals)) != len(originals):
        raise SurgeryError(f"duplicate layers in {originals}")
    adapter = adapter_for(model)
    config = model.config
    old_map = adapter.layer_map()
    if getattr(config, "ild_teacher_layers", None) is None:
        config.ild_teacher_layers = len(old_map)
    drop = {current_index(model, o) for o in originals}
    keep = [i for i in range(len(old_map)) if i not in drop]
    if not keep:
        raise SurgeryError("cannot remove every layer")

    old_layers = adapter.layers
    adapter.backbone.layers = nn.ModuleList(old_layers[i] for i in keep)
    for new_index, layer in enumerate(adapter.backbone.layers):
        # HF caches index their per-layer K/V by this attribute.
        attention = getattr(layer, "self_attn", None)
        if attention is not None and hasattr(attention, "layer_idx"):
            attention.layer_idx = new_index
        if hasattr(layer, "layer_idx"):
            layer.layer_idx = new_index

    types = getattr(config, "layer_types", None)
    if types:
        config.layer_types = [types[i] for i in keep]
    window_layers = getattr(config, "max_window_layers", None)
    if window_layers is not None:
        # Layers below the threshold kept full attention; count the survivors that were below it.
        config.max_window_layers = sum(1 for i in keep if i < window_layers)
    config.num_hidden_layers = len(keep)
    new_map = [old_map[i] for i in keep]
    config.ild_layer_map = new_map
    return new_map


def parameter_count(model: nn.Module) -> int:
    # Tied embeddings share one tensor: count each storage once.
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def _ranges(values: list[int]) -> str:
    parts, start = [], None
    values = sorted(values)
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            parts.append(str(start) if start == v else f"{start}-{v}")
            start = None
    return ", ".join(parts)


class skipping:
    """Context manager: run the model with some current layers left out, then put them back.

    Used to generate with a candidate removal without copying the model: inside the block the
    model is exactly what ``remove_layers`` would make (renumbered ``layer_idx``, sliced
    ``layer_types``), so ``generate()`` and its KV cache work unchanged.
    """

    _FIELDS = ("num_hidden_layers", "layer_types", "max_window_layers", "ild_layer_map", "ild_teacher_layers")

    def __init__(self, model: nn.Module, current: list[int] | int):
        self.model = model
        self.current = [current] if isinstance(current, int) else list(current)

    def __enter__(self) -> nn.Module:
        adapter = adapter_for(self.model)
        self._layers = adapter.backbone.layers
        self._indices = [(layer.self_attn.layer_idx, getattr(layer, "layer_idx", None)) for layer in self._layers]
        self._config = {f: getattr(self.model.config, f) for f in self._FIELDS if hasattr(self.model.config, f)}
        mapping = adapter.layer_map()
        remove_layers(self.model, [mapping[i] for i in self.current])
        return self.model

    def __exit__(self, *exc) -> None:
        backbone = adapter_for(self.model).backbone
        backbone.layers = self._layers
        for layer, (attn_idx, layer_idx) in zip(self._layers, self._indices):
            layer.self_attn.layer_idx = attn_idx
            if layer_idx is not None:
                layer.layer_idx = layer_idx
        for field in self._FIELDS:
            if field in self._config:
                setattr(self.model.config, field, self._config[field])
            elif hasattr(self.model.config, field):
                delattr(self.model.config, field)


def head_is_tied(model: nn.Module) -> bool:
    """Whether the LM head is the input embedding's matrix (one parameter, or two views of one storage)."""
    adapter = adapter_for(model)
    head, embedding = adapter.lm_head.weight, adapter.embed_tokens.weight
    return head is embedding or head.data_ptr() == embedding.data_ptr()


def untie_head(model: nn.Module) -> bool:
    """Give the LM head its own weight (a copy of the embedding it was tied to); True if it was tied.

    Training a tied head moves the input embedding too. Once untied, ``tie_word_embeddings`` is
    False on the config, so ``save_pretrained`` stores both matrices and a reload keeps them apart.
    The model grows by one vocabulary x hidden matrix.
    """
    adapter = adapter_for(model)
    head, embedding = adapter.lm_head, adapter.embed_tokens
    tied = head_is_tied(model)
    if tied:
        head.weight = nn.Parameter(embedding.weight.detach().clone(), requires_grad=embedding.weight.requires_grad)
    for config in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        config.tie_word_embeddings = False
    if hasattr(model, "get_expanded_tied_weights_keys"):
        # transformers 5 keeps the tie map computed at construction; a later tie_weights() would re-tie.
        model.all_tied_weights_keys = model.get_expanded_tied_weights_keys(all_submodels=True)
    return tied


def reverse_order_candidates(layer_map: list[int], keep_final: bool = True) -> list[int]:
    """The reverse-order preset's removal order (original indices): the deepest layers first.

    Lu et al. ("Reassessing Layer Pruning in LLMs", ICLR 2026) rank layers by depth alone and
    remove from the end. With ``keep_final`` (the preset) the last remaining layer stays and the
    order starts with the layer just before it: [map[-2], map[-3], ..., map[0]]. That layer writes
    the residual stream the final norm and the LM head read, and keeping it is Gromov et al.'s
    heuristic ("The Unreasonable Ineffectiveness of the Deeper Layers": remove the deepest layers
    *excluding the final one*). Lu et al.'s own code (``--pr_method tail``) keeps layers 0..n-k-1,
    i.e. removes the final layer too: ``keep_final=False`` gives that order, [map[-1], map[-2], ...].
    The order is of the current map, so taking its first entry after every removal walks down the
    stack.
    """
    kept = layer_map[:-1] if keep_final else layer_map
    return list(reversed(kept))
