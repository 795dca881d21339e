"""Tiny randomly initialised causal LMs, one per supported family, built in the test process."""

from __future__ import annotations

import torch

COMMON = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=6,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)


def tiny_config(family: str):
    import transformers as t

    if family == "llama":
        return t.LlamaConfig(**COMMON)
    if family == "mistral":
        return t.MistralConfig(**COMMON, sliding_window=8)
    if family == "phi3":
        return t.Phi3Config(**COMMON, sliding_window=None)
    if family == "qwen2":
        # Sliding attention on the layers at and above max_window_layers exercises layer_types.
        return t.Qwen2Config(**COMMON, use_sliding_window=True, sliding_window=8, max_window_layers=3)
    if family == "qwen3":
        return t.Qwen3Config(**COMMON, head_dim=16)
    if family == "gemma2":
        return t.Gemma2Config(**COMMON, head_dim=16, sliding_window=8, attn_implementation="eager")
    if family == "gemma3_text":
        return t.Gemma3TextConfig(**COMMON, head_dim=16, sliding_window=8, attn_implementation="eager")
    raise KeyError(family)


FAMILIES = ["llama", "mistral", "phi3", "qwen2", "qwen3", "gemma2", "gemma3_text"]


def tiny_model(family: str, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family))
    model.eval()
    return model


def batch(seed: int = 1, length: int = 12):
    """Two sequences, the second left-padded by 3, as a tokenizer with padding_side='left' gives."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 256, (2, length), generator=g)
    mask = torch.ones_like(ids)
    ids[1, :3] = 0
    mask[1, :3] = 0
    return ids, mask
