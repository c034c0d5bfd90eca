"""The Bradley–Terry model: turning pairwise preferences into scalar rewards.

Each item (a response, a chess player, a chatbot in an arena) has a latent score r. The chance
that item 1 is preferred to item 2 is

    p(y1 > y2) = exp(r1) / (exp(r1) + exp(r2)) = sigmoid(r1 - r2)

Only differences matter, so r is identifiable up to an additive constant. Fitting r by maximum
likelihood on observed (winner, loser) pairs minimises

    NLL(r) = -sum_games log sigmoid(r_winner - r_loser)

which is exactly the reward-model loss of notebook 04 (there r comes from a network).

A set of games is two 1-D integer tensors of the same length: ``winners[g]`` beat ``losers[g]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

from pref_lab.config import seed_everything

# ---------------------------------------------------------------------------------------------
# The model and its loss
# ---------------------------------------------------------------------------------------------


def _check_same_shape(a: torch.Tensor, b: torch.Tensor, names: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{names} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def bt_probability(r_first: torch.Tensor, r_second: torch.Tensor) -> torch.Tensor:
    """p(first > second) = exp(r1) / (exp(r1) + exp(r2)) = sigmoid(r1 - r2), elementwise.

    r_first, r_second: same shape (any). Written as a sigmoid of the margin so it never computes
    exp(r) itself (exp(1e4) overflows; sigmoid(1e4) is just 1).
    """
    _check_same_shape(r_first, r_second, "r_first and r_second")
    return torch.sigmoid(r_first - r_second)


def bt_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Bradley–Terry negative log-likelihood -log sigmoid(r_chosen - r_rejected).

    r_chosen, r_rejected: same shape (B,). ``reduction``: "mean" (scalar), "sum" (scalar) or
    "none" (B,). Uses ``F.logsigmoid``: for a margin of -1e4 it returns 1e4, where
    ``log(sigmoid(m))`` would return log(0) = -inf.
    """
    _check_same_shape(r_chosen, r_rejected, "r_chosen and r_rejected")
    losses = -F.logsigmoid(r_chosen - r_rejected)
    if reduction == "mean":
        return losses.mean()
    if reduction == "sum":
        return losses.sum()
    if reduction == "none":
        return losses
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def plackett_luce_nll(scores: torch.Tensor, ranking: torch.Tensor) -> torch.Tensor:
    """Listwise (Plackett–Luce) negative log-likelihood of a full ranking.

    scores: (K,) item scores; ranking: (K,) item indices, best first. The ranking is built by
    picking the best of the remaining items with probability softmax over what remains:

        -log P(ranking) = -sum_{k=1..K} [ r_{pi(k)} - logsumexp_{j >= k} r_{pi(j)} ]

    With K = 2 this is exactly the Bradley–Terry loss -log sigmoid(r_winner - r_loser).
    """
    if scores.ndim != 1 or ranking.shape != scores.shape:
        raise ValueError(f"scores and ranking must both have shape (K,), got {tuple(scores.shape)} and {tuple(ranking.shape)}")
    if sorted(ranking.tolist()) != list(range(len(scores))):
        raise ValueError(f"ranking must be a permutation of 0..{len(scores) - 1}, got {ranking.tolist()}")
    ordered = scores[ranking]
    # logcumsumexp from the end: entry k = logsumexp of the items still available at step k
    remaining = torch.logcumsumexp(ordered.flip(0), dim=0).flip(0)
    return -(ordered - remaining).sum()


def check_games(winners: torch.Tensor, losers: torch.Tensor, n_players: int) -> None:
    """Raise ValueError unless ``winners``/``losers`` are equal-length 1-D integer tensors of valid,
    distinct player indices in [0, n_players)."""
    _check_same_shape(winners, losers, "winners and losers")
    if winners.dim() != 1 or winners.numel() == 0:
        raise ValueError(f"winners and losers must be non-empty 1-D tensors, got shape {tuple(winners.shape)}")
    if winners.is_floating_point() or losers.is_floating_point():
        raise ValueError("winners and losers must hold integer player indices, not floats")
    for name, idx in (("winners", winners), ("losers", losers)):
        bad = ((idx < 0) | (idx >= n_players)).nonzero()
        if len(bad):
            g = bad[0].item()
            raise ValueError(f"game {g}: {name}[{g}] = {idx[g].item()} is out of range for n_players={n_players}")
    same = (winners == losers).nonzero()
    if len(same):
        g = same[0].item()
        raise ValueError(f"game {g}: player {winners[g].item()} plays against itself")


