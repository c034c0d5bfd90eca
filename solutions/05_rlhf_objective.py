"""Notebook 05 (05_rlhf_objective.ipynb), the implement-it exercise solved: `my_kl_estimators`.

Run this file to see the solution pass its check: `python solutions/05_rlhf_objective.py`. The worked answers to the
notebook's open exercises are in `05_rlhf_objective.md`, next to this file.
"""

import torch


def my_kl_estimators(logprobs, ref_logprobs):
    """Per-sample estimates of KL(π ‖ π_ref) from samples y ~ π (Schulman's k1, k2, k3).

    logprobs: log π(y) of the samples, (N,); ref_logprobs: log π_ref(y), (N,). With the ratio ρ = π_ref(y) / π(y):

        k1 = −log ρ,    k2 = ½ (log ρ)²,    k3 = (ρ − 1) − log ρ

    Returns {"k1": ..., "k2": ..., "k3": ...}, each of shape (N,).
    """
    log_ratio = ref_logprobs - logprobs
    return {"k1": -log_ratio, "k2": 0.5 * log_ratio ** 2, "k3": torch.expm1(log_ratio) - log_ratio}


if __name__ == "__main__":
    from pref_lab.exercises import check_kl_estimators

    check_kl_estimators(my_kl_estimators)
