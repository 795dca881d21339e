"""Tokenizers with the chat templates of real model families, built in the test (no download), and a
tiny model whose greedy next token is a fixed function of the current one (scripted answers).

Byte-level with no merges, so every text encodes and decodes exactly; each family's special tokens
are added tokens, and its EOS is not its end of turn, as in the base models on the Hub.
"""

from __future__ import annotations

import torch

QWEN25 = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# Qwen3's generation prompt: with enable_thinking false the template writes an empty think block.
QWEN3 = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)
LLAMA3 = (
    "{{- bos_token }}{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

FAMILIES = {
    # name: (template, eos, end of turn, bos, other special tokens)
    "qwen2.5": (QWEN25, "<|endoftext|>", "<|im_end|>", None, ["<|im_start|>"]),
    "qwen3": (QWEN3, "<|endoftext|>", "<|im_end|>", None, ["<|im_start|>", "<think>", "</think>"]),
    "llama3": (
        LLAMA3,
        "<|end_of_text|>",
        "<|eot_id|>",
        "<|begin_of_text|>",
        ["<|start_header_id|>", "<|end_header_id|>"],
    ),
}


def chat_tokenizer(family: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    template, eos, turn, bos, others = FAMILIES[family]
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    raw = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    raw.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw)
    specials = {"eos_token": eos, "pad_token": eos, "additional_special_tokens": [turn, *others]}
    if bos:
        specials["bos_token"] = bos
    tok.add_special_tokens(specials)
    tok.chat_template = template
    return tok


def successor_model(tokenizer, chain: dict[str, str], eos_token_id=None):
    """A Llama model whose greedy continuation of token ``a`` is ``chain[a]`` (token strings), for
    the tokens in ``chain``: every decoder layer adds nothing (zero output projections), each chain
    token's embedding is its own basis vector, and the head row of ``chain[a]`` reads ``a``'s."""
    import transformers as t

    ids = lambda token: tokenizer.convert_tokens_to_ids(token)
    tokens = sorted({ids(a) for a in chain} | {ids(b) for b in chain.values()})
    hidden = 64
    assert len(tokens) <= hidden
    config = t.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=eos_token_id if eos_token_id is not None else tokenizer.eos_token_id,
    )
    model = t.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embed = model.model.embed_tokens.weight
        embed.mul_(0.01)  # tokens outside the chain: small, so they never win
        head = model.lm_head.weight
        head.zero_()
        basis = {token: k for k, token in enumerate(tokens)}
        for token, k in basis.items():
            embed[token].zero_()
            embed[token, k] = 1.0
        for a, b in chain.items():
            head[ids(b), basis[ids(a)]] = 1.0
    return model
