"""Notebooks 05 and 07: the KL estimators k1/k2/k3, and the closed-form optimum of the RLHF objective."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..rlhf import kl_estimators, optimal_policy_logprobs
from .checker import Case, CheckResult, Exercise, Mistake, run_check


# ----------------------------------------------------------------------------- 05: k1, k2, k3
def _kl_sign(logprobs, ref_logprobs):
    return kl_estimators(ref_logprobs, logprobs)  # log rho the wrong way round: log pi - log pi_ref


def _k1_sign(logprobs, ref_logprobs):
    return {**kl_estimators(logprobs, ref_logprobs), "k1": ref_logprobs - logprobs}


def _k3_ratio_inverted(logprobs, ref_logprobs):
    return {**kl_estimators(logprobs, ref_logprobs), "k3": kl_estimators(ref_logprobs, logprobs)["k3"]}


def _k3_no_minus_one(logprobs, ref_logprobs):
    out = kl_estimators(logprobs, ref_logprobs)
    log_ratio = ref_logprobs - logprobs
    return {**out, "k3": log_ratio.exp() - log_ratio}


def _k2_no_half(logprobs, ref_logprobs):
    out = kl_estimators(logprobs, ref_logprobs)
    return {**out, "k2": 2 * out["k2"]}


def _kl_cases() -> list[Case]:
    g = torch.Generator().manual_seed(5)
    lp = -torch.rand(6, generator=g) * 3
    return [Case("six samples near the reference", dict(logprobs=lp, ref_logprobs=lp + 0.2 * torch.randn(6, generator=g))),
            Case("samples far from the reference", dict(logprobs=torch.tensor([-0.5, -1.0, -4.0]),
                                                         ref_logprobs=torch.tensor([-3.0, -0.2, -4.0])))]


KL_EXERCISE = Exercise(
    name="kl_estimators",
    reference=kl_estimators,
    cases=_kl_cases(),
    mistakes=[
        Mistake("the KL sign is flipped", "With ρ = π_ref(y)/π(y) and y ~ π, k1 = −log ρ = log π − log π_ref: a sample "
                "the policy likes more than the reference adds KL; k3 uses the same ρ.",
                wrong=[_kl_sign, _k1_sign, _k3_ratio_inverted]),
        Mistake("k3 lacks its −1", "k3 = (ρ − 1) − log ρ: the −1 makes it ≥ 0 for every sample (and unbiased, as "
                "E_π[ρ] = 1).", wrong=_k3_no_minus_one),
        Mistake("k2 lacks its ½", "k2 = ½ (log ρ)²: its expectation matches the KL to second order only with the ½.",
                wrong=_k2_no_half),
    ],
    hint="log ρ = ref_logprobs − logprobs; k1 = −log ρ, k2 = ½(log ρ)², k3 = (ρ − 1) − log ρ; return a dict with keys "
         "'k1', 'k2', 'k3', each the shape of the inputs.",
)


def check_kl_estimators(fn: Callable) -> CheckResult:
    """Check ``kl_estimators(logprobs (N,), ref_logprobs (N,)) -> {"k1", "k2", "k3"}`` (notebook 05)."""
    return run_check(KL_EXERCISE, fn)


# ----------------------------------------------------------------------------- 07: pi* = pi_ref e^{r/beta} / Z
def _times_beta(ref_logprobs, rewards, beta):
    return torch.log_softmax(ref_logprobs + rewards * beta, -1)


def _not_normalised(ref_logprobs, rewards, beta):
    return ref_logprobs + rewards / beta


def _probabilities(ref_logprobs, rewards, beta):
    return optimal_policy_logprobs(ref_logprobs, rewards, beta).exp()


def _naive(ref_logprobs, rewards, beta):
    w = ref_logprobs.exp() * (rewards / beta).exp()
    return (w / w.sum()).log()


def _opt_cases() -> list[Case]:
    ref = torch.log_softmax(torch.tensor([0.5, 0.1, -0.3, 1.0, 0.0]), -1)
    r = torch.tensor([1.0, 3.0, -2.0, 0.0, 2.5])
    return [Case("beta = 1", dict(ref_logprobs=ref, rewards=r, beta=1.0)),
            Case("beta = 0.5", dict(ref_logprobs=ref, rewards=r, beta=0.5)),
            Case("beta = 0.01 (r/beta = 300: exp overflows)", dict(ref_logprobs=ref, rewards=r, beta=0.01)),
            Case("beta = 100 (almost the reference)", dict(ref_logprobs=ref, rewards=r, beta=100.0))]


OPT_EXERCISE = Exercise(
    name="optimal_policy",
    reference=optimal_policy_logprobs,
    cases=_opt_cases(),
    mistakes=[
        Mistake("the reward is multiplied by beta", "π* ∝ π_ref·exp(r/β): a *small* β (a weak leash) lets the reward "
                "dominate, so divide by β.", wrong=_times_beta),
        Mistake("log Z is missing", "Normalise: log π* = log π_ref + r/β − log Z, so that the probabilities sum "
                "to 1.", wrong=_not_normalised),
        Mistake("these are probabilities, not log-probs", "Return log π* (the course keeps distributions as "
                "log-probs: tiny probabilities stay exact).", wrong=_probabilities),
        Mistake("it leaves log space", "At β = 0.01, exp(r/β) overflows to inf (and a softmax's small entries "
                "underflow to 0, whose log is −inf): compute log Z with a log-sum-exp, never by exponentiating.",
                spot=lambda out, args: isinstance(out, torch.Tensor) and not torch.isfinite(out).all()),
    ],
    hint="log π*(y) = log π_ref(y) + r(y)/β − log Σ_y' π_ref(y') e^{r(y')/β}.",
)


def check_optimal_policy(fn: Callable) -> CheckResult:
    """Check ``optimal_policy(ref_logprobs (K,), rewards (K,), beta) -> log pi* (K,)`` (notebook 07)."""
    return run_check(OPT_EXERCISE, fn)
