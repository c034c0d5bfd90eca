"""Notebook 04 (04_reward_model.ipynb), the implement-it exercise solved: `my_last_token_reward`.

Run this file to see the solution pass its check: `python solutions/04_reward_model.py`. The worked answers to the
notebook's open exercises are in `04_reward_model.md`, next to this file.
"""

import torch


def my_last_token_reward(values, attention_mask):
    """The reward of each row, shape (B,): the head's output at the row's *last real token*.

    values: (B, T), the scalar head applied at every position; attention_mask: (B, T), 1 on real tokens, 0 on
    padding, which may be on the right (training batches) or on the left (generation batches): find the last
    position whose mask is 1.
    """
    positions = torch.arange(attention_mask.shape[1])
    last = (positions * attention_mask).argmax(-1)  # the largest position whose mask is 1
    return values[torch.arange(len(values)), last]


if __name__ == "__main__":
    from pref_lab.exercises import check_last_token_reward

    check_last_token_reward(my_last_token_reward)
