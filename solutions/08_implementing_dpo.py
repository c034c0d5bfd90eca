"""Notebook 08 (08_implementing_dpo.ipynb), the implement-it exercise solved: `my_sequence_logprob`, `my_dpo_loss`.

Run this file to see the solution pass its check: `python solutions/08_implementing_dpo.py`. The worked answers to the
notebook's open exercises are in `08_implementing_dpo.md`, next to this file.
"""

import torch.nn.functional as F


def my_sequence_logprob(token_logps, completion_mask):
    """log π(y|x) of each row, shape (B,): the sum of the completion tokens' log-probs, EOS included.

    token_logps: (B, T − 1), entry t − 1 the log-prob of token t (as `token_logprobs` returns them);
    completion_mask: (B, T), 1 on the completion's tokens (a row may have none: its log-prob is 0).
    """
    return (token_logps * completion_mask[:, 1:]).sum(-1)


def my_dpo_loss(pi_logps, ref_logps, yw_ids, yl_ids, beta):
    """The DPO paper's seed loss, on per-sequence log-probs.

    pi_logps, ref_logps: (B,) log π(y|x) and log π_ref(y|x) of every completion in the batch;
    yw_ids, yl_ids: (P,) row indices of each pair's preferred and dispreferred completion; beta > 0.

        h = (log π(y_w) − log π(y_l)) − (log π_ref(y_w) − log π_ref(y_l)),    loss = −log σ(β·h)

    Returns (losses (P,), rewards (B,)), with rewards = β(log π − log π_ref) detached, for logging.
    """
    pi_logratios = pi_logps[yw_ids] - pi_logps[yl_ids]
    ref_logratios = ref_logps[yw_ids] - ref_logps[yl_ids]
    losses = -F.logsigmoid(beta * (pi_logratios - ref_logratios))
    rewards = beta * (pi_logps - ref_logps).detach()
    return losses, rewards


if __name__ == "__main__":
    from pref_lab.exercises import check_dpo_loss, check_sequence_logprob

    check_sequence_logprob(my_sequence_logprob)
    check_dpo_loss(my_dpo_loss)
