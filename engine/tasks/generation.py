"""Generation tasks: the model's greedy draft, checked under every candidate from the shared prefix.

The current model's greedy output is the *draft*. Candidate *i* checks the whole draft in one
teacher-forced pass (from the shared prefix); up to its first disagreement its greedy output is the
draft's. Only from there does it decode on its own, with a normal KV-cached ``generate``.
"""

from __future__ import annotations

import contextlib

import torch

from engine.models.surgery import skipping

from .item_scores import Candidate, ItemScores
from .metrics import SENTENCE_METRICS
from .prefix import counting_layers
from .requests import GenerationRequest, PreparedTask, ScoredSequence


class GenerationScoring:
    """The generation half of ``SuiteEvaluator`` (a mixin): it reads the evaluator's ``model``,
    ``tokenizer``, ``pad_id``, ``eos_id``, ``stop_ids``, ``batch_tokens``, ``max_batch`` and
    ``forwards``, and verifies drafts with its ``_forward``."""

    def _generate(
        self, prompts: list[list[int]], max_new_tokens: int, stop: list[str], skip: Candidate = None
    ) -> list[list[int]]:
        """Greedy continuations (new tokens only, cut after EOS), in batches, left-padded."""
        device = next(self.model.parameters()).device
        results: list[list[int]] = [[] for _ in prompts]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        step = max(1, min(self.max_batch, self.batch_tokens // max(1, max(len(p) for p in prompts) + max_new_tokens)))
        context = skipping(self.model, skip) if skip is not None else contextlib.nullcontext()
        with context, counting_layers(self.model, self.forwards):
            for start in range(0, len(order), step):
                chunk = order[start : start + step]
                width = max(len(prompts[i]) for i in chunk)
                ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros_like(ids)
                for row, i in enumerate(chunk):
                    ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
                    mask[row, width - len(prompts[i]) :] = 1
                generated = self.model.generate(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    pad_token_id=self.pad_id,
                    eos_token_id=self.stop_ids or self.eos_id,
                    stopping_criteria=_stop_criteria(self.tokenizer, stop, width),
                )[:, width:].tolist()
                for row, i in enumerate(chunk):
                    results[i] = self._trim(generated[row], stop)
        return results

    def _trim(self, tokens: list[int], stop: list[str]) -> list[int]:
        out = []
        for t in tokens:
            out.append(t)
            # The tail is enough: generate() checked every earlier step already.
            if t in self.stop_ids or (stop and self._stopped(out[-16:], stop)):
                break
        return out

    def _stopped(self, tokens: list[int], stop: list[str]) -> bool:
        text = self.tokenizer.decode(tokens)
        return any(s in text for s in stop)

    def _finished(self, tokens: list[int], max_new_tokens: int, stop: list[str]) -> bool:
        return (
            (tokens and tokens[-1] in self.stop_ids)
            or len(tokens) >= max_new_tokens
            or (bool(stop) and self._stopped(tokens, stop))
        )

    def _generation_scores(
        self, task: PreparedTask, candidates: list[Candidate], shared: bool, progress, wanted: set[int] | None = None
    ) -> dict[Candidate, ItemScores]:
        spec = task.spec
        requests: list[GenerationRequest] = [r for r in task.generations if wanted is None or r.item in wanted]
        if not requests:
            return {c: ItemScores() for c in candidates}
        prompts = [r.prompt_ids for r in requests]
        stop = list(dict.fromkeys(spec.stop + [s for r in requests for s in r.stop]))
        draft = self._generate(prompts, spec.max_new_tokens, stop)
        outputs: dict[Candidate, list[list[int]]] = {None: draft}
        others = [c for c in candidates if c is not None]
        if others:
            # Verify the draft under every candidate at once, from the shared prefix.
            checks = [
                ScoredSequence(p + d, list(range(len(p) - 1, len(p) + len(d) - 1)), d, item=i)
                for i, (p, d) in enumerate(zip(prompts, draft))
                if d
            ]
            which = [i for i, d in enumerate(draft) if d]
            verified = self._forward(checks, others, shared, lambda done, total: progress(done, total + len(others)))
            for number, c in enumerate(others):
                accepted = [list(d) for d in draft]
                pending = []
                for k, i in enumerate(which):
                    result = verified[c][k]
                    disagree = (result.argmax != torch.tensor(draft[i])).nonzero()
                    if len(disagree) == 0:
                        continue
                    p = int(disagree[0])
                    accepted[i] = draft[i][:p] + [int(result.argmax[p])]
                    if not self._finished(accepted[i], spec.max_new_tokens, stop):
                        pending.append(i)
                if pending:
                    more = self._generate(
                        [prompts[i] + accepted[i] for i in pending],
                        spec.max_new_tokens,  # trimmed below: a candidate never exceeds the budget
                        stop,
                        skip=c,
                    )
                    for i, extra in zip(pending, more):
                        accepted[i] = (accepted[i] + extra)[: spec.max_new_tokens]
                outputs[c] = accepted
                progress(len(checks) + number + 1, len(checks) + len(others))
        sentence = SENTENCE_METRICS[spec.metric]
        out = {}
        for c in candidates:
            texts = [self._text(t, stop) for t in outputs[c]]
            out[c] = ItemScores(
                items=[r.item for r in requests],
                values=[sentence(p, r.reference) for p, r in zip(texts, requests)],
                weights=[1.0] * len(requests),
                predictions=texts,
                references=[r.reference for r in requests],
            )
        return out

    def _text(self, tokens: list[int], stop: list[str]) -> str:
        if tokens and tokens[-1] in self.stop_ids:  # the end of turn is not part of the answer
            tokens = tokens[:-1]
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        for s in stop:
            cut = text.find(s)
            if cut > 0:
                text = text[:cut]
        return text.strip()


def _stop_criteria(tokenizer, stop: list[str], prompt_width: int):
    """Stop a row once its new text contains a stop string.

    transformers' own ``stop_strings`` needs to map every vocabulary entry to text, which fails
    for some tokenizers; decoding the tail of each row works for all of them.
    """
    if not stop:
        return None
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopStrings(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            tails = tokenizer.batch_decode(input_ids[:, prompt_width:][:, -16:])
            return torch.tensor([any(s in t for s in stop) for t in tails], device=input_ids.device)

    return StoppingCriteriaList([StopStrings()])
