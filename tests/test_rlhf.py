"""Tests for pref_lab.rlhf: closed-form optimum, exact KL, KL estimators, best-of-n."""

import math

import pytest
import torch
from scipy import integrate

from pref_lab.rlhf import (
    best_of_n,
    best_of_n_distribution,
    best_of_n_kl,
    categorical_kl,
    kl_estimators,
    log_partition,
    optimal_policy_logprobs,
)


def logp(*probs):
    return torch.tensor(probs, dtype=torch.float64).log()


# ---- closed-form optimum -------------------------------------------------------------------


def test_optimal_policy_two_choices_by_hand():
    # pi_ref uniform, r = (1, 0), beta = 1: pi* = (e, 1) / (e + 1) = (sigma(1), sigma(-1)); Z = (e + 1) / 2
    ref, rewards = logp(0.5, 0.5), torch.tensor([1.0, 0.0], dtype=torch.float64)
    star = optimal_policy_logprobs(ref, rewards, beta=1.0).exp()
    s = 1 / (1 + math.exp(-1))
    assert torch.allclose(star, torch.tensor([s, 1 - s], dtype=torch.float64), atol=1e-12)
    assert log_partition(ref, rewards, 1.0).item() == pytest.approx(math.log((math.e + 1) / 2), abs=1e-12)


def test_optimal_policy_limits_and_stability():
    ref, rewards = logp(0.1, 0.6, 0.3), torch.tensor([3.0, 0.0, 1.0], dtype=torch.float64)
    # beta -> infinity: stay at pi_ref; beta -> 0: all mass on the argmax of r (no overflow at r/beta = 3e4)
    assert torch.allclose(optimal_policy_logprobs(ref, rewards, 1e6).exp(), ref.exp(), atol=1e-5)
    sharp = optimal_policy_logprobs(ref, rewards, 1e-4).exp()
    assert torch.isfinite(sharp).all() and sharp[0].item() == pytest.approx(1.0, abs=1e-12)


def test_optimal_policy_batched_rows_are_independent():
    ref = torch.log_softmax(torch.randn(4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64), -1)
    rewards = torch.randn(4, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    batched = optimal_policy_logprobs(ref, rewards, 0.7)
    for i in range(4):
        assert torch.allclose(batched[i], optimal_policy_logprobs(ref[i], rewards[i], 0.7))


# ---- exact KL and the estimators ------------------------------------------------------------


def test_categorical_kl_by_hand_and_against_torch_distributions():
    p, q = logp(0.5, 0.5), logp(0.25, 0.75)
    assert categorical_kl(p, q).item() == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3), abs=1e-12)
    p, q = torch.log_softmax(torch.randn(3, 6, dtype=torch.float64), -1), torch.log_softmax(torch.randn(3, 6), -1)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Categorical(logits=p), torch.distributions.Categorical(logits=q.double())
    )
    assert torch.allclose(categorical_kl(p, q.double()), expected, atol=1e-10)
    assert categorical_kl(p, p).abs().max().item() < 1e-12


def test_categorical_kl_zero_probability_terms():
    # p(y) = 0 contributes nothing; q(y) = 0 where p(y) > 0 gives infinity
    p, q = logp(0.0, 1.0), logp(0.5, 0.5)
    assert categorical_kl(p, q).item() == pytest.approx(math.log(2), abs=1e-12)
    assert math.isinf(categorical_kl(q, p).item())


def test_kl_estimators_by_hand():
    # rho = pi_ref / pi = 2  -> log rho = log 2
    est = kl_estimators(torch.tensor([math.log(0.25)]), torch.tensor([math.log(0.5)]))
    lr = math.log(2)
    assert est["k1"].item() == pytest.approx(-lr, abs=1e-6)
    assert est["k2"].item() == pytest.approx(0.5 * lr**2, abs=1e-6)
    assert est["k3"].item() == pytest.approx(1 - lr, abs=1e-6)


def test_k3_is_never_negative_and_k1_can_be():
    log_ratio = torch.linspace(-30, 30, 20001, dtype=torch.float64)
    est = kl_estimators(torch.zeros_like(log_ratio), log_ratio)
    assert (est["k3"] >= 0).all() and (est["k2"] >= 0).all()
    assert (est["k1"] < 0).any()
    # tiny ratios: expm1 keeps k3 ~ (log rho)^2 / 2 instead of rounding to 0 or below
    tiny = kl_estimators(torch.zeros(1, dtype=torch.float64), torch.tensor([1e-9], dtype=torch.float64))["k3"]
    assert tiny.item() == pytest.approx(0.5e-18, rel=1e-6)


def _monte_carlo(policy, ref, num_samples, seed):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.multinomial(policy.exp(), num_samples, replacement=True, generator=gen)
    return kl_estimators(policy[ids], ref[ids])


def test_k1_and_k3_unbiased_k2_biased_by_monte_carlo():
    policy, ref = logp(0.05, 0.15, 0.5, 0.3), logp(0.4, 0.3, 0.2, 0.1)
    exact = categorical_kl(policy, ref).item()
    est = _monte_carlo(policy, ref, num_samples=200_000, seed=0)
    for name in ("k1", "k3"):
        mean, se = est[name].mean().item(), est[name].std().item() / math.sqrt(len(est[name]))
        assert abs(mean - exact) < 4 * se, f"{name}: {mean:.5f} vs exact {exact:.5f} (se {se:.5f})"
    # k2's bias is far outside its Monte Carlo error for distributions this far apart
    mean, se = est["k2"].mean().item(), est["k2"].std().item() / math.sqrt(len(est["k2"]))
    assert abs(mean - exact) > 10 * se
    # the exact expectations say the same: E[k1] = E[k3] = KL
    p = policy.exp()
    full = kl_estimators(policy, ref)
    assert (p * full["k1"]).sum().item() == pytest.approx(exact, abs=1e-12)
    assert (p * full["k3"]).sum().item() == pytest.approx(exact, abs=1e-12)


