"""A small suite over generated files, for the tiny random models the tests build."""

from __future__ import annotations

import json
import random

from engine.tasks.spec import load_suite
from tests.tiny_tokenizer import word_tokenizer

WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "and",
    "dog",
    "ran",
    "to",
    "big",
    "red",
    "house",
    "with",
    "small",
    "green",
    "tree",
    "in",
    "park",
]


def write_rows(tmp_path, name, rows):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_suite(tmp_path):
    """The suite and a word tokenizer that knows its words."""
    rng = random.Random(0)
    sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 12))) for _ in range(12)]
    write_rows(tmp_path, "text.jsonl", [{"text": s} for s in sentences])
    write_rows(
        tmp_path,
        "mc.jsonl",
        [{"q": s, "options": [rng.choice(WORDS) for _ in range(4)], "label": rng.randint(0, 3)} for s in sentences],
    )
    write_rows(tmp_path, "pairs.jsonl", [{"src": s, "dst": s.upper()} for s in sentences])
    (tmp_path / "suite.yaml").write_text(
        """
name: tiny
tasks:
  - {name: lm, kind: language_modeling, source: {type: jsonl, path: text.jsonl}, metric: next_token_accuracy, samples: 8}
  - {name: ppl, kind: language_modeling, source: {type: jsonl, path: text.jsonl}, metric: perplexity_score, samples: 6}
  - {name: lm_ctx, kind: language_modeling, source: {type: jsonl, path: text.jsonl}, context_tokens: 3, metric: next_token_probability, samples: 6}
  - {name: copy_tf, kind: language_modeling, source: {type: jsonl, path: text.jsonl}, prompt: "{text} :", metric: next_token_probability, samples: 6}
  - name: mc
    kind: multiple_choice
    source: {type: jsonl, path: mc.jsonl}
    fields: {question: q, choices: options, answer: label}
    prompt: "{question} ?"
    metric: accuracy
    samples: 8
  - name: mc_letter
    kind: multiple_choice
    source: {type: jsonl, path: mc.jsonl}
    fields: {question: q, choices: options, answer: label}
    prompt: "{question} \\n {choices_lettered} \\n answer"
    scoring: letter
    metric: accuracy
    few_shot: 1
    samples: 6
  - name: copy
    kind: generation
    source: {type: jsonl, path: text.jsonl}
    fields: {input: text, target: text}
    prompt: "copy {input} :"
    target: "{target}"
    metric: lcs_ratio
    max_new_tokens: 6
    stop: []
    samples: 6
  - name: translate
    kind: generation
    source: {type: jsonl, path: pairs.jsonl}
    fields: {input: src, target: dst}
    prompt: "{input} ="
    metric: chrf
    max_new_tokens: 5
    stop: ["mat"]
    samples: 5
"""
    )
    return load_suite(str(tmp_path / "suite.yaml")), word_tokenizer(sentences + ["copy :", "answer ? ="])
