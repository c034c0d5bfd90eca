"""Notebook 10: online DPO's pairing rule (the best and the worst of k judged samples; ties dropped)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..online import select_pairs
from .checker import Case, CheckResult, Exercise, Mistake, run_check


def _reference(scores):
    """Chosen / rejected columns and the keep mask of :func:`pref_lab.online.select_pairs` (distinct texts)."""
    texts = [[f"sample {i}.{j}" for j in range(scores.shape[1])] for i in range(scores.shape[0])]
    sel = select_pairs(texts, scores)
    keep = torch.zeros(scores.shape[0], dtype=torch.bool)
    chosen, rejected = scores.argmax(-1), scores.argmin(-1)  # what select_pairs picks, for every row
    keep[sel["prompt_index"]] = True
    chosen[sel["prompt_index"]], rejected[sel["prompt_index"]] = sel["chosen"], sel["rejected"]
    return chosen, rejected, keep


def _compare(out, expected, args) -> str | None:
    """Same verdict iff the keep masks match and, on every kept row, the chosen and the rejected samples score what
    ``expected``'s score (so any of several tied best or worst columns will do)."""
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        return f"returned {type(out).__name__}, expected a tuple (chosen, rejected, keep)"
    scores = args["scores"]
    try:
        chosen, rejected, keep = (torch.as_tensor(x) for x in out)
    except (TypeError, ValueError) as err:
        return f"could not be read as three tensors ({err})"
    if chosen.shape != (len(scores),) or rejected.shape != (len(scores),) or keep.shape != (len(scores),):
        return f"has shapes {[tuple(x.shape) for x in (chosen, rejected, keep)]}, expected three of ({len(scores)},)"
    if keep.dtype != torch.bool:
        return (f"keep has dtype {keep.dtype}, expected torch.bool: an integer 0/1 tensor used as an index, x[keep], "
                "picks rows 0 and 1 instead of masking (a comparison such as a > b gives a bool tensor)")
    if not torch.equal(keep, expected[2]):
        return f"keeps rows {keep.nonzero().flatten().tolist()}, expected {expected[2].nonzero().flatten().tolist()}"
    rows = keep.nonzero().flatten()
    cols = scores.shape[1]
    if ((chosen[rows] < 0) | (chosen[rows] >= cols) | (rejected[rows] < 0) | (rejected[rows] >= cols)).any():
        return f"has column indices outside 0..{cols - 1}"
    same_chosen = scores[rows, chosen[rows].long()] == scores[rows, torch.as_tensor(expected[0])[rows].long()]
    same_rejected = scores[rows, rejected[rows].long()] == scores[rows, torch.as_tensor(expected[1])[rows].long()]
    if not (same_chosen.all() and same_rejected.all()):
        return "pairs the wrong samples on a kept row"
    return None


def _keeps_ties(scores):
    return scores.argmax(-1), scores.argmin(-1), torch.ones(len(scores), dtype=torch.bool)


def _first_two(scores):
    first_better = scores[:, 0] >= scores[:, 1]
    chosen = torch.where(first_better, 0, 1)
    keep = scores[:, 0] != scores[:, 1]
    # a "pair" of the first two samples, whatever the others scored
    return chosen, 1 - chosen, keep


def _second_best(scores):
    top2 = scores.topk(2, dim=-1).indices
    keep = scores.max(-1).values > scores.min(-1).values
    return top2[:, 0], top2[:, 1], keep


def _swapped(scores):
    return scores.argmin(-1), scores.argmax(-1), scores.max(-1).values > scores.min(-1).values


def _cases() -> list[Case]:
    g = torch.Generator().manual_seed(11)
    return [Case("two samples per prompt", dict(scores=torch.tensor([[0.3, 1.2], [2.0, -1.0], [0.5, 0.4]]))),
            Case("four samples per prompt", dict(scores=torch.randn(5, 4, generator=g))),
            Case("four samples, two prompts whose samples all tie",
                 dict(scores=torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.2, 3.0, -1.0, 3.0], [0.5, 0.5, 0.5, 0.5],
                                           [-2.0, 0.0, 1.0, -2.0], [1.0, 1.0, -0.5, 2.0]])))]


EXERCISE = Exercise(
    name="online_pair",
    reference=_reference,
    cases=_cases(),
    compare=_compare,
    mistakes=[
        Mistake("a prompt whose samples all tie is kept", "When the best and the worst score the same, the judge "
                "expressed no preference: a pair from such a prompt teaches noise. Drop it (keep = False).",
                wrong=_keeps_ties),
        Mistake("chosen and rejected are swapped", "chosen is the sample the judge scored *highest*.", wrong=_swapped),
        Mistake("the pair is the first two samples", "With k samples, pair the best with the worst of all k: the "
                "widest margin the judge gives, which is the point of sampling more than two.", wrong=_first_two),
        Mistake("the pair is the best and the second best", "Pair the best with the *worst* of the k samples.",
                wrong=_second_best),
    ],
    hint="notebook 10's rule: of each prompt's k judged samples, which two make the pair, and when is there no "
         "pair at all?",
)


def check_online_pair(fn: Callable) -> CheckResult:
    """Check ``online_pair(scores (P, k)) -> (chosen (P,), rejected (P,), keep (P,) bool)`` (notebook 10)."""
    return run_check(EXERCISE, fn)
