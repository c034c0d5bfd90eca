"""How far can the preference *data* take a reward model? Fit Bradley–Terry with the gold judge's own features.

    .venv/bin/python scripts/rm_feature_oracle.py            # val-movie pairs alone, then + rm_extra (~4 min)

The gold reward is a logistic regression on word/bigram presence (``pref_lab.judge``). A reward model that
already had exactly those features would only need to learn one weight per feature from the noisy labels:

    r_w(y) = w . phi(y),    minimise  -mean log sigma(w . (phi(y_c) - phi(y_r)))  +  l2 * |w|^2

This script fits that model (L-BFGS on sparse feature differences) on the shipped training pairs and reports its
accuracy on the held-out test pairs, next to the Bayes ceiling and the shipped RM. The gap between this
"right-features" model and the ceiling is what the data costs; the gap between it and the shipped RM is what
learning the features (with a tiny transformer, on a CPU budget) costs. ``l2`` is a grid; no value is selected on
the test pairs: every one is printed.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from pref_lab.config import data_path
from pref_lab.data import read_jsonl
from pref_lab.judge import load_gold_judge, text_features


def feature_differences(pairs: Sequence[Mapping], index: Mapping[str, int]) -> torch.Tensor:
    """Sparse (n_pairs, n_features) matrix of phi(chosen) - phi(rejected), phi = feature presence (0/1)."""
    rows, cols, values = [], [], []
    for i, pair in enumerate(pairs):
        chosen = {index[f] for f in text_features(pair["chosen"]) if f in index}
        rejected = {index[f] for f in text_features(pair["rejected"]) if f in index}
        for j in chosen - rejected:
            rows.append(i), cols.append(j), values.append(1.0)
        for j in rejected - chosen:
            rows.append(i), cols.append(j), values.append(-1.0)
    return torch.sparse_coo_tensor([rows, cols], values, (len(pairs), len(index)), check_invariants=True).coalesce()


def fit_bradley_terry(diffs: torch.Tensor, l2: float, max_iter: int = 300) -> torch.Tensor:
    """Weights w (n_features, 1) minimising the mean BT loss on ``diffs`` (every pair's label: chosen wins) + l2."""
    w = torch.zeros(diffs.shape[1], 1, requires_grad=True)
    optimizer = torch.optim.LBFGS([w], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = -F.logsigmoid(torch.sparse.mm(diffs, w)).mean() + l2 * (w**2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return w.detach()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--l2", default="1e-3,3e-4,1e-4,3e-5", help="comma-separated L2 strengths")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    index = load_gold_judge().index
    train = read_jsonl(data_path("preferences", "train.jsonl"))
    extra = read_jsonl(data_path("preferences", "rm_extra.jsonl.gz"))
    test = read_jsonl(data_path("preferences", "test.jsonl"))
    test_diffs = feature_differences(test, index)
    gold_order = torch.tensor([p["gold_chosen"] > p["gold_rejected"] for p in test])
    rm = json.loads(data_path("manifest.json").read_text())["assets"]["rm"]["metrics"]
    print(f"test pairs {len(test)}: Bayes ceiling {rm['test_bayes_ceiling']:.4f}, shipped RM accuracy "
          f"{rm['test_accuracy']:.4f} (agreement with the gold order {rm['agreement_with_gold_order']:.4f})")
    for name, pairs in (("train.jsonl (val movies)", train), ("train.jsonl + rm_extra", train + extra)):
        start = time.time()
        diffs = feature_differences(pairs, index)
        for l2 in (float(x) for x in args.l2.split(",")):
            margins = torch.sparse.mm(test_diffs, fit_bradley_terry(diffs, l2)).squeeze(1)
            print(f"{name:26s} {len(pairs):6d} pairs  l2 {l2:.0e}: test accuracy {(margins > 0).float().mean():.4f}, "
                  f"agreement with the gold order {((margins > 0) == gold_order).float().mean():.4f}", flush=True)
        print(f"  ({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
