"""Supervised (instruction) fine-tuning: instruction data from the world, the prompt-masked loss, a loop.

SFT loss (token mean over response tokens, EOS included; prompt and padding masked):

    L_SFT = - (1 / sum_i |y_i|) * sum_i sum_{t=1..|y_i|} log pi(y_{i,t} | x_i, y_{i,<t})
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence

import torch
from tqdm.auto import tqdm

from .config import model_device, seed_everything
from .data import validate_record, validate_records
from .logprobs import forward_token_logprobs, require_finite, tokenize_completions
from .models import context_length, format_prompt
from .training import Callback, EvalFn, check_finite, check_steps, log_step

# A few paraphrases per task, so the model learns the *instruction*, not one fixed string.
REVIEW_INSTRUCTIONS = ("Write a review of {title}.", "What did you think of {title}?", "Review the movie {title}.")
PLOT_INSTRUCTIONS = ("Summarize the plot of {title}.", "What is {title} about?", "Give a short plot summary of {title}.")
MAX_RESPONSE_TOKENS = 60


def first_sentences(text: str, min_chars: int = 60, max_chars: int = 240) -> str:
    """The first sentence of ``text`` (two if the first is shorter than ``min_chars``), cut at a word
    boundary to at most ``max_chars`` characters so plot-summary responses stay short."""
    sentences = re.split(r"(?<=[.!?])\s+", text.strip())
    out = sentences[0]
    if len(out) < min_chars and len(sentences) > 1:
        out = out + " " + sentences[1]
    if len(out) > max_chars:
        out = out[:max_chars].rsplit(" ", 1)[0].rstrip(",;:") + "..."
    return out


def build_sft_examples(corpus_rows: Sequence[Mapping], tokenizer, seed: int = 0,
                       max_response_tokens: int = MAX_RESPONSE_TOKENS) -> tuple[list[dict], dict]:
    """Turn corpus rows into chat-formatted SFT examples.

    review row -> ("Write a review of <movie>." -> the real snippet)
    plot row   -> ("Summarize the plot of <movie>." -> its first sentence or two)

    Each example: ``{"prompt": formatted prompt, "response": text, "task": "review"|"plot",
    "movie_id": ...}``. Returns ``(examples, counts)``; responses longer than
    ``max_response_tokens`` are dropped and *counted* (never silently).
    """
    rng = random.Random(seed)
    examples, counts = [], {"review": 0, "plot": 0, "dropped_too_long": 0}
    for row in corpus_rows:
        if row["kind"] == "review":
            task, response = "review", row["text"]
            instruction = rng.choice(REVIEW_INSTRUCTIONS)
        else:
            task, response = "plot", first_sentences(row["text"])
            instruction = rng.choice(PLOT_INSTRUCTIONS)
        if len(tokenizer(response, add_special_tokens=False)["input_ids"]) > max_response_tokens:
            counts["dropped_too_long"] += 1
            continue
        example = {"prompt": format_prompt(tokenizer, instruction.format(title=row["movie_title"])),
                   "response": response, "task": task, "movie_id": row["movie_id"]}
        validate_record(example, "sft", "sft examples", len(examples))
        examples.append(example)
        counts[task] += 1
    return examples, counts


def balance_tasks(examples: Sequence[Mapping], seed: int = 0) -> list[Mapping]:
    """Upsample every task to the size of the largest one (plots are ~13x rarer than reviews).

    Without it the model sees a plot instruction in 1 of 14 examples and learns to answer
    everything with a review. Returns a new, shuffled list; each original example appears at
    least once.
    """
    by_task: dict[str, list[Mapping]] = {}
    for e in examples:
        by_task.setdefault(e["task"], []).append(e)
    largest = max(len(v) for v in by_task.values())
    rng = random.Random(seed)
    out = []
    for items in by_task.values():
        out += items * (largest // len(items)) + rng.sample(items, largest % len(items))
    rng.shuffle(out)
    return out


def sft_loss(model, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Prompt-masked SFT loss (scalar): token mean of -log p over completion tokens of the batch.

    ``batch`` comes from :func:`pref_lab.logprobs.tokenize_completions` (input_ids,
    attention_mask, completion_mask, all (B, T)).
    """
    logp = forward_token_logprobs(model, batch["input_ids"], batch["attention_mask"])  # (B, T-1)
    return token_mean_nll(logp, batch["completion_mask"])


