"""A toy bandit: one prompt, K canned completions, a reference policy and a reward.

It is the smallest world in which the RLHF objective, its closed-form optimum and DPO can be
computed *exactly*: a policy is just K probabilities, parametrised by K softmax logits.
Notebooks 05 (the RLHF objective) and 07 (deriving DPO) use it to check every equation.

Everything is float64 so that "matches to 1e-4" is about the maths, not rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pref_lab.dpo import dpo_loss
from pref_lab.rlhf import categorical_kl, check_beta

# (completion, pi_ref(y|x), gold reward r(x, y)). The reference model (think: the SFT model) likes
# lukewarm reviews; the reward (think: the sentiment judge's logit) likes enthusiastic ones.
# Rewards are distinct, so best-of-n has no ties.
MOVIE_COMPLETIONS = [
    ("A masterpiece.", 0.04, 2.5),
    ("Funny, moving and beautifully shot.", 0.08, 2.0),
    ("A solid, enjoyable film.", 0.20, 1.0),
    ("It was fine, I guess.", 0.25, 0.0),
    ("Some good moments, mostly forgettable.", 0.15, -0.4),
    ("Dull and far too long.", 0.15, -1.5),
    ("A mess from start to finish.", 0.08, -2.0),
    ("The worst film of the year.", 0.05, -2.5),
]


@dataclass(frozen=True)
class Bandit:
    """One prompt x with K completions y_1..y_K.

    ref_logprobs: (K,) log pi_ref(y|x), normalised.  rewards: (K,) r(x, y), the Bradley-Terry logit.
    """

    prompt: str
    completions: tuple[str, ...]
    ref_logprobs: torch.Tensor
    rewards: torch.Tensor

    def __post_init__(self) -> None:
        k = len(self.completions)
        if self.ref_logprobs.shape != (k,) or self.rewards.shape != (k,):
            raise ValueError(
                f"{k} completions but ref_logprobs has shape {tuple(self.ref_logprobs.shape)} "
                f"and rewards {tuple(self.rewards.shape)}; both must be ({k},)"
            )
        total = self.ref_logprobs.exp().sum().item()
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"pi_ref must sum to 1, got {total:.8f}")

    @property
    def num_completions(self) -> int:
        return len(self.completions)


def make_bandit() -> Bandit:
    """The course's movie-review bandit (K = 8 completions, see ``MOVIE_COMPLETIONS``)."""
    texts, ref_probs, rewards = zip(*MOVIE_COMPLETIONS)
    return Bandit(
        prompt="Write a review of Casablanca.",
        completions=tuple(texts),
        ref_logprobs=torch.tensor(ref_probs, dtype=torch.float64).log(),
        rewards=torch.tensor(rewards, dtype=torch.float64),
    )


def objective(logprobs: torch.Tensor, bandit: Bandit, beta: float) -> torch.Tensor:
    """J(pi) = E_{y~pi}[r(y)] - beta * KL(pi || pi_ref) for policies given as log-probs (..., K).

    Returns (...,). Differentiable, so gradient ascent can climb it.
    """
    check_beta(beta)
    expected_reward = (logprobs.exp() * bandit.rewards).sum(-1)
    return expected_reward - beta * categorical_kl(logprobs, bandit.ref_logprobs.expand_as(logprobs))


def gradient_ascent(
    bandit: Bandit, beta: float, steps: int = 2000, lr: float = 1.5, init_logits: torch.Tensor | None = None
) -> tuple[torch.Tensor, list[float]]:
    """Maximise J over softmax logits theta (pi = softmax(theta)) by plain gradient ascent.

    Starts from pi_ref (theta = log pi_ref) unless ``init_logits`` (K,) is given. J's curvature
    in theta scales with beta, so a step size of about 1.5 / beta is both stable and fast.
    Returns (log-probs of the final policy (K,), J after every step).
    """
    check_beta(beta)
    start = bandit.ref_logprobs if init_logits is None else init_logits
    if start.shape != bandit.ref_logprobs.shape:
        raise ValueError(f"init_logits must have shape {tuple(bandit.ref_logprobs.shape)}, got {tuple(start.shape)}")
    logits = start.detach().clone().to(torch.float64).requires_grad_(True)
    history = []
    for step in range(steps):
        value = objective(torch.log_softmax(logits, -1), bandit, beta)
        if torch.isnan(value):
            raise ValueError(f"objective is NaN at step {step} (lr={lr} too large?)")
        (grad,) = torch.autograd.grad(value, logits)
        with torch.no_grad():
            logits += lr * grad  # ascent: J goes up
        history.append(value.item())
    return torch.log_softmax(logits.detach(), -1), history


