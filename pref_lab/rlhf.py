"""The KL-regularised RLHF objective, its closed-form optimum, KL estimators and best-of-n.

For one prompt x with a finite set of completions y (a categorical policy over K choices),

    J(pi) = E_{y~pi}[ r(y) ] - beta * KL(pi || pi_ref)

is maximised by

    pi*(y) = pi_ref(y) * exp(r(y) / beta) / Z,      Z = sum_y pi_ref(y) * exp(r(y) / beta),

and J(pi) = -beta * KL(pi || pi*) + beta * log Z for every pi (so pi* is the unique maximiser).

Distributions are passed as log-probs over the last dimension (shape (..., K)): log-space keeps
tiny probabilities exact, and log_softmax / logsumexp never overflow even when r / beta is large.
"""

from __future__ import annotations

import math
import numbers

import torch


def check_beta(beta: float, name: str = "beta") -> None:
    """``beta`` (the KL penalty's strength, DPO's implicit-reward temperature) must be a positive finite number."""
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not math.isfinite(beta) or beta <= 0:
        raise ValueError(f"{name} must be a positive finite number (the KL penalty's strength), got {beta!r}")


def _check_same_shape(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has shape {tuple(a.shape)} but {name_b} has shape {tuple(b.shape)}")


def _check_normalised(logprobs: torch.Tensor, name: str, atol: float = 1e-4) -> None:
    """Raise unless exp(logprobs) sums to 1 over the last dimension."""
    if logprobs.ndim == 0 or logprobs.shape[-1] == 0:
        raise ValueError(f"{name} must have a last dimension of at least one choice, got shape {tuple(logprobs.shape)}")
    total = torch.logsumexp(logprobs, dim=-1).exp()
    if not torch.allclose(total, torch.ones_like(total), atol=atol):
        raise ValueError(
            f"{name} is not a normalised distribution over the last dimension: "
            f"exp({name}).sum(-1) ranges over [{total.min().item():.6g}, {total.max().item():.6g}], expected 1 "
            "(pass log-probs, e.g. torch.log_softmax(logits, -1))"
        )


def log_partition(ref_logprobs: torch.Tensor, rewards: torch.Tensor, beta: float) -> torch.Tensor:
    """log Z = log sum_y pi_ref(y) exp(r(y) / beta), computed with logsumexp.

    ref_logprobs, rewards: (..., K). Returns (...,).
    """
    check_beta(beta)
    _check_same_shape(ref_logprobs, rewards, "ref_logprobs", "rewards")
    _check_normalised(ref_logprobs, "ref_logprobs")
    return torch.logsumexp(ref_logprobs + rewards / beta, dim=-1)


def optimal_policy_logprobs(ref_logprobs: torch.Tensor, rewards: torch.Tensor, beta: float) -> torch.Tensor:
    """log pi*(y) = log pi_ref(y) + r(y) / beta - log Z: the optimum of the KL-regularised objective.

    ref_logprobs, rewards: (..., K). Returns log-probs (..., K) that sum (in prob space) to 1.
    log_softmax does the "- log Z" part stably. Small beta -> argmax of r; large beta -> pi_ref.
    """
    check_beta(beta)
    _check_same_shape(ref_logprobs, rewards, "ref_logprobs", "rewards")
    _check_normalised(ref_logprobs, "ref_logprobs")
    return torch.log_softmax(ref_logprobs + rewards / beta, dim=-1)


def categorical_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Exact KL(p || q) = sum_y p(y) (log p(y) - log q(y)) between categorical distributions.

    logprobs (p), ref_logprobs (q): (..., K). Returns (...,). Terms with p(y) = 0 contribute 0
    (the limit of p log p); KL is +inf where p(y) > 0 = q(y).
    """
    _check_same_shape(logprobs, ref_logprobs, "logprobs", "ref_logprobs")
    _check_normalised(logprobs, "logprobs")
    _check_normalised(ref_logprobs, "ref_logprobs")
    p = logprobs.exp()
    terms = torch.where(p > 0, p * (logprobs - ref_logprobs), torch.zeros_like(p))
    return terms.sum(-1)


def kl_estimators(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample estimates of KL(pi || pi_ref) from samples y ~ pi (Schulman, "Approximating KL divergence").

    logprobs: log pi(y) of the samples, any shape (e.g. (N,)); ref_logprobs: log pi_ref(y), same shape.
    With the ratio rho = pi_ref(y) / pi(y):

        k1 = -log rho                    unbiased, high variance, can be negative
        k2 = 1/2 (log rho)^2             biased (low bias when pi ~ pi_ref), low variance, >= 0
        k3 = (rho - 1) - log rho         unbiased (E_pi[rho] = 1), low variance, >= 0 always

    Returns {"k1": ..., "k2": ..., "k3": ...}, each the same shape as the inputs; average them
    over samples to estimate the KL.
    """
    _check_same_shape(logprobs, ref_logprobs, "logprobs", "ref_logprobs")
    log_ratio = ref_logprobs - logprobs
    return {
        "k1": -log_ratio,
        "k2": 0.5 * log_ratio**2,
        # expm1 keeps k3 accurate (and >= 0) when rho is close to 1, where rho - 1 - log rho ~ (log rho)^2 / 2.
        "k3": torch.expm1(log_ratio) - log_ratio,
    }


def best_of_n_kl(n: int) -> float:
    """Analytic KL(pi_bon || pi_ref) = log n - (n - 1) / n of best-of-n sampling.

    Exact when the reward of y ~ pi_ref has a continuous distribution (no ties); for discrete
    outputs it is an upper bound (Beirami et al., 2024). n=1 gives 0.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    return math.log(n) - (n - 1) / n


def best_of_n(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick the best of n candidates per prompt: the simplest way to trade KL for reward.

    scores: (P, n) reward of candidate j for prompt i. Returns (indices, best_scores), each (P,):
    indices[i] = argmax_j scores[i, j] (the first one on ties), best_scores[i] = its score.
    """
    if scores.ndim != 2 or scores.shape[1] == 0:
        raise ValueError(f"scores must have shape (P, n) with n >= 1, got {tuple(scores.shape)}")
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN: best-of-n cannot rank them")
    best_scores, indices = scores.max(dim=1)
    return indices, best_scores


def best_of_n_distribution(ref_logprobs: torch.Tensor, rewards: torch.Tensor, n: int) -> torch.Tensor:
    """Exact distribution of best-of-n over K discrete completions (log-probs, shape (K,)).

    Draw n iid samples from pi_ref and keep the highest reward. With F(r) = P_ref(reward <= r),
    the best reward equals r with probability F(r)^n - F(r^-)^n (order statistics). Completions
    that tie at r share that mass in proportion to pi_ref, whichever tied sample is kept.
    """
    if ref_logprobs.ndim != 1:
        raise ValueError(f"ref_logprobs must have shape (K,), got {tuple(ref_logprobs.shape)}")
    _check_same_shape(ref_logprobs, rewards, "ref_logprobs", "rewards")
    _check_normalised(ref_logprobs, "ref_logprobs")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    ref_probs = ref_logprobs.exp()
    # Group completions by reward level (sorted ascending); ties land in the same level.
    levels, level_of = torch.unique(rewards, sorted=True, return_inverse=True)
    level_mass = torch.zeros(len(levels), dtype=ref_probs.dtype).scatter_add_(0, level_of, ref_probs)
    cdf = level_mass.cumsum(0).clamp(max=1.0)  # F(r) at each level
    cdf_below = (cdf - level_mass).clamp(min=0.0)  # F(r^-)
    best_is_level = cdf**n - cdf_below**n
    return torch.log(best_is_level[level_of] * ref_probs / level_mass[level_of])
