"""Tests for pref_lab.bandit: the RLHF optimum and DPO on a K-armed bandit, checked against closed forms."""

import math

import pytest
import torch

from pref_lab.bandit import (
    Bandit,
    fit_dpo,
    gradient_ascent,
    make_bandit,
    objective,
    population_preference_pairs,
    sample_preference_pairs,
    total_variation,
)
from pref_lab.dpo import dpo_loss
from pref_lab.rlhf import categorical_kl, log_partition, optimal_policy_logprobs

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


@pytest.fixture
def bandit():
    return make_bandit()


def random_policies(num, k, seed):
    """Log-probs of ``num`` policies drawn uniformly from the simplex (Dirichlet(1, ..., 1))."""
    gen = torch.Generator().manual_seed(seed)
    exponentials = -torch.rand(num, k, generator=gen, dtype=torch.float64).log()
    return (exponentials / exponentials.sum(-1, keepdim=True)).log()


def test_make_bandit(bandit):
    assert bandit.num_completions == len(bandit.completions) == 8
    assert bandit.ref_logprobs.exp().sum().item() == pytest.approx(1.0, abs=1e-12)
    assert len(set(bandit.rewards.tolist())) == 8  # distinct rewards: best-of-n has no ties


@pytest.mark.parametrize("beta", [0.3, 1.0, 3.0])
def test_closed_form_beats_every_other_policy(bandit, beta):
    star = optimal_policy_logprobs(bandit.ref_logprobs, bandit.rewards, beta)
    best = objective(star, bandit, beta).item()
    others = random_policies(5000, bandit.num_completions, seed=0)
    # ... and small perturbations of pi* itself, where a wrong optimum would show first
    nudged = torch.log_softmax(star + 1e-2 * torch.randn(1000, 8, generator=torch.Generator().manual_seed(1)), -1)
    assert (objective(torch.cat([others, nudged]), bandit, beta) < best).all()
    assert best == pytest.approx(beta * log_partition(bandit.ref_logprobs, bandit.rewards, beta).item(), abs=1e-12)


def test_gradient_ascent_converges_to_closed_form(bandit):
    beta = 1.0
    star = optimal_policy_logprobs(bandit.ref_logprobs, bandit.rewards, beta).exp()
    from_ref, history = gradient_ascent(bandit, beta, steps=2000, lr=1.5 / beta)
    assert (from_ref.exp() - star).abs().max().item() < 1e-4
    assert all(b >= a - 1e-12 for a, b in zip(history, history[1:]))  # ascent never goes down
    init = torch.randn(8, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    from_random, _ = gradient_ascent(bandit, beta, steps=3000, lr=1.5 / beta, init_logits=init)
    assert (from_random.exp() - star).abs().max().item() < 1e-4


@pytest.mark.parametrize("beta", [0.2, 1.0, 5.0])
def test_objective_identity(bandit, beta):
    # J(pi) = E_pi[r] - beta KL(pi || pi_ref) = -beta KL(pi || pi*) + beta log Z   for every pi
    policies = random_policies(200, bandit.num_completions, seed=2)
    star = optimal_policy_logprobs(bandit.ref_logprobs, bandit.rewards, beta)
    log_z = log_partition(bandit.ref_logprobs, bandit.rewards, beta)
    right = -beta * categorical_kl(policies, star.expand_as(policies)) + beta * log_z
    assert torch.allclose(objective(policies, bandit, beta), right, atol=1e-10)


def test_sampled_pairs_follow_bradley_terry(bandit):
    yw, yl = sample_preference_pairs(bandit, 200_000, seed=0)
    assert not (yw == yl).any()
    yw2, yl2 = sample_preference_pairs(bandit, 200_000, seed=0)
    assert torch.equal(yw, yw2) and torch.equal(yl, yl2)
    # pair (0, 2) vs the formula sigma(r_0 - r_2), and the pair frequencies vs the population weights
    wins = ((yw == 0) & (yl == 2)).sum().item()
    losses = ((yw == 2) & (yl == 0)).sum().item()
    p = torch.sigmoid(bandit.rewards[0] - bandit.rewards[2]).item()
    n = wins + losses
    assert abs(wins / n - p) < 4 * math.sqrt(p * (1 - p) / n)
    pop_w, pop_l, weights = population_preference_pairs(bandit)
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-12)
    counts = torch.zeros(8, 8, dtype=torch.float64).index_put_((yw, yl), torch.ones(len(yw), dtype=torch.float64), True)
    freq = counts[pop_w, pop_l] / len(yw)
    assert ((freq - weights).abs() < 4 * (weights * (1 - weights) / len(yw)).sqrt() + 1e-4).all()


