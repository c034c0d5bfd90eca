"""Tests for pref_lab.bradley_terry: hand-computed values, closed forms, invariants, bad input."""

import math

import pytest
import torch

from pref_lab.bradley_terry import (
    bayes_ceiling,
    bayes_ceiling_monte_carlo,
    bt_hessian,
    bt_loss,
    bt_nll,
    bt_objective,
    bt_probability,
    elo_ratings,
    fit_bt,
    pairwise_accuracy,
    pooled_scores,
    rank_correlations,
    sample_games,
    simulate_annotators,
)


def t(*values, dtype=torch.float64):
    return torch.tensor(values, dtype=dtype)


# --- the model and its loss ------------------------------------------------------------------


def test_bt_probability_matches_exp_formula_by_hand():
    # exp(r1) / (exp(r1) + exp(r2)) written out with math.exp
    r1, r2 = t(1.0, 0.0, 2.0, -0.5), t(0.0, 0.0, -1.0, 0.7)
    expected = [math.exp(a) / (math.exp(a) + math.exp(b)) for a, b in zip(r1.tolist(), r2.tolist())]
    assert torch.allclose(bt_probability(r1, r2), t(*expected), atol=1e-12)
    assert bt_probability(t(1.0), t(0.0)).item() == pytest.approx(0.7310585786300049, abs=1e-12)
    assert bt_probability(t(3.0), t(3.0)).item() == 0.5


def test_bt_probability_and_loss_at_extreme_margins():
    big = t(1e4, -1e4)
    zero = t(0.0, 0.0)
    p = bt_probability(big, zero)
    assert torch.isfinite(p).all()
    assert p[0].item() == 1.0 and p[1].item() == 0.0
    chosen = big.clone().requires_grad_(True)
    losses = bt_loss(chosen, zero, reduction="none")
    assert torch.isfinite(losses).all()
    assert losses[0].item() == pytest.approx(0.0, abs=1e-12)  # sure win: no loss
    assert losses[1].item() == pytest.approx(1e4, rel=1e-12)  # sure loss: -log sigmoid(-m) -> m
    losses.sum().backward()
    assert torch.allclose(chosen.grad, t(0.0, -1.0), atol=1e-12)  # d/dm -log sigmoid(m) = sigmoid(m) - 1
    # the naive formula is what the helper avoids
    assert torch.isinf(-torch.log(torch.sigmoid(t(-1e4)))).item()


def test_bt_loss_hand_values_and_reductions():
    chosen, rejected = t(0.0, 1.0, -1.0), t(0.0, 0.0, 1.0)  # margins 0, 1, -2
    by_hand = [math.log(2), math.log(1 + math.exp(-1)), math.log(1 + math.exp(2))]
    assert torch.allclose(bt_loss(chosen, rejected, reduction="none"), t(*by_hand), atol=1e-12)
    assert bt_loss(chosen, rejected).item() == pytest.approx(sum(by_hand) / 3, abs=1e-12)
    assert bt_loss(chosen, rejected, reduction="sum").item() == pytest.approx(sum(by_hand), abs=1e-12)


def test_adding_a_constant_changes_no_probability_and_no_loss():
    g = torch.Generator().manual_seed(0)
    skills = torch.randn(10, generator=g, dtype=torch.float64)
    winners, losers = sample_games(skills, 200, seed=1)
    for c in (-7.0, 0.5, 123.0):
        shifted = skills + c
        assert torch.allclose(bt_probability(shifted[winners], shifted[losers]),
                              bt_probability(skills[winners], skills[losers]), atol=1e-12)
        assert bt_nll(shifted, winners, losers).item() == pytest.approx(bt_nll(skills, winners, losers).item(), abs=1e-12)


def test_pairwise_accuracy_by_hand_ties_count_as_wrong():
    skills = t(2.0, 1.0, 1.0)
    winners, losers = torch.tensor([0, 1, 2, 1]), torch.tensor([1, 0, 1, 2])
    # 0>1 right, 1>0 wrong, 2 vs 1 tie -> wrong, 1 vs 2 tie -> wrong
    assert pairwise_accuracy(skills, winners, losers) == 0.25


# --- fitting -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def arena():
    g = torch.Generator().manual_seed(0)
    skills = torch.randn(20, generator=g, dtype=torch.float64)
    winners, losers = sample_games(skills, 3000, seed=1)
    return skills, winners, losers


def test_sample_games_follows_bt_probability():
    skills = t(1.0, 0.0)  # player 0 wins with prob sigmoid(1) = 0.731
    winners, losers = sample_games(skills, 20000, seed=3)
    assert ((winners == 0) == (losers == 1)).all()  # every game is 0 vs 1
    freq, p = (winners == 0).double().mean().item(), torch.sigmoid(t(1.0)).item()
    assert abs(freq - p) < 4 * math.sqrt(p * (1 - p) / 20000)


def test_sample_games_never_pairs_a_player_with_itself(arena):
    _, winners, losers = arena
    assert (winners != losers).all()
    assert set(torch.cat([winners, losers]).tolist()) == set(range(20))


