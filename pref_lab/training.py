"""The protocol every training loop of the course follows: SFT, the reward model, DPO, PPO and online DPO.

One loop, one history. ``train_*`` returns a list with one row per step, steps counted from 1 (row ``s`` is
the state *after* ``s`` updates: an SFT or DPO step, a PPO iteration, an online-DPO round). Every row has

    {"step": s,          # steps done
     "samples": int,     # completions generated *for training* so far (PPO rollouts, online-DPO samples; else 0)
     "pairs": int,       # preference pairs consumed by gradient steps so far (reward model, DPO, online DPO; else 0)
     "loss": float,      # the loss the step optimised (a mean over the step's minibatches where there are several)
     ...}                # the trainer's own metrics, with TRL's names (``rewards/chosen``, ``objective/kl``, ...)

and every trainer takes the same three keyword-only hooks:

- ``eval_fn(model) -> dict``, called after step ``s`` when ``s % eval_every == 0`` and after the last step; its
  result is stored in that row as ``row["eval"]``. The model before any step is the caller's to measure (the
  frontier measures the shared SFT model once, not once per run);
- ``callback(row)``, called after every step with the finished row;
- ``progress``: whether to show a ``tqdm`` progress bar.

A non-finite loss raises ``RuntimeError`` naming the step (:func:`check_finite`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

EvalFn = Callable[[torch.nn.Module], dict]
Callback = Callable[[dict], None]


def check_finite(loss: torch.Tensor, where: str) -> None:
    """Raise ``RuntimeError("<where>: loss is nan ...")`` before a non-finite loss reaches ``backward``."""
    if not torch.isfinite(loss):
        raise RuntimeError(f"{where}: loss is {loss.item()} (try a smaller learning rate)")


def log_step(history: list[dict], row: dict, model: torch.nn.Module, steps: int, eval_fn: EvalFn | None,
             eval_every: int, callback: Callback | None) -> dict:
    """Finish step ``row["step"]`` of ``steps``: evaluate when due (into ``row["eval"]``), append, call back."""
    step = row["step"]
    if eval_fn is not None and (step % eval_every == 0 or step == steps):
        row["eval"] = eval_fn(model)
    history.append(row)
    if callback is not None:
        callback(row)
    return row


def check_steps(steps: int, eval_every: int) -> None:
    if steps < 1 or eval_every < 1:
        raise ValueError(f"steps and eval_every must be >= 1, got steps={steps}, eval_every={eval_every}")


def thin_history(history: list[dict], max_rows: int = 50) -> tuple[list[dict], int]:
    """Every ``every``-th row and the last one (never twice), at most about ``max_rows``: for results files.

    Returns ``(rows, every)``; ``every = 1`` keeps the whole history.
    """
    every = max(1, math.ceil(len(history) / max_rows))
    rows = history[::every]
    if history and rows[-1] is not history[-1]:
        rows.append(history[-1])
    return rows, every


def columns(history: list[dict], key: str, where: str | None = None) -> tuple[list[int], list]:
    """``(steps, values)`` of ``key`` over the rows that have it, for plots; ``where="eval"`` reads ``row["eval"]``."""
    rows = [(row["step"], (row.get(where) or {}) if where else row) for row in history]
    return [s for s, r in rows if key in r], [r[key] for _, r in rows if key in r]
