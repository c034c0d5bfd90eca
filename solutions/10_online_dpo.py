"""Notebook 10 (10_online_dpo.ipynb), the implement-it exercise solved: `my_online_pair`.

Run this file to see the solution pass its check: `python solutions/10_online_dpo.py`. The worked answers to the
notebook's open exercises are in `10_online_dpo.md`, next to this file.
"""



def my_online_pair(scores):
    """Online DPO's pairing rule, for P prompts with k judged samples each.

    scores: (P, k) judge scores. For each prompt the pair is (the best sample, the worst sample); a prompt whose
    best and worst scores are equal gives no pair. Returns (chosen (P,), rejected (P,), keep (P,) bool): the
    column of each prompt's chosen and rejected sample, and whether the prompt gives a pair.
    """
    chosen, rejected = scores.argmax(-1), scores.argmin(-1)
    keep = scores.max(-1).values > scores.min(-1).values
    return chosen, rejected, keep


if __name__ == "__main__":
    from pref_lab.exercises import check_online_pair

    check_online_pair(my_online_pair)