def bt_nll(skills: torch.Tensor, winners: torch.Tensor, losers: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Arena NLL: ``bt_loss(skills[winners], skills[losers])``. skills: (n_players,); games: (G,)."""
    check_games(winners, losers, len(skills))
    return bt_loss(skills[winners], skills[losers], reduction=reduction)


def pairwise_accuracy(skills: torch.Tensor, winners: torch.Tensor, losers: torch.Tensor) -> float:
    """Fraction of games whose winner has the strictly higher score (ties count as wrong, as TRL's
    ``rewards/accuracies``)."""
    check_games(winners, losers, len(skills))
    return (skills[winners] > skills[losers]).double().mean().item()


# ---------------------------------------------------------------------------------------------
# Fitting: maximum likelihood (a MAP with a tiny Gaussian prior) and online Elo
# ---------------------------------------------------------------------------------------------


@dataclass
class BTFit:
    """Result of :func:`fit_bt`: skills (n_players,) with mean zero, and the mean NLL per step
    (``nll_history[0]`` is log 2, at s = 0; the last entry is at the returned skills)."""

    skills: torch.Tensor
    nll_history: list[float] = field(default_factory=list)


def bt_objective(skills: torch.Tensor, winners: torch.Tensor, losers: torch.Tensor, l2: float) -> torch.Tensor:
    """What :func:`fit_bt` minimises: sum_games -log sigmoid(s_w - s_l) + (l2 / 2) ||s||^2."""
    return bt_loss(skills[winners], skills[losers], reduction="sum") + 0.5 * l2 * (skills**2).sum()


def bt_hessian(skills: torch.Tensor, winners: torch.Tensor, losers: torch.Tensor, l2: float) -> torch.Tensor:
    """Hessian of :func:`bt_objective`, (n_players, n_players):

        H = sum_games p (1 - p) (e_w - e_l)(e_w - e_l)^T + l2 I,   p = sigmoid(s_w - s_l)

    (the logistic-regression Hessian; each game adds its curvature to four entries).
    """
    p = torch.sigmoid(skills[winners] - skills[losers])
    curvature = p * (1 - p)
    hess = l2 * torch.eye(len(skills), dtype=skills.dtype)
    hess.index_put_((winners, winners), curvature, accumulate=True)
    hess.index_put_((losers, losers), curvature, accumulate=True)
    hess.index_put_((winners, losers), -curvature, accumulate=True)
    hess.index_put_((losers, winners), -curvature, accumulate=True)
    return hess


def fit_bt(
    winners: torch.Tensor,
    losers: torch.Tensor,
    n_players: int,
    l2: float = 1e-2,
    max_steps: int = 100,
    tol: float = 1e-8,
) -> BTFit:
    """Maximum-likelihood Bradley–Terry skills by Newton's method.

    Minimises  sum_games -log sigmoid(s_w - s_l) + (l2 / 2) ||s||^2  over s (n_players,): a MAP
    estimate with a N(0, 1/l2) prior, which is the MLE up to a shrinkage that vanishes as games
    accumulate.

    - The constant: every game's gradient is +g for the loser and -g for the winner, so the
      game term never moves the mean skill; l2 > 0 pins it at 0 (and makes H invertible) and keeps
      s finite when a player won, or lost, every game.
    - Newton: s <- s - t H^{-1} grad, with the gradient from autograd and H from
      :func:`bt_hessian`. t starts at 1 and is halved until the objective goes down (Newton can
      overshoot far from the optimum; near it, full steps converge quadratically).
    - An n x n solve per step: fine for arenas of up to a few thousand players. Reward models
      (notebook 04) have millions of parameters and use gradient descent on the same loss.

    Stops when the largest gradient entry is below ``tol`` times the number of games.
    Returns a :class:`BTFit` with float64 skills (mean zero) and the mean NLL per step.
    """
    check_games(winners, losers, n_players)
    if l2 <= 0:
        raise ValueError(f"l2 must be > 0 (it fixes the additive constant), got {l2}")
    n_games = len(winners)
    skills = torch.zeros(n_players, dtype=torch.float64)
    history = []
    for step in range(max_steps + 1):
        skills.requires_grad_(True)
        objective = bt_objective(skills, winners, losers, l2)
        if not torch.isfinite(objective):
            raise ValueError(f"fit_bt: objective is {objective.item()} at step {step}")
        (grad,) = torch.autograd.grad(objective, skills)
        skills = skills.detach()
        history.append((objective.item() - 0.5 * l2 * (skills**2).sum().item()) / n_games)
        if grad.abs().max().item() < tol * n_games or step == max_steps:
            break
        direction = torch.linalg.solve(bt_hessian(skills, winners, losers, l2), grad)
        t = 1.0
        while bt_objective(skills - t * direction, winners, losers, l2) > objective and t > 1e-10:
            t /= 2
        skills = skills - t * direction
    return BTFit(skills=skills - skills.mean(), nll_history=history)


def elo_ratings(
    winners: torch.Tensor,
    losers: torch.Tensor,
    n_players: int,
    k: float = 0.1,
    initial: torch.Tensor | None = None,
) -> torch.Tensor:
    """Online Elo, in the same natural-log units as Bradley–Terry skills.

    For each game in order: expected = sigmoid(r_w - r_l); r_w += k (1 - expected);
    r_l -= k (1 - expected). One stochastic-gradient step on that game's BT loss with learning
    rate k, so the winner goes up, the loser down by the same amount, and the total is conserved.
    (Chess Elo uses 10^(diff/400): multiply these ratings by 400 / ln 10 ~ 173.7 to convert;
    chess K = 16 to 32 corresponds to k ~ 0.09 to 0.18.) Returns float64 ratings (n_players,).
    """
    check_games(winners, losers, n_players)
    if initial is None:
        ratings = [0.0] * n_players
    else:
        if initial.shape != (n_players,):
            raise ValueError(f"initial must have shape ({n_players},), got {tuple(initial.shape)}")
        ratings = [float(r) for r in initial]
    # A plain Python loop: each update depends on the previous one, and games are few.
    for w, lo in zip(winners.tolist(), losers.tolist()):
        delta = k * (1.0 - 1.0 / (1.0 + math.exp(ratings[lo] - ratings[w])))
        ratings[w] += delta
        ratings[lo] -= delta
    return torch.tensor(ratings, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------
# The Bayes ceiling: the best accuracy any predictor can reach when labels are sampled from BT
# ---------------------------------------------------------------------------------------------


def _check_probabilities(p: torch.Tensor) -> None:
    if p.numel() == 0:
        raise ValueError("p is empty")
    if not ((p >= 0) & (p <= 1)).all():
        raise ValueError("p must hold probabilities in [0, 1]")


def bayes_ceiling(p: torch.Tensor) -> float:
    """E[max(p, 1 - p)]: the expected accuracy of the best possible predictor.

    p: (N,) true probabilities that the first item of each pair wins. A predictor only sees the
    pair; the label is a coin flip with bias p; the best guess is the likelier side, right with
    probability max(p, 1 - p). Averaged over pairs, no model can do better (in expectation).
    """
    _check_probabilities(p)
    return torch.maximum(p, 1 - p).double().mean().item()


def bayes_ceiling_monte_carlo(p: torch.Tensor, n_samples: int = 100, seed: int = 0) -> float:
    """Monte-Carlo check of :func:`bayes_ceiling`: sample ``n_samples`` labels per pair from
    Bernoulli(p), predict "first wins" when p > 1/2, return the measured accuracy."""
    _check_probabilities(p)
    g = torch.Generator().manual_seed(seed)
    p = p.double()
    first_wins = torch.rand(n_samples, *p.shape, generator=g, dtype=torch.float64) < p
    predict_first = p > 0.5
    return (first_wins == predict_first).double().mean().item()


# ---------------------------------------------------------------------------------------------
# Synthetic data: an arena of players, and annotators with their own scales
# ---------------------------------------------------------------------------------------------


def sample_games(skills: torch.Tensor, n_games: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``n_games`` games from a Bradley–Terry arena.

    skills: (n_players,) true skills. Each game picks two distinct players uniformly at random;
    player i beats j with probability sigmoid(s_i - s_j). Returns (winners, losers), each (G,).
    """
    n_players = len(skills)
    if n_players < 2:
        raise ValueError(f"need at least 2 players, got {n_players}")
    if n_games < 1:
        raise ValueError(f"n_games must be >= 1, got {n_games}")
    g = torch.Generator().manual_seed(seed)
    first = torch.randint(n_players, (n_games,), generator=g)
    # Adding 1..n-1 (mod n) gives a uniformly random *other* player.
    second = (first + torch.randint(1, n_players, (n_games,), generator=g)) % n_players
    p_first = torch.sigmoid(skills[first].double() - skills[second].double())
    first_won = torch.rand(n_games, generator=g, dtype=torch.float64) < p_first
    return torch.where(first_won, first, second), torch.where(first_won, second, first)


@dataclass
class AnnotatorStudy:
    """Scalar ratings and pairwise labels collected from the same annotators.

    Ratings (M,): ``rated_item[m]`` got raw score ``score[m]`` from ``rater[m]``.
    Comparisons (C,): the annotator ``comparer[c]`` preferred ``winners[c]`` to ``losers[c]``.
    """

    rater: torch.Tensor
    rated_item: torch.Tensor
    score: torch.Tensor
    comparer: torch.Tensor
    winners: torch.Tensor
    losers: torch.Tensor
    scales: torch.Tensor  # (n_annotators,) each annotator's hidden scale a_j
    offsets: torch.Tensor  # (n_annotators,) each annotator's hidden offset b_j


def simulate_annotators(
    quality: torch.Tensor,
    n_annotators: int,
    items_per_annotator: int,
    scale_spread: float = 3.0,
    offset_sd: float = 2.0,
    noise_sd: float = 0.5,
    seed: int = 0,
) -> AnnotatorStudy:
    """Annotators who agree on the ordering of ``quality`` (n_items,) but not on its scale.

    Annotator j has a scale a_j, log-uniform in [1/scale_spread, scale_spread], and an offset
    b_j ~ N(0, offset_sd^2). Every judgement perceives an item as q_i + eps, eps ~ N(0, noise_sd^2)
    (fresh noise each time), and:

    - rates it:     score = a_j (q_i + eps) + b_j
    - or compares two items and prefers the one perceived as better (a_j > 0 and b_j cancel).

    Design, so the comparison is fair: the items are shuffled and dealt out in hands of
    ``items_per_annotator`` (reshuffled each round), so every item is judged equally often and
    each annotator sees only a subset. Each annotator gives one rating per item in the hand and
    the same number of comparisons: the hand in a random cycle, (h0, h1), (h1, h2), ..., (h_last, h0).
    """
    n_items = len(quality)
    k = items_per_annotator
    if not 2 <= k <= n_items or n_items % k:
        raise ValueError(f"items_per_annotator={k} must be >= 2 and divide n_items={n_items} "
                         "(so every item is judged equally often)")
    if n_annotators * k < n_items:
        raise ValueError(f"{n_annotators} annotators x {k} items cannot cover {n_items} items")
    if scale_spread < 1 or offset_sd < 0 or noise_sd < 0:
        raise ValueError("need scale_spread >= 1, offset_sd >= 0 and noise_sd >= 0")
    g = seed_everything(seed)
    quality = quality.double()
    log_spread = math.log(scale_spread)
    scales = torch.exp((2 * torch.rand(n_annotators, generator=g, dtype=torch.float64) - 1) * log_spread)
    offsets = offset_sd * torch.randn(n_annotators, generator=g, dtype=torch.float64)
    hands_per_round = n_items // k
    rounds = -(-n_annotators // hands_per_round)  # ceil
    deals = torch.cat([torch.randperm(n_items, generator=g) for _ in range(rounds)])
    hands = deals[: n_annotators * k].view(n_annotators, k)  # (n_annotators, k) distinct items each

    def perceive(items: torch.Tensor) -> torch.Tensor:
        return quality[items] + noise_sd * torch.randn(items.shape, generator=g, dtype=torch.float64)

    score = scales[:, None] * perceive(hands) + offsets[:, None]
    first = hands
    second = hands.roll(-1, dims=1)  # the hand is already in random order: a random cycle
    first_preferred = perceive(first) > perceive(second)
    annotator = torch.arange(n_annotators)[:, None].expand(n_annotators, k)
    return AnnotatorStudy(
        rater=annotator.flatten(),
        rated_item=hands.flatten(),
        score=score.flatten(),
        comparer=annotator.flatten(),
        winners=torch.where(first_preferred, first, second).flatten(),
        losers=torch.where(first_preferred, second, first).flatten(),
        scales=scales,
        offsets=offsets,
    )


def pooled_scores(items: torch.Tensor, scores: torch.Tensor, n_items: int) -> torch.Tensor:
    """Mean raw score per item across whoever rated it: (n_items,). The naive way to pool ratings.

    Raises ValueError if an item was never rated (its mean would be undefined).
    """
    _check_same_shape(items, scores, "items and scores")
    counts = torch.bincount(items, minlength=n_items)
    if len(counts) > n_items:
        raise ValueError(f"item index {items.max().item()} is out of range for n_items={n_items}")
    if (counts == 0).any():
        raise ValueError(f"item {(counts == 0).nonzero()[0].item()} was never rated")
    totals = torch.zeros(n_items, dtype=torch.float64).index_add_(0, items, scores.double())
    return totals / counts


def rank_correlations(estimate: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """Spearman's rho and Kendall's tau between two score vectors (n,): 1 = same ordering."""
    _check_same_shape(estimate, truth, "estimate and truth")
    est, tru = np.asarray(estimate.detach().cpu(), dtype=float), np.asarray(truth.detach().cpu(), dtype=float)
    return {"spearman": float(stats.spearmanr(est, tru).statistic),
            "kendall": float(stats.kendalltau(est, tru).statistic)}
