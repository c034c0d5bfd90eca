"""Comparing methods over training seeds: curves averaged over seeds, the gold reward read at equal KL, and
differences with the margin that three seeds allow (notebook 11, on ``data/results/frontier_full.json``).

A run's *curve* is its list of evaluated points in step order, starting at the SFT point (KL 0); a point holds at
least ``kl`` and ``gold_reward`` (and, in the frontier file, ``gold_rewards``: one per held-out prompt).

* :func:`at_kl` reads a curve at KL = K by linear interpolation between the two evaluated points around it, the
  first time the curve gets there. It is how two methods are compared *at equal KL* without picking each one's best
  point (a maximum over noisy points is biased upward).
* :func:`seed_curve` averages the curves of one setting's seeds, step by step, with standard errors over seeds.
* :func:`welch` compares two methods from their per-seed values: mean difference, its standard error
  sqrt(s_a²/n_a + s_b²/n_b), and the 95% margin t(0.975, df)·s.e. with the conservative df = min(n_a, n_b) - 1
  (4.30 s.e. for 3 seeds): a difference counts as detected when it exceeds its margin.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .world import mean_sem

# two-sided 95% quantiles of Student's t, t(0.975, df), by degrees of freedom (scipy.stats.t.ppf(0.975, df))
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def at_kl(curve: Sequence[dict], budget: float, key: str = "gold_reward", along: str = "kl"):
    """``curve``'s ``key`` where its KL first reaches ``budget``, interpolated linearly in KL between the two
    evaluated points around it; ``None`` if the curve never gets that far.

    curve: points in step order, ``curve[0]`` the SFT point (KL 0). ``key`` may name a float (``gold_reward``) or a
    per-prompt list (``gold_rewards``: then a list, each prompt interpolated with the same weights).
    With (k0, g0), (k1, g1) the first consecutive points with k0 <= budget <= k1:
    value = g0 + (g1 - g0)·(budget - k0)/(k1 - k0).
    ``along`` reads the curve along another budget instead of the KL, e.g. ``"train_seconds"`` (equal compute).
    """
    if budget < 0:
        raise ValueError(f"a budget is >= 0, got {budget}")
    for p0, p1 in zip(curve, curve[1:]):
        k0, k1 = p0[along], p1[along]
        if k0 <= budget <= k1:
            w = 0.0 if k1 == k0 else (budget - k0) / (k1 - k0)
            v0, v1 = np.asarray(p0[key], dtype=float), np.asarray(p1[key], dtype=float)
            value = v0 + (v1 - v0) * w
            return value.tolist() if value.ndim else float(value)
    return None


def seed_curve(runs: Sequence[dict], keys: Sequence[str] = ("kl", "gold_reward", "eos_rate", "length")) -> list[dict]:
    """One setting's curves averaged over its seeds, point by point: ``{"step", key: mean, key + "_se": s.e.}``
    (:func:`pref_lab.world.mean_sem` over the seeds, the course's one mean-and-s.e.).

    runs: the setting's runs (one per seed), evaluated on the same schedule (same steps), else ``ValueError``.
    """
    steps = [[p["step"] for p in run["curve"]] for run in runs]
    if not runs or any(s != steps[0] for s in steps):
        raise ValueError(f"seed_curve needs runs evaluated at the same steps, got {steps}")
    out = []
    for i, step in enumerate(steps[0]):
        point = {"step": step}
        for key in keys:
            point[key], point[key + "_se"] = mean_sem([run["curve"][i][key] for run in runs])
        out.append(point)
    return out


def welch(a: Sequence[float], b: Sequence[float]) -> dict:
    """Difference of two methods' means over independent seeds: ``{"diff", "se", "df", "margin", "detected"}``.

    se = sqrt(var(a)/n_a + var(b)/n_b) (sample variances), df = min(n_a, n_b) - 1 (conservative next to
    Welch-Satterthwaite), margin = T_975[df]·se; ``detected`` is |diff| > margin.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if min(a.size, b.size) < 2:
        raise ValueError(f"welch needs >= 2 seeds a side, got {a.size} and {b.size}")
    diff = float(a.mean() - b.mean())
    se = float(math.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size))
    df = min(a.size, b.size) - 1
    margin = T_975[min(df, max(T_975))] * se
    return {"diff": diff, "se": se, "df": df, "margin": margin, "detected": abs(diff) > margin}
