"""Notebook 11: the paired standard error of a difference between two methods on the same prompts."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..world import mean_sem, paired_difference
from .checker import Case, CheckResult, Exercise, Mistake, run_check


def _unpaired(a, b):
    (ma, sa), (mb, sb) = mean_sem(a), mean_sem(b)
    return ma - mb, math.sqrt(sa ** 2 + sb ** 2)


def _population(a, b):
    d = torch.as_tensor(a, dtype=torch.float64) - torch.as_tensor(b, dtype=torch.float64)
    return d.mean().item(), d.std(unbiased=False).item() / math.sqrt(len(d))


def _std_not_sem(a, b):
    d = torch.as_tensor(a, dtype=torch.float64) - torch.as_tensor(b, dtype=torch.float64)
    return d.mean().item(), d.std().item()


def _cases() -> list[Case]:
    g = torch.Generator().manual_seed(13)
    difficulty = torch.randn(20, generator=g) * 2  # shared by both methods: what pairing removes
    a = (difficulty + 0.5 + 0.3 * torch.randn(20, generator=g)).double()
    b = (difficulty + 0.3 * torch.randn(20, generator=g)).double()
    return [Case("20 prompts that both methods find hard or easy alike", dict(a=a, b=b)),
            Case("4 prompts", dict(a=torch.tensor([1.0, 2.0, 0.5, 3.0]).double(),
                                   b=torch.tensor([0.5, 1.0, 1.0, 2.0]).double()))]


EXERCISE = Exercise(
    name="paired_se",
    reference=paired_difference,
    cases=_cases(),
    mistakes=[
        Mistake("this is the unpaired standard error", "Both methods ran on the same prompts: take the standard "
                "error of the per-prompt differences a − b. Combining two independent s.e.'s counts the prompts' "
                "shared difficulty as noise, and hides real differences.", wrong=_unpaired),
        Mistake("the standard deviation uses n, not n − 1", "Use the sample standard deviation (n − 1, torch's "
                "default `std()`); with few prompts or seeds the difference is large.", wrong=_population),
        Mistake("this is the standard deviation, not the standard error", "Divide the standard deviation of the "
                "differences by √n.", wrong=_std_not_sem),
    ],
    hint="both methods ran on the same prompts, so work with the per-prompt differences; return two floats.",
)


def check_paired_se(fn: Callable) -> CheckResult:
    """Check ``paired_se(a (n,), b (n,)) -> (mean difference, paired s.e.)`` (notebook 11)."""
    return run_check(EXERCISE, fn)
