"""Notebook 03 (03_bradley_terry.ipynb), the implement-it exercise solved: `my_bt_loss`.

Run this file to see the solution pass its check: `python solutions/03_bradley_terry.py`. The worked answers to the
notebook's open exercises are in `03_bradley_terry.md`, next to this file.
"""

import torch.nn.functional as F


def my_bt_loss(r_chosen, r_rejected):
    """Bradley–Terry loss, a scalar tensor: the mean over pairs of −log σ(r_chosen − r_rejected).

    r_chosen, r_rejected: (B,) scores of the preferred and the dispreferred item of each pair.
    """
    return -F.logsigmoid(r_chosen - r_rejected).mean()


if __name__ == "__main__":
    from pref_lab.exercises import check_bt_loss

    check_bt_loss(my_bt_loss)
