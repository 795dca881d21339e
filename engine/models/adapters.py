"""Uniform access to the decoder stack of the supported causal LMs.

Besides naming the parts (layers, embedding, final norm, rotary embedding, head), the adapter runs
the stack one layer at a time: ``prepare`` does what the model's own forward does before the first
layer (embedding, position ids, attention masks, rotary tables), ``run_layer`` runs one decoder
layer, ``head`` does the final norm and the LM head. Importance scoring and the cached training
loop start mid-stack from a stored hidden state, which the stock ``forward`` cannot do. A test
checks that running every layer this way gives the model's own logits for every family.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch
from torch import nn

from .errors import UnsupportedArchitecture

# model_type -> how the family picks each layer's attention mask when config.layer_types is absent
SUPPORTED = {
    "llama": "full",
    "mistral": "sliding_if_window",
    "phi3": "sliding_if_window",
    "qwen2": "layer_types",
    "qwen3": "layer_types",
    "gemma2": "layer_types",
    "gemma3_text": "layer_types",
}

# Decoder layers computed as h = x + attn(norm(x)); out = h + mlp(norm(h)) (Phi-3's residual dropouts
# are the identity in eval mode), so the MLP can run at a subset of positions.
PLAIN_RESIDUAL_LAYERS = {
    "LlamaDecoderLayer",
    "MistralDecoderLayer",
    "Qwen2DecoderLayer",
    "Qwen3DecoderLayer",
    "Phi3DecoderLayer",
}


@dataclass
class StackInputs:
    """Everything a decoder layer needs besides the hidden state, for one batch."""

    hidden: torch.Tensor  # the input of layer 0
    position_ids: torch.Tensor
    masks: dict[str, object]  # attention-mask object per layer type
    rotary: dict[str, tuple[torch.Tensor, torch.Tensor]]  # (cos, sin) per layer type
    attention_mask: torch.Tensor | None  # the 2-D padding mask (1 = real token)


@functools.cache
def no_cache(function) -> dict:
    """The keyword that says "no KV cache" to ``function``: transformers 5.x renamed
    ``past_key_values`` to ``cache`` (the old name warns, and goes in 5.40)."""
    return {"cache" if "cache" in inspect.signature(function).parameters else "past_key_values": None}


class DecoderAdapter:
    def __init__(self, model: nn.Module):
        config = model.config
        model_type = getattr(config, "model_type", None)
        if model_type not in SUPPORTED:
            raise UnsupportedArchitecture(
                f"unsupported architecture '{model_type}'; supported: {', '.join(sorted(SUPPORTED))}"
            )
        self.model = model
        self.config = config
        self.model_type = model_type
        self.backbone = model.model
        self._rotary_takes_type = "layer_type" in inspect.signature(self.backbone.rotary_emb.forward).parameters

    # --- the parts -------------------------------------------------------------------------------
    @property
    def layers(self) -> nn.ModuleList:
        return self.backbone.layers

    @property
    def embed_tokens(self) -> nn.Module:
        return self.backbone.embed_tokens

    @property
    def norm(self) -> nn.Module:
        return self.backbone.norm

    @property
    def rotary_emb(self) -> nn.Module:
        return self.backbone.rotary_emb

    @property
    def lm_head(self) -> nn.Module:
        return self.model.lm_head

    @property
    def vocab_size(self) -> int:
        return self.lm_head.weight.shape[0]

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def layer_type(self, index: int) -> str:
        types = getattr(self.config, "layer_types", None)
        if types:
            return types[index]
        rule = SUPPORTED[self.model_type]
        if rule == "sliding_if_window" and getattr(self.config, "sliding_window", None) is not None:
            return "sliding_attention"
        return "full_attention"

    def layer_map(self) -> list[int]:
        """Current layer index -> original teacher index."""
        stored = getattr(self.config, "ild_layer_map", None)
        return list(stored) if stored is not None else list(range(self.num_layers))

    # --- running the stack layer by layer --------------------------------------------------------
    def prepare(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> StackInputs:
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

        hidden = self.embed_tokens(input_ids)
        if attention_mask is not None:
            # Count positions from each row's first real token, as generate() does, so a
            # left-padded row scores exactly like the same row unpadded.
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        else:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        kinds = {self.layer_type(i) for i in range(self.num_layers)} or {"full_attention"}
        mask_args = dict(
            config=self.config,
            inputs_embeds=hidden,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **no_cache(create_causal_mask),
        )
        makers = {"full_attention": create_causal_mask, "sliding_attention": create_sliding_window_causal_mask}
        masks = {kind: makers[kind](**mask_args) for kind in kinds}
        if self._rotary_takes_type:
            rotary = {kind: self.rotary_emb(hidden, position_ids, kind) for kind in kinds}
        else:
            shared = self.rotary_emb(hidden, position_ids=position_ids)
            rotary = dict.fromkeys(kinds, shared)
        return StackInputs(hidden, position_ids, masks, rotary, attention_mask)

    def run_layer(
        self, index: int, hidden: torch.Tensor, inputs: StackInputs, layer: nn.Module | None = None
    ) -> torch.Tensor:
        kind = self.layer_type(index)
        layer = self.layers[index] if layer is None else layer
        out = layer(
            hidden,
            attention_mask=inputs.masks[kind],
            position_embeddings=inputs.rotary[kind],
            position_ids=inputs.position_ids,
            use_cache=False,
            **no_cache(type(layer).forward),
        )
        return out[0] if isinstance(out, tuple) else out

    def run_layer_at(
        self, index: int, hidden: torch.Tensor, inputs: StackInputs, rows: torch.Tensor, cols: torch.Tensor
    ) -> torch.Tensor:
        """Layer ``index`` when only its output at positions (rows, cols) is read: [len(rows), hidden].

        Attention still runs at every position (the read positions attend to all earlier ones), but
        the MLP, three quarters of a Llama layer's work, runs only at the read positions. Families
        whose layer is not ``x + attn(norm(x))`` then ``h + mlp(norm(h))`` run the whole layer.
        """
        layer = self.layers[index]
        if type(layer).__name__ not in PLAIN_RESIDUAL_LAYERS or layer.training:
            return self.run_layer(index, hidden, inputs)[rows, cols]
        kind = self.layer_type(index)
        attended = layer.self_attn(
            hidden_states=layer.input_layernorm(hidden),
            attention_mask=inputs.masks[kind],
            position_ids=inputs.position_ids,
            use_cache=False,
            position_embeddings=inputs.rotary[kind],
            **no_cache(type(layer.self_attn).forward),
        )[0]
        read = (hidden + attended)[rows, cols]
        return read + layer.mlp(layer.post_attention_layernorm(read))

    def run_layers(
        self,
        hidden: torch.Tensor,
        inputs: StackInputs,
        start: int = 0,
        stop: int | None = None,
        skip: int | None = None,
        rows: torch.Tensor | None = None,
        cols: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run layers [start, stop), leaving out ``skip`` (a current index) if given; with ``rows``
        and ``cols``, return only those positions (the last layer run by ``run_layer_at``)."""
        stop = self.num_layers if stop is None else stop
        indices = [index for index in range(start, stop) if index != skip]
        last = indices.pop() if rows is not None and indices else None
        for index in indices:
            hidden = self.run_layer(index, hidden, inputs)
        if rows is None:
            return hidden
        return hidden[rows, cols] if last is None else self.run_layer_at(last, hidden, inputs, rows, cols)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm + LM head (+ Gemma's logit soft-capping): the logits."""
        logits = self.lm_head(self.norm(hidden))
        cap = getattr(self.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def forward_logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, skip: int | None = None
    ) -> torch.Tensor:
        inputs = self.prepare(input_ids, attention_mask)
        return self.head(self.run_layers(inputs.hidden, inputs, skip=skip))


def adapter_for(model: nn.Module) -> DecoderAdapter:
    return DecoderAdapter(model)


def supported_architectures() -> list[str]:
    return sorted(SUPPORTED)
