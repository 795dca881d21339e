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


class _LemmaTokenizer:
    """LLMTF's ROUGE tokenizer (llmtf/metrics.py CustomTokenizer): lower case, ASCII punctuation
    turned into spaces, whitespace split, each word reduced to its pymorphy3 normal form."""

    def __init__(self):
        import string

        import pymorphy3

        self.punctuation = re.compile(f"[{re.escape(string.punctuation)}]")
        self.morph = pymorphy3.MorphAnalyzer()

    def tokenize(self, text: str) -> list[str]:
        words = self.punctuation.sub(" ", text.lower()).split()
        return [self.morph.parse(word)[0].normal_form for word in words]


_rouge_lemmas = None


def rouge_l_lemmas(predictions: list[str], references: list[str]) -> float:
    """ROUGE-L F1 as LLMTF scores FLORES and Daru Treeway (lemmatised words), the mean over samples."""
    global _rouge_lemmas
    if _rouge_lemmas is None:
        from rouge_score import rouge_scorer

        _rouge_lemmas = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_LemmaTokenizer())
    if not predictions:
        return 0.0
    return sum(_rouge_lemmas.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)) / len(predictions)


_rouge_12 = None


def rouge_12_lemmas(predictions: list[str], references: list[str]) -> float:
    """LLMTF's FLORES and Daru Treeway score when the paper was written (revision 19b5ce6): the mean
    of ROUGE-1 and ROUGE-2 F1 on lemmatised words (its leaderboard aggregation of the two), the mean
    over samples."""
    global _rouge_12
    if _rouge_12 is None:
        from rouge_score import rouge_scorer

        _rouge_12 = rouge_scorer.RougeScorer(["rouge1", "rouge2"], tokenizer=_LemmaTokenizer())
    if not predictions:
        return 0.0
    total = 0.0
    for p, r in zip(predictions, references):
        scores = _rouge_12.score(r, p)
        total += (scores["rouge1"].fmeasure + scores["rouge2"].fmeasure) / 2
    return total / len(predictions)


def copy_match(predictions: list[str], references: list[str]) -> float:
    """LLMTF's copy score (llmtf/tasks/darumeru.py CopyText, metric ``lcs``): per sample 1 when the
    characters of the prediction that difflib matches in the reference (both stripped, autojunk
    off) are at least 99% of the prediction, else 0; an empty prediction scores 0. Binary, hence
    the paper's 1.0 / 0.02 for copying. As in LLMTF, it is the share of the *prediction* that is
    matched: a prediction that stops early but copies exactly also scores 1."""
    from difflib import SequenceMatcher

    if not predictions:
        return 0.0
    total = 0.0
    for p, r in zip(predictions, references):
        a, b = r.strip(), p.strip()
        if not b:
            continue
        matcher = SequenceMatcher(None, a, b, autojunk=False)
        matched = sum(block.size for block in matcher.get_matching_blocks())
        total += float(matched / len(b) >= 0.99)
    return total / len(predictions)


# MMLU subjects by category (hendrycks/test categories.py, as LLMTF's nlpcoreteam.py maps them):
# subject -> subcategory -> one of four categories.
MMLU_CATEGORIES = {
    "STEM": "abstract_algebra astronomy college_biology college_chemistry college_computer_science college_mathematics "
    "college_physics computer_security conceptual_physics electrical_engineering elementary_mathematics "
    "high_school_biology high_school_chemistry high_school_computer_science high_school_mathematics "
    "high_school_physics high_school_statistics machine_learning",
    "humanities": "formal_logic high_school_european_history high_school_us_history high_school_world_history "
    "international_law jurisprudence logical_fallacies moral_disputes moral_scenarios philosophy "
    "prehistory professional_law world_religions",
    "social sciences": "econometrics high_school_geography high_school_government_and_politics high_school_macroeconomics "
    "high_school_microeconomics high_school_psychology human_sexuality professional_psychology "
    "public_relations security_studies sociology us_foreign_policy",
    "other (business, health, misc.)": "anatomy business_ethics clinical_knowledge college_medicine global_facts human_aging "
    "management marketing medical_genetics miscellaneous nutrition professional_accounting "
    "professional_medicine virology",
}
MMLU_CATEGORY_OF = {subject: category for category, subjects in MMLU_CATEGORIES.items() for subject in subjects.split()}


def mmlu_category_mean(values: list[float], subjects: list[str]) -> float:
    """LLMTF's MMLU score: accuracy per subject, the mean of the subjects of each category, then
    the mean of the categories (of those present). An unknown subject is its own category."""
    if not values:
        return 0.0
    per_subject: dict[str, list[float]] = {}
    for value, subject in zip(values, subjects):
        per_subject.setdefault(subject, []).append(value)
    per_category: dict[str, list[float]] = {}
    for subject, scores in per_subject.items():
        per_category.setdefault(MMLU_CATEGORY_OF.get(subject, subject), []).append(sum(scores) / len(scores))
    return sum(sum(means) / len(means) for means in per_category.values()) / len(per_category)


GENERATION_METRICS = {
    "rouge_l": rouge_l,
    "lcs_ratio": lcs_ratio,
    "chrf": chrf,
    "bleu": bleu,
    "copy_match": copy_match,
    "rouge_l_lemmas": rouge_l_lemmas,
    "rouge_12_lemmas": rouge_12_lemmas,
}

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
    "copy_match": lambda p, r: copy_match([p], [r]),
    "rouge_l_lemmas": lambda p, r: rouge_l_lemmas([p], [r]),
    "rouge_12_lemmas": lambda p, r: rouge_12_lemmas([p], [r]),
    "chrf": _sentence_chrf,
    "bleu": _sentence_bleu,
}


def perplexity_score(mean_nll: float) -> float:
    """1 / perplexity = the geometric-mean probability of the text's tokens, in (0, 1]."""
    import math

    return math.exp(-mean_nll)