def token_mean_nll(token_logps: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """−Σ m·log p / Σ m: the mean over the batch's completion tokens, from per-token log-probs (B, T-1) (entry t-1
    is token t's, :func:`pref_lab.logprobs.token_logprobs`) and the ``completion_mask`` (B, T). One mean over all
    tokens, not per row: a long response counts for as many tokens as it has."""
    mask = completion_mask[:, 1:].to(token_logps.dtype)  # token t is predicted at position t-1
    return -(token_logps * mask).sum() / mask.sum()


def collate(tokenizer, examples: Sequence[Mapping], device, max_length: int = 128, first_row: int = 0
            ) -> dict[str, torch.Tensor]:
    """One padded batch of SFT examples on ``device`` (:func:`pref_lab.logprobs.tokenize_completions`)."""
    batch = tokenize_completions(tokenizer, [e["prompt"] for e in examples], [e["response"] for e in examples],
                                 max_length=max_length, first_row=first_row)
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def evaluate_sft_loss(model, tokenizer, examples: Sequence[Mapping], batch_size: int = 64) -> float:
    """Token-mean SFT loss over ``examples`` (every completion token weighted equally)."""
    model.eval()
    device = model_device(model)
    total, tokens = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = collate(tokenizer, examples[start:start + batch_size], device, context_length(model), first_row=start)
        n = batch["completion_mask"][:, 1:].sum().item()
        total += require_finite(sft_loss(model, batch).detach().reshape(1), "evaluate_sft_loss").item() * n
        tokens += n
    return total / tokens


def train_sft(model, tokenizer, train_examples: Sequence[Mapping], *, steps: int = 300, batch_size: int = 32,
              lr: float = 5e-4, warmup: int = 20, seed: int = 0, eval_fn: EvalFn | None = None, eval_every: int = 50,
              callback: Callback | None = None, progress: bool = True) -> list[dict]:
    """Plain SFT loop: AdamW, linear warm-up then linear decay, gradient clipping at 1; on ``model``'s device.

    Each step draws ``batch_size`` examples at random (with replacement). Returns the history of
    :mod:`pref_lab.training`: one row per step, ``{"step", "samples": 0, "pairs": 0, "loss"}``, with
    ``eval_fn(model)`` (e.g. the validation loss, :func:`evaluate_sft_loss`) under ``"eval"`` every ``eval_every``
    steps and after the last one.
    """
    check_steps(steps, eval_every)
    validate_records(train_examples, "sft", "train_examples", tokenizer, context_length(model))
    gen = seed_everything(seed)
    device = model_device(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup))))
    history: list[dict] = []
    bar = tqdm(range(1, steps + 1), desc="SFT", disable=not progress)
    for step in bar:
        model.train()
        idx = torch.randint(0, len(train_examples), (batch_size,), generator=gen).tolist()
        loss = sft_loss(model, collate(tokenizer, [train_examples[i] for i in idx], device, context_length(model)))
        check_finite(loss, f"SFT step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        row = log_step(history, {"step": step, "samples": 0, "pairs": 0, "loss": loss.item()}, model, steps,
                       eval_fn, eval_every, callback)
        bar.set_postfix(loss=f"{row['loss']:.3f}")
    model.eval()
    return history


def instruction_prompts(corpus_rows: Sequence[Mapping], tokenizer, n_per_task: int, seed: int = 0) -> list[dict]:
    """Held-out evaluation prompts: ``n_per_task`` review and plot instructions for distinct movies
    (plot prompts only for movies that have a plot summary). Each: {prompt, task, movie_id}."""
    rng = random.Random(seed)
    movies = sorted({(r["movie_id"], r["movie_title"]) for r in corpus_rows})
    with_plot = sorted({(r["movie_id"], r["movie_title"]) for r in corpus_rows if r["kind"] == "plot"})
    rng.shuffle(movies)
    rng.shuffle(with_plot)
    out = []
    for task, pool, templates in (("review", movies, REVIEW_INSTRUCTIONS), ("plot", with_plot, PLOT_INSTRUCTIONS)):
        for movie_id, title in pool[:n_per_task]:
            out.append({"prompt": format_prompt(tokenizer, rng.choice(templates).format(title=title)),
                        "task": task, "movie_id": movie_id})
    return out


def instruction_following(completion_ids: Sequence[torch.Tensor], texts: Sequence[str], tasks: Sequence[str],
                          task_judge, eos_token_id: int) -> dict:
    """EOS rate and instruction-following rate of sampled responses.

    - EOS rate: fraction of responses whose ids end with EOS (finished within the length limit).
    - following: fraction the task judge classifies as the requested type ("review"/"plot").
    Returns rates and the counts behind them.
    """
    ended = [len(ids) > 0 and int(ids[-1]) == eos_token_id for ids in completion_ids]
    predicted = task_judge.predict(texts)
    follows = [bool(t.strip()) and p == task for t, p, task in zip(texts, predicted, tasks)]  # empty never follows
    n = len(texts)
    return {"n": n, "eos_count": sum(ended), "eos_rate": sum(ended) / n,
            "following_count": sum(follows), "following_rate": sum(follows) / n}
