"""Making the world's preference data: sample completions, let the gold judge "vote" through BT.

For two completions y_a, y_b of one prompt with gold rewards g_a, g_b, the simulated human
prefers y_a with the Bradley–Terry probability

    p = P(y_a > y_b) = sigma(g_a - g_b)

and we *sample* the label from it, so labels are noisy the way human labels are. Because p is
known, so is the best accuracy any model can reach on these labels (the Bayes ceiling):

    ceiling = E[max(p, 1 - p)]
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch

from .bradley_terry import bayes_ceiling  # noqa: F401  (re-exported: the ceiling of these labels)
from .data import validate_record
from .models import Unfinished


def make_pairs(prompt: str, completions: Sequence[str], gold: torch.Tensor, generator: torch.Generator,
               all_pairs: bool = True, source: str = "pairs") -> list[dict]:
    """Pairs for one prompt, labeled by sampling from BT on the gold rewards.

    ``completions``: k texts; ``gold``: their gold rewards (k,). With ``all_pairs`` every one of
    the k(k-1)/2 pairs is used, else disjoint neighbours (0,1), (2,3), ... Identical texts cannot
    form a pair and are skipped by the caller's count. Each record has TRL's columns plus
    ``gold_chosen``, ``gold_rejected`` and ``p_chosen`` = sigma(gold_chosen - gold_rejected). A completion
    that is an :class:`pref_lab.models.Unfinished` text (it ran into the length limit) is written as its text with
    ``chosen_finished`` / ``rejected_finished`` false; every record carries both flags.
    """
    if len(completions) != len(gold):
        raise ValueError(f"{len(completions)} completions but {len(gold)} gold rewards")
    index_pairs = (itertools.combinations(range(len(completions)), 2) if all_pairs
                   else zip(range(0, len(completions) - 1, 2), range(1, len(completions), 2)))
    pairs = []
    for a, b in index_pairs:
        if completions[a].strip() == completions[b].strip():
            continue
        p_a = torch.sigmoid(gold[a] - gold[b]).item()
        a_wins = torch.rand((), generator=generator).item() < p_a
        w, l_ = (a, b) if a_wins else (b, a)
        record = {"prompt": prompt, "chosen": str(completions[w]), "rejected": str(completions[l_]),
                  "gold_chosen": round(gold[w].item(), 4), "gold_rejected": round(gold[l_].item(), 4),
                  "p_chosen": round(p_a if a_wins else 1 - p_a, 4),
                  "chosen_finished": not isinstance(completions[w], Unfinished),
                  "rejected_finished": not isinstance(completions[l_], Unfinished)}
        validate_record(record, "preference", source, len(pairs))
        pairs.append(record)
    return pairs