def test_mle_recovers_skills_on_a_seeded_arena(arena):
    skills, winners, losers = arena
    fit = fit_bt(winners, losers, 20)
    assert rank_correlations(fit.skills, skills)["spearman"] >= 0.95
    assert (fit.skills - (skills - skills.mean())).abs().max().item() < 0.4
    assert fit.skills.mean().abs().item() < 1e-12
    # the fitted skills explain the games better than the true ones (it is the maximum)
    assert fit.nll_history[-1] < bt_nll(skills, winners, losers).item()
    assert fit.nll_history[0] == pytest.approx(math.log(2), abs=1e-12)  # all skills 0: every game 50/50
    assert all(b <= a + 1e-12 for a, b in zip(fit.nll_history, fit.nll_history[1:]))  # loss never rises


def test_mle_satisfies_the_score_equations(arena):
    # At the MLE, each player's expected number of wins equals its observed wins (Zermelo 1929):
    # d NLL / d s_i = sum over i's games of (p_i_wins - won) = 0. With tiny l2 they hold to ~l2.
    _, winners, losers = arena
    fit = fit_bt(winners, losers, 20, l2=1e-9)
    s = fit.skills
    p_winner = torch.sigmoid(s[winners] - s[losers])
    expected_wins = torch.zeros(20, dtype=torch.float64)
    expected_wins.index_add_(0, winners, p_winner).index_add_(0, losers, 1 - p_winner)
    observed_wins = torch.bincount(winners, minlength=20).double()
    assert torch.allclose(expected_wins, observed_wins, atol=1e-5)


