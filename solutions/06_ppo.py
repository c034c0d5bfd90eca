"""Notebook 06 (06_ppo.ipynb), the implement-it exercise solved: `my_gae`, `my_clipped_policy_loss`.

Run this file to see the solution pass its check: `python solutions/06_ppo.py`. The worked answers to the
notebook's open exercises are in `06_ppo.md`, next to this file.
"""

import torch


def my_gae(rewards, values, mask, gamma, lam):
    """Generalised advantage estimation over each row's completion tokens. All tensors (B, T).

        δ_t = r_t + γ·V_{t+1} − V_t,    A_t = δ_t + γ·λ·A_{t+1},    R_t = A_t + V_t

    mask is 1 on completion tokens (contiguous, from the start of each row here; a row may have none); rewards are
    0 off the mask. The episode ends at the last completion token, so V and A are 0 after it, whatever `values`
    holds on the padding. Returns (advantages, returns), both (B, T) and 0 off the mask.
    """
    values = torch.where(mask.bool(), values, 0.0)  # nothing comes after the last token: V = 0 there
    rewards = torch.where(mask.bool(), rewards, 0.0)
    advantages = torch.zeros_like(rewards)
    next_value, next_advantage = torch.zeros(len(rewards)), torch.zeros(len(rewards))
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    advantages = torch.where(mask.bool(), advantages, 0.0)
    return advantages, torch.where(mask.bool(), advantages + values, 0.0)


def my_clipped_policy_loss(logprobs, old_logprobs, advantages, mask, clip_range):
    """PPO's clipped surrogate loss (a scalar tensor): one mean over all the batch's masked tokens, Σ m·ℓ / Σ m, of

        max(−A_t·ρ_t, −A_t·clip(ρ_t, 1 − ε, 1 + ε)),    ρ_t = exp(log π_t − log π_old,t),  ε = clip_range

    logprobs, old_logprobs, advantages, mask: (B, T); mask is 1 on completion tokens, and the padding's log-probs
    may hold anything (even huge numbers). A row may have no completion token.
    """
    ratio = torch.exp(torch.where(mask.bool(), logprobs - old_logprobs, 0.0))
    loss = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip_range, 1 + clip_range))
    return (loss * mask).sum() / mask.sum()


if __name__ == "__main__":
    from pref_lab.exercises import check_clipped_policy_loss, check_gae

    check_gae(my_gae)
    check_clipped_policy_loss(my_clipped_policy_loss)
