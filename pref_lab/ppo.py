"""PPO for language models, written to be read top to bottom.

The token-level MDP. The state is the prompt plus the completion tokens so far, an action is the
next token, and the episode ends at EOS or after ``max_new_tokens``. Every token pays a KL
penalty for drifting from the reference (SFT) model, and the last token also receives the reward
model's score:

    r_t = -beta * (log pi(a_t|s_t) - log pi_ref(a_t|s_t)) + [t = last] * score(x, y)

Summed over t, that is the RLHF objective score(x, y) - beta * KL(pi || pi_ref) estimated on the sample.

One PPO iteration:

1. rollout: sample one completion per prompt from the policy (temperature tau);
2. experience: score it, take log-probs under the policy ("old") and the reference, values V(s_t),
   per-token rewards r_t, advantages by GAE, returns;
3. update: a few epochs over minibatches of the clipped policy loss + clipped value loss.

Indexing. Per-token quantities live on the (B, T-1) grid of :func:`pref_lab.logprobs.token_logprobs`:
entry t is the action "emit token t+1" taken in the state "tokens 0..t". ``mask = completion_mask[:, 1:]``
marks the actions that are completion tokens (EOS included). Prompt and padding positions are 0, and
no reward, KL, advantage or loss is ever read there.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import GPT2ForSequenceClassification, GPT2LMHeadModel, GPT2Model

from .config import model_device, same_device, seed_everything
from .logprobs import last_index, position_ids_from_mask, token_logprobs, tokenize_completions
from .models import check_finite_parameters, completion_texts, context_length, ends_with_eos, generate
from .training import Callback, EvalFn, check_finite, check_steps, log_step


@dataclass
class PPOConfig:
    """PPO hyper-parameters. ``gamma``, ``lam``, the clip ranges and ``vf_coef`` follow TRL's PPO trainer (itself
    following InstructGPT). ``kl_coef`` and ``missing_eos_penalty`` were chosen for the current world on
    *development* prompts (:func:`pref_lab.world.dev_prompts`) by ``scripts/tune_ppo.py``: the best development gold
    reward among runs that finish at least 90% of their texts at 0.6-1.4x the SFT model's length
    (``data/results/ppo_tuning.json``; notebook 06 prints the table).
    ``steps``, the batch sizes, epochs and learning rate come from short runs in an earlier world of the course and
    were not re-tuned."""

    steps: int = 12  # PPO iterations (scripts/overoptimise.py runs 3x longer at beta = 0 to show over-optimisation)
    batch_size: int = 32  # prompts (hence completions) per rollout
    minibatch_size: int = 16  # completions per gradient step
    ppo_epochs: int = 2  # passes over each rollout batch. The clipping is what makes reusing samples safe
    lr: float = 3e-4  # AdamW learning rate for the policy and the value model, far above what large models use.
    # Measured: lr 1e-4 with 4 epochs of minibatches of 8 needed about twice as many iterations (and 4x the gradient
    # steps) to reach the gold reward that 3e-4 with 2 epochs of 16 reached; clip fraction and approx-KL stay small
    kl_coef: float = 0.01  # beta: the price, in reward units, of one nat of KL from the reference. Chosen from
    # 0.01 / 0.02 / 0.05 / 0.1 on development prompts (TRL's default is 0.05). The KL is summed over tokens, so a
    # larger beta also buys shorter text (development lengths fell from 34 to 27 tokens across the grid); beta = 0
    # lets the policy drift: notebook 06
    gamma: float = 1.0  # no discount: episodes are short and the score only arrives at the end
    lam: float = 0.95  # GAE lambda: 0 trusts V (low variance, biased), 1 is Monte Carlo (unbiased, noisy)
    clip_range: float = 0.2  # epsilon: how far the ratio pi/pi_old may move before the gradient stops
    clip_range_value: float = 0.2  # how far a value prediction may move from its rollout-time value
    vf_coef: float = 0.1  # weight of the value loss in the summed loss
    max_grad_norm: float = 1.0  # gradient-norm clip, applied to each model on its own
    temperature: float = 1.0  # sampling temperature. Every log-prob (old, new, reference) uses it too
    max_new_tokens: int = 48  # length limit of a completion (the SFT model ends most of its reviews within it)
    missing_eos_penalty: float | None = None  # subtracted from the score of a completion cut off without EOS
    # (TRL's option). On development prompts 2.0 changed the gold reward by -0.10 to -0.02 across the betas tried
    # (within about two standard errors) and the policies finish their texts without it
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_size", "minibatch_size", "ppo_epochs", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"PPOConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.minibatch_size > self.batch_size:
            raise ValueError(f"minibatch_size={self.minibatch_size} > batch_size={self.batch_size}")
        if self.temperature <= 0 or self.lr <= 0 or self.clip_range <= 0:
            raise ValueError("temperature, lr and clip_range must be > 0")
        if not (0 <= self.gamma <= 1 and 0 <= self.lam <= 1):
            raise ValueError(f"gamma and lam must lie in [0, 1], got {self.gamma}, {self.lam}")


# ----------------------------------------------------------------------------- masked statistics
def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over entries where ``mask`` is 1. ``torch.where`` rather than ``x * mask``
    because 0 * inf is NaN, and padding may hold anything."""
    return torch.where(mask.bool(), x, 0.0).sum() / mask.sum()


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance of ``x`` over entries where ``mask`` is 1."""
    n = mask.sum()
    return masked_mean((x - masked_mean(x, mask)) ** 2, mask) * n / (n - 1)


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked entries, and 0 elsewhere.

    Whitening advantages keeps the size of a policy step the same while the reward scale drifts
    during training. Centring also means roughly half the sampled tokens are pushed up and half down.
    """
    whitened = (x - masked_mean(x, mask)) * torch.rsqrt(masked_var(x, mask) + eps)
    return torch.where(mask.bool(), whitened, 0.0)


