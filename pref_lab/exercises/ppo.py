"""Notebook 06: generalised advantage estimation and PPO's clipped policy loss."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..ppo import compute_gae, masked_mean, policy_loss
from .checker import (
    NO_GRADIENT,
    NO_GRADIENT_ADVICE,
    Case,
    CheckResult,
    Exercise,
    Mistake,
    no_gradient,
    nonfinite_gradient,
    run_check,
)


# ----------------------------------------------------------------------------- GAE
def _bootstraps(rewards, values, mask, gamma, lam, at_end="zero"):
    """Bootstraps with the value of whatever follows the last token: the padding's values, and at the end of the grid
    0 (``at_end="zero"``) or the last column's value again (``"repeat"``)."""
    rewards = torch.where(mask.bool(), rewards, 0.0)
    advantages, next_adv = torch.zeros_like(rewards), torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        if t + 1 < rewards.shape[1]:
            next_value = values[:, t + 1]
        else:
            next_value = values[:, t] if at_end == "repeat" else torch.zeros_like(values[:, t])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = delta + gamma * lam * next_adv
        advantages[:, t] = next_adv
    advantages = torch.where(mask.bool(), advantages, 0.0)
    return advantages, torch.where(mask.bool(), advantages + values, 0.0)


def _masked_but_bootstraps_at_end(rewards, values, mask, gamma, lam):
    """Zeroes the values off the mask, but bootstraps a full row's last token with its own value."""
    return _bootstraps(rewards, torch.where(mask.bool(), values, 0.0), mask, gamma, lam, at_end="repeat")


def _no_lambda(rewards, values, mask, gamma, lam):
    return compute_gae(rewards, values, mask, gamma, 1.0)


def _returns_are_advantages(rewards, values, mask, gamma, lam):
    advantages, _ = compute_gae(rewards, values, mask, gamma, lam)
    return advantages, advantages


def _gae_cases() -> list[Case]:
    g = torch.Generator().manual_seed(6)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])

    def rewards():  # 0 on the padding, as per_token_rewards makes them
        return torch.randn(3, 5, generator=g) * mask

    # values on the padding are garbage on purpose: a value head outputs something at every position
    return [Case("three rows of 5, 3 and 1 tokens (gamma 1, lam 0.95)",
                 dict(rewards=rewards(), values=torch.randn(3, 5, generator=g), mask=mask, gamma=1.0, lam=0.95)),
            Case("gamma 0.9, lam 0.5", dict(rewards=rewards(), values=torch.randn(3, 5, generator=g), mask=mask,
                                            gamma=0.9, lam=0.5)),
            Case("a row with no completion token", dict(rewards=rewards() * torch.tensor([[1], [1], [0]]),
                                                        values=torch.randn(3, 5, generator=g),
                                                        mask=mask * torch.tensor([[1], [1], [0]]), gamma=1.0, lam=0.95))]


GAE_EXERCISE = Exercise(
    name="gae",
    reference=compute_gae,
    cases=_gae_cases(),
    mistakes=[
        Mistake("it bootstraps past the last token", "The episode ends at the last completion token (EOS or the "
                "length limit): V after it is 0. Don't read values[:, t + 1] on padding or past the grid; zero the "
                "values off the mask first.",
                wrong=[_bootstraps, _masked_but_bootstraps_at_end,
                       lambda rewards, values, mask, gamma, lam: _bootstraps(rewards, values, mask, gamma, lam,
                                                                             at_end="repeat")]),
        Mistake("lam is ignored", "A_t = δ_t + γ·λ·A_{t+1}: λ trades bias for variance (λ = 1 is the Monte-Carlo "
                "return).", wrong=_no_lambda),
        Mistake("the returns are the advantages", "The value targets are R_t = A_t + V_t.",
                wrong=_returns_are_advantages),
    ],
    hint="go backwards: δ_t = r_t + γ V_{t+1} − V_t with V = 0 after the last masked token; A_t = δ_t + γλ A_{t+1}; "
         "return (advantages, returns), both 0 off the mask.",
)


def check_gae(fn: Callable) -> CheckResult:
    """Check ``gae(rewards (B,T), values (B,T), mask (B,T), gamma, lam) -> (advantages, returns)`` (notebook 06)."""
    return run_check(GAE_EXERCISE, fn)


# ----------------------------------------------------------------------------- the clipped surrogate
def _reference_loss(logprobs, old_logprobs, advantages, mask, clip_range):
    return policy_loss(logprobs, old_logprobs, advantages, mask, clip_range)[0]


def _min_instead(logprobs, old_logprobs, advantages, mask, clip_range):
    ratio = torch.exp(torch.where(mask.bool(), logprobs - old_logprobs, 0.0))
    return masked_mean(torch.min(-advantages * ratio, -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)), mask)


