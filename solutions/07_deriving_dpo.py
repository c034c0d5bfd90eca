"""Notebook 07 (07_deriving_dpo.ipynb), the implement-it exercise solved: `my_optimal_policy`.

Run this file to see the solution pass its check: `python solutions/07_deriving_dpo.py`. The worked answers to the
notebook's open exercises are in `07_deriving_dpo.md`, next to this file.
"""

import torch


def my_optimal_policy(ref_logprobs, rewards, beta):
    """The optimum of the KL-regularised objective on a bandit, as log-probs (K,):

        log π*(y) = log π_ref(y) + r(y)/β − log Z,    Z = Σ_y π_ref(y)·exp(r(y)/β)

    ref_logprobs: (K,) log π_ref; rewards: (K,); beta > 0. Stay in log space: r/β can be in the hundreds.
    """
    return torch.log_softmax(ref_logprobs + rewards / beta, dim=-1)


if __name__ == "__main__":
    from pref_lab.exercises import check_optimal_policy

    check_optimal_policy(my_optimal_policy)
