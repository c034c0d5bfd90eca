"""Notebook 11 (11_ppo_vs_dpo.ipynb), the implement-it exercise solved: `my_paired_se`.

Run this file to see the solution pass its check: `python solutions/11_ppo_vs_dpo.py`. The worked answers to the
notebook's open exercises are in `11_ppo_vs_dpo.md`, next to this file.
"""

import math

import torch


def my_paired_se(a, b):
    """Mean and *paired* standard error of a − b, for two methods measured on the same n prompts.

    a, b: (n,) per-prompt values (say, gold rewards). With d = a − b and s the sample standard deviation of d
    (n − 1 in the denominator):   mean = d̄,   s.e. = s / √n.   Returns (mean, se) as two floats.
    """
    d = torch.as_tensor(a, dtype=torch.float64) - torch.as_tensor(b, dtype=torch.float64)
    return d.mean().item(), d.std().item() / math.sqrt(len(d))


if __name__ == "__main__":
    from pref_lab.exercises import check_paired_se

    check_paired_se(my_paired_se)
