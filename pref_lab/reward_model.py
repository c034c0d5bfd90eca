"""A Bradley–Terry reward model: the SFT transformer with a scalar head on the last real token.

Trained on preference pairs with the pairwise loss (plus TRL's optional centering term)

    L_RM = -log sigma(r(x, y_c) - r(x, y_r)) + c * (r(x, y_c) + r(x, y_r))^2

The centering term pins the free constant of Bradley–Terry (rewards are identifiable only up to
a shift) near zero, which keeps RM scores on a stable scale for PPO.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import GPT2ForSequenceClassification, GPT2LMHeadModel

from .config import data_path, get_device, model_device, seed_everything
from .data import as_completion, pair_completions, validate_records
from .logprobs import last_index, position_ids_from_mask, require_finite, tokenize_completions
from .models import context_length, disable_dropout, evaluating, load_checkpoint
from .training import Callback, EvalFn, check_finite, check_steps, log_step


def init_reward_model(sft_path: str | Path, seed: int = 0) -> GPT2ForSequenceClassification:
    """A reward model whose trunk is the SFT model's and whose scalar head is fresh (seeded).

    The head ``score`` is a bias-free linear map from the last hidden state (n_embd,) to one number,
    drawn like GPT-2's other weights (N(0, 0.02^2)); the SFT model's LM head is dropped.
    """
    sft = GPT2LMHeadModel.from_pretrained(str(sft_path), use_safetensors=True)
    config = copy.deepcopy(sft.config)
    config.num_labels = 1
    torch.manual_seed(seed)
    reward_model = GPT2ForSequenceClassification(config)
    reward_model.transformer.load_state_dict(sft.transformer.state_dict())
    return reward_model


def load_reward_model(path: str | Path | None = None, device=None) -> GPT2ForSequenceClassification:
    """The shipped reward model (``data/models/rm``), or the one in the folder ``path``; on ``device``, in eval mode.
    Its weights are checked against its world's manifest and must be finite (:func:`pref_lab.models.load_checkpoint`)."""
    folder = Path(path) if path else data_path("models", "rm")
    if not folder.is_dir():
        raise FileNotFoundError(f"no reward-model folder {str(folder)!r} (`make assets` rebuilds the shipped one)")
    model = load_checkpoint(GPT2ForSequenceClassification, folder)
    return model.to(get_device(device)).eval()


