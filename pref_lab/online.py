"""Online (iterative) DPO: the DPO loss on fresh pairs that the *current* policy samples and a judge labels.

Offline DPO trains on a fixed set of pairs, sampled once from another policy (here the SFT model) and
labelled once. As the policy moves away from that policy, the pairs describe text it no longer writes:
the data go off-policy. Online DPO (Guo et al., 2024, "Direct Language Model Alignment from Online AI
Feedback"; Xiong et al., 2024, iterative DPO) keeps the data fresh. Each round:

1. sample k >= 2 completions per prompt from the current policy pi_theta (temperature tau);
2. score them with a judge: the shipped reward model by default, or the gold judge as an "oracle labeler";
3. make one pair per prompt: chosen y_w = the highest score, rejected y_l = the lowest;
4. take DPO steps on these pairs against the *fixed* reference pi_ref (the SFT model):

       L = -log sigma( beta * [ (log pi(y_w|x) - log pi(y_l|x)) - (log pi_ref(y_w|x) - log pi_ref(y_l|x)) ] )

The loss is exactly offline DPO's (:func:`pref_lab.dpo.dpo_loss`); only where the pairs come from changes.

Pairing rule (every skipped prompt is counted, never dropped silently):

- *identical*: all k completions are the same text (after stripping whitespace): there is nothing to
  compare, the prompt is skipped and counted in ``skipped/identical``;
- *tie*: max score - min score <= ``tie_tolerance`` (default 0: exactly equal): the judge has no
  preference, the prompt is skipped and counted in ``skipped/ties``;
- otherwise chosen = argmax, rejected = argmin (the first one when several share the max or min). If
  a noisy judge gave the two different scores but their texts are identical, the prompt counts as identical.

Completions are trained on as the token ids that were sampled (EOS included when one was sampled),
so log pi is the log-prob of exactly what the policy wrote. The judge sees the decoded text.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .config import model_device, same_device, seed_everything
from .dpo import dpo_step
from .logprobs import require_finite, sequence_logprobs, tokenize_completions
from .losses import PairLossFn
from .models import (
    Unfinished,
    as_completion,
    check_finite_parameters,
    completion_texts,
    context_length,
    disable_dropout,
    eos_rate,
    evaluating,
    generate,
)
from .reward_model import score_texts
from .training import Callback, EvalFn, check_steps, log_step

Judge = Callable[[Sequence[str], Sequence[str]], torch.Tensor]
"""``judge(prompts, completion_texts) -> (N,)`` scores; higher is better. Both lists have N entries; a sample that never
emitted EOS is an :class:`pref_lab.models.Unfinished` text (:func:`pref_lab.models.completion_texts`)."""


# ----------------------------------------------------------------------------- judges
def reward_model_judge(reward_model, tokenizer, batch_size: int = 64) -> Judge:
    """The shipped Bradley–Terry reward model as a judge: its scalar score of each (prompt, completion), given as
    text or as sampled ids.

    A sample that was EOS and nothing else decodes to ``""``; the reward model scores it as what was sampled, the
    EOS token alone (an empty *text* is refused by :func:`pref_lab.logprobs.tokenize_completions`)."""
    eos = torch.tensor([tokenizer.eos_token_id])
    as_sampled = lambda c: eos if isinstance(c, str) and not isinstance(c, Unfinished) and not c.strip() else c
    return lambda prompts, completions: score_texts(reward_model, tokenizer, list(prompts),
                                                    [as_sampled(c) for c in completions], batch_size)


def gold_judge(gold) -> Judge:
    """The gold judge as an "oracle labeler" (what a human would say); it reads the completion only.

    ``gold``: anything with ``gold_reward(texts) -> (N,)``, e.g. :func:`pref_lab.judge.load_gold_judge`.
    """
    return lambda prompts, completions: gold.gold_reward(list(completions))


def bradley_terry_judge(gold, seed: int = 0) -> Judge:
    """A *noisy human* as a judge: the gold reward plus independent standard Gumbel noise per sample.

    With k = 2 samples per prompt the pair it picks is a Bradley–Terry draw, exactly as the shipped preference
    labels were drawn (:func:`pref_lab.preferences.make_pairs`):

        P(y_a chosen over y_b) = P(g_a + G_a > g_b + G_b) = sigma(g_a - g_b),   G ~ Gumbel(0, 1) i.i.d.,

    since the difference of two standard Gumbels is standard logistic. (With k > 2 the argmax is a Plackett–Luce
    draw of the best sample.) So it answers like "asking new humans" about fresh samples, flips included, where
    :func:`gold_judge` gives the noise-free order. ``seed`` fixes its own noise stream (one per judge)."""
    generator = torch.Generator().manual_seed(seed)

    def judge(prompts, completions):
        scores = torch.as_tensor(gold.gold_reward(list(completions))).float()
        uniform = torch.rand(scores.shape, generator=generator).clamp_min(1e-12)
        return scores - torch.log(-torch.log(uniform))  # + Gumbel(0, 1) noise: -log(-log U)
    return judge


# ----------------------------------------------------------------------------- pairing
def select_pairs(texts: Sequence[Sequence[str]], scores: torch.Tensor, tie_tolerance: float = 0.0) -> dict:
    """One (chosen, rejected) pair per prompt from k judged completions, by the rule in the module docstring.

    ``texts``: P lists of k completion texts; ``scores``: (P, k) judge scores. Returns ``prompt_index``,
    ``chosen``, ``rejected`` (M,) LongTensors (prompt row and the columns of its chosen and rejected
    completion, for the M kept prompts), ``margin`` (M,) = score(chosen) - score(rejected) > tie_tolerance,
    and the counts ``ties`` and ``identical`` (M + ties + identical = P).
    """
    scores = torch.as_tensor(scores, dtype=torch.float32)
    if scores.ndim != 2 or scores.shape[1] < 2 or len(texts) != scores.shape[0]:
        raise ValueError(f"need (P, k >= 2) scores for P prompts, got scores {tuple(scores.shape)} for {len(texts)} prompts")
    if any(len(row) != scores.shape[1] for row in texts):
        raise ValueError(f"every prompt needs k={scores.shape[1]} completion texts")
    if not torch.isfinite(scores).all():
        raise ValueError("judge scores contain NaN or inf: cannot rank completions")
    if tie_tolerance < 0:
        raise ValueError(f"tie_tolerance must be >= 0, got {tie_tolerance}")
    kept, chosen, rejected, margins = [], [], [], []
    ties = identical = 0
    for i, row in enumerate(texts):
        best, worst = int(scores[i].argmax()), int(scores[i].argmin())
        margin = (scores[i, best] - scores[i, worst]).item()
        # identical = the same text with the same ending (a cut-off text differs from the same text, finished)
        if len({as_completion(t.strip(), not isinstance(t, Unfinished)) for t in row}) < 2:
            identical += 1
        elif margin <= tie_tolerance:
            ties += 1
        elif row[best] == row[worst]:  # only a noisy judge scores the same text twice differently
            identical += 1
        else:
            kept.append(i)
            chosen.append(best)
            rejected.append(worst)
            margins.append(margin)
    return {"prompt_index": torch.tensor(kept, dtype=torch.long), "chosen": torch.tensor(chosen, dtype=torch.long),
            "rejected": torch.tensor(rejected, dtype=torch.long), "margin": torch.tensor(margins), "ties": ties,
            "identical": identical}


# ----------------------------------------------------------------------------- the loop
@dataclass
class OnlineDPOConfig:
    """Online DPO hyper-parameters. By default each round is one DPO step on one fresh pair per prompt
    (TRL's ``OnlineDPOTrainer`` does the same: generate, judge, one gradient step)."""

    rounds: int = 50  # sample -> judge -> update cycles
    prompts_per_round: int = 16  # prompts sampled each round (one pair per prompt at most)
    completions_per_prompt: int = 2  # k >= 2 samples per prompt; the pair is (best, worst) of the k
    epochs: int = 1  # passes over each round's pairs (>1 reuses fresh data a little longer)
    minibatch_size: int = 16  # pairs per gradient step
    beta: float = 0.1
    lr: float = 1e-4
    max_grad_norm: float | None = 1.0
    max_new_tokens: int = 48
    temperature: float = 1.0  # sampling temperature of the fresh completions
    tie_tolerance: float = 0.0  # a pair whose score gap is <= this is a tie (skipped and counted)
    seed: int = 0

    def __post_init__(self):
        for name in ("rounds", "prompts_per_round", "epochs", "minibatch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"OnlineDPOConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.completions_per_prompt < 2:
            raise ValueError(f"completions_per_prompt must be >= 2 to make a pair, got {self.completions_per_prompt}")
        if not (self.beta > 0 and self.lr > 0 and self.temperature > 0):
            raise ValueError("beta, lr and temperature must be > 0")
        if self.tie_tolerance < 0:
            raise ValueError(f"tie_tolerance must be >= 0, got {self.tie_tolerance}")


def _round_metrics(texts, scores, selection, gold_fn) -> dict:
    """What the judge (and, if given, the gold judge) saw this round, before any update."""
    n_kept = len(selection["prompt_index"])
    record = {"round/pairs": n_kept, "skipped/ties": selection["ties"], "skipped/identical": selection["identical"],
              "judge/score": scores.mean().item()}
    if n_kept:
        record["judge/margin"] = selection["margin"].mean().item()
    if gold_fn is not None:
        flat = [t for row in texts for t in row]
        gold = torch.as_tensor(gold_fn(flat)).float().view(len(texts), -1)
        record["gold/reward"] = gold.mean().item()
        if n_kept:
            rows = selection["prompt_index"]
            gold_margin = gold[rows, selection["chosen"]] - gold[rows, selection["rejected"]]
            record["gold/margin"] = gold_margin.mean().item()
            record["gold/label_agreement"] = (gold_margin > 0).float().mean().item()  # judge's label = gold's order
    return record


def train_online_dpo(policy, reference, tokenizer, prompts: Sequence[str], judge: Judge,
                     config: OnlineDPOConfig | None = None, *, gold_fn: Callable[[list[str]], torch.Tensor] | None = None,
                     loss_fn: PairLossFn | None = None, eval_fn: EvalFn | None = None, eval_every: int = 10,
                     callback: Callback | None = None, progress: bool = True) -> list[dict]:
    """Online DPO: each round samples from ``policy``, labels with ``judge`` and takes DPO steps vs ``reference``.

    ``prompts`` are chat-formatted (ending in ``<|assistant|>``); ``judge(prompts, texts) -> (N,)``;
    ``gold_fn(texts) -> (N,)`` (optional) logs the gold reward of the fresh samples. Both models live on one
    device; the reference is put in eval mode and never trained. Each gradient step is offline DPO's
    (:func:`pref_lab.dpo.dpo_step`, with ``loss_fn`` as there).

    History (:mod:`pref_lab.training`): one row per round, ``step`` = rounds done, ``samples`` (generated so far),
    ``pairs`` (pairs consumed by gradient steps so far, epochs included); the round's ``round/pairs``,
    ``skipped/ties``, ``skipped/identical``, ``judge/score`` (mean over all samples), ``judge/margin`` (mean chosen -
    rejected score), ``samples/eos_rate``, ``optimizer_steps`` (so far); with ``gold_fn`` also ``gold/reward``,
    ``gold/margin`` and ``gold/label_agreement`` (share of pairs the gold judge orders the same way). When the round
    had pairs: offline DPO's metrics (``loss``, ``rewards/*``, ``logps/*``, means over the round's steps, each
    measured before its update). ``eval_fn(policy)`` under ``"eval"`` every ``eval_every`` rounds and after the last.
    A non-finite loss raises naming the round.
    """
    config = config or OnlineDPOConfig()
    if len(prompts) < config.prompts_per_round or any(not p for p in prompts):
        raise ValueError(f"need at least prompts_per_round={config.prompts_per_round} non-empty prompts, got {len(prompts)}")
    if policy is reference:
        raise ValueError("policy and reference are the same object: pass a copy, e.g. copy.deepcopy(reference)")
    check_steps(config.rounds, eval_every)
    device = same_device(policy=policy, reference=reference)
    generator = seed_everything(config.seed)
    reference.eval()  # frozen: used only under no_grad, never given to the optimizer
    disable_dropout(policy)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the policy has no parameter with requires_grad=True")
    optimizer = torch.optim.AdamW(trainable, lr=config.lr)
    max_length = context_length(policy)
    k, n_steps, n_samples, n_pairs_seen, history = config.completions_per_prompt, 0, 0, 0, []
    bar = tqdm(range(1, config.rounds + 1), desc="online DPO", disable=not progress)
    for round_index in bar:
        # 1. fresh samples from the current policy, k per prompt (rows i*k .. i*k+k-1 belong to prompt i)
        check_finite_parameters(policy, f"online DPO round {round_index}")  # before the sampler, which cannot say where
        picks = torch.randperm(len(prompts), generator=generator)[:config.prompts_per_round]
        round_prompts = [prompts[int(i)] for i in picks]
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
        ids = generate(policy, tokenizer, [p for p in round_prompts for _ in range(k)], max_new_tokens=config.max_new_tokens,
                       temperature=config.temperature, batch_size=len(round_prompts) * k, seed=seed, progress=False,
                       return_ids=True)
        flat_texts = completion_texts(tokenizer, ids)  # a sample that never ended is an Unfinished text
        n_samples += len(ids)
        # 2. the judge labels them; 3. one pair per prompt
        scores = torch.as_tensor(judge([p for p in round_prompts for _ in range(k)], flat_texts)).float().cpu()
        if scores.shape != (len(flat_texts),):
            raise ValueError(f"round {round_index}: judge must return {len(flat_texts)} scores, got {tuple(scores.shape)}")
        texts = [flat_texts[i * k:(i + 1) * k] for i in range(len(round_prompts))]
        selection = select_pairs(texts, scores.view(-1, k), config.tie_tolerance)
        record = _round_metrics(texts, scores, selection, gold_fn)
        record["samples/eos_rate"] = eos_rate(ids, tokenizer.eos_token_id)

        # 4. DPO steps on the fresh pairs, against the fixed reference
        n_pairs = record["round/pairs"]
        if n_pairs:
            rows = selection["prompt_index"]
            chosen_ids = [ids[int(r) * k + int(c)] for r, c in zip(rows, selection["chosen"])]
            rejected_ids = [ids[int(r) * k + int(c)] for r, c in zip(rows, selection["rejected"])]
            pair_prompts = [round_prompts[int(r)] for r in rows]
            batch = tokenize_completions(tokenizer, pair_prompts * 2, chosen_ids + rejected_ids, max_length=max_length)
            batch = {name: t.to(device) for name, t in batch.items()}  # rows: [chosen..., rejected...]
            with torch.no_grad():
                ref_logps = sequence_logprobs(reference, **batch)  # pi_ref is fixed: once per round is enough
            stats = defaultdict(list)
            policy.train()
            for _ in range(config.epochs):
                order = torch.randperm(n_pairs, generator=generator)
                for start in range(0, n_pairs, config.minibatch_size):
                    pair_rows = order[start:start + config.minibatch_size].to(device)
                    batch_rows = torch.cat([pair_rows, pair_rows + n_pairs])  # this minibatch's chosen, then rejected
                    yw_ids = torch.arange(len(pair_rows), device=device)
                    metrics = dpo_step(policy, optimizer, {name: t[batch_rows] for name, t in batch.items()},
                                       ref_logps[batch_rows], yw_ids, yw_ids + len(pair_rows), config.beta,
                                       where=f"online DPO round {round_index}", max_grad_norm=config.max_grad_norm,
                                       loss_fn=loss_fn)
                    n_steps += 1
                    n_pairs_seen += len(pair_rows)
                    for name, value in metrics.items():
                        stats[name].append(value)
            policy.eval()
            record.update({name: sum(values) / len(values) for name, values in stats.items()})
        row = {"step": round_index, "samples": n_samples, "pairs": n_pairs_seen, **record, "optimizer_steps": n_steps}
        log_step(history, row, policy, config.rounds, eval_fn, eval_every, callback)
        bar.set_postfix(score=f"{row['judge/score']:.3f}", pairs=n_pairs)
    policy.eval()
    return history


# ----------------------------------------------------------------------------- distribution shift
@torch.no_grad()
def mean_logprob(model, tokenizer, prompts: Sequence[str], completions: Sequence, per_token: bool = True,
                 batch_size: int = 64) -> float:
    """Mean over pairs of log pi(y|x) (``per_token=False``) or of log pi(y|x) / |y| (``per_token=True``).

    ``completions``: texts (EOS appended) or 1-D id tensors used as they are (e.g. sampled ids).
    """
    if len(prompts) != len(completions) or len(prompts) == 0:
        raise ValueError(f"need as many completions as prompts (and at least one), got {len(prompts)} and {len(completions)}")
    device = model_device(model)
    max_length = context_length(model)
    total = 0.0
    with evaluating(model):
        for start in range(0, len(prompts), batch_size):
            batch = tokenize_completions(tokenizer, list(prompts[start:start + batch_size]),
                                         list(completions[start:start + batch_size]), max_length=max_length,
                                         first_row=start)
            logps = sequence_logprobs(model, **{k: v.to(device) for k, v in batch.items()}, average=per_token)
            total += require_finite(logps, "mean_logprob: log-probs").sum().item()
    return total / len(prompts)


def distribution_shift(policy, tokenizer, prompts: Sequence[str], completions: Sequence, *, max_new_tokens: int = 48,
                       temperature: float = 1.0, seed: int = 0, per_token: bool = True) -> dict[str, float]:
    """How far a fixed set of (prompt, completion) pairs is from what ``policy`` writes now.

    Returns ``offline`` = mean log pi(y|x) of the fixed pairs (e.g. an offline preference set's completions),
    ``on_policy`` = the same for one fresh sample y ~ pi(.|x) per prompt (at ``temperature``; at 1 it
    estimates minus the entropy), and ``gap = on_policy - offline``. A growing gap means the fixed data
    have become text the policy would rarely write: offline pairs are off-policy by that much.
    """
    fresh = generate(policy, tokenizer, list(prompts), max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                     progress=False, return_ids=True)
    offline = mean_logprob(policy, tokenizer, prompts, completions, per_token)
    on_policy = mean_logprob(policy, tokenizer, prompts, fresh, per_token)
    return {"offline": offline, "on_policy": on_policy, "gap": on_policy - offline}


@torch.no_grad()
def log_ratios(policy, reference, tokenizer, prompts: Sequence[str], completions: Sequence,
               batch_size: int = 64) -> torch.Tensor:
    """Per-sequence log pi(y|x) - log pi_ref(y|x), shape (N,), for N given (prompt, completion) pairs.

    ``completions``: texts (EOS appended, except to an :class:`pref_lab.models.Unfinished` text, which stays
    cut off) or 1-D sampled id tensors used as they are: a finished text and a sample that ended with EOS are
    thus treated alike, and so are a cut-off text and a sample that ran into the length limit.
    """
    if len(prompts) != len(completions) or len(prompts) == 0:
        raise ValueError(f"need as many completions as prompts (and at least one), got {len(prompts)} and {len(completions)}")
    device = same_device(policy=policy, reference=reference)
    max_length = context_length(policy)
    ratios = []
    with evaluating(policy, reference):
        for start in range(0, len(prompts), batch_size):
            batch = tokenize_completions(tokenizer, list(prompts[start:start + batch_size]),
                                         list(completions[start:start + batch_size]), max_length=max_length,
                                         first_row=start)
            batch = {k: v.to(device) for k, v in batch.items()}
            ratios.append((sequence_logprobs(policy, **batch) - sequence_logprobs(reference, **batch)).cpu())
    return require_finite(torch.cat(ratios), "log_ratios")


def log_ratio_shift(policy, reference, tokenizer, prompts: Sequence[str], completions: Sequence, *,
                    max_new_tokens: int = 48, seed: int = 0) -> dict[str, list[float]]:
    """Distribution shift as log pi/pi_ref on a fixed set of completions and on fresh ones, measured alike.

    ``completions``: the fixed (offline) completion of each prompt, e.g. an offline pair's chosen side, as
    texts (:class:`pref_lab.models.Unfinished` where the sample was cut off). One fresh sample y ~ pi(.|x) per
    prompt is drawn (temperature 1, ``max_new_tokens``, sampling ``seed``) and scored as sampled. Returns the
    per-prompt values (N each, for means and paired standard errors):

    - ``offline``: log pi(y|x) - log pi_ref(y|x) on the fixed completions. Averaged over SFT samples it estimates
      -KL(pi_ref || pi) <= 0: how much less likely the policy finds the reference's own text;
    - ``fresh``: the same on the policy's own samples, whose mean estimates KL(pi || pi_ref) >= 0 (the KL every
      evaluation reports).

    At pi = pi_ref both are exactly 0. ``fresh - offline`` is how much more the policy likes its own text than
    the offline data, in nats per sequence, relative to where the reference stood.
    """
    fresh = generate(policy, tokenizer, list(prompts), max_new_tokens=max_new_tokens, temperature=1.0, seed=seed,
                     progress=False, return_ids=True)
    return {"offline": log_ratios(policy, reference, tokenizer, prompts, completions).tolist(),
            "fresh": log_ratios(policy, reference, tokenizer, prompts, fresh).tolist()}
