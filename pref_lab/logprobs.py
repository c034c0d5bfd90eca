"""Sequence log-probabilities: the one convention SFT, reward models, PPO, DPO and evaluation share.

For a prompt x and a completion y = (y_1, ..., y_n) whose last token is EOS,

    log pi(y | x) = sum_{t=1..n} log pi(y_t | x, y_<t)

Prompt tokens and padding are masked out; EOS is counted (ending is part of the answer).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerFast

from .models import Unfinished


def tokenize_completions(
    tokenizer: PreTrainedTokenizerFast,
    prompts: Sequence[str],
    completions: Sequence[str | torch.Tensor],
    max_length: int = 128,
    padding_side: str = "right",
    add_eos: bool = True,
    first_row: int = 0,
) -> dict[str, torch.Tensor]:
    """Tokenize (prompt, completion) pairs into one padded batch.

    ``completions`` are texts (EOS appended when ``add_eos``, except to an :class:`pref_lab.models.Unfinished` text,
    which ran into the length limit) or 1-D tensors of token ids used as they are (e.g. sampled ids that already
    end with EOS, or were cut at the length limit).

    Returns ``input_ids``, ``attention_mask`` and ``completion_mask``, each of shape (B, T):
    ``completion_mask[i, t] = 1`` where token t of row i belongs to the completion.
    Raises ``ValueError`` naming the row (``first_row + i``: callers that batch pass their batch's first row, so the
    message names *their* row) if a prompt or completion is empty, not a string (or id tensor), holds a special token
    as text, or the pair is longer than ``max_length`` tokens (the models' context), rather than silently
    truncating it.
    """
    if isinstance(prompts, str) or isinstance(completions, str):
        raise ValueError("prompts and completions must be lists (one entry per row), not a single string")
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    special = tokenizer.all_special_tokens
    for i, (prompt, completion) in enumerate(zip(prompts, completions)):
        row = first_row + i
        if not isinstance(prompt, str) or not prompt:
            raise ValueError(f"row {row}: the prompt must be a non-empty string, got {prompt!r:.60}")
        if isinstance(completion, torch.Tensor):
            if completion.dim() != 1 or completion.dtype not in (torch.long, torch.int, torch.int32):
                raise ValueError(f"row {row}: a completion tensor must be 1-D token ids, got {tuple(completion.shape)} "
                                 f"{completion.dtype}")
        elif not isinstance(completion, str):
            raise ValueError(f"row {row}: a completion must be a string or a tensor of ids, got {type(completion).__name__}")
        elif not completion.strip():
            raise ValueError(f"row {row}: empty completion for prompt {prompt[:60]!r}")
        elif any(t in completion for t in special):
            token = next(t for t in special if t in completion)
            raise ValueError(f"row {row}: the completion holds the special token {token!r} as text (EOS is appended "
                             f"for you): {completion[:60]!r}")
    prompt_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    rows = []
    for i, (p_ids, completion) in enumerate(zip(prompt_ids, completions)):
        if isinstance(completion, torch.Tensor):
            c_ids = completion.tolist()
        else:
            c_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
            if add_eos and not isinstance(completion, Unfinished):
                c_ids = c_ids + [tokenizer.eos_token_id]
        if len(c_ids) == 0:
            raise ValueError(f"row {first_row + i}: empty completion for prompt {prompts[i][:60]!r}")
        if len(p_ids) + len(c_ids) > max_length:
            raise ValueError(f"row {first_row + i}: prompt + completion is {len(p_ids) + len(c_ids)} tokens > "
                             f"max_length={max_length} (the model's context): shorten it (nothing is truncated)")
        rows.append((p_ids, c_ids))
    width = max(len(p) + len(c) for p, c in rows)
    batch = {k: torch.zeros(len(rows), width, dtype=torch.long) for k in ("input_ids", "attention_mask", "completion_mask")}
    batch["input_ids"].fill_(tokenizer.pad_token_id)
    for i, (p_ids, c_ids) in enumerate(rows):
        n = len(p_ids) + len(c_ids)
        start = 0 if padding_side == "right" else width - n
        batch["input_ids"][i, start:start + n] = torch.tensor(p_ids + c_ids)
        batch["attention_mask"][i, start:start + n] = 1
        batch["completion_mask"][i, start + len(p_ids):start + n] = 1
    return batch


def require_finite(values: torch.Tensor, what: str) -> torch.Tensor:
    """``values`` unchanged if every entry is finite, else ``ValueError`` naming ``what`` and the first bad row: a NaN
    score or log-prob means a broken model (non-finite weights, a blown-up run), never a number to average."""
    bad = ~torch.isfinite(values)
    if bad.any():
        row = int(bad.nonzero()[0][0])
        raise ValueError(f"{what}: row {row} is {values.flatten()[bad.flatten().nonzero()[0][0]].item()} "
                         "(are the model's weights finite? a diverged run gives NaN)")
    return values


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so a left-padded row sees the same positions
    as a right-padded one (GPT-2 has learned absolute position embeddings)."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def last_index(mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of the last position where ``mask`` (B, T) is 1: the last real token under left or right padding
    (the reward model's head reads there), or the last completion token (where PPO pays the score). A row of zeros
    gives 0."""
    positions = torch.arange(mask.shape[-1], device=mask.device)
    return (positions * mask).argmax(-1)


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log p(x_t | x_<t) for t = 1..T-1.

    logits: (B, T, V) from the model on ``input_ids`` (B, T). Returns (B, T-1): entry t-1 is the
    log-prob of token t. Uses log_softmax + gather (never softmax then log: that underflows).
    """
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)


def forward_token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Run ``model`` and return per-token log-probs (B, T-1) (see :func:`token_logprobs`)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask,
                   position_ids=position_ids_from_mask(attention_mask)).logits
    return token_logprobs(logits, input_ids)


def sequence_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_mask: torch.Tensor,
    average: bool = False,
) -> torch.Tensor:
    """log pi(y|x) per row: shape (B,). Sum over completion tokens (EOS included); prompt and
    padding masked. ``average=True`` divides by the number of completion tokens (length-normalised,
    as SimPO and "avg" reference-free scoring use)."""
    return completion_logprobs(forward_token_logprobs(model, input_ids, attention_mask), completion_mask, average)


def completion_logprobs(per_token: torch.Tensor, completion_mask: torch.Tensor, average: bool = False) -> torch.Tensor:
    """log pi(y|x) per row, shape (B,), from per-token log-probs ``per_token`` (B, T-1) (:func:`token_logprobs`) and
    the ``completion_mask`` (B, T) of the batch: the sum over completion tokens (``average=True``: their mean)."""
    mask = completion_mask[:, 1:].to(per_token.dtype)  # token t is predicted at position t-1
    total = (per_token * mask).sum(-1)
    if average:
        return total / mask.sum(-1).clamp(min=1)
    return total
