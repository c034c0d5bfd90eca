"""The loss zoo: each loss against a hand-computed value and its limiting behaviour."""

import math

import pytest
import torch

from pref_lab.dpo import dpo_loss
from pref_lab.losses import cdpo_loss, dpo_sigmoid_loss, hinge_loss, ipo_loss, kto_loss, orpo_loss, simpo_loss


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))  # -log sigma(-x)


# ----------------------------------------------------------------------------- DPO and cDPO
def test_dpo_sigmoid_hand_value_and_agrees_with_seed_dpo_loss():
    # h = 2 - (-1) = 3, beta = 0.5 -> -log sigma(1.5)
    assert dpo_sigmoid_loss(t(2.0), t(-1.0), beta=0.5).item() == pytest.approx(softplus(-1.5))
    gen = torch.Generator().manual_seed(0)
    pi, ref = -5 * torch.rand(6, generator=gen), -5 * torch.rand(6, generator=gen)
    yw, yl = torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5])
    seed_losses, _ = dpo_loss(pi, ref, yw, yl, beta=0.3)
    torch.testing.assert_close(dpo_sigmoid_loss(pi[yw] - ref[yw], pi[yl] - ref[yl], beta=0.3), seed_losses)


def test_cdpo_hand_value_limit_and_minimum():
    h = t(-2.0, 0.0, 1.0, 5.0)
    torch.testing.assert_close(cdpo_loss(h, torch.zeros_like(h), 0.7, 0.0), dpo_sigmoid_loss(h, torch.zeros_like(h), 0.7))
    # eps = 0.1, beta*h = 1: 0.9 * softplus(-1) + 0.1 * softplus(1)
    assert cdpo_loss(t(2.0), t(0.0), 0.5, 0.1).item() == pytest.approx(0.9 * softplus(-1) + 0.1 * softplus(1))
    # soft targets: the minimum is at beta*h = log((1-eps)/eps), not at infinity
    beta, eps = 0.5, 0.1
    grid = torch.linspace(-10, 20, 30001, dtype=torch.float64)
    best = grid[cdpo_loss(grid, torch.zeros_like(grid), beta, eps).argmin()]
    assert beta * best.item() == pytest.approx(math.log((1 - eps) / eps), abs=1e-3)
    with pytest.raises(ValueError, match="label_smoothing"):
        cdpo_loss(h, h, beta, 0.5)


# ----------------------------------------------------------------------------- IPO
def test_ipo_hand_value_and_minimum_at_one_over_two_beta():
    # h = 3, beta = 0.25 -> target 2 -> (3 - 2)^2 = 1
    assert ipo_loss(t(1.0), t(-2.0), beta=0.25).item() == pytest.approx(1.0)
    for beta in (0.1, 0.5, 2.0):
        target = 1 / (2 * beta)
        h = t(target).requires_grad_()
        loss = ipo_loss(h, torch.zeros_like(h), beta)
        loss.backward()
        assert loss.item() == 0 and h.grad.item() == 0
        # and it is a real minimum: a bigger margin is penalised too (unlike DPO)
        assert ipo_loss(t(target + 1), t(0.0), beta).item() == pytest.approx(1.0)


def test_ipo_length_normalisation_follows_trl():
    # TRL divides each side's log-ratio by its completion length: 6/3 - 2/4 = 1.5; beta = 1 -> (1.5 - 0.5)^2
    loss = ipo_loss(t(6.0), t(2.0), beta=1.0, chosen_lengths=t(3.0), rejected_lengths=t(4.0))
    assert loss.item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="both"):
        ipo_loss(t(6.0), t(2.0), beta=1.0, chosen_lengths=t(3.0))


# ----------------------------------------------------------------------------- hinge
def test_hinge_hand_value_and_zero_beyond_margin():
    # beta*h = 0.5*1 = 0.5 -> 1 - 0.5
    assert hinge_loss(t(1.0), t(0.0), beta=0.5).item() == pytest.approx(0.5)
    h = t(2.0, 3.0, 10.0).requires_grad_()  # beta*h >= 1
    loss = hinge_loss(h, torch.zeros_like(h), beta=0.5)
    loss.sum().backward()
    assert (loss == 0).all() and (h.grad == 0).all()
    # below the margin it is linear with slope -beta
    h = t(-1.0, 0.0, 1.5).requires_grad_()
    hinge_loss(h, torch.zeros_like(h), beta=0.5).sum().backward()
    torch.testing.assert_close(h.grad, t(-0.5, -0.5, -0.5))