# ----------------------------------------------------------------------------- models
def policy_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs (B, T-1) of ``input_ids`` and the entropy (B, T-1) of each next-token
    distribution, both under softmax(logits / tau). That is the distribution the rollout sampled
    from, so the ratio pi/pi_old and the KL refer to the policy we actually ran (TRL does the same)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask,
                   position_ids=position_ids_from_mask(attention_mask)).logits.float() / temperature
    logp_all = torch.log_softmax(logits[:, :-1], dim=-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return token_logprobs(logits, input_ids), entropy


class ValueModel(nn.Module):
    """V(s_t) for every prefix: a GPT-2 trunk and a linear head, one scalar per position.

    forward(input_ids (B, T), attention_mask (B, T)) -> values (B, T). Entry t is the value of the
    state "tokens 0..t", which is the state the next action (token t+1) is taken in.
    """

    def __init__(self, trunk: GPT2Model):
        super().__init__()
        self.transformer = trunk
        self.head = nn.Linear(trunk.config.n_embd, 1, bias=False)  # like the reward model's `score`
        nn.init.zeros_(self.head.weight)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask,
                                  position_ids=position_ids_from_mask(attention_mask)).last_hidden_state
        return self.head(hidden).squeeze(-1)


def make_value_model(source: GPT2ForSequenceClassification | GPT2LMHeadModel) -> ValueModel:
    """A value model whose trunk is a copy of ``source``'s.

    Why a separate network? If the value head sat on the policy's trunk, value-loss gradients would
    reshape the features the policy samples from. A separate model keeps the two objectives apart,
    at the price of one more forward and backward pass.

    Why start from the reward model (``GPT2ForSequenceClassification``, ``num_labels=1``)? The trunk and
    head then already score text the way the reward does: applied to a prefix, the RM's head gives a
    reasonable first guess of the score that prefix will end with. So the advantages are informative
    from the first iteration, and the early updates are not spent fitting a value function from
    scratch. InstructGPT and TRL make the same choice.

    From a ``GPT2LMHeadModel`` the trunk is copied and the head starts at zero (V = 0 everywhere).
    That is handy for tests with tiny random models.
    """
    if isinstance(source, GPT2ForSequenceClassification):
        if source.score.out_features != 1:
            raise ValueError(f"reward model must have num_labels=1, got {source.score.out_features}")
        value_model = ValueModel(copy.deepcopy(source.transformer))
        value_model.head.weight.data.copy_(source.score.weight.data)
    elif isinstance(source, GPT2LMHeadModel):
        value_model = ValueModel(copy.deepcopy(source.transformer))
    else:
        raise ValueError(f"expected GPT2ForSequenceClassification or GPT2LMHeadModel, got {type(source).__name__}")
    return value_model.to(model_device(source))