def sample_preference_pairs(bandit: Bandit, num_pairs: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample Bradley-Terry labelled pairs: y1, y2 ~ pi_ref (y1 != y2), y1 wins with prob sigma(r1 - r2).

    Returns (yw_ids, yl_ids), each a (num_pairs,) LongTensor of completion indices, ready for
    ``dpo_loss``. Pairs of identical completions carry no preference, so they are redrawn.
    """
    if num_pairs < 1:
        raise ValueError(f"num_pairs must be >= 1, got {num_pairs}")
    gen = torch.Generator().manual_seed(seed)
    probs = bandit.ref_logprobs.exp()
    first = torch.multinomial(probs, num_pairs, replacement=True, generator=gen)
    second = torch.multinomial(probs, num_pairs, replacement=True, generator=gen)
    # Redraw BOTH members of an identical pair (redrawing only one would skew towards likely y1).
    while (same := first == second).any():
        first[same] = torch.multinomial(probs, int(same.sum()), replacement=True, generator=gen)
        second[same] = torch.multinomial(probs, int(same.sum()), replacement=True, generator=gen)
    p_first_wins = torch.sigmoid(bandit.rewards[first] - bandit.rewards[second])
    first_wins = torch.rand(num_pairs, generator=gen, dtype=torch.float64) < p_first_wins
    yw_ids = torch.where(first_wins, first, second)
    yl_ids = torch.where(first_wins, second, first)
    return yw_ids, yl_ids


def population_preference_pairs(bandit: Bandit) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The infinite-data limit of ``sample_preference_pairs``: every ordered pair (w, l), w != l, once.

    Returns (yw_ids, yl_ids, weights), each (K*(K-1),); weights[i] is the probability that a
    sampled pair is (w wins, l loses): pi_ref(w) pi_ref(l) sigma(r_w - r_l) / P(y1 != y2).
    A weighted DPO loss on these equals the expected DPO loss over sampled data.
    """
    k = bandit.num_completions
    yw_ids, yl_ids = (ids.flatten() for ids in torch.meshgrid(torch.arange(k), torch.arange(k), indexing="ij"))
    distinct = yw_ids != yl_ids
    yw_ids, yl_ids = yw_ids[distinct], yl_ids[distinct]
    probs = bandit.ref_logprobs.exp()
    weights = probs[yw_ids] * probs[yl_ids] * torch.sigmoid(bandit.rewards[yw_ids] - bandit.rewards[yl_ids])
    return yw_ids, yl_ids, weights / weights.sum()


def fit_dpo(
    bandit: Bandit,
    yw_ids: torch.Tensor,
    yl_ids: torch.Tensor,
    beta: float,
    weights: torch.Tensor | None = None,
    steps: int = 300,
    lr: float = 0.1,
) -> tuple[torch.Tensor, list[float]]:
    """Fit a policy pi = softmax(theta) on preference pairs with the DPO loss (full batch, Adam).

    yw_ids, yl_ids: (P,) completion indices of each pair's winner and loser. weights: optional
    (P,) pair weights (e.g. from ``population_preference_pairs``); default: the plain mean.
    Starts at pi_ref. Here log pi(y_w) - log pi(y_l) = theta_w - theta_l (the normaliser cancels),
    so DPO on a bandit is logistic regression on logit differences: convex, one optimum per
    connected set of compared completions. Returns (log-probs (K,), loss after every step).
    """
    check_beta(beta)
    if yw_ids.shape != yl_ids.shape or yw_ids.ndim != 1:
        raise ValueError(f"yw_ids and yl_ids must both have shape (P,), got {tuple(yw_ids.shape)}, {tuple(yl_ids.shape)}")
    if (yw_ids == yl_ids).any():
        raise ValueError(f"{int((yw_ids == yl_ids).sum())} pairs have chosen == rejected")
    if weights is None:
        weights = torch.ones(yw_ids.shape, dtype=torch.float64)
    if weights.shape != yw_ids.shape:
        raise ValueError(f"weights must have shape {tuple(yw_ids.shape)}, got {tuple(weights.shape)}")
    # Identical pairs have identical loss terms: summing their weights into one row per distinct
    # (w, l) gives the same loss and gradient with at most K*(K-1) rows instead of P.
    pairs, row = torch.unique(torch.stack([yw_ids, yl_ids], 1), dim=0, return_inverse=True)
    yw_ids, yl_ids = pairs[:, 0], pairs[:, 1]
    weights = torch.zeros(len(pairs), dtype=torch.float64).index_add_(0, row, weights.to(torch.float64))
    weights = weights / weights.sum()
    logits = bandit.ref_logprobs.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([logits], lr=lr)
    history = []
    for step in range(steps):  # a few hundred steps on at most K*(K-1) rows: no progress bar needed
        losses, _ = dpo_loss(torch.log_softmax(logits, -1), bandit.ref_logprobs, yw_ids, yl_ids, beta)
        loss = (weights * losses).sum()
        if torch.isnan(loss):
            raise ValueError(f"DPO loss is NaN at step {step}")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    return torch.log_softmax(logits.detach(), -1), history


def total_variation(logprobs: torch.Tensor, other_logprobs: torch.Tensor) -> torch.Tensor:
    """TV(p, q) = 1/2 sum_y |p(y) - q(y)| over the last dimension, in [0, 1]."""
    if logprobs.shape != other_logprobs.shape:
        raise ValueError(f"shapes differ: {tuple(logprobs.shape)} vs {tuple(other_logprobs.shape)}")
    return 0.5 * (logprobs.exp() - other_logprobs.exp()).abs().sum(-1)