def test_bt_hessian_matches_autograd(arena):
    _, winners, losers = arena
    s = torch.randn(20, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    autograd_hess = torch.autograd.functional.hessian(lambda x: bt_objective(x, winners, losers, 0.3), s)
    assert torch.allclose(bt_hessian(s, winners, losers, 0.3), autograd_hess, atol=1e-9)


def test_fit_stays_finite_when_a_player_wins_every_game():
    winners, losers = torch.tensor([0, 0, 0, 1, 2]), torch.tensor([1, 2, 1, 2, 1])
    fit = fit_bt(winners, losers, 3)
    assert torch.isfinite(fit.skills).all()
    assert fit.skills.argmax().item() == 0


def test_elo_moves_winner_up_loser_down_and_conserves_total():
    ratings = elo_ratings(torch.tensor([0]), torch.tensor([1]), 3, k=0.2)
    # equal ratings: expected score 1/2, so the winner gains k/2 and the loser loses k/2
    assert torch.allclose(ratings, t(0.1, -0.1, 0.0), atol=1e-15)
    # an upset moves ratings more than an expected result
    start = t(1.0, -1.0)
    upset = elo_ratings(torch.tensor([1]), torch.tensor([0]), 2, k=0.2, initial=start)
    expected = elo_ratings(torch.tensor([0]), torch.tensor([1]), 2, k=0.2, initial=start)
    assert upset[1] - start[1] == pytest.approx(0.2 * torch.sigmoid(t(2.0)).item(), abs=1e-12)
    assert (upset[1] - start[1]).item() > (expected[0] - start[0]).item() > 0


def test_elo_conserves_total_rating_over_an_arena(arena):
    skills, winners, losers = arena
    initial = torch.linspace(-1, 1, 20, dtype=torch.float64)
    ratings = elo_ratings(winners, losers, 20, k=0.1, initial=initial)
    assert ratings.sum().item() == pytest.approx(initial.sum().item(), abs=1e-9)
    assert rank_correlations(ratings, skills)["spearman"] > 0.8  # it learns the ordering too


# --- the Bayes ceiling ----------------------------------------------------------------------


def test_bayes_ceiling_by_hand():
    assert bayes_ceiling(t(0.5, 0.9, 0.2)) == pytest.approx((0.5 + 0.9 + 0.8) / 3, abs=1e-12)
    assert bayes_ceiling(t(1.0, 0.0)) == 1.0  # deterministic labels: perfect accuracy is possible


def test_bayes_ceiling_formula_matches_monte_carlo(arena):
    skills, winners, losers = arena
    p = torch.sigmoid(skills[winners] - skills[losers])
    n_samples = 200
    mc = bayes_ceiling_monte_carlo(p, n_samples=n_samples, seed=0)
    closed = bayes_ceiling(p)
    se = math.sqrt(closed * (1 - closed) / (len(p) * n_samples))
    assert abs(mc - closed) < 4 * se
    assert 0.5 < closed < 1


# --- annotators, pooling, rank correlations ---------------------------------------------------


def test_annotator_design_is_balanced_and_pairwise_labels_ignore_scale_and_offset():
    q = torch.randn(20, generator=torch.Generator().manual_seed(0))
    calm = simulate_annotators(q, 12, 5, scale_spread=1.0, offset_sd=0.0, seed=4)
    wild = simulate_annotators(q, 12, 5, scale_spread=5.0, offset_sd=3.0, seed=4)
    assert (torch.bincount(calm.rated_item, minlength=20) == 3).all()  # 12 x 5 / 20 views each
    for j in range(12):
        assert len(set(calm.rated_item[calm.rater == j].tolist())) == 5  # distinct items per hand
    assert len(calm.winners) == len(calm.score)  # as many comparisons as ratings
    # same seed, same perception noise: scale and offset cancel in every comparison
    assert torch.equal(calm.winners, wild.winners) and torch.equal(calm.losers, wild.losers)
    assert not torch.allclose(calm.score, wild.score)


def test_noiseless_annotators_rate_a_q_plus_b_and_always_prefer_the_better_item():
    q = torch.randn(12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    study = simulate_annotators(q, 6, 4, noise_sd=0.0, seed=2)
    a, b = study.scales[study.rater], study.offsets[study.rater]
    assert torch.allclose(study.score, a * q[study.rated_item] + b, atol=1e-12)
    assert (q[study.winners] > q[study.losers]).all()


def test_pooled_scores_by_hand():
    items, scores = torch.tensor([0, 1, 0, 2]), t(1.0, 5.0, 3.0, -1.0)
    assert torch.allclose(pooled_scores(items, scores, 3), t(2.0, 5.0, -1.0))


def test_rank_correlations_hand_values():
    truth = t(1.0, 2.0, 3.0, 4.0)
    assert rank_correlations(torch.exp(truth), truth) == {"spearman": 1.0, "kendall": 1.0}
    assert rank_correlations(-truth, truth)["kendall"] == -1.0
    # one swapped neighbour: 5 concordant, 1 discordant pair -> tau = 4/6; rho = 1 - 6*2/(4*15)
    r = rank_correlations(t(1.0, 3.0, 2.0, 4.0), truth)
    assert r["kendall"] == pytest.approx(4 / 6) and r["spearman"] == pytest.approx(0.8)


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize("call", [
    lambda: bt_probability(t(1.0, 2.0), t(1.0)),
    lambda: bt_loss(t(1.0, 2.0), t(1.0, 2.0, 3.0)),
    lambda: bt_loss(t(1.0), t(1.0), reduction="max"),
    lambda: fit_bt(torch.tensor([0, 1]), torch.tensor([1]), 3),
    lambda: elo_ratings(torch.tensor([0, 1]), torch.tensor([1, 0, 2]), 3),
    lambda: pooled_scores(torch.tensor([0, 1]), t(1.0), 2),
    lambda: rank_correlations(t(1.0, 2.0), t(1.0, 2.0, 3.0)),
], ids=["probability", "loss", "reduction", "fit", "elo", "pool", "rank"])
def test_mismatched_shapes_raise(call):
    with pytest.raises(ValueError):
        call()


@pytest.mark.parametrize("winners, losers, match", [
    ([0, 3], [1, 0], "out of range"),
    ([0, 1], [-1, 0], "out of range"),
    ([0, 1], [1, 1], "against itself"),
])
def test_bad_player_indices_raise(winners, losers, match):
    w, lo = torch.tensor(winners), torch.tensor(losers)
    with pytest.raises(ValueError, match=match):
        fit_bt(w, lo, 3)
    with pytest.raises(ValueError, match=match):
        elo_ratings(w, lo, 3)
    with pytest.raises(ValueError, match=match):
        bt_nll(torch.zeros(3), w, lo)


def test_other_bad_input_raises():
    with pytest.raises(ValueError, match="integer"):
        fit_bt(t(0.0, 1.0), t(1.0, 0.0), 2)
    with pytest.raises(ValueError, match="l2"):
        fit_bt(torch.tensor([0]), torch.tensor([1]), 2, l2=0.0)
    with pytest.raises(ValueError, match="probabilities"):
        bayes_ceiling(t(0.5, 1.2))
    with pytest.raises(ValueError, match="divide"):
        simulate_annotators(torch.randn(10), 5, 3)
    with pytest.raises(ValueError, match="never rated"):
        pooled_scores(torch.tensor([0, 0]), t(1.0, 2.0), 2)
    with pytest.raises(ValueError, match="at least 2 players"):
        sample_games(t(1.0), 5)


def test_plackett_luce_by_hand_and_reduces_to_bt():
    import math

    from pref_lab.bradley_terry import bt_loss, plackett_luce_nll

    scores = torch.tensor([1.0, 0.0, 2.0])
    ranking = torch.tensor([2, 0, 1])  # item 2 first, then 0, then 1
    e = [math.exp(v) for v in (1.0, 0.0, 2.0)]
    expected = -(math.log(e[2] / (e[0] + e[1] + e[2])) + math.log(e[0] / (e[0] + e[1])) + 0.0)
    assert plackett_luce_nll(scores, ranking).item() == pytest.approx(expected, abs=1e-6)
    pair = torch.tensor([0.3, -1.2])
    assert plackett_luce_nll(pair, torch.tensor([0, 1])).item() == pytest.approx(
        bt_loss(pair[:1], pair[1:]).item(), abs=1e-6)
    with pytest.raises(ValueError, match="permutation"):
        plackett_luce_nll(scores, torch.tensor([0, 0, 1]))
