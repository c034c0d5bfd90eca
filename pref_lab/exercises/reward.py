"""Notebook 04: the reward model reads its score at the last real token."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..logprobs import last_index
from .checker import Case, CheckResult, Exercise, Mistake, run_check


def _reference(values, attention_mask):
    return values[torch.arange(len(values)), last_index(attention_mask)]


def _last_position(values, attention_mask):
    return values[:, -1]


def _count_tokens(values, attention_mask):
    return values[torch.arange(len(values)), attention_mask.sum(-1) - 1]


def _first_real(values, attention_mask):
    return values[torch.arange(len(values)), attention_mask.argmax(-1)]


def _cases() -> list[Case]:
    g = torch.Generator().manual_seed(4)
    right = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
    left = right.flip(-1)
    return [Case("right padding", dict(values=torch.randn(3, 5, generator=g), attention_mask=right)),
            Case("left padding (as for generation)", dict(values=torch.randn(3, 5, generator=g), attention_mask=left)),
            Case("a row of a single token", dict(values=torch.randn(2, 4, generator=g),
                                                 attention_mask=torch.tensor([[0, 0, 0, 1], [1, 1, 1, 1]])))]


EXERCISE = Exercise(
    name="last_token_reward",
    reference=_reference,
    cases=_cases(),
    mistakes=[
        Mistake("this is the last position, padding or not", "values[:, -1] is a pad token in a right-padded row: "
                "find the last position where attention_mask is 1.", wrong=_last_position),
        Mistake("the index is the number of real tokens minus one", "attention_mask.sum(-1) - 1 is the last real "
                "token only under right padding; under left padding the real tokens end at the last column. Find the "
                "last position where the mask is 1, wherever the padding is.", wrong=_count_tokens),
        Mistake("this is the first real token", "The reward model reads the whole (prompt, response): its head is "
                "applied at the *last* real token, where the transformer has seen everything.", wrong=_first_real),
    ],
    hint="for each row, find the position of the last 1 in attention_mask, and read values there (shape (B,)).",
)


def check_last_token_reward(fn: Callable) -> CheckResult:
    """Check ``last_token_reward(values (B,T), attention_mask (B,T)) -> (B,)`` (notebook 04)."""
    return run_check(EXERCISE, fn)