def reward_scores(reward_model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Scalar reward per row, shape (B,): the head applied at the last non-pad token.

    Works for left and right padding: positions are counted over real tokens, and we gather the
    hidden state at the last position where ``attention_mask`` is 1 ourselves (rather than relying
    on the pad-token id, which a model may legitimately generate).
    """
    hidden = reward_model.transformer(input_ids=input_ids, attention_mask=attention_mask,
                                      position_ids=position_ids_from_mask(attention_mask)).last_hidden_state
    last = last_index(attention_mask)  # the last real token of each row
    return reward_model.score(hidden[torch.arange(len(last)), last]).squeeze(-1)


@torch.no_grad()
def score_texts(reward_model, tokenizer, prompts: Sequence[str], completions: Sequence, batch_size: int = 64) -> torch.Tensor:
    """RM score of each (prompt, completion) pair, shape (N,). Completions are texts or id tensors.

    Runs where the reward model lives, in eval mode (its mode is restored after); a bad row raises ``ValueError``
    naming it (the caller's row, not the batch's), and so does a non-finite score (a broken model).
    """
    if isinstance(prompts, str) or len(prompts) != len(completions) or len(prompts) == 0:
        raise ValueError(f"need lists of as many completions as prompts (at least one), got {len(prompts)} prompts "
                         f"and {len(completions)} completions")
    device = model_device(reward_model)
    out = []
    with evaluating(reward_model):
        for start in range(0, len(prompts), batch_size):
            batch = tokenize_completions(tokenizer, prompts[start:start + batch_size], completions[start:start + batch_size],
                                         max_length=context_length(reward_model), first_row=start)
            out.append(reward_scores(reward_model, batch["input_ids"].to(device), batch["attention_mask"].to(device)).cpu())
    return require_finite(torch.cat(out), "reward-model scores")


def pairwise_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, center_coef: float = 0.0) -> torch.Tensor:
    """Mean of -log sigma(r_c - r_r) + center_coef * (r_c + r_r)^2 over pairs (TRL RewardTrainer's loss)."""
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    if center_coef:
        loss = loss + center_coef * ((chosen_rewards + rejected_rewards) ** 2).mean()
    return loss


def _pair_rewards(reward_model, tokenizer, pairs: Sequence[Mapping], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Score chosen and rejected of each pair in one forward pass: returns (r_chosen, r_rejected)."""
    prompts = [p["prompt"] for p in pairs] * 2
    completions = pair_completions(pairs, "chosen") + pair_completions(pairs, "rejected")  # unfinished: no EOS
    batch = tokenize_completions(tokenizer, prompts, completions, max_length=context_length(reward_model))
    rewards = reward_scores(reward_model, batch["input_ids"].to(device), batch["attention_mask"].to(device))
    return rewards[: len(pairs)], rewards[len(pairs):]


@torch.no_grad()
def evaluate_pairs(reward_model, tokenizer, pairs: Sequence[Mapping], batch_size: int = 64) -> dict:
    """Accuracy (strict r_c > r_r, ties count as wrong), mean Bradley–Terry loss (no centering) and the
    rewards themselves, ``chosen`` and ``rejected``, each (N,) in the order of ``pairs``."""
    validate_records(pairs, "preference", "pairs", tokenizer, context_length(reward_model))
    reward_model.eval()
    device = model_device(reward_model)
    # Score pairs shortest first so each batch pads little (~25% less compute); results return in input order.
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i]["prompt"]) + max(len(pairs[i]["chosen"]),
                                                                                   len(pairs[i]["rejected"])))
    chosen, rejected = torch.empty(len(pairs)), torch.empty(len(pairs))
    for start in range(0, len(pairs), batch_size):
        idx = order[start:start + batch_size]
        c, r = _pair_rewards(reward_model, tokenizer, [pairs[i] for i in idx], device)
        chosen[idx], rejected[idx] = c.float().cpu(), r.float().cpu()
    require_finite(torch.cat([chosen, rejected]), "reward-model scores of the pairs")
    return {"accuracy": (chosen > rejected).float().mean().item(),
            "loss": pairwise_loss(chosen, rejected).item(), "chosen": chosen, "rejected": rejected}


def agreement_with_gold_order(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                              pairs: Sequence[Mapping]) -> float:
    """Fraction of ``pairs`` that the rewards (each (N,)) order like the gold judge:
    mean of [r_c > r_r] == [gold_c > gold_r]. Unlike accuracy it ignores the label noise, so it can exceed the ceiling."""
    if len(pairs) != len(chosen_rewards) or len(pairs) != len(rejected_rewards):
        raise ValueError(f"{len(pairs)} pairs but {len(chosen_rewards)} chosen and {len(rejected_rewards)} rejected rewards")
    gold_order = torch.tensor([p["gold_chosen"] > p["gold_rejected"] for p in pairs])
    return ((chosen_rewards > rejected_rewards) == gold_order).float().mean().item()


def held_out_prompts(pairs: Sequence[Mapping], share: float = 0.1, seed: int = 0) -> set[str]:
    """A seeded ``share`` of the distinct prompts of ``pairs`` (at least one): the validation prompts on which the
    feature oracle chooses its L2 and ``scripts/tune_rm.py`` the reward model's recipe. Splitting by prompt keeps
    all samples of a prompt on one side."""
    prompts = sorted({p["prompt"] for p in pairs})
    return set(random.Random(seed).sample(prompts, max(1, int(share * len(prompts)))))


def group_pairs_by_prompt(pairs: Sequence[Mapping]) -> list[dict]:
    """Pairs grouped by prompt, in order of first appearance: one dict per prompt,
    ``{"prompt": x, "completions": [y_0, y_1, ...], "pairs": [(chosen_index, rejected_index), ...]}``,
    where each distinct completion is listed once and the indices point into ``completions`` (an unfinished side is
    an :class:`pref_lab.models.Unfinished` text, distinct from the same text finished)."""
    groups: dict[str, dict] = {}
    for pair in pairs:
        group = groups.setdefault(pair["prompt"], {"prompt": pair["prompt"], "completions": [], "pairs": []})
        ids = []
        for text in (as_completion(pair["chosen"], pair.get("chosen_finished", True)),
                     as_completion(pair["rejected"], pair.get("rejected_finished", True))):
            if text not in group["completions"]:  # k is small (8 or 16): a list lookup is fine
                group["completions"].append(text)
            ids.append(group["completions"].index(text))
        group["pairs"].append(tuple(ids))
    return list(groups.values())


def _group_rewards(reward_model, tokenizer, groups: Sequence[Mapping], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Score every distinct completion of ``groups`` once (one forward pass), then read off (r_chosen, r_rejected)
    for all their pairs: each (P,), P = total number of pairs."""
    prompts = [g["prompt"] for g in groups for _ in g["completions"]]
    completions = [y for g in groups for y in g["completions"]]
    batch = tokenize_completions(tokenizer, prompts, completions, max_length=context_length(reward_model))
    rewards = reward_scores(reward_model, batch["input_ids"].to(device), batch["attention_mask"].to(device))
    chosen, rejected, offset = [], [], 0
    for g in groups:
        chosen += [offset + c for c, _ in g["pairs"]]
        rejected += [offset + r for _, r in g["pairs"]]
        offset += len(g["completions"])
    return rewards[chosen], rewards[rejected]


def train_reward_model(reward_model, tokenizer, train_pairs: Sequence[Mapping], *, steps: int = 200,
                       prompts_per_step: int = 8, lr: float = 1e-4, center_coef: float = 0.01, seed: int = 0,
                       weight_decay: float = 0.0, dropout: bool = False, freeze_embeddings: bool = False,
                       eval_fn: EvalFn | None = None, eval_every: int = 50, callback: Callback | None = None,
                       progress: bool = True) -> list[dict]:
    """Train with the pairwise loss on ``reward_model``'s device. Returns the history of :mod:`pref_lab.training`.

    Each step takes ``prompts_per_step`` prompts (a fresh random order each epoch over the prompts) and **all**
    their labelled pairs: the k completions of a prompt are scored once and give up to k(k-1)/2 comparisons
    (InstructGPT's trick, Ouyang et al. 2022, sec. 3.5). Compared with sampling pairs one by one, the same forward
    passes carry several times more labels, and no completion is revisited in many separate updates.

    Dropout is switched off, as TRL's ``RewardConfig(disable_dropout=True)`` default: two scorings of the same
    text would otherwise differ, adding noise to the margins r_c - r_r that the loss compares. Three regularisers
    can be switched on, for ``scripts/tune_rm.py`` to measure on validation pairs: ``weight_decay`` (AdamW's,
    decoupled, on every trained tensor, biases and LayerNorm included), ``dropout=True`` (the model config's dropout
    kept on while training; scoring is always in eval mode) and ``freeze_embeddings=True`` (token and position
    embeddings stay the SFT model's; they are trainable again when this function returns).

    Rows: ``{"step", "samples": 0, "pairs", "loss", "accuracy"}`` (``accuracy``: strict r_c > r_r on the step's
    own, noisy, training labels), with ``eval_fn(reward_model)`` (e.g. :func:`evaluate_pairs` on held-out pairs)
    under ``"eval"`` every ``eval_every`` steps and after the last one.
    """
    validate_records(train_pairs, "preference", "train_pairs", tokenizer, context_length(reward_model))
    if prompts_per_step < 1:
        raise ValueError(f"prompts_per_step must be >= 1, got {prompts_per_step}")
    check_steps(steps, eval_every)
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    gen = seed_everything(seed)
    if not dropout:
        disable_dropout(reward_model)
    frozen = [reward_model.transformer.wte.weight, reward_model.transformer.wpe.weight] if freeze_embeddings else []
    for table in frozen:
        table.requires_grad_(False)
    groups = group_pairs_by_prompt(train_pairs)
    device = model_device(reward_model)
    trainable = [p for p in reward_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1 - s / steps))
    history: list[dict] = []
    order: list[int] = []
    pairs_seen = 0
    bar = tqdm(range(1, steps + 1), desc="reward model", disable=not progress)
    for step in bar:
        reward_model.train()
        if len(order) < min(prompts_per_step, len(groups)):  # a new epoch (a short remainder is dropped)
            order = torch.randperm(len(groups), generator=gen).tolist()
        batch, order = order[:prompts_per_step], order[prompts_per_step:]
        chosen, rejected = _group_rewards(reward_model, tokenizer, [groups[i] for i in batch], device)
        loss = pairwise_loss(chosen, rejected, center_coef)
        check_finite(loss, f"reward-model step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        schedule.step()
        pairs_seen += len(chosen)
        row = {"step": step, "samples": 0, "pairs": pairs_seen, "loss": loss.item(),
               "accuracy": (chosen > rejected).float().mean().item()}
        log_step(history, row, reward_model, steps, eval_fn, eval_every, callback)
        bar.set_postfix(loss=f"{row['loss']:.3f}")
    reward_model.eval()
    for table in frozen:  # the caller's model keeps no trace of the freeze (a value model copied from it trains all)
        table.requires_grad_(True)
    return history
