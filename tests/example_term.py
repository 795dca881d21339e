"""A healing loss term that exists only for the tests: what adding a term takes is this module.

``cosine``: one minus the mean cosine similarity of the student's and the teacher's compared hidden
states (the layers ``heal.hidden`` names), over the real tokens, summed over the layers. Its setting
``heal.cosine_scale`` (default 0: off, nothing computed) is declared with it; importing the module
registers both.
"""

from typing import Annotated

import torch
from pydantic import Field

from engine.distill.terms import LossTerm, register


def cosine_distance(batch, settings) -> torch.Tensor:
    mask = batch.mask.to(torch.float32)
    total = torch.zeros((), dtype=torch.float32, device=mask.device)
    for key, student in batch.student_hidden.items():
        cos = torch.nn.functional.cosine_similarity(student.float(), batch.teacher_hidden[key].float(), dim=-1)
        total = total + ((1 - cos) * mask).sum() / mask.sum().clamp(min=1)
    return total


TERM = register(
    LossTerm(
        "cosine",
        cosine_distance,
        lambda settings: settings.setting("cosine_scale"),
        "1 - cosine similarity of the compared hidden states (a test's example)",
        settings={"cosine_scale": (Annotated[float, Field(ge=0)], 0.0)},
    )
)
