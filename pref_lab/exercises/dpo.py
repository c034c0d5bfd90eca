"""Notebooks 08, 09 and 12: sequence log-probs, the seed's dpo_loss, RewardBench scoring of the implicit reward,
and IPO from the loss zoo."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..dpo import dpo_loss
from ..logprobs import completion_logprobs
from ..losses import ipo_loss
from ..rewardbench import pairwise_correct
from .checker import NO_GRADIENT, NO_GRADIENT_ADVICE, Case, CheckResult, Exercise, Mistake, no_gradient, run_check


# ----------------------------------------------------------------------------- 08: log pi(y|x) of a sequence
def _seq_reference(token_logps, completion_mask):
    return completion_logprobs(token_logps, completion_mask)


def _seq_averaged(token_logps, completion_mask):
    return completion_logprobs(token_logps, completion_mask, average=True)


def _seq_unshifted(token_logps, completion_mask):
    return (token_logps * completion_mask[:, :-1]).sum(-1)


def _seq_everything(token_logps, completion_mask):
    return token_logps.sum(-1)


def _seq_cases() -> list[Case]:
    g = torch.Generator().manual_seed(8)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 0], [0, 1, 1, 1, 0, 0]])
    return [Case("three rows: completions of 4, 2 and 3 tokens after prompts, then padding",
                 dict(token_logps=-torch.rand(3, 5, generator=g) * 4, completion_mask=mask)),
            Case("a one-token completion (its EOS) and a row with no completion token",
                 dict(token_logps=-torch.rand(2, 4, generator=g) * 4,
                      completion_mask=torch.tensor([[0, 0, 0, 0, 1], [0, 0, 0, 0, 0]])))]


SEQ_EXERCISE = Exercise(
    name="sequence_logprob",
    reference=_seq_reference,
    cases=_seq_cases(),
    mistakes=[
        Mistake("your log-probs look averaged over tokens", "The course *sums* them: log π(y|x) = Σ_t log π(y_t | x, "
                "y_<t) (see `sequence_logprobs`). Averaging gives SimPO's length-normalised score, a different "
                "quantity.", wrong=_seq_averaged),
        Mistake("the mask is not shifted", "token_logps[:, t - 1] is the log-prob of token t, so the mask must be "
                "shifted by one position to line up with it.", wrong=_seq_unshifted),
        Mistake("the prompt and padding are summed too", "Multiply by the shifted completion mask before summing: "
                "only the completion's tokens (EOS included) belong to log π(y|x).", wrong=_seq_everything),
    ],
    hint="log π(y|x) is the sum of the completion tokens' log-probs (EOS included); entry t − 1 of token_logps "
         "belongs to token t.",
)


def check_sequence_logprob(fn: Callable) -> CheckResult:
    """Check ``sequence_logprob(token_logps (B,T-1), completion_mask (B,T)) -> (B,)`` (notebook 08)."""
    return run_check(SEQ_EXERCISE, fn)


# ----------------------------------------------------------------------------- 08: the seed's dpo_loss
def _dpo_likelihood(pi_logps, ref_logps, yw_ids, yl_ids, beta):
    losses, rewards = dpo_loss(pi_logps, ref_logps, yw_ids, yl_ids, beta)
    return -losses, rewards


def _dpo_swapped(pi_logps, ref_logps, yw_ids, yl_ids, beta):
    return dpo_loss(pi_logps, ref_logps, yl_ids, yw_ids, beta)


def _dpo_no_beta(pi_logps, ref_logps, yw_ids, yl_ids, beta):
    losses, _ = dpo_loss(pi_logps, ref_logps, yw_ids, yl_ids, 1.0)
    return losses, beta * (pi_logps - ref_logps).detach()


def _dpo_no_reference(pi_logps, ref_logps, yw_ids, yl_ids, beta):
    losses = -F.logsigmoid(beta * (pi_logps[yw_ids] - pi_logps[yl_ids]))
    return losses, beta * (pi_logps - ref_logps).detach()


def _dpo_self_reference(pi_logps, ref_logps, yw_ids, yl_ids, beta):
    return dpo_loss(pi_logps, pi_logps.detach(), yw_ids, yl_ids, beta)


def _rewards_without_reference(pi_logps, ref_logps, yw_ids, yl_ids, beta):
    return dpo_loss(pi_logps, ref_logps, yw_ids, yl_ids, beta)[0], beta * pi_logps.detach()


def _rewards_flipped(pi_logps, ref_logps, yw_ids, yl_ids, beta):
    return dpo_loss(pi_logps, ref_logps, yw_ids, yl_ids, beta)[0], beta * (ref_logps - pi_logps).detach()


def _not_detached(out, args):
    rewards = out[1] if isinstance(out, (tuple, list)) and len(out) == 2 else None
    return isinstance(rewards, torch.Tensor) and rewards.requires_grad


def _dpo_cases() -> list[Case]:
    g = torch.Generator().manual_seed(9)
    pi = (-torch.rand(6, generator=g) * 20).requires_grad_(True)  # the policy's log-probs carry gradients
    ref = pi.detach() + torch.randn(6, generator=g)
    yw, yl = torch.tensor([0, 2, 4]), torch.tensor([1, 3, 5])
    h = (pi[0] - pi[1]) - (ref[0] - ref[1])  # the pair (0, 1), ordered so that its margin h is negative
    wrong_w, wrong_l = (0, 1) if h < 0 else (1, 0)
    return [Case("three pairs, beta 0.1", dict(pi_logps=pi, ref_logps=ref, yw_ids=yw, yl_ids=yl, beta=0.1)),
            Case("pairs given in another order, beta 0.5",
                 dict(pi_logps=pi, ref_logps=ref, yw_ids=torch.tensor([5, 0]), yl_ids=torch.tensor([2, 3]), beta=0.5)),
            Case("policy = reference (the first step: every loss is log 2)",
                 dict(pi_logps=pi, ref_logps=pi.detach().clone(), yw_ids=yw, yl_ids=yl, beta=0.1)),
            Case("beta 1000 on a pair the policy orders wrongly (log(sigmoid) underflows)",
                 dict(pi_logps=pi, ref_logps=ref, yw_ids=torch.tensor([wrong_w]), yl_ids=torch.tensor([wrong_l]),
                      beta=1000.0))]


def _dpo_reference(pi_logps, ref_logps, yw_ids, yl_ids, beta):
    return dpo_loss(pi_logps, ref_logps, yw_ids, yl_ids, beta)  # the course's helper keeps the lecture's names


DPO_EXERCISE = Exercise(
    name="dpo_loss",
    reference=_dpo_reference,
    cases=_dpo_cases(),
    mistakes=[
        Mistake(NO_GRADIENT, NO_GRADIENT_ADVICE, spot=no_gradient),
        Mistake("the rewards are not detached", "`rewards` is for logging: β(log π − log π_ref).detach(). Left "
                "attached, anything built from it joins the graph (and a reward added to the loss would train).",
                spot=_not_detached),
        Mistake("this returns the log-likelihood, not the loss", "F.logsigmoid(β·h) is the log-likelihood of the "
                "preferences; minimising it trains *backwards*. The loss is −F.logsigmoid(β·h).",
                wrong=_dpo_likelihood),
        Mistake("chosen and rejected are swapped", "h = (log π(y_w) − log π(y_l)) − (log π_ref(y_w) − log π_ref(y_l)): "
                "yw_ids index the preferred completions.", wrong=_dpo_swapped),
        Mistake("beta is left out of the loss", "The loss is −log σ(β·h): β sets how strongly the margin is pushed.",
                wrong=_dpo_no_beta),
        Mistake("the reference model is left out", "Subtract the reference's log-ratio: without it the loss rewards "
                "whatever the policy already prefers, and nothing holds it near π_ref.", wrong=_dpo_no_reference),
        Mistake("the policy is its own reference", "ref_logps must come from the frozen reference model (the SFT "
                "model), not from the policy detached: with π_ref = π every loss stays log 2 and nothing holds the "
                "policy near where it started.", wrong=_dpo_self_reference),
        Mistake("the rewards leave out the reference", "β·log π(y|x) is negative for every text, so a negative "
                "`rewards/chosen` would tell you nothing. The implicit reward is β(log π − log π_ref): 0 at the "
                "start, and it can still go negative for the chosen answers while the loss falls (notebook 08, "
                "section 7), which is not a bug.", wrong=_rewards_without_reference),
        Mistake("the rewards have the wrong sign", "r̂ = β(log π − log π_ref): positive where the policy likes an "
                "answer more than the reference does.", wrong=_rewards_flipped),
        Mistake("log(sigmoid(...)) underflows", "Use a numerically stable log-sigmoid: on this pair β·h is a large "
                "negative number, sigmoid rounds to 0 and its log is −inf.",
                spot=lambda out, args: isinstance(out, (tuple, list)) and isinstance(out[0], torch.Tensor)
                and not torch.isfinite(out[0]).all()),
    ],
    hint="losses are per pair (P,): −log σ(β·h), h the policy's log-ratio of winner over loser minus the "
         "reference's; rewards are per completion (B,), for logging only.",
)


def check_dpo_loss(fn: Callable) -> CheckResult:
    """Check ``dpo_loss(pi_logps (B,), ref_logps (B,), yw_ids (P,), yl_ids (P,), beta) -> (losses (P,), rewards (B,))``
    (notebook 08)."""
    return run_check(DPO_EXERCISE, fn)


# ----------------------------------------------------------------------------- 09: RewardBench on the implicit reward
def _acc_reference(pi_chosen, ref_chosen, pi_rejected, ref_rejected, beta):
    return pairwise_correct(beta * (pi_chosen - ref_chosen), beta * (pi_rejected - ref_rejected)).double().mean().item()


def _acc_ties_win(pi_chosen, ref_chosen, pi_rejected, ref_rejected, beta):
    return (beta * (pi_chosen - ref_chosen) >= beta * (pi_rejected - ref_rejected)).double().mean().item()


def _acc_ties_half(pi_chosen, ref_chosen, pi_rejected, ref_rejected, beta):
    c, r = beta * (pi_chosen - ref_chosen), beta * (pi_rejected - ref_rejected)
    return ((c > r).double() + 0.5 * (c == r).double()).mean().item()


def _acc_no_reference(pi_chosen, ref_chosen, pi_rejected, ref_rejected, beta):
    return (pi_chosen > pi_rejected).double().mean().item()


def _acc_cases() -> list[Case]:
    g = torch.Generator().manual_seed(10)
    pc, pr = -torch.rand(8, generator=g) * 30, -torch.rand(8, generator=g) * 30
    rc, rr = pc + torch.randn(8, generator=g) * 3, pr + torch.randn(8, generator=g) * 3
    # identical answers: pairs 0-2 are ties (the same completion on both sides), so both rewards are equal
    tc, tr = pc.clone(), pr.clone()
    trc, trr = rc.clone(), rr.clone()
    tr[:3], trr[:3] = tc[:3], trc[:3]
    return [Case("eight pairs", dict(pi_chosen=pc, ref_chosen=rc, pi_rejected=pr, ref_rejected=rr, beta=0.1)),
            Case("eight pairs, three of them exact ties",
                 dict(pi_chosen=tc, ref_chosen=trc, pi_rejected=tr, ref_rejected=trr, beta=0.1))]


ACC_EXERCISE = Exercise(
    name="implicit_reward_accuracy",
    reference=_acc_reference,
    cases=_acc_cases(),
    mistakes=[
        Mistake("ties are counted as wins", "RewardBench counts a pair as right only if the chosen score is strictly "
                "larger (`pairwise_correct` uses >): a scorer that gives every answer the same score must get 0, not "
                "100%.", wrong=_acc_ties_win),
        Mistake("ties are counted as half a win", "RewardBench's rule is strict: a tie is wrong.", wrong=_acc_ties_half),
        Mistake("the reference is left out", "The implicit reward is β(log π − log π_ref); without the reference you "
                "score the policy's likelihood, which mostly prefers short, common text.", wrong=_acc_no_reference),
    ],
    hint="score each side with its implicit reward β(log π − log π_ref); RewardBench's rule decides what counts "
         "as right; return the share of right pairs as a float.",
)


def check_implicit_reward_accuracy(fn: Callable) -> CheckResult:
    """Check ``implicit_reward_accuracy(pi_chosen, ref_chosen, pi_rejected, ref_rejected (all (P,)), beta) -> float``
    (notebook 09)."""
    return run_check(ACC_EXERCISE, fn)


# ----------------------------------------------------------------------------- 12: IPO
def _ipo_beta_margin(chosen_logratios, rejected_logratios, beta):
    return (beta * (chosen_logratios - rejected_logratios) - 1 / (2 * beta)) ** 2


def _ipo_target_one_over_beta(chosen_logratios, rejected_logratios, beta):
    return (chosen_logratios - rejected_logratios - 1 / beta) ** 2


def _ipo_no_target(chosen_logratios, rejected_logratios, beta):
    return (chosen_logratios - rejected_logratios) ** 2


def _ipo_mean(chosen_logratios, rejected_logratios, beta):
    return ipo_loss(chosen_logratios, rejected_logratios, beta).mean()


def _ipo_cases() -> list[Case]:
    g = torch.Generator().manual_seed(12)
    return [Case("five pairs, beta 0.1", dict(chosen_logratios=(torch.randn(5, generator=g) * 3).requires_grad_(True),
                                              rejected_logratios=(torch.randn(5, generator=g) * 3).requires_grad_(True),
                                              beta=0.1)),
            Case("beta 1 (target margin 0.5)", dict(chosen_logratios=torch.tensor([0.5, 2.0, -1.0], requires_grad=True),
                                                    rejected_logratios=torch.zeros(3, requires_grad=True), beta=1.0))]


IPO_EXERCISE = Exercise(
    name="ipo_loss",
    reference=ipo_loss,
    cases=_ipo_cases(),
    mistakes=[
        Mistake(NO_GRADIENT, NO_GRADIENT_ADVICE, spot=no_gradient),
        Mistake("the margin is scaled by beta, as in DPO", "IPO regresses the raw margin h onto its target: "
                "(h − 1/(2β))², with no β in front of h (Azar et al. 2023, Eq. 17).", wrong=_ipo_beta_margin),
        Mistake("the target is 1/beta", "IPO's target margin is 1/(2β).", wrong=_ipo_target_one_over_beta),
        Mistake("there is no target", "h² pulls every margin to 0: the loss needs its target, (h − 1/(2β))².",
                wrong=_ipo_no_target),
        Mistake("the losses are averaged", "Return one loss per pair, shape (P,), as every loss in "
                "`pref_lab.losses` does; the training loop takes the mean.", wrong=_ipo_mean),
    ],
    hint="IPO regresses the margin h onto a finite target (notebook 12, section 2); one loss per pair.",
)


def check_ipo_loss(fn: Callable) -> CheckResult:
    """Check ``ipo_loss(chosen_logratios (P,), rejected_logratios (P,), beta) -> (P,)`` (notebook 12)."""
    return run_check(IPO_EXERCISE, fn)
