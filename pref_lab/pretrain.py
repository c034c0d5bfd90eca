"""Pretraining the base model, and the n-gram baselines its perplexity is judged against.

Language-model loss on a packed token stream: every document ends with EOS, documents are
concatenated and cut into blocks of ``block_size`` tokens, and the model minimises

    L = -(1/T) * sum_t log p(x_t | x_<t)          perplexity = exp(L)
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from .config import seed_everything


def token_stream(tokenizer, texts: Sequence[str]) -> torch.Tensor:
    """All texts tokenized, each followed by EOS, concatenated: shape (N,)."""
    ids = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]  # long plots: no warning
    eos = tokenizer.eos_token_id
    return torch.tensor([t for doc in ids for t in (*doc, eos)], dtype=torch.long)


def unigram_perplexity(train: torch.Tensor, val: torch.Tensor, vocab_size: int, k: float = 1.0) -> float:
    """Perplexity of an add-k unigram model fitted on ``train`` tokens, measured on ``val`` tokens."""
    counts = torch.bincount(train, minlength=vocab_size).double() + k
    logp = counts.log() - counts.sum().log()
    return math.exp(-logp[val].mean().item())


def bigram_perplexity(train: torch.Tensor, val: torch.Tensor, vocab_size: int, k: float = 0.01) -> float:
    """Perplexity of an add-k bigram model p(b|a) = (c(a,b)+k)/(c(a)+kV), fitted on ``train``."""
    pair = train[:-1] * vocab_size + train[1:]
    counts = torch.bincount(pair, minlength=vocab_size * vocab_size).double().view(vocab_size, vocab_size)
    logp = (counts + k).log() - (counts.sum(1, keepdim=True) + k * vocab_size).log()
    return math.exp(-logp[val[:-1], val[1:]].mean().item())


def random_blocks(stream: torch.Tensor, batch_size: int, block_size: int, generator: torch.Generator) -> torch.Tensor:
    """A batch of random windows of the stream: shape (batch_size, block_size)."""
    starts = torch.randint(0, len(stream) - block_size, (batch_size,), generator=generator)
    return torch.stack([stream[s:s + block_size] for s in starts])


@torch.no_grad()
def stream_perplexity(model, stream: torch.Tensor, block_size: int, batch_size: int = 64) -> float:
    """Perplexity of ``model`` on non-overlapping blocks covering ``stream`` (each block from scratch)."""
    model.eval()
    device = next(model.parameters()).device
    n_blocks = len(stream) // block_size
    blocks = stream[: n_blocks * block_size].view(n_blocks, block_size)
    total, count = 0.0, 0
    for start in range(0, n_blocks, batch_size):
        x = blocks[start:start + batch_size].to(device)
        logits = model(x).logits[:, :-1]
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1), reduction="sum")
        total += nll.item()
        count += x[:, 1:].numel()
    return math.exp(total / count)


def pretrain(model, train_stream: torch.Tensor, val_stream: torch.Tensor, *, steps: int, batch_size: int,
             block_size: int, lr: float, seed: int, eval_every: int = 500, warmup: int = 100,
             progress: bool = True) -> dict:
    """Train ``model`` with AdamW and a cosine schedule; returns the loss/perplexity history."""
    gen = seed_everything(seed)
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)) * 0.9 + 0.1
    )
    history = {"step": [], "train_loss": [], "eval_step": [], "val_ppl": []}
    start = time.time()
    bar = tqdm(range(steps), desc="pretraining", disable=not progress)
    for step in bar:
        model.train()
        x = random_blocks(train_stream, batch_size, block_size, gen).to(device)
        loss = model(x, labels=x).loss  # HF shifts labels by one internally
        if not torch.isfinite(loss):
            raise RuntimeError(f"pretraining step {step}: loss is {loss.item()}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        history["step"].append(step)
        history["train_loss"].append(loss.item())
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            ppl = stream_perplexity(model, val_stream, block_size)
            history["eval_step"].append(step + 1)
            history["val_ppl"].append(ppl)
            bar.set_postfix(loss=f"{loss.item():.3f}", val_ppl=f"{ppl:.1f}")
    history["seconds"] = time.time() - start
    model.eval()
    return history
