"""A word-level tokenizer built in the test from the test's own text (ids fit the tiny models)."""

from __future__ import annotations


def word_tokenizer(texts: list[str], vocab_size: int = 256):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[UNK]", "[PAD]", "[EOS]", "[BOS]", "A", "B", "C", "D"]
    for text in texts:
        for word in text.replace("\n", " \n ").split(" "):
            if word and word not in words:
                words.append(word)
    words = words[:vocab_size]
    raw = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    raw.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=raw, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]", bos_token="[BOS]"
    )
