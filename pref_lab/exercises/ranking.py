"""Notebooks 01 and 03: the Plackett–Luce and Bradley–Terry losses."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..bradley_terry import bt_loss, plackett_luce_nll
from .checker import NO_GRADIENT, NO_GRADIENT_ADVICE, Case, CheckResult, Exercise, Mistake, no_gradient, run_check


# ----------------------------------------------------------------------------- 01: Plackett–Luce
def _pl_pairwise(scores, ranking):
    ordered = scores[ranking]
    return sum(-F.logsigmoid(ordered[i] - ordered[j]) for i in range(len(ordered)) for j in range(i + 1, len(ordered)))


def _pl_all_items(scores, ranking):
    return -(scores[ranking] - torch.logsumexp(scores, 0)).sum()


def _pl_reversed(scores, ranking):
    return plackett_luce_nll(scores, ranking.flip(0))


def _pl_ignored(scores, ranking):
    return plackett_luce_nll(scores, torch.arange(len(scores)))


def _pl_overflow(scores, ranking):
    ordered = scores[ranking].exp()
    remaining = ordered.flip(0).cumsum(0).flip(0)
    return -(ordered / remaining).log().sum()


def _pl_cases() -> list[Case]:
    g = torch.Generator().manual_seed(1)
    grad = dict(requires_grad=True)  # scores a model would train: the loss must carry their gradient
    return [Case("three items", dict(scores=torch.tensor([0.5, -1.0, 2.0], **grad), ranking=torch.tensor([2, 0, 1]))),
            Case("two items (it must equal the Bradley–Terry loss)",
                 dict(scores=torch.tensor([0.3, 1.2], **grad), ranking=torch.tensor([1, 0]))),
            Case("five random items", dict(scores=torch.randn(5, generator=g).requires_grad_(True),
                                           ranking=torch.randperm(5, generator=g))),
            Case("large scores (exp(200) overflows)",
                 dict(scores=torch.tensor([200.0, 150.0, 100.0], **grad), ranking=torch.tensor([1, 0, 2])))]


PL_EXERCISE = Exercise(
    name="plackett_luce",
    reference=plackett_luce_nll,
    cases=_pl_cases(),
    mistakes=[
        Mistake(NO_GRADIENT, NO_GRADIENT_ADVICE, spot=no_gradient),
        Mistake("this is the sum of pairwise Bradley–Terry losses", "Plackett–Luce picks the best of the *remaining* "
                "items, one step at a time: step k compares the k-th item with everything ranked below it at once "
                "(one softmax), not with each of them in a separate pair.", wrong=_pl_pairwise),
        Mistake("every step normalises over all items", "Once an item is placed it leaves the pool: step k's softmax "
                "runs over the items ranked k-th or lower only (a logsumexp over ranking[k:]).", wrong=_pl_all_items),
        Mistake("the ranking is ignored", "The scores are in item order; ranking says which item came first. Put "
                "the scores in the ranking's order (best first) before the steps.", wrong=_pl_ignored),
        Mistake("the ranking is read worst-first", "ranking[0] is the *best* item: it is picked first, against all "
                "the others.", wrong=_pl_reversed),
        Mistake("exp overflows", "Work with log-probabilities: score − logsumexp(remaining scores), never exp(score) "
                "/ sum(exp(...)), which is inf/inf = nan for scores near 100.",
                spot=lambda out, args: not torch.isfinite(torch.as_tensor(out).detach()).all()),
    ],
    hint="-log P(ranking) = -Σ_k [ r_π(k) − logsumexp_{j≥k} r_π(j) ], with π = ranking (best first).",
)


def check_plackett_luce(fn: Callable) -> CheckResult:
    """Check ``plackett_luce(scores (K,), ranking (K,)) -> scalar`` (notebook 01)."""
    return run_check(PL_EXERCISE, fn)


# ----------------------------------------------------------------------------- 03: Bradley–Terry
def _bt_log_sigmoid(r_chosen, r_rejected):
    return -torch.log(torch.sigmoid(r_chosen - r_rejected)).mean()


def _bt_log1p_exp(r_chosen, r_rejected):
    return torch.log1p(torch.exp(-(r_chosen - r_rejected))).mean()  # exp(200) overflows to inf


def _bt_flipped(r_chosen, r_rejected):
    return bt_loss(r_rejected, r_chosen)


def _bt_sum(r_chosen, r_rejected):
    return bt_loss(r_chosen, r_rejected, reduction="sum")


def _bt_probability(r_chosen, r_rejected):
    return (1 - torch.sigmoid(r_chosen - r_rejected)).mean()


def _bt_cases() -> list[Case]:
    g = torch.Generator().manual_seed(3)

    def scores(x):  # rewards a model would train: the loss must carry their gradient
        return torch.as_tensor(x, dtype=torch.float32).clone().requires_grad_(True)

    return [Case("eight random pairs", dict(r_chosen=scores(torch.randn(8, generator=g)),
                                            r_rejected=scores(torch.randn(8, generator=g)))),
            Case("a tie (margin 0: the loss is log 2)", dict(r_chosen=scores([0.7]), r_rejected=scores([0.7]))),
            Case("a badly wrong pair (margin -200)", dict(r_chosen=scores([-100.0, 1.0]), r_rejected=scores([100.0, 0.0])))]


BT_EXERCISE = Exercise(
    name="bt_loss",
    reference=bt_loss,
    cases=_bt_cases(),
    mistakes=[
        Mistake(NO_GRADIENT, NO_GRADIENT_ADVICE, spot=no_gradient),
        Mistake("the log-sigmoid is not computed stably", "At a margin of −200, sigmoid is 0 in float32 (and log 0 = "
                "−inf), and exp(200) is inf: the same formula needs a numerically stable log-sigmoid (torch has "
                "one).", wrong=[_bt_log_sigmoid, _bt_log1p_exp],
                spot=lambda out, args: not torch.isfinite(torch.as_tensor(out).detach()).all()),
        Mistake("the sign is flipped (the loser's likelihood)", "The loss is −log σ(r_chosen − r_rejected): it is "
                "small when the chosen reward is the larger.", wrong=_bt_flipped),
        Mistake("the losses are summed, not averaged", "Take the mean over pairs, so the loss (and the learning "
                "rate) does not depend on the batch size.", wrong=_bt_sum),
        Mistake("this is a probability, not a log-likelihood", "1 − σ(margin) is the probability of the wrong "
                "order, not −log σ(margin): its gradient vanishes on badly wrong pairs, which the BT loss fixes hardest.",
                wrong=_bt_probability),
    ],
    hint="loss = mean over pairs of −log σ(r_chosen − r_rejected), computed stably for large margins.",
)


def check_bt_loss(fn: Callable) -> CheckResult:
    """Check ``bt_loss(r_chosen (B,), r_rejected (B,)) -> scalar`` (notebook 03)."""
    return run_check(BT_EXERCISE, fn)
