"""Task metrics, each a score in [0, 1].

Generation metrics are corpus-level where the metric defines one (BLEU, chrF through sacrebleu);
ROUGE-L and the LCS ratio are per-sample means. rouge-score's own tokenizer drops every
non-ASCII character (a Russian sentence becomes empty), so ROUGE-L here tokenises on Unicode word
characters instead.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"\w+", re.UNICODE)


class _UnicodeTokenizer:
    def tokenize(self, text: str) -> list[str]:
        return _WORD.findall(text.lower())


_rouge = None


def rouge_l(predictions: list[str], references: list[str]) -> float:
    global _rouge
    if _rouge is None:
        from rouge_score import rouge_scorer

        _rouge = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_UnicodeTokenizer())
    if not predictions:
        return 0.0
    return sum(_rouge.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)) / len(predictions)


def lcs_length(a: list[str], b: list[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, 1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def lcs_ratio(predictions: list[str], references: list[str]) -> float:
    """Longest common subsequence of whitespace tokens over the longer of the two lengths.

    Dividing by the longer length penalises both dropped and invented text, so only an exact
    copy scores 1 (the paper's cp_para / cp_doc copy tasks).
    """
    if not predictions:
        return 0.0
    total = 0.0
    for p, r in zip(predictions, references):
        pt, rt = p.split(), r.split()
        longest = max(len(pt), len(rt))
        total += lcs_length(pt, rt) / longest if longest else 1.0
    return total / len(predictions)


def chrf(predictions: list[str], references: list[str]) -> float:
    import sacrebleu

    return sacrebleu.corpus_chrf(predictions, [references]).score / 100.0


def bleu(predictions: list[str], references: list[str]) -> float:
    import sacrebleu

    return sacrebleu.corpus_bleu(predictions, [references]).score / 100.0


GENERATION_METRICS = {"rouge_l": rouge_l, "lcs_ratio": lcs_ratio, "chrf": chrf, "bleu": bleu}

# Metrics defined on the whole corpus (not a mean over items): the task score is computed from all
# the texts at once; their per-item values (SENTENCE_METRICS) only serve confidence bounds.
CORPUS_METRICS = {"chrf": chrf, "bleu": bleu}


def _sentence_chrf(prediction: str, reference: str) -> float:
    import sacrebleu

    return sacrebleu.sentence_chrf(prediction, [reference]).score / 100.0


def _sentence_bleu(prediction: str, reference: str) -> float:
    import sacrebleu

    return sacrebleu.sentence_bleu(prediction, [reference]).score / 100.0


# Each generation metric on one (prediction, reference) pair; for the per-sample metrics the task
# score is exactly the mean of these.
SENTENCE_METRICS = {
    "rouge_l": lambda p, r: rouge_l([p], [r]),
    "lcs_ratio": lambda p, r: lcs_ratio([p], [r]),
    "chrf": _sentence_chrf,
    "bleu": _sentence_bleu,
}


def perplexity_score(mean_nll: float) -> float:
    """1 / perplexity = the geometric-mean probability of the text's tokens, in (0, 1]."""
    import math

    return math.exp(-mean_nll)
