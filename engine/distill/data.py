"""Distillation text, tokenised and packed into fixed-length sequences.

Sources: the embedded offline text (default; never the evaluation data), a local JSONL (a "text"
column) or plain-text file, or a Hugging Face dataset (the paper used ``IlyaGusev/rulm``).
Documents are joined with EOS and cut into ``seq_len`` blocks, so no token is padding.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.config import heal_default
from engine.tasks.spec import DATA_DIR

EMBEDDED_DISTILL_FILE = "distill_en.jsonl"


@dataclass(frozen=True)
class DataConfig:
    # "embedded" | a .jsonl/.txt path | "hf:NAME[:CONFIG[:SPLIT]][?data_files=PATTERN[,PATTERN]]"
    source: str = heal_default("data")
    text_field: str = heal_default("text_field")
    seq_len: int = heal_default("seq_len")
    train_tokens: int = heal_default("train_tokens")  # per iteration
    heldout_tokens: int = heal_default("heldout_tokens")
    max_documents: int = 20000


def _embedded_texts() -> list[str]:
    path = DATA_DIR / EMBEDDED_DISTILL_FILE
    if path.is_file():
        return [json.loads(line)["text"] for line in path.open(encoding="utf-8") if line.strip()]
    # Always present with CPython (PSF licence): the language reference's prose.
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


def load_texts(config: DataConfig) -> list[str]:
    if config.source == "embedded":
        return _embedded_texts()
    if config.source.startswith("hf:"):
        import datasets

        from engine.hub_data import parse_hf

        name, subset, split, files = parse_hf(config.source)
        extra = {"data_files": list(files)} if files else {}
        data = datasets.load_dataset(name, subset, split=split, streaming=True, **extra)
        texts = []
        for row in data:
            texts.append(row[config.text_field])
            if len(texts) >= config.max_documents:
                break
        return texts
    path = Path(config.source)
    if not path.is_file():
        raise ValueError(f"distillation data {path}: no such file")
    if path.suffix == ".jsonl":
        return [json.loads(line)[config.text_field] for line in path.open(encoding="utf-8") if line.strip()][
            : config.max_documents
        ]
    return [block for block in path.read_text(encoding="utf-8").split("\n\n") if block.strip()]


def pack(texts: list[str], tokenizer, seq_len: int, max_tokens: int) -> torch.Tensor:
    """(N, seq_len) token blocks from the texts joined by EOS; at most ``max_tokens`` tokens."""
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for text in texts:
        stream.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        stream.append(eos)
        if len(stream) >= max_tokens + seq_len:
            break
    n = min(len(stream), max_tokens) // seq_len
    if n == 0:
        raise ValueError(f"distillation text gives fewer than {seq_len} tokens")
    return torch.tensor(stream[: n * seq_len], dtype=torch.long).view(n, seq_len)


def distill_blocks(config: DataConfig, tokenizer, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(train blocks, held-out blocks); the split is by document and fixed by the seed."""
    texts = load_texts(config)
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    texts = [texts[i] for i in order]
    heldout_docs, total = [], 0
    while texts and total < config.heldout_tokens:
        doc = texts.pop()
        heldout_docs.append(doc)
        total += len(tokenizer(doc, add_special_tokens=False)["input_ids"]) + 1
    heldout = pack(heldout_docs, tokenizer, config.seq_len, max(config.heldout_tokens, config.seq_len))
    train = pack(texts, tokenizer, config.seq_len, config.train_tokens)
    return train, heldout
