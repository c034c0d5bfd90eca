"""Notebook 00: the gold judge's reward from its terms."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..judge import RaterRules, combine_terms
from .checker import Case, CheckResult, Exercise, Mistake, run_check

# The shipped rules' shape (bound, floor, weights), with round numbers so a student can follow the arithmetic.
RULES = RaterRules(bound=3.0, fluency_floor=-5.5, fluency_weight=4.0, max_fluency_penalty=6.0, repetition_weight=3.0,
                   unfinished_penalty=2.0)


def _reference(sentiment, fluency, repetition, finished, rules):
    return combine_terms(sentiment, fluency, repetition, finished, torch.ones_like(sentiment), rules)


def _no_bound(sentiment, fluency, repetition, finished, rules):
    r = rules
    return sentiment - (r.fluency_weight * (r.fluency_floor - fluency).clamp(min=0)).clamp(max=r.max_fluency_penalty) \
        - r.repetition_weight * repetition - r.unfinished_penalty * (1 - finished)


def _uncapped(sentiment, fluency, repetition, finished, rules):
    r = rules
    return r.bound * torch.tanh(sentiment / r.bound) - r.fluency_weight * (r.fluency_floor - fluency).clamp(min=0) \
        - r.repetition_weight * repetition - r.unfinished_penalty * (1 - finished)


def _charges_fluent(sentiment, fluency, repetition, finished, rules):
    r = rules
    return r.bound * torch.tanh(sentiment / r.bound) - (r.fluency_weight * (r.fluency_floor - fluency)).clamp(
        max=r.max_fluency_penalty) - r.repetition_weight * repetition - r.unfinished_penalty * (1 - finished)


def _ignores_ending(sentiment, fluency, repetition, finished, rules):
    return _reference(sentiment, fluency, repetition, torch.ones_like(finished), rules)


def _cases() -> list[Case]:
    g = torch.Generator().manual_seed(0)
    n = 6
    typical = dict(sentiment=torch.randn(n, generator=g) * 2, fluency=-4.5 - torch.rand(n, generator=g) * 2,
                   repetition=torch.rand(n, generator=g) * 0.3, finished=torch.tensor([1., 1., 0., 1., 0., 1.]),
                   rules=RULES)
    stuffed = dict(sentiment=torch.tensor([2.0, 12.0, 25.0, -15.0]), fluency=torch.tensor([-4.0, -4.2, -4.1, -4.3]),
                   repetition=torch.zeros(4), finished=torch.ones(4), rules=RULES)
    broken = dict(sentiment=torch.tensor([1.0, 1.0, 1.0]), fluency=torch.tensor([-5.0, -9.0, -math.inf]),
                  repetition=torch.tensor([0.0, 0.5, 0.0]), finished=torch.tensor([1.0, 1.0, 0.0]), rules=RULES)
    return [Case("six typical samples", typical), Case("texts stuffed with praise words (large sentiment)", stuffed),
            Case("a disfluent text, a loop said twice, and an empty cut-off text (fluency -inf)", broken)]


EXERCISE = Exercise(
    name="gold_from_terms",
    reference=_reference,
    cases=_cases(),
    mistakes=[
        Mistake("the sentiment is not bounded", "Pass S through A·tanh(S/A) (A = rules.bound): without it, piling up "
                "praise words raises the reward without limit, the loophole this judge closes.", wrong=_no_bound),
        Mistake("the fluency penalty is not capped", "Clamp λ·max(0, F0 − F) at rules.max_fluency_penalty: an empty "
                "text has fluency −inf, and the reward must stay finite.", wrong=_uncapped),
        Mistake("fluent texts are charged too", "Only nats *below* the floor cost reward: max(0, F0 − F). A text more "
                "fluent than F0 pays nothing (and earns nothing).", wrong=_charges_fluent),
        Mistake("a cut-off text is not charged", "Subtract rules.unfinished_penalty where finished == 0.",
                wrong=_ignores_ending),
    ],
    hint="r = A·tanh(S/A) − min(λ·max(0, F0 − F), P) − μ·ρ − c·(1 − finished); the rules' fields are bound, "
         "fluency_floor, fluency_weight, max_fluency_penalty, repetition_weight, unfinished_penalty.",
)


def check_gold_from_terms(fn: Callable) -> CheckResult:
    """Check ``gold_from_terms(sentiment, fluency, repetition, finished, rules) -> (N,)`` (notebook 00)."""
    return run_check(EXERCISE, fn)
