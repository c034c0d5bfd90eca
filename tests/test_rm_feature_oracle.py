"""scripts/rm_feature_oracle.py: Bradley–Terry on the gold judge's own features (how far the data can go)."""

from __future__ import annotations

import torch


def test_feature_differences_by_hand(load_script):
    oracle = load_script("rm_feature_oracle")
    index = {"great": 0, "dull": 1, "not great": 2}
    pairs = [{"chosen": "Great fun, great cast.", "rejected": "A dull film."},   # presence, not counts
             {"chosen": "not great", "rejected": "great"}]                      # shared features cancel
    dense = oracle.feature_differences(pairs, index).to_dense()
    torch.testing.assert_close(dense, torch.tensor([[1.0, -1.0, 0.0], [0.0, 0.0, 1.0]]))


def test_fit_recovers_which_feature_wins(load_script):
    oracle = load_script("rm_feature_oracle")
    index = {"good": 0, "bad": 1, "film": 2}
    pairs = [{"chosen": "good film", "rejected": "bad film"}] * 3 + [{"chosen": "film", "rejected": "bad film"}] * 3
    w = oracle.fit_bradley_terry(oracle.feature_differences(pairs, index), l2=1e-2).squeeze(1)
    assert w[0] > 0 > w[1] and abs(w[2]) < 1e-6  # "film" is in every text: it never moves a margin
