"""How a run spends its healing tokens: which part of the distillation data each healing takes.

Healings take successive windows of the data stream, so that every block is seen once before any
is seen again; a window that runs past the end of the stream wraps to its start (a new pass, an
epoch). Where the next window starts (``cursor``, in blocks) is saved with every checkpoint, so a
resumed run takes the same tokens as an uninterrupted one.
"""

from __future__ import annotations

from engine.config import DataSettings

from .data import HealingData, Window, healing_data


class HealPlan:
    def __init__(self, data: HealingData, per_healing: int, healings: int, final_tokens: int):
        self.data = data
        self.per_healing = per_healing  # tokens of one healing after a removal (heal.train_tokens)
        self.healings = healings  # how many of them the run does at most
        self.final_tokens = final_tokens  # the final healing's tokens (0: none)
        self.cursor = 0  # blocks of the stream taken by the healings done so far

    @classmethod
    def build(cls, config: DataSettings, tokenizer, seed: int, healings: int, final_tokens: int) -> HealPlan:
        budget = healings * config.train_tokens + final_tokens
        return cls(healing_data(config, tokenizer, seed, budget), config.train_tokens, healings, final_tokens)

    @property
    def seq_len(self) -> int:
        return self.data.train.shape[1]

    @property
    def budget(self) -> int:
        return self.healings * self.per_healing + self.final_tokens

    def notes(self) -> list[str]:
        """One line each for the budgets the data cannot hold without repeating: said at the start."""
        parts = []
        if self.healings:
            parts.append(f"{self.healings} x heal.train_tokens {self.per_healing}")
        if self.final_tokens:
            parts.append(f"heal.final_tokens {self.final_tokens}")
        what = "this run's healing budget (" + " + ".join(parts) + ")"
        note = self.data.budget_note(self.budget, what)
        return [note] if note else []

    def window(self, final: bool = False) -> Window:
        """The blocks of the next healing (the final one: ``final``)."""
        tokens = self.final_tokens if final else self.per_healing
        return self.data.window(self.cursor, self.data.blocks_for(tokens))

    def advance(self, window: Window) -> None:
        self.cursor = window.end

    def describe(self, window: Window) -> str:
        seq = self.seq_len
        passes = f"{window.epochs:.2f} passes over the data so far"
        if window.repeats:
            passes += " (repeating tokens: the data is spent)"
        return (
            f"healing data: tokens {window.start * seq}-{window.end * seq - 1} of the stream "
            f"({window.count * seq} tokens; the data holds {window.stream_blocks * seq}), {passes}"
        )