# ----------------------------------------------------------------------------- rollout and rewards
@torch.no_grad()
def rollout(policy, tokenizer, prompts: Sequence[str], max_new_tokens: int, temperature: float = 1.0,
            seed: int = 0) -> dict:
    """Sample one completion per prompt and lay (prompt, completion) out as one right-padded batch.

    Returns ``input_ids``, ``attention_mask``, ``completion_mask`` (B, T); ``completion_ids``, a list of
    1-D tensors ending with EOS when one was sampled; and ``has_eos`` (B,) bool. A completion without EOS
    ran into the length limit.
    """
    completion_ids = generate(policy, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                              batch_size=len(prompts), seed=seed, progress=False, return_ids=True)
    batch = tokenize_completions(tokenizer, prompts, completion_ids, max_length=context_length(policy))
    batch["completion_ids"] = completion_ids
    batch["has_eos"] = ends_with_eos(completion_ids, tokenizer.eos_token_id)
    return batch


def penalize_missing_eos(scores: torch.Tensor, has_eos: torch.Tensor, penalty: float | None) -> torch.Tensor:
    """score - penalty for completions that hit the length limit without EOS (TRL's ``missing_eos_penalty``).

    The reward model only sees text, so without this a policy can learn to ramble to the limit
    whenever long text happens to score well. The penalty makes finishing part of the task.
    """
    if penalty is None:
        return scores
    return torch.where(has_eos.to(scores.device), scores, scores - penalty)


