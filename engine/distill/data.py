"""Distillation text, tokenised and packed into fixed-length sequences.

Sources: the embedded offline text (default: Brown corpus prose; never the evaluation data), the
embedded mixed corpus (``mixed``: English prose, Russian, Python; tools/build_heal_corpus.py), a
local JSONL (a "text" column; ``.jsonl.xz`` too) or plain-text file, or a Hugging Face dataset (the
paper used ``IlyaGusev/rulm``).
Documents are joined with EOS and cut into ``seq_len`` blocks, so no token is padding.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.config import DataSettings
from engine.tasks.spec import DATA_DIR

EMBEDDED_DISTILL_FILE = "distill_en.jsonl"
MIXED_DISTILL_FILE = "heal_mix.jsonl.xz"  # see docs/heal_corpus.md


def _embedded_texts() -> list[str]:
    path = DATA_DIR / EMBEDDED_DISTILL_FILE
    if path.is_file():
        return [json.loads(line)["text"] for line in path.open(encoding="utf-8") if line.strip()]
    # Always present with CPython (PSF licence): the language reference's prose.
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


def _jsonl_texts(path: Path, field: str) -> list[str]:
    import lzma

    opener = lzma.open if path.name.endswith(".xz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            return [json.loads(line)[field] for line in f if line.strip()]
    except lzma.LZMAError as exc:
        raise ValueError(f"{path.name}: not a readable .xz file ({exc})") from None


def load_texts(config: DataSettings) -> list[str]:
    if config.source == "embedded":
        return _embedded_texts()
    if config.source == "mixed":
        return _jsonl_texts(DATA_DIR / MIXED_DISTILL_FILE, "text")
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
    if path.name.endswith((".jsonl", ".jsonl.xz")):
        return _jsonl_texts(path, config.text_field)[: config.max_documents]
    return [block for block in path.read_text(encoding="utf-8").split("\n\n") if block.strip()]


def pack(texts: list[str], tokenizer, seq_len: int, max_tokens: int) -> torch.Tensor:
    """(N, seq_len) token blocks from the texts joined by EOS; at most ``max_tokens`` tokens (fewer
    when the texts hold fewer: ``HealingData`` says so, this function does not)."""
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


@dataclass(frozen=True)
class Window:
    """The blocks one healing trains on: ``count`` blocks of the stream from block ``start`` on,
    wrapping to the stream's start when it runs out (a new pass over the data).

    ``blocks`` holds each distinct block once (the teacher's outputs are computed per row) and
    ``index`` maps each of the window's ``count`` positions to its row of ``blocks``."""

    start: int
    count: int
    stream_blocks: int  # how many blocks the whole stream holds
    blocks: torch.Tensor
    index: torch.Tensor

    @property
    def end(self) -> int:
        return self.start + self.count

    @property
    def rows(self) -> torch.Tensor:
        """Each of ``blocks``' row of the stream."""
        return (self.start + torch.arange(len(self.blocks))) % self.stream_blocks

    @property
    def epochs(self) -> float:
        """Passes over the data once this window is trained on (1.0: every block seen once)."""
        return self.end / self.stream_blocks

    @property
    def repeats(self) -> bool:
        """Whether some block of this window was seen before in the run (or twice in it)."""
        return self.end > self.stream_blocks

    def summary(self, seq_len: int) -> dict[str, float]:
        """The ``healing`` field of the healing's eval event: which tokens of the data it took."""
        return {
            "tokens": self.count * seq_len,
            "start": self.start * seq_len,
            "data_tokens": self.stream_blocks * seq_len,
            "epochs": round(self.epochs, 4),
        }


@dataclass(frozen=True)
class HealingData:
    """The run's distillation data: the training stream, cut into windows so that successive
    healings take fresh blocks before any block repeats, and the held-out blocks."""

    train: torch.Tensor  # (N, seq_len), in stream order (documents shuffled by the seed)
    heldout: torch.Tensor

    @property
    def tokens(self) -> int:
        return self.train.numel()

    def blocks_for(self, tokens: int) -> int:
        """Blocks in a healing of ``tokens`` tokens (whole sequences; at least one)."""
        return max(1, tokens // self.train.shape[1])

    def window(self, start: int, count: int) -> Window:
        n = len(self.train)
        distinct = min(count, n)
        rows = (start + torch.arange(distinct)) % n
        return Window(start, count, n, self.train[rows], torch.arange(count) % distinct)

    def budget_note(self, budget: int, what: str) -> str | None:
        """One line when ``budget`` tokens of healing are more than the data holds, else None."""
        if budget <= self.tokens:
            return None
        return (
            f"{what} = {budget} tokens is {budget / self.tokens:.1f} passes over the healing data "
            f"({self.tokens} tokens after {self.heldout.numel()} held out): tokens repeat once it is spent "
            "(heal.data selects more)"
        )


def distill_blocks(
    config: DataSettings, tokenizer, seed: int = 0, budget: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train blocks, held-out blocks); the split is by document and fixed by the seed. The train
    blocks hold ``budget`` tokens (default: one healing's ``train_tokens``) or all the data has."""
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
    train = pack(texts, tokenizer, config.seq_len, budget if budget is not None else config.train_tokens)
    return train, heldout


# Tokens of distillation text read at most beyond a run's budget: all of the embedded corpora (so that
# ``epochs`` counts passes over the whole data), not all of a large local file or Hub dataset.
READ_TOKENS = 8_000_000


def healing_data(config: DataSettings, tokenizer, seed: int, budget: int) -> HealingData:
    """The stream for a run that heals ``budget`` tokens in all: all the data, or as much of it as
    the budget needs when the data holds more than ``READ_TOKENS``."""
    return HealingData(*distill_blocks(config, tokenizer, seed, budget=max(budget, config.train_tokens, READ_TOKENS)))