# ---- best-of-n ------------------------------------------------------------------------------


def test_best_of_n_kl_formula():
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5, abs=1e-15)
    # continuous reward: in quantile space best-of-n has density n u^(n-1) on [0, 1] vs uniform
    for n in (2, 4, 16, 64):
        def integrand(u, n=n):
            density = n * u ** (n - 1)
            return density * math.log(density) if density > 0 else 0.0

        kl, _ = integrate.quad(integrand, 0, 1, limit=200)
        assert best_of_n_kl(n) == pytest.approx(kl, abs=1e-8)
    assert all(best_of_n_kl(n) < best_of_n_kl(n + 1) for n in range(1, 100))


def test_best_of_n_selection_by_hand():
    scores = torch.tensor([[0.1, 0.9, 0.3], [2.0, -1.0, 2.0]])
    indices, best = best_of_n(scores)
    assert indices.tolist() == [1, 0]  # ties -> the first
    assert torch.equal(best, torch.tensor([0.9, 2.0]))


def test_best_of_n_distribution_matches_sampling_and_bound():
    ref = logp(0.3, 0.1, 0.25, 0.35)
    rewards = torch.tensor([0.0, 2.0, 1.0, -1.0], dtype=torch.float64)
    assert torch.allclose(best_of_n_distribution(ref, rewards, 1), ref)
    n, prompts = 4, 50_000
    exact = best_of_n_distribution(ref, rewards, n).exp()
    assert exact.sum().item() == pytest.approx(1.0, abs=1e-12)
    gen = torch.Generator().manual_seed(0)
    samples = torch.multinomial(ref.exp(), prompts * n, replacement=True, generator=gen).view(prompts, n)
    indices, _ = best_of_n(rewards[samples])
    chosen = samples.gather(1, indices[:, None]).squeeze(1)
    freq = torch.bincount(chosen, minlength=4).double() / prompts
    se = (exact * (1 - exact) / prompts).sqrt()
    assert ((freq - exact).abs() < 4 * se + 1e-12).all()
    # discrete outputs: the analytic formula is a strict upper bound
    for n in (2, 4, 8, 32):
        kl = categorical_kl(best_of_n_distribution(ref, rewards, n), ref).item()
        assert kl < best_of_n_kl(n)


def test_best_of_n_distribution_ties_share_mass_by_pi_ref():
    ref = logp(0.2, 0.3, 0.5)
    rewards = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    dist = best_of_n_distribution(ref, rewards, 3).exp()
    top_mass = 1 - 0.5**3
    assert torch.allclose(dist, torch.tensor([top_mass * 0.4, top_mass * 0.6, 0.125], dtype=torch.float64))


def test_best_of_n_kl_formula_is_the_continuous_limit():
    # K equally likely completions with distinct rewards: as K grows the discrete KL approaches the formula
    n = 8
    gaps = []
    for k in (10, 100, 10_000):
        ref = torch.full((k,), -math.log(k), dtype=torch.float64)
        rewards = torch.arange(k, dtype=torch.float64)
        gaps.append(best_of_n_kl(n) - categorical_kl(best_of_n_distribution(ref, rewards, n), ref).item())
    assert all(g > 0 for g in gaps) and gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-6


# ---- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.0, -1.0, float("nan")])
def test_bad_beta_raises(beta):
    with pytest.raises(ValueError, match="beta"):
        optimal_policy_logprobs(logp(0.5, 0.5), torch.zeros(2, dtype=torch.float64), beta)
    with pytest.raises(ValueError, match="beta"):
        log_partition(logp(0.5, 0.5), torch.zeros(2, dtype=torch.float64), beta)


def test_non_normalised_reference_raises():
    with pytest.raises(ValueError, match="normalised"):
        optimal_policy_logprobs(logp(0.5, 0.6), torch.zeros(2, dtype=torch.float64), 1.0)
    with pytest.raises(ValueError, match="normalised"):
        categorical_kl(logp(0.5, 0.5), torch.tensor([0.2, 0.8], dtype=torch.float64))  # probs, not log-probs
    with pytest.raises(ValueError, match="normalised"):
        best_of_n_distribution(logp(0.1, 0.1), torch.zeros(2, dtype=torch.float64), 2)


def test_mismatched_shapes_raise():
    with pytest.raises(ValueError, match="shape"):
        optimal_policy_logprobs(logp(0.5, 0.5), torch.zeros(3, dtype=torch.float64), 1.0)
    with pytest.raises(ValueError, match="shape"):
        categorical_kl(logp(0.5, 0.5), logp(0.2, 0.3, 0.5))
    with pytest.raises(ValueError, match="shape"):
        kl_estimators(torch.zeros(4), torch.zeros(5))
    with pytest.raises(ValueError, match="shape"):
        best_of_n(torch.zeros(5))


@pytest.mark.parametrize("n", [0, -2, 1.5, True])
def test_bad_n_raises(n):
    with pytest.raises(ValueError, match="n must be"):
        best_of_n_kl(n)
