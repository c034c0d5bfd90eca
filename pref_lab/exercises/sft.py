"""Notebook 02: the prompt-masked SFT loss."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..logprobs import token_logprobs
from ..sft import token_mean_nll
from .checker import NO_GRADIENT, NO_GRADIENT_ADVICE, Case, CheckResult, Exercise, Mistake, no_gradient, run_check


def _loss(logits, input_ids, mask):
    return token_mean_nll(token_logprobs(logits, input_ids), mask)


def _reference(logits, input_ids, attention_mask, completion_mask):
    """The course's loss (what pref_lab.sft.sft_loss computes from the model's logits)."""
    return _loss(logits, input_ids, completion_mask)


def _prompt_in_loss(logits, input_ids, attention_mask, completion_mask):
    return _loss(logits, input_ids, attention_mask)


def _padding_in_loss(logits, input_ids, attention_mask, completion_mask):
    return _loss(logits, input_ids, torch.ones_like(completion_mask))


def _no_shift(logits, input_ids, attention_mask, completion_mask):
    logp = torch.log_softmax(logits.float(), -1).gather(-1, input_ids[..., None]).squeeze(-1)
    mask = completion_mask.to(logp.dtype)
    return -(logp * mask).sum() / mask.sum()


def _row_mean(logits, input_ids, attention_mask, completion_mask):
    logp = token_logprobs(logits, input_ids)
    mask = completion_mask[:, 1:].to(logp.dtype)
    return (-(logp * mask).sum(-1) / mask.sum(-1)).mean()


def _cases() -> list[Case]:
    g = torch.Generator().manual_seed(2)
    vocab = 11
    # rows: [prompt | completion | padding]; real rows have prompts and completions of different lengths
    attention = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 0]])
    completion = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1, 0]])
    ids = torch.randint(0, vocab, attention.shape, generator=g)
    logits = (torch.randn(*attention.shape, vocab, generator=g) * 2).requires_grad_(True)  # the loss trains these
    one = dict(logits=torch.randn(1, 4, vocab, generator=g).requires_grad_(True),
               input_ids=torch.randint(0, vocab, (1, 4), generator=g),
               attention_mask=torch.ones(1, 4, dtype=torch.long), completion_mask=torch.tensor([[0, 0, 1, 1]]))
    # a row with no completion token at all (a prompt that filled the context): it adds nothing to the mean
    empty = dict(logits=logits, input_ids=ids, attention_mask=attention,
                 completion_mask=torch.cat([completion[:2], torch.zeros(1, 7, dtype=torch.long)]))
    return [Case("three right-padded rows of different lengths",
                 dict(logits=logits, input_ids=ids, attention_mask=attention, completion_mask=completion)),
            Case("one unpadded row (prompt 2 tokens, completion 2)", one),
            Case("a batch with one row that has no completion token", empty)]


EXERCISE = Exercise(
    name="masked_sft_loss",
    reference=_reference,
    cases=_cases(),
    mistakes=[
        Mistake(NO_GRADIENT, NO_GRADIENT_ADVICE, spot=no_gradient),
        Mistake("the prompt is left in the loss", "Mask with completion_mask, not attention_mask: SFT learns the "
                "response (and its EOS), not to predict the user's instruction.", wrong=_prompt_in_loss),
        Mistake("the loss is not masked", "Padding tokens are not text (counting them rewards predicting <|pad|>), "
                "and the prompt is not the model's to learn: mask with completion_mask.", wrong=_padding_in_loss),
        Mistake("the targets are not shifted", "The logits at position t predict token t + 1, not token t: shift the "
                "targets and the mask by one position.", wrong=_no_shift),
        Mistake("each row is averaged, then the rows", "The course takes one token mean over the whole batch "
                "(Σ masked −log p / Σ mask), so a long response counts for as many tokens as it has.", wrong=_row_mean),
    ],
    hint="the logits at position t predict token t + 1, so the targets and the mask shift by one; the loss is one "
         "mean of −log p over the completion tokens of the whole batch.",
)


def check_masked_sft_loss(fn: Callable) -> CheckResult:
    """Check ``masked_sft_loss(logits (B,T,V), input_ids (B,T), attention_mask (B,T), completion_mask (B,T)) -> scalar``
    (notebook 02)."""
    return run_check(EXERCISE, fn)