# ----------------------------------------------------------------------------- SimPO
def test_simpo_hand_value_and_margin():
    # avg logps -1 vs -2, beta 2, gamma 0.5 -> -log sigma(2*1 - 0.5)
    assert simpo_loss(t(-1.0), t(-2.0), beta=2.0, gamma=0.5).item() == pytest.approx(softplus(-1.5))
    # TRL's CPO form beta * (diff - gamma/beta) is the same number
    assert simpo_loss(t(-1.0), t(-2.0), 2.0, 0.5).item() == pytest.approx(softplus(-2.0 * (1.0 - 0.5 / 2.0)))
    # the target margin gamma makes a tie cost more than log 2
    assert simpo_loss(t(-1.0), t(-1.0), beta=2.0, gamma=1.0).item() == pytest.approx(softplus(1.0))


def test_simpo_length_normalisation():
    """Repeating a completion (same per-token log-probs, twice the length) leaves SimPO unchanged,
    while a summed (DPO-style, reference-free) score would change."""
    chosen_tokens = t(-0.5, -1.0, -1.5)  # per-token log-probs
    rejected_tokens = t(-2.0, -2.0)
    long_rejected = rejected_tokens.repeat(3)
    short = simpo_loss(chosen_tokens.mean()[None], rejected_tokens.mean()[None], beta=1.0, gamma=0.0)
    long = simpo_loss(chosen_tokens.mean()[None], long_rejected.mean()[None], beta=1.0, gamma=0.0)
    assert short.item() == pytest.approx(long.item())
    summed_short = dpo_sigmoid_loss(chosen_tokens.sum()[None], rejected_tokens.sum()[None], beta=1.0)
    summed_long = dpo_sigmoid_loss(chosen_tokens.sum()[None], long_rejected.sum()[None], beta=1.0)
    # a summed score is dominated by length: lengthening the loser alone makes the pair look solved
    assert summed_long.item() < summed_short.item() / 100


# ----------------------------------------------------------------------------- ORPO
def test_orpo_hand_value_via_odds():
    a_w, a_l, lam = -0.5, -1.5, 0.2
    p_w, p_l = math.exp(a_w), math.exp(a_l)
    log_odds_ratio = math.log(p_w / (1 - p_w)) - math.log(p_l / (1 - p_l))
    expected = -a_w + lam * softplus(-log_odds_ratio)
    assert orpo_loss(t(a_w), t(a_l), lam).item() == pytest.approx(expected)
    # lam = 0 is plain SFT on the chosen answer (its per-token NLL)
    assert orpo_loss(t(a_w), t(a_l), 0.0).item() == pytest.approx(-a_w)
    # stable for very small and near-zero probabilities (both branches of log(1 - e^a))
    assert torch.isfinite(orpo_loss(t(-1e-6, -50.0), t(-60.0, -1e-7), lam)).all()


def test_orpo_matches_trl_odds_ratio_loss():
    from types import SimpleNamespace

    from trl.experimental.orpo.orpo_trainer import ORPOTrainer

    chosen, rejected, lam = t(-0.3, -1.2, -2.0), t(-0.9, -0.4, -3.0), 0.1
    fake_trainer = SimpleNamespace(beta=lam, accelerator=SimpleNamespace(device="cpu"))
    trl_losses = ORPOTrainer.odds_ratio_loss(fake_trainer, chosen, rejected)[0]
    # TRL's loss = NLL(chosen) - mean(beta * log sigma(log odds)); with equal lengths its NLL is mean(-chosen)
    trl_total = (-chosen).mean() - trl_losses.mean()
    assert orpo_loss(chosen, rejected, lam).mean().item() == pytest.approx(trl_total.item())


# ----------------------------------------------------------------------------- KTO
def test_kto_hand_values_and_reference_point():
    logratios = t(1.0, 1.0, -0.5)
    desirable = torch.tensor([True, False, False])
    loss = kto_loss(logratios, desirable, beta=2.0, z_ref=0.25, desirable_weight=1.0, undesirable_weight=1.5)
    expected = [1 - 1 / (1 + math.exp(-2 * 0.75)),  # desirable: 1 - sigma(beta (r - z))
                1.5 * (1 - 1 / (1 + math.exp(-2 * -0.75))),  # undesirable: 1 - sigma(beta (z - r))
                1.5 * (1 - 1 / (1 + math.exp(-2 * 0.75)))]
    torch.testing.assert_close(loss, t(*expected))
    # at the reference point both kinds cost half their weight
    at_ref = kto_loss(t(0.3, 0.3), torch.tensor([True, False]), beta=1.0, z_ref=0.3, undesirable_weight=2.0)
    torch.testing.assert_close(at_ref, t(0.5, 1.0))
    # raising r helps a desirable example and hurts an undesirable one
    r = t(0.0, 0.0).requires_grad_()
    kto_loss(r, torch.tensor([True, False]), beta=1.0, z_ref=0.0).sum().backward()
    assert r.grad[0] < 0 < r.grad[1]


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same shape"):
        dpo_sigmoid_loss(t(1.0, 2.0), t(1.0), beta=0.1)
    with pytest.raises(ValueError, match="must be tensors of one shape"):
        kto_loss(t(1.0, 2.0), torch.tensor([True]), beta=0.1, z_ref=0.0)
