"""pref_lab.compare against hand-computed values and scipy's t quantiles."""

import math

import pytest
from scipy import stats

from pref_lab.compare import T_975, at_kl, seed_curve, welch


def curve(kls, golds):
    return [{"step": 10 * i, "kl": k, "gold_reward": g, "gold_rewards": [g, -g]} for i, (k, g) in enumerate(zip(kls, golds))]


def test_at_kl_interpolates_between_the_points_around_the_budget():
    c = curve([0.0, 2.0, 4.0], [0.0, 1.0, 3.0])
    assert at_kl(c, 0.0) == 0.0 and at_kl(c, 2.0) == 1.0
    assert at_kl(c, 1.0) == pytest.approx(0.5) and at_kl(c, 3.0) == pytest.approx(2.0)
    assert at_kl(c, 4.5) is None  # never got that far
    assert at_kl(c, 3.0, "gold_rewards") == pytest.approx([2.0, -2.0])  # per prompt, the same weights
    with pytest.raises(ValueError, match=">= 0"):
        at_kl(c, -1.0)
    for point, seconds in zip(c, (0.0, 10.0, 30.0)):
        point["train_seconds"] = seconds
    assert at_kl(c, 20.0, along="train_seconds") == pytest.approx(2.0)  # halfway from 10 s (gold 1) to 30 s (gold 3)
    assert at_kl(c, 20.0, key="kl", along="train_seconds") == pytest.approx(3.0)


def test_at_kl_takes_the_first_time_a_curve_reaches_the_budget():
    c = curve([0.0, 3.0, 2.0, 5.0], [0.0, 3.0, 10.0, 20.0])  # KL is not monotone in steps
    assert at_kl(c, 2.5) == pytest.approx(2.5)  # between the first two points, not between 2.0 and 5.0


def test_seed_curve_averages_the_seeds_point_by_point():
    runs = [{"curve": curve([0.0, 1.0 + s], [0.0, 2.0 * s]) } for s in (0, 1, 2)]
    for run in runs:
        for p in run["curve"]:
            p.update(eos_rate=1.0, length=10.0)
    mean = seed_curve(runs)
    assert [p["step"] for p in mean] == [0, 10]
    assert mean[1]["kl"] == pytest.approx(2.0) and mean[1]["kl_se"] == pytest.approx(1 / math.sqrt(3))
    assert mean[1]["gold_reward"] == pytest.approx(2.0) and mean[1]["gold_reward_se"] == pytest.approx(2 / math.sqrt(3))
    assert mean[0]["kl_se"] == 0.0
    runs[2]["curve"] = runs[2]["curve"][:1]
    with pytest.raises(ValueError, match="same steps"):
        seed_curve(runs)


def test_welch_by_hand_and_the_t_table_is_scipys():
    # a: mean 2, var 1; b: mean 1, var 3 -> se = sqrt(1/3 + 3/3) = sqrt(4/3), df = 2
    result = welch([1.0, 2.0, 3.0], [0.0, 0.0, 3.0])
    assert result["diff"] == pytest.approx(1.0) and result["se"] == pytest.approx(math.sqrt(4 / 3)) and result["df"] == 2
    assert result["margin"] == pytest.approx(4.303 * math.sqrt(4 / 3)) and not result["detected"]
    assert welch([10.0, 10.1, 9.9], [0.0, 0.1, -0.1])["detected"]
    for df, t in T_975.items():
        assert t == pytest.approx(stats.t.ppf(0.975, df), abs=5e-4)
    with pytest.raises(ValueError, match=">= 2 seeds"):
        welch([1.0], [1.0, 2.0])
