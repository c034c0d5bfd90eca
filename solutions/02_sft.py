"""Notebook 02 (02_sft.ipynb), the implement-it exercise solved: `my_masked_sft_loss`.

Run this file to see the solution pass its check: `python solutions/02_sft.py`. The worked answers to the
notebook's open exercises are in `02_sft.md`, next to this file.
"""

import torch


def my_masked_sft_loss(logits, input_ids, attention_mask, completion_mask):
    """The prompt-masked SFT loss (a scalar tensor): the token mean of −log p over the completion tokens of the batch.

    logits: (B, T, V) from the model on input_ids (B, T); attention_mask (B, T): 1 on real tokens, 0 on padding;
    completion_mask (B, T): 1 on the response's tokens (EOS included; a row may have none). The logits at position t
    predict token t + 1:

        loss = −Σ_{b,t} m_{b,t} log p(x_{b,t} | x_{b,<t}) / Σ_{b,t} m_{b,t},   m = completion_mask (t ≥ 1)
    """
    logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # (B, T-1)
    mask = completion_mask[:, 1:].to(logp.dtype)
    return -(logp * mask).sum() / mask.sum()


if __name__ == "__main__":
    from pref_lab.exercises import check_masked_sft_loss

    check_masked_sft_loss(my_masked_sft_loss)
