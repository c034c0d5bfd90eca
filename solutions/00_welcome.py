"""Notebook 00 (00_welcome.ipynb), the implement-it exercise solved: `my_gold_from_terms`.

Run this file to see the solution pass its check: `python solutions/00_welcome.py`. The worked answers to the
notebook's open exercises are in `00_welcome.md`, next to this file.
"""

import torch


def my_gold_from_terms(sentiment, fluency, repetition, finished, rules):
    """The gold reward from the terms `gold.rate` measures, each a tensor of shape (N,):

        r = A·tanh(S/A) − min(λ·max(0, F0 − F), P) − μ·ρ − c·(1 − finished)

    sentiment S (the word-weight logit), fluency F (nats per token; −inf for an empty text), repetition ρ, finished
    (1.0 or 0.0). `rules` holds A = rules.bound, F0 = rules.fluency_floor, λ = rules.fluency_weight,
    P = rules.max_fluency_penalty, μ = rules.repetition_weight, c = rules.unfinished_penalty.
    Returns the reward, shape (N,).
    """
    r = rules
    disfluency = (r.fluency_weight * (r.fluency_floor - fluency).clamp(min=0)).clamp(max=r.max_fluency_penalty)
    return (r.bound * torch.tanh(sentiment / r.bound) - disfluency - r.repetition_weight * repetition
            - r.unfinished_penalty * (1 - finished))


if __name__ == "__main__":
    from pref_lab.exercises import check_gold_from_terms

    check_gold_from_terms(my_gold_from_terms)