def _unclipped(logprobs, old_logprobs, advantages, mask, clip_range):
    ratio = torch.exp(torch.where(mask.bool(), logprobs - old_logprobs, 0.0))
    return masked_mean(-advantages * ratio, mask)


def _padding_mean(logprobs, old_logprobs, advantages, mask, clip_range):
    ratio = torch.exp(torch.where(mask.bool(), logprobs - old_logprobs, 0.0))
    loss = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip_range, 1 + clip_range))
    return torch.where(mask.bool(), loss, 0.0).mean()


def _row_mean(logprobs, old_logprobs, advantages, mask, clip_range):
    ratio = torch.exp(torch.where(mask.bool(), logprobs - old_logprobs, 0.0))
    loss = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)) * mask
    return (loss.sum(-1) / mask.sum(-1)).mean()


def _exp_then_where(logprobs, old_logprobs, advantages, mask, clip_range):
    ratio = torch.exp(logprobs - old_logprobs)  # the forward is fine after the where below; the backward is not
    loss = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip_range, 1 + clip_range))
    return torch.where(mask.bool(), loss, 0.0).sum() / mask.sum()


def _exp_of_padding(logprobs, old_logprobs, advantages, mask, clip_range):
    ratio = torch.exp(logprobs - old_logprobs)  # garbage on the padding: exp may be inf, and inf * 0 is nan
    loss = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip_range, 1 + clip_range))
    return (loss * mask).sum() / mask.sum()


def _clip_cases() -> list[Case]:
    g = torch.Generator().manual_seed(7)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    old = -torch.rand(2, 4, generator=g) * 3
    # ratios from 0.5 to 1.6, so some tokens are inside the trust region and some beyond it on each side
    shift = torch.tensor([[0.47, -0.69, 0.05, -0.1], [0.3, -0.3, 0.0, 0.0]])
    adv = torch.tensor([[1.0, -1.0, 0.5, 2.0], [-1.5, 1.0, 3.0, -2.0]])
    garbage = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 200.0, 150.0]])  # what a model may output on padding
    return [Case("ratios inside and outside [1 - eps, 1 + eps], with padding",
                 dict(logprobs=(old + shift).requires_grad_(True), old_logprobs=old, advantages=adv, mask=mask,
                      clip_range=0.2)),
            Case("the first step (ratio 1 everywhere)",
                 dict(logprobs=old.clone().requires_grad_(True), old_logprobs=old, advantages=adv, mask=mask,
                      clip_range=0.2)),
            Case("huge log-probs on the padding",
                 dict(logprobs=(old + shift + garbage).requires_grad_(True), old_logprobs=old, advantages=adv,
                      mask=mask, clip_range=0.2)),
            Case("a row with no completion token",
                 dict(logprobs=(old + shift).requires_grad_(True), old_logprobs=old, advantages=adv,
                      mask=torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0]]), clip_range=0.2))]


CLIP_EXERCISE = Exercise(
    name="clipped_policy_loss",
    reference=_reference_loss,
    cases=_clip_cases(),
    mistakes=[
        Mistake(NO_GRADIENT, NO_GRADIENT_ADVICE, spot=no_gradient),
        Mistake("min where PPO takes max", "The loss is the negative of PPO's objective min(ρA, clip(ρ)A), so it is "
                "max(−ρA, −clip(ρ)A): the pessimistic (larger) loss.", wrong=_min_instead),
        Mistake("the ratio is never clipped", "Without the clip PPO is plain policy gradient on stale samples: clamp "
                "ρ to [1 − ε, 1 + ε] in the second term.", wrong=_unclipped),
        Mistake("padding is in the mean", "Average over the masked tokens only (masked_mean): padding is not an "
                "action.", wrong=_padding_mean),
        Mistake("each row is averaged, then the rows", "Take one mean over all the batch's masked tokens "
                "(Σ m·loss / Σ m), as masked_mean does: a row with no token then adds nothing instead of 0/0.",
                wrong=_row_mean),
        Mistake("exp of the padding overflows", "The padding's log-probs can be anything: exp(200) is inf, and inf·0 "
                "= nan, in the loss or in its gradient, even after masking. Zero the log-ratio off the mask *before* "
                "the exp.", wrong=_exp_of_padding,
                spot=lambda out, given: (isinstance(out, torch.Tensor) and not torch.isfinite(out.detach()).all())
                or nonfinite_gradient("logprobs")(out, given)),
    ],
    hint="ρ = exp(logprobs − old_logprobs); loss = masked mean of max(−A·ρ, −A·clip(ρ, 1 − ε, 1 + ε)).",
)


def check_clipped_policy_loss(fn: Callable) -> CheckResult:
    """Check ``clipped_policy_loss(logprobs, old_logprobs, advantages, mask (all (B,T)), clip_range) -> scalar``
    (notebook 06)."""
    return run_check(CLIP_EXERCISE, fn)
