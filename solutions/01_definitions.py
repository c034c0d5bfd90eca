"""Notebook 01 (01_definitions.ipynb), the implement-it exercise solved: `my_plackett_luce`.

Run this file to see the solution pass its check: `python solutions/01_definitions.py`. The worked answers to the
notebook's open exercises are in `01_definitions.md`, next to this file.
"""

import torch


def my_plackett_luce(scores, ranking):
    """Plackett–Luce negative log-likelihood of a full ranking (a scalar tensor).

    scores: (K,) item scores r; ranking: (K,) item indices, best first (π = ranking). The ranking is built by
    picking, at each step, one of the remaining items with probability softmax(r) over the remaining items:

        −log P(ranking) = −Σ_{k=1..K} [ r_π(k) − log Σ_{j ≥ k} exp(r_π(j)) ]

    Stay in log space (torch.logsumexp): scores can be large.
    """
    ordered = scores[ranking]
    return -sum(ordered[k] - torch.logsumexp(ordered[k:], 0) for k in range(len(ordered)))


if __name__ == "__main__":
    from pref_lab.exercises import check_plackett_luce

    check_plackett_luce(my_plackett_luce)