def per_token_rewards(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, scores: torch.Tensor,
                      mask: torch.Tensor, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """r_t = -beta * (log pi - log pi_ref)_t on each completion token, plus ``scores`` (B,) on the last one.

    Inputs (B, T-1) on the action grid. Returns ``rewards`` and the per-token ``kl`` (B, T-1), both 0
    off the mask. The KL is charged token by token, so credit assignment can blame the token that
    drifted. The score judges the whole text, so it only arrives when the text is finished.
    """
    if (mask.sum(-1) == 0).any():
        raise ValueError("every row needs at least one completion token")
    kl = torch.where(mask.bool(), logprobs - ref_logprobs, 0.0)
    rewards = -kl_coef * kl
    last = last_index(mask)  # the last completion token: EOS, or the token at the limit
    rewards[torch.arange(len(rewards), device=mask.device), last] += scores
    return rewards, kl


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
                lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the completion tokens (contiguous in each row).

        delta_t = r_t + gamma * V_{t+1} - V_t,   A_t = delta_t + gamma * lam * A_{t+1},   R_t = A_t + V_t

    where V and A are 0 after the last completion token, because the episode ends there. lam = 1 gives
    R_t = sum_k gamma^k r_{t+k}, the Monte-Carlo return. lam = 0 gives the one-step TD error.
    Inputs and outputs (B, T-1); advantages and returns are 0 off the mask.
    """
    rewards = torch.where(mask.bool(), rewards, 0.0)
    values = torch.where(mask.bool(), values, 0.0)  # padding after EOS has value 0: nothing more to come
    next_value = next_advantage = torch.zeros_like(values[:, 0])
    advantages = []
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = delta + gamma * lam * next_advantage
        next_value = values[:, t]
        advantages.append(next_advantage)
    advantages = torch.where(mask.bool(), torch.stack(advantages[::-1], dim=1), 0.0)
    return advantages, torch.where(mask.bool(), advantages + values, 0.0)


# ----------------------------------------------------------------------------- losses
def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip_range: float) -> tuple[torch.Tensor, dict]:
    """PPO's clipped surrogate, a masked token mean:

        L = mean_t max(-rho_t A_t, -clip(rho_t, 1 - eps, 1 + eps) A_t),   rho_t = exp(log pi - log pi_old)

    Once the ratio has moved past the trust region in the direction A favours, the clipped term wins
    and its gradient is zero. One batch of samples can therefore be reused for several steps without
    the policy running away from the data. Returns the loss and detached stats: ``clipfrac`` (share of
    tokens clipped), ``approxkl`` (k2 estimate of KL(pi_old || pi)) and ``ratio`` (mean rho).
    """
    # Zero the log-ratio on padding *before* exp: exp(garbage) may be inf, and inf * 0 is NaN in backward.
    log_ratio = torch.where(mask.bool(), logprobs - old_logprobs, 0.0)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    stats = {"clipfrac": masked_mean((clipped > unclipped).float(), mask).item(),
             "approxkl": (0.5 * masked_mean(log_ratio ** 2, mask)).item(),
             "ratio": masked_mean(ratio, mask).item()}
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip_range_value: float) -> tuple[torch.Tensor, float]:
    """Clipped value loss, a masked token mean:

        L_V = 1/2 * mean_t max((V_t - R_t)^2, (V_old,t + clip(V_t - V_old,t, -c, c) - R_t)^2)

    Taking the max with the clipped error means a prediction gains nothing from moving more than c
    from its rollout-time value, the value function's own trust region. Returns the loss and the clip fraction.
    """
    clipped_values = old_values + (values - old_values).clamp(-clip_range_value, clip_range_value)
    unclipped_error, clipped_error = (values - returns) ** 2, (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped_error, clipped_error), mask)
    return loss, masked_mean((clipped_error > unclipped_error).float(), mask).item()


# ----------------------------------------------------------------------------- one iteration
@torch.no_grad()
def make_experience(policy, ref_model, value_model: ValueModel, batch: dict, scores: torch.Tensor,
                    config: PPOConfig) -> dict[str, torch.Tensor]:
    """Everything the update needs, computed once per rollout with the policy frozen as "old".

    Returns (B, T-1) tensors ``mask``, ``logprobs``, ``values``, ``advantages`` (whitened), ``returns``,
    (B,) ``kl`` = sum_t (log pi - log pi_ref), and the batch's ``input_ids``/``attention_mask``.
    """
    ids, attn = batch["input_ids"], batch["attention_mask"]
    mask = batch["completion_mask"][:, 1:].float()
    logprobs, _ = policy_logprobs(policy, ids, attn, config.temperature)
    ref_logprobs, _ = policy_logprobs(ref_model, ids, attn, config.temperature)
    values = value_model(ids, attn)[:, :-1]  # V(s_t) for the state each action is taken in
    rewards, kl = per_token_rewards(logprobs, ref_logprobs, scores, mask, config.kl_coef)
    advantages, returns = compute_gae(rewards, values, mask, config.gamma, config.lam)
    # Returns use the raw advantages (the value target is in reward units); only the policy sees whitened ones.
    return {"input_ids": ids, "attention_mask": attn, "mask": mask, "logprobs": logprobs, "values": values,
            "advantages": whiten(advantages, mask), "returns": returns, "kl": kl.sum(-1)}


def ppo_losses(policy, value_model: ValueModel, minibatch: dict, config: PPOConfig) -> tuple[torch.Tensor, dict]:
    """Loss = policy loss + vf_coef * value loss on one minibatch of experience, and its stats."""
    ids, attn, mask = minibatch["input_ids"], minibatch["attention_mask"], minibatch["mask"]
    logprobs, entropy = policy_logprobs(policy, ids, attn, config.temperature)
    values = value_model(ids, attn)[:, :-1]
    pg_loss, pg_stats = policy_loss(logprobs, minibatch["logprobs"], minibatch["advantages"], mask, config.clip_range)
    vf_loss, vf_clipfrac = value_loss(values, minibatch["values"], minibatch["returns"], mask, config.clip_range_value)
    stats = {"policy/clipfrac": pg_stats["clipfrac"], "policy/approxkl": pg_stats["approxkl"],
             "policy/entropy": masked_mean(entropy, mask).item(), "loss/policy": pg_loss.item(),
             "loss/value": vf_loss.item(), "val/ratio": pg_stats["ratio"], "val/clipfrac": vf_clipfrac}
    return pg_loss + config.vf_coef * vf_loss, stats


def train_ppo(policy, ref_model, value_model: ValueModel, tokenizer, prompts: Sequence[str],
              reward_fn: Callable[[list[str], list[torch.Tensor]], torch.Tensor], config: PPOConfig | None = None, *,
              gold_fn: Callable[[list[str]], torch.Tensor] | None = None, eval_fn: EvalFn | None = None,
              eval_every: int = 10, callback: Callback | None = None, progress: bool = True) -> list[dict]:
    """Train ``policy`` (and ``value_model``) with PPO against ``reward_fn``; ``ref_model`` stays frozen.

    The three models live on one device. ``reward_fn(prompts, completion_ids) -> (B,)`` scores a rollout (the
    reward model in the notebook, a toy rule in tests); ``gold_fn(texts) -> (B,)`` (optional) logs the gold reward
    of each rollout. ``ref_model`` is only read under ``torch.no_grad()``: it is not changed in any way.

    History (:mod:`pref_lab.training`): one row per iteration, ``step`` = iterations done, ``samples`` (rollouts
    so far), ``pairs`` (0), ``loss`` (policy + vf_coef * value loss, mean over the iteration's minibatches), and
    TRL's names: ``objective/kl`` (mean over samples of sum_t log pi - log pi_ref), ``objective/scores`` (mean
    reward_fn score), ``objective/rlhf_reward`` (score after any missing-EOS penalty, minus beta * KL),
    ``objective/eos_rate``, ``policy/clipfrac``, ``policy/approxkl``, ``policy/entropy``, ``loss/policy``,
    ``loss/value``, ``val/ratio``, ``val/clipfrac``; with ``gold_fn`` also ``gold/reward``. ``eval_fn(policy)``
    under ``"eval"`` every ``eval_every`` iterations and after the last one.
    """
    config = config or PPOConfig()
    if len(prompts) < config.batch_size or any(len(p) == 0 for p in prompts):
        raise ValueError(f"need at least batch_size={config.batch_size} non-empty prompts, got {len(prompts)}")
    if policy is ref_model:
        raise ValueError("ref_model must be a frozen copy of the policy, not the policy itself")
    check_steps(config.steps, eval_every)
    device = same_device(policy=policy, ref_model=ref_model, value_model=value_model)
    generator = seed_everything(config.seed)
    optimizer = torch.optim.AdamW([*policy.parameters(), *value_model.parameters()], lr=config.lr, weight_decay=0.0)
    history: list[dict] = []
    bar = tqdm(range(1, config.steps + 1), desc="PPO", disable=not progress)
    for iteration in bar:
        # Dropout off (gradients still flow in eval mode). With it on, "old" and "new" log-probs would
        # differ before any update, so the ratio would not start at 1 and clipping would fire on noise.
        for model in (policy, ref_model, value_model):
            model.eval()
        check_finite_parameters(policy, f"PPO iteration {iteration}")  # before the sampler, which cannot say where
        picks = torch.randperm(len(prompts), generator=generator)[:config.batch_size]
        batch_prompts = [prompts[int(i)] for i in picks]
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
        batch = rollout(policy, tokenizer, batch_prompts, config.max_new_tokens, config.temperature, seed)
        raw_scores = torch.as_tensor(reward_fn(batch_prompts, batch["completion_ids"])).float().to(device)
        if raw_scores.shape != (len(batch_prompts),) or not torch.isfinite(raw_scores).all():
            raise ValueError(f"PPO iteration {iteration}: reward_fn must return {len(batch_prompts)} finite scores, "
                             f"got shape {tuple(raw_scores.shape)}")
        scores = penalize_missing_eos(raw_scores, batch["has_eos"], config.missing_eos_penalty)
        tensors = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "completion_mask")}
        experience = make_experience(policy, ref_model, value_model, tensors, scores, config)

        stats = defaultdict(list)
        for epoch in range(config.ppo_epochs):
            order = torch.randperm(len(batch_prompts), generator=generator)
            for start in range(0, len(order), config.minibatch_size):
                rows = order[start:start + config.minibatch_size].to(device)
                loss, minibatch_stats = ppo_losses(policy, value_model, {k: v[rows] for k, v in experience.items()},
                                                   config)
                check_finite(loss, f"PPO iteration {iteration} (epoch {epoch})")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                # Clip each model on its own, so large value gradients cannot shrink the policy's step.
                torch.nn.utils.clip_grad_norm_(policy.parameters(), config.max_grad_norm)
                torch.nn.utils.clip_grad_norm_(value_model.parameters(), config.max_grad_norm)
                optimizer.step()
                stats["loss"].append(loss.item())
                for name, value in minibatch_stats.items():
                    stats[name].append(value)

        kl = experience["kl"]
        row = {"step": iteration, "samples": iteration * len(batch_prompts), "pairs": 0,
               "objective/kl": kl.mean().item(), "objective/scores": raw_scores.mean().item(),
               "objective/rlhf_reward": (scores - config.kl_coef * kl).mean().item(),
               "objective/eos_rate": batch["has_eos"].float().mean().item()}
        row.update({name: sum(values) / len(values) for name, values in stats.items()})
        if gold_fn is not None:
            row["gold/reward"] = torch.as_tensor(gold_fn(completion_texts(tokenizer, batch["completion_ids"]))
                                                 ).float().mean().item()
        log_step(history, row, policy, config.steps, eval_fn, eval_every, callback)
        bar.set_postfix(score=f"{row['objective/scores']:.3f}", kl=f"{row['objective/kl']:.3f}")
    return history