def test_dpo_recovers_the_rlhf_optimum(bandit):
    beta = 1.0
    star = optimal_policy_logprobs(bandit.ref_logprobs, bandit.rewards, beta)
    # infinite data (expected loss): exactly pi*
    yw, yl, weights = population_preference_pairs(bandit)
    policy, _ = fit_dpo(bandit, yw, yl, beta, weights=weights, steps=300, lr=0.1)
    assert total_variation(policy, star).item() < 1e-5
    # 50k sampled pairs: close to pi*, sampling noise only
    yw, yl = sample_preference_pairs(bandit, 50_000, seed=0)
    policy, history = fit_dpo(bandit, yw, yl, beta, steps=300, lr=0.1)
    assert total_variation(policy, star).item() < 0.05
    assert history[-1] < history[0]
    # the implicit reward recovers r up to a constant (log Z): check its spread around that constant
    implicit = beta * (policy - bandit.ref_logprobs)
    offset = implicit - bandit.rewards
    assert (offset - offset.mean()).abs().max().item() < 0.3


def test_dpo_cannot_identify_unseen_completions(bandit):
    # drop every pair involving completion 0: the loss is flat along its logit, so DPO cannot place it
    yw, yl = sample_preference_pairs(bandit, 5000, seed=0)
    keep = (yw != 0) & (yl != 0)
    logits = torch.randn(8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    shifted = logits.clone()
    shifted[0] += 5.0
    loss = [dpo_loss(torch.log_softmax(t, -1), bandit.ref_logprobs, yw[keep], yl[keep], 1.0)[0].mean() for t in (logits, shifted)]
    assert loss[0].item() == pytest.approx(loss[1].item(), abs=1e-12)
    assert total_variation(torch.log_softmax(logits, -1), torch.log_softmax(shifted, -1)).item() > 0.3


def test_dpo_gradient_matches_closed_form(bandit):
    # grad_theta L = -beta * mean_i sigma(r_hat_l - r_hat_w) (grad log pi(y_w) - grad log pi(y_l)),
    # and for pi = softmax(theta), grad_theta log pi(y) = e_y - pi, so the difference is e_w - e_l.
    beta = 0.7
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(8, dtype=torch.float64, generator=gen).requires_grad_(True)
    yw, yl = sample_preference_pairs(bandit, 64, seed=3)
    losses, rewards = dpo_loss(torch.log_softmax(logits, -1), bandit.ref_logprobs, yw, yl, beta)
    losses.mean().backward()
    weight = torch.sigmoid(rewards[yl] - rewards[yw])
    expected = torch.zeros(8, dtype=torch.float64)
    expected.index_add_(0, yw, -beta * weight / len(yw))
    expected.index_add_(0, yl, beta * weight / len(yw))
    assert torch.allclose(logits.grad, expected, atol=1e-12)


@pytest.mark.parametrize("beta", [0.0, -0.5])
def test_bad_beta_raises(bandit, beta):
    with pytest.raises(ValueError, match="beta"):
        objective(bandit.ref_logprobs, bandit, beta)
    with pytest.raises(ValueError, match="beta"):
        gradient_ascent(bandit, beta, steps=1)
    with pytest.raises(ValueError, match="beta"):
        fit_dpo(bandit, torch.tensor([0]), torch.tensor([1]), beta, steps=1)


def test_bad_bandit_and_pairs_raise(bandit):
    with pytest.raises(ValueError, match="sum to 1"):
        Bandit("x", ("a", "b"), torch.tensor([0.5, 0.6], dtype=torch.float64).log(), torch.zeros(2))
    with pytest.raises(ValueError, match="shape"):
        Bandit("x", ("a", "b"), torch.tensor([0.5, 0.5], dtype=torch.float64).log(), torch.zeros(3))
    with pytest.raises(ValueError, match="chosen == rejected"):
        fit_dpo(bandit, torch.tensor([0, 1]), torch.tensor([2, 1]), 1.0, steps=1)
    with pytest.raises(ValueError, match="shape"):
        fit_dpo(bandit, torch.tensor([0, 1]), torch.tensor([2]), 1.0, steps=1)
    with pytest.raises(ValueError, match="shape"):
        gradient_ascent(bandit, 1.0, steps=1, init_logits=torch.zeros(3))
    with pytest.raises(ValueError, match="shape"):
        total_variation(bandit.ref_logprobs, bandit.ref_logprobs[:3])
    with pytest.raises(ValueError, match="normalised"):
        objective(bandit.ref_logprobs + 0.1, bandit, 1.0)
