"""Offline material for the paper-suite GPU smoke test (bench/gpu_smoke.sh, step 5).

    python3 bench/paper_smoke.py OUT_DIR [--layers 28] [--gen-tokens 64]

Writes, with no network:
  OUT_DIR/model/        a Qwen2.5-1.5B-shaped Qwen2 model with random weights (bf16), and a Qwen-style
                        tokenizer trained here (byte-level BPE on ild's embedded texts and the paper
                        fixtures; ChatML special tokens, <|endoftext|> as EOS, <|im_end|> as the end
                        of a turn, Qwen2.5's chat template); vocab_size 151,936 as Qwen's head.
  OUT_DIR/paper.yaml    the embedded paper suite with each Hub source read from tests/fixtures/paper
                        (rows in the real schemas) and max_new_tokens capped at --gen-tokens (a random
                        model never stops on its own: this checks the path and its cost, not quality).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "paper"
QWEN25_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
SOURCES = {  # (name, config) of each paper source -> its fixture folder
    ("RefalMachine/darumeru", "mmlu_nlpcoreteam"): "darumeru/mmlu_nlpcoreteam",
    ("RefalMachine/darumeru", "cp_doc_ru"): "darumeru/cp_doc_ru",
    ("RefalMachine/darumeru", "cp_para_ru"): "darumeru/cp_para_ru",
    ("RefalMachine/darumeru", "flores"): "darumeru/flores",
    ("dichspace/daru_treeway_eval", None): "daru_treeway_eval",
}


def _texts() -> list[str]:
    texts = []
    for path in list((ROOT / "engine" / "tasks" / "data").glob("*.jsonl")) + list(FIXTURES.rglob("*.jsonl")):
        for line in path.open(encoding="utf-8"):
            if line.strip():
                texts.append(json.dumps(json.loads(line), ensure_ascii=False))
    return texts


def tokenizer(vocab: int = 16000):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    raw.train_from_iterator(_texts(), trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=raw)
    tok.add_special_tokens(
        {
            "eos_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>",
            "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        }
    )
    tok.chat_template = QWEN25_TEMPLATE
    return tok


def model(layers: int):
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(  # Qwen2.5-1.5B's shape
        vocab_size=151936,
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=layers,
        num_attention_heads=12,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        tie_word_embeddings=True,
        eos_token_id=None,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)


def paper_suite(gen_tokens: int) -> dict:
    import yaml

    data = yaml.safe_load((ROOT / "engine" / "tasks" / "suites" / "paper.yaml").read_text(encoding="utf-8"))
    for task in data["tasks"]:
        source = task["source"]
        folder = FIXTURES / SOURCES[(source["name"], source.get("config"))]
        task["source"] = {
            "type": "hf",
            "name": "json",
            "split": source["split"],
            "data_files": {p.stem: str(p) for p in sorted(folder.glob("*.jsonl"))},
        }
        if "max_new_tokens" in task:
            task["max_new_tokens"] = min(task["max_new_tokens"], gen_tokens)
    data["name"] = "paper-fixtures"
    return data


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--gen-tokens", type=int, default=64)
    args = parser.parse_args()
    import yaml

    args.out.mkdir(parents=True, exist_ok=True)
    tok = tokenizer()
    m = model(args.layers)
    m.generation_config.eos_token_id = [tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id]
    m.save_pretrained(args.out / "model")
    tok.save_pretrained(args.out / "model")
    suite = paper_suite(args.gen_tokens)
    (args.out / "paper.yaml").write_text(yaml.safe_dump(suite, allow_unicode=True, sort_keys=False), encoding="utf-8")
    params = sum(p.numel() for p in m.parameters())
    print(f"model {args.out / 'model'}: {params / 1e9:.2f} B parameters, {args.layers} layers, tokenizer {len(tok)}")
    print(f"suite {args.out / 'paper.yaml'}: {len(suite['tasks'])} tasks, at most {args.gen_tokens} new tokens")


if __name__ == "__main__":
    main()
