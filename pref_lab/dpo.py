"""Direct Preference Optimization (Rafailov et al., 2023, arXiv:2305.18290).

The DPO loss for a prompt x with a preferred completion y_w and a dispreferred y_l is

    L_DPO = -log sigma( beta * [ (log pi(y_w|x) - log pi(y_l|x)) - (log pi_ref(y_w|x) - log pi_ref(y_l|x)) ] )

and the implicit reward it trains is r_hat(x, y) = beta * (log pi(y|x) - log pi_ref(y|x)).

Same numbers as TRL 1.16's ``DPOTrainer`` (``loss_type="sigmoid"``): loss, gradients and every
``rewards/*``, ``logps/*`` metric agree to 1e-5 on the same batch (``tests/test_dpo.py``). Conventions:

- Batch layout: both do [chosen rows..., rejected rows...], right padding, one forward per model.
- EOS: TRL appends the EOS *text* to ``chosen``/``rejected``; we append the EOS id. Same tokens.
- Tokenization: TRL tokenizes ``prompt + completion`` as one string and splits where it diverges from
  the tokenized prompt; we tokenize them separately. Identical when the prompt ends on a special token
  (our chat prompts end on ``<|assistant|>``); if a prompt ends mid-text, BPE may merge across the
  boundary and the two can differ.
- Length: TRL truncates rows longer than ``max_length`` (default 1024, keeping the start); we raise
  ``ValueError`` naming the row (nothing is cut silently).
- Dropout: off in the policy, as TRL's default ``disable_dropout=True`` (``pref_lab.models.disable_dropout``).
  With dropout on, log pi(y|x) is a noisy estimate and the log-ratio against the (dropout-free) reference
  is biased: at step 0 the rewards would not be 0 and the loss not log 2.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from datasets import Dataset
from tqdm.auto import tqdm

from .config import model_device, same_device, seed_everything
from .data import pair_completions, validate_records
from .logprobs import position_ids_from_mask, require_finite, sequence_logprobs, tokenize_completions
from .losses import PairLossFn
from .models import context_length, disable_dropout, evaluating
from .rlhf import check_beta
from .training import Callback, EvalFn, check_finite, check_steps, log_step


def dpo_loss(
    pi_logits: torch.Tensor,
    ref_logits: torch.Tensor,
    yw_ids: torch.Tensor,
    yl_ids: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The DPO loss exactly as in the paper's seed code (Rafailov et al., 2023, Appendix B).

    Note on names: we keep the lecture's parameter names, but ``pi_logits`` and ``ref_logits``
    are NOT logits: they are per-sequence log-probs log pi(y|x) and log pi_ref(y|x) of shape (B,)
    (the seed calls them ``pi_logps``/``ref_logps``; see :func:`pref_lab.logprobs.sequence_logprobs`).

    Args:
        pi_logits: (B,) policy log-probs of every completion in the batch.
        ref_logits: (B,) reference-model log-probs of the same completions.
        yw_ids: (P,) LongTensor, row index of the preferred completion of pair i.
        yl_ids: (P,) LongTensor, row index of the dispreferred completion of pair i.
        beta: strength of the KL penalty (the temperature of the implicit reward).

    Returns:
        losses: (P,) per-pair loss -log sigma(beta * h), with
            h = (log pi(y_w) - log pi(y_l)) - (log pi_ref(y_w) - log pi_ref(y_l)).
            Train on ``losses.mean()``.
        rewards: (B,) implicit rewards beta * (log pi - log pi_ref), detached (for logging only).

    For students: ``F.logsigmoid(beta * (pi_logratios - ref_logratios))`` is the per-pair
    Bradley-Terry *log-likelihood* that y_w beats y_l under the implicit reward; the loss is its
    negative, averaged over pairs (maximum likelihood on the preference labels).

    Bad input raises ``ValueError`` saying what was expected (:func:`check_dpo_inputs`): logits (B, T, V) or
    per-token log-probs (B, T) instead of per-sequence log-probs (B,), index tensors that are not 1-D integer
    tensors of one length within [0, B), an empty batch, a beta that is not a positive finite number, and
    non-finite log-probs (a -inf log-prob would make the loss 0 and hide the bug).
    """
    check_dpo_inputs(pi_logits, ref_logits, yw_ids, yl_ids, beta)
    pi_yw_logps, pi_yl_logps = pi_logits[yw_ids], pi_logits[yl_ids]
    ref_yw_logps, ref_yl_logps = ref_logits[yw_ids], ref_logits[yl_ids]

    pi_logratios = pi_yw_logps - pi_yl_logps
    ref_logratios = ref_yw_logps - ref_yl_logps

    losses = -F.logsigmoid(beta * (pi_logratios - ref_logratios))
    rewards = beta * (pi_logits - ref_logits).detach()
    return losses, rewards


def check_dpo_inputs(pi_logps: torch.Tensor, ref_logps: torch.Tensor, yw_ids: torch.Tensor, yl_ids: torch.Tensor,
                     beta: float) -> None:
    """The checks of :func:`dpo_loss`, with messages that say what was expected (its docstring lists them)."""
    for name, x in (("pi_logits", pi_logps), ("ref_logits", ref_logps)):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a tensor of per-sequence log-probs (B,), got {type(x).__name__}")
        if x.dim() != 1:
            hint = {3: "did you pass logits?", 2: "did you pass per-token log-probs? sum them per sequence "
                    "(pref_lab.logprobs.sequence_logprobs)"}.get(x.dim(), "")
            raise ValueError(f"{name} must be per-sequence log-probs of shape (B,), got {tuple(x.shape)}: {hint}")
        if not x.is_floating_point():
            raise ValueError(f"{name} must be floating point log-probs, got {x.dtype}")
    if pi_logps.shape != ref_logps.shape:
        raise ValueError(f"pi_logits {tuple(pi_logps.shape)} and ref_logits {tuple(ref_logps.shape)} must have one entry "
                         "per completion each, in the same rows")
    if len(pi_logps) == 0:
        raise ValueError("empty batch: no completions to compare")
    for name, ids in (("yw_ids", yw_ids), ("yl_ids", yl_ids)):
        if not isinstance(ids, torch.Tensor) or ids.dim() != 1 or ids.is_floating_point() or ids.dtype == torch.bool:
            raise ValueError(f"{name} must be a 1-D integer tensor of row indices (P,), got "
                             f"{getattr(ids, 'shape', type(ids).__name__)} {getattr(ids, 'dtype', '')}")
    if yw_ids.shape != yl_ids.shape or len(yw_ids) == 0:
        raise ValueError(f"yw_ids {tuple(yw_ids.shape)} and yl_ids {tuple(yl_ids.shape)} must index P >= 1 pairs each "
                         "(one chosen and one rejected row per pair)")
    n = len(pi_logps)
    for name, ids in (("yw_ids", yw_ids), ("yl_ids", yl_ids)):
        if ids.min() < 0 or ids.max() >= n:
            raise ValueError(f"{name} must be row indices in [0, {n}), got values from {int(ids.min())} to {int(ids.max())}")
    check_beta(beta)
    for name, x in (("pi_logits", pi_logps), ("ref_logits", ref_logps)):
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} has non-finite values (row {int((~torch.isfinite(x)).nonzero()[0][0])}): a log-prob "
                             "of -inf or NaN means a broken model or batch, and would hide in the loss")
        if (x > 1e-4).any():
            raise ValueError(f"{name} has positive values (max {x.max().item():.3g}): log-probs are <= 0; logits?")


# ----------------------------------------------------------------------------- batches
def build_preference_batch(
    tokenizer,
    prompts: Sequence[str],
    chosen: Sequence[str],
    rejected: Sequence[str],
    max_length: int = 128,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Put P preference pairs into ONE batch of 2P rows: chosen completions first, then rejected.

    One batch means one forward pass per model for both sides of every pair (TRL's layout too).
    Returns ``(batch, yw_ids, yl_ids)``: ``batch`` has ``input_ids``, ``attention_mask`` and
    ``completion_mask`` of shape (2P, T) from :func:`pref_lab.logprobs.tokenize_completions`
    (EOS appended to each completion); ``yw_ids = [0..P-1]`` and ``yl_ids = [P..2P-1]`` (LongTensors)
    are the rows of each pair's chosen and rejected completion, ready for :func:`dpo_loss`.
    Raises ``ValueError`` naming the row if the lists differ in length or chosen == rejected.
    """
    if not len(prompts) == len(chosen) == len(rejected):
        raise ValueError(f"{len(prompts)} prompts, {len(chosen)} chosen, {len(rejected)} rejected: must be equal")
    if len(prompts) == 0:
        raise ValueError("no preference pairs")
    for i, (c, r) in enumerate(zip(chosen, rejected, strict=True)):
        if c.strip() == r.strip():
            raise ValueError(f"row {i}: chosen == rejected ({c[:60]!r}); a preference pair must differ")
    n_pairs = len(prompts)
    batch = tokenize_completions(tokenizer, list(prompts) * 2, list(chosen) + list(rejected), max_length=max_length)
    yw_ids = torch.arange(n_pairs)
    yl_ids = torch.arange(n_pairs, 2 * n_pairs)
    return batch, yw_ids, yl_ids


def dpo_metrics(
    losses: torch.Tensor,
    rewards: torch.Tensor,
    pi_logps: torch.Tensor,
    yw_ids: torch.Tensor,
    yl_ids: torch.Tensor,
) -> dict[str, float]:
    """TRL's DPO metrics, each a mean over the P pairs.

    ``rewards`` (B,) are the implicit rewards from :func:`dpo_loss`, ``pi_logps`` (B,) the policy's
    sequence log-probs. ``rewards/accuracies`` counts a pair as correct only if the chosen reward is
    strictly greater (a tie is wrong, as in TRL).
    """
    chosen_rewards, rejected_rewards = rewards[yw_ids].float(), rewards[yl_ids].float()
    return {
        "loss": losses.detach().float().mean().item(),
        "rewards/chosen": chosen_rewards.mean().item(),
        "rewards/rejected": rejected_rewards.mean().item(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean().item(),
        "logps/chosen": pi_logps[yw_ids].detach().float().mean().item(),
        "logps/rejected": pi_logps[yl_ids].detach().float().mean().item(),
    }


def _columns(dataset, tokenizer=None, max_length: int | None = None, source: str = "dataset"
             ) -> tuple[list[str], list[str], list[str]]:
    """``prompt``/``chosen``/``rejected`` columns of a ``datasets.Dataset`` or a list of dicts, every row validated
    first (:func:`pref_lab.data.validate_records`: columns, strings, chat format, chosen != rejected and, with a
    tokenizer, the length in tokens), so a bad row is named before training starts, however it was loaded."""
    if isinstance(dataset, Dataset):
        missing = {"prompt", "chosen", "rejected"} - set(dataset.column_names)
        if missing:
            raise ValueError(f"{source}: the preference dataset lacks column(s) {sorted(missing)}")
    validate_records(dataset, "preference", source, tokenizer, max_length)
    prompts = list(dataset["prompt"]) if isinstance(dataset, Dataset) else [r["prompt"] for r in dataset]
    # a side that ran into the length limit is an Unfinished text: tokenized without EOS, as it was sampled
    return prompts, pair_completions(dataset, "chosen"), pair_completions(dataset, "rejected")


# ----------------------------------------------------------------------------- reference log-probs
@torch.no_grad()
def precompute_reference_logps(
    reference,
    tokenizer,
    dataset,
    batch_size: int = 32,
    max_length: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi_ref(chosen|x) and log pi_ref(rejected|x) for every pair: two tensors of shape (N,), on the CPU.

    The reference never changes, so its log-probs can be computed once before training (TRL's
    ``precompute_ref_log_probs=True``); each training step then needs one forward pass, not two.
    Runs on ``reference``'s device, in eval mode (its mode is restored after).
    """
    device = model_device(reference)
    max_length = max_length or context_length(reference)
    prompts, chosen, rejected = _columns(dataset, tokenizer, max_length)
    ref_chosen, ref_rejected = [], []
    with evaluating(reference):
        for start in range(0, len(prompts), batch_size):
            sl = slice(start, start + batch_size)
            batch, yw_ids, yl_ids = build_preference_batch(tokenizer, prompts[sl], chosen[sl], rejected[sl], max_length)
            ref_logps = require_finite(sequence_logprobs(reference, **{k: v.to(device) for k, v in batch.items()}).cpu(),
                                       "precompute_reference_logps: reference log-probs")
            ref_chosen.append(ref_logps[yw_ids])
            ref_rejected.append(ref_logps[yl_ids])
    return torch.cat(ref_chosen), torch.cat(ref_rejected)


# ----------------------------------------------------------------------------- one step
def dpo_forward(policy, batch: dict[str, torch.Tensor], ref_logps: torch.Tensor, yw_ids: torch.Tensor,
                yl_ids: torch.Tensor, beta: float, loss_fn: PairLossFn | None = None, where: str = "DPO"
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The policy's side of one DPO step on a 2P-row batch whose reference log-probs ``ref_logps`` (B,) are known.

    ``batch``: ``input_ids``, ``attention_mask``, ``completion_mask`` (B, T) on the policy's device (rows:
    chosen..., rejected..., as :func:`build_preference_batch` lays them out). Returns ``(losses (P,), rewards (B,),
    pi_logps (B,))``: :func:`dpo_loss`'s, or ``loss_fn``'s losses with DPO's implicit rewards (as TRL logs them).
    """
    pi_logps = sequence_logprobs(policy, **batch)
    if not torch.isfinite(pi_logps).all():  # a diverged policy: name the step, not dpo_loss's argument
        raise RuntimeError(f"{where}: the policy's log-probs are not finite (the run diverged, or the weights are "
                           "broken): try a smaller lr or beta")
    losses, rewards = dpo_loss(pi_logps, ref_logps, yw_ids, yl_ids, beta)
    if loss_fn is not None:  # another loss; the logged rewards stay DPO's implicit rewards (as in TRL)
        losses = loss_fn(pi_logps, ref_logps, yw_ids, yl_ids, batch["completion_mask"].sum(-1))
        if losses.shape != yw_ids.shape:
            raise ValueError(f"loss_fn returned shape {tuple(losses.shape)}; expected one loss per pair, "
                             f"{tuple(yw_ids.shape)} (do not take the mean inside loss_fn)")
    return losses, rewards, pi_logps


def dpo_step(policy, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor], ref_logps: torch.Tensor,
             yw_ids: torch.Tensor, yl_ids: torch.Tensor, beta: float, *, where: str, max_grad_norm: float | None = 1.0,
             loss_fn: PairLossFn | None = None) -> dict[str, float]:
    """One gradient step on ``losses.mean()`` (:func:`dpo_forward`), its gradient clipped at ``max_grad_norm``.

    Shared by offline DPO (:func:`train_dpo`) and online DPO (:func:`pref_lab.online.train_online_dpo`): only
    where the pairs come from differs. Returns :func:`dpo_metrics` of the batch, measured before the update;
    a non-finite loss raises ``RuntimeError`` naming ``where`` (e.g. "DPO step 7").
    """
    losses, rewards, pi_logps = dpo_forward(policy, batch, ref_logps, yw_ids, yl_ids, beta, loss_fn, where)
    loss = losses.mean()
    check_finite(loss, where)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], max_grad_norm)
    optimizer.step()
    return dpo_metrics(losses, rewards, pi_logps, yw_ids, yl_ids)


def dpo_batch(policy, reference, tokenizer, prompts, chosen, rejected, ref_chosen=None, ref_rejected=None,
              max_length: int | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch of text pairs, ready for :func:`dpo_forward`: ``(batch, ref_logps, yw_ids, yl_ids)`` on the
    policy's device. ``ref_logps`` are the precomputed ``ref_chosen``/``ref_rejected`` (P,) when given, else the
    frozen reference's, computed here without gradients."""
    device = model_device(policy)
    batch, yw_ids, yl_ids = build_preference_batch(tokenizer, prompts, chosen, rejected, max_length or context_length(policy))
    batch = {k: v.to(device) for k, v in batch.items()}
    if ref_chosen is not None:
        ref_logps = torch.cat([ref_chosen, ref_rejected]).to(device)  # rows are [chosen..., rejected...]
    else:
        with torch.no_grad():
            ref_logps = sequence_logprobs(reference, **batch)
    return batch, ref_logps, yw_ids.to(device), yl_ids.to(device)


@torch.no_grad()
def evaluate_dpo(policy, reference, tokenizer, dataset, beta: float, batch_size: int = 64, max_length: int | None = None,
                 loss_fn: PairLossFn | None = None) -> dict[str, float]:
    """DPO metrics on a whole dataset (means over all its pairs), both models in eval mode (modes restored after).

    ``loss`` is ``loss_fn``'s (default: DPO's); the ``rewards/*`` are always DPO's implicit rewards.
    """
    same_device(policy=policy, reference=reference)
    max_length = max_length or context_length(policy)
    prompts, chosen, rejected = _columns(dataset, tokenizer, max_length)
    totals: dict[str, float] = {}
    with evaluating(policy, reference):
        for start in range(0, len(prompts), batch_size):
            sl = slice(start, start + batch_size)
            batch, ref_logps, yw_ids, yl_ids = dpo_batch(policy, reference, tokenizer, prompts[sl], chosen[sl],
                                                         rejected[sl], max_length=max_length)
            losses, rewards, pi_logps = dpo_forward(policy, batch, ref_logps, yw_ids, yl_ids, beta, loss_fn,
                                                    where="evaluate_dpo")
            n = len(prompts[sl])
            for key, value in dpo_metrics(losses, rewards, pi_logps, yw_ids, yl_ids).items():
                totals[key] = totals.get(key, 0.0) + value * n  # weight by batch size: a mean over all pairs
    return {key: value / len(prompts) for key, value in totals.items()}


# ----------------------------------------------------------------------------- training
def _pair_batches(n_pairs: int, batch_size: int, generator: torch.Generator):
    """Endless index batches: a fresh random order each epoch; an incomplete last batch is dropped
    (a dataset smaller than ``batch_size`` gives one batch of all its pairs)."""
    last_start = max(n_pairs - batch_size, 0)
    while True:
        order = torch.randperm(n_pairs, generator=generator)
        for start in range(0, last_start + 1, batch_size):
            yield order[start:start + batch_size]


def pairs_drawn(n_pairs: int, batch_size: int, steps: int, seed: int) -> list[int]:
    """The indices of the pairs that ``train_dpo(..., batch_size=batch_size, steps=steps, seed=seed)`` trains on, in
    order (a pair drawn again in a later epoch appears again): the same seeded generator drawing the same batches.
    For asking what information a run had, e.g. to train another model on exactly those pairs."""
    batches = _pair_batches(n_pairs, batch_size, seed_everything(seed))
    return [i for _ in range(steps) for i in next(batches).tolist()]


def train_dpo(
    policy,
    reference,
    tokenizer,
    dataset,
    beta: float,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    *,
    precompute_ref_logps: bool = False,
    max_grad_norm: float | None = 1.0,
    max_length: int | None = None,
    loss_fn: PairLossFn | None = None,
    eval_fn: EvalFn | None = None,
    eval_every: int = 50,
    callback: Callback | None = None,
    progress: bool = True,
) -> list[dict]:
    """Train ``policy`` with the DPO loss against a frozen ``reference``, on their (shared) device; returns the history.

    A plain loop: each step samples ``batch_size`` pairs (a new random order every epoch), runs the
    policy (with grad) and the reference (eval mode, no grad) on one 2P-row batch, and takes an AdamW
    step on ``dpo_loss(...)[0].mean()`` with gradient clipping at ``max_grad_norm`` (TRL's default 1.0):
    :func:`dpo_step`. Dropout is switched off in the policy, as TRL does by default (see :func:`disable_dropout`);
    the reference is put in eval mode and never given to the optimizer.

    ``dataset``: a ``datasets.Dataset`` or a list of dicts with text columns ``prompt`` (already
    chat-formatted), ``chosen`` and ``rejected`` (plain completions; EOS is appended).
    ``precompute_ref_logps=True`` computes log pi_ref for the whole dataset once, before training.
    ``loss_fn`` swaps in another per-pair loss (IPO, hinge, SimPO, ... from :mod:`pref_lab.losses`, e.g.
    ``pair_loss_fn(ipo_loss, beta=0.1)``), called as ``loss_fn(pi_logps, ref_logps, yw_ids, yl_ids, lengths) -> (P,)``
    on the same batch (see :data:`PairLossFn`); ``beta`` then only scales the logged implicit rewards.

    History (:mod:`pref_lab.training`): one row per step, ``{"step", "samples": 0, "pairs", "loss",
    "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
    "logps/rejected"}`` (means over the step's batch, before its update), with ``eval_fn(policy)`` (e.g.
    :func:`evaluate_dpo` on held-out pairs) under ``"eval"`` every ``eval_every`` steps and after the last one.
    A non-finite loss raises ``RuntimeError`` naming the step.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    check_steps(steps, eval_every)
    check_beta(beta)
    if policy is reference:
        raise ValueError("policy and reference are the same object: pass a copy, e.g. copy.deepcopy(reference)")
    same_device(policy=policy, reference=reference)
    generator = seed_everything(seed)
    max_length = max_length or context_length(policy)
    prompts, chosen, rejected = _columns(dataset, tokenizer, max_length)
    reference.eval()  # frozen: eval mode, used only under torch.no_grad(), not given to the optimizer
    disable_dropout(policy)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the policy has no parameter with requires_grad=True")

    ref_chosen = ref_rejected = None
    if precompute_ref_logps:
        ref_chosen, ref_rejected = precompute_reference_logps(reference, tokenizer, dataset, batch_size, max_length)

    optimizer = torch.optim.AdamW(trainable, lr=lr)
    batches = _pair_batches(len(prompts), batch_size, generator)
    history: list[dict] = []
    pairs_seen = 0
    bar = tqdm(range(1, steps + 1), desc="DPO", disable=not progress)
    for step in bar:
        policy.train()
        idx = next(batches).tolist()
        batch, ref_logps, yw_ids, yl_ids = dpo_batch(
            policy, reference, tokenizer, [prompts[i] for i in idx], [chosen[i] for i in idx],
            [rejected[i] for i in idx], ref_chosen=None if ref_chosen is None else ref_chosen[idx],
            ref_rejected=None if ref_rejected is None else ref_rejected[idx], max_length=max_length)
        metrics = dpo_step(policy, optimizer, batch, ref_logps, yw_ids, yl_ids, beta, where=f"DPO step {step}",
                           max_grad_norm=max_grad_norm, loss_fn=loss_fn)
        pairs_seen += len(idx)
        row = log_step(history, {"step": step, "samples": 0, "pairs": pairs_seen, **metrics}, policy, steps,
                       eval_fn, eval_every, callback)
        bar.set_postfix(loss=f"{row['loss']:.3f}", margin=f"{row['rewards/margins']:.3f}")
    policy.eval()
    return history


# ----------------------------------------------------------------------------- implicit reward
@torch.no_grad()
def implicit_rewards(
    policy,
    reference,
    tokenizer,
    prompts: Sequence[str],
    completions: Sequence[str],
    beta: float,
    batch_size: int = 64,
    max_length: int | None = None,
) -> torch.Tensor:
    """DPO's implicit reward r_hat(x, y) = beta * (log pi(y|x) - log pi_ref(y|x)) per row: shape (N,), on the CPU.

    Completions are texts (EOS appended). Up to a prompt-only term beta*log Z(x), this is the reward
    the DPO policy is optimal for, so it ranks completions of the same prompt like a reward model.
    Both models run where they live (one device), in eval mode (their modes are restored after).
    """
    rewards = [beta * (sequence_logprobs(policy, **batch) - sequence_logprobs(reference, **batch)).cpu()
               for batch in _scoring_batches(policy, reference, tokenizer, prompts, completions, batch_size, max_length)]
    return require_finite(torch.cat(rewards), "implicit_rewards")


def _scoring_batches(policy, reference, tokenizer, prompts, completions, batch_size: int, max_length: int | None):
    """Batches of (prompt, completion) rows on the models' device, both models in eval mode meanwhile (their modes
    restored after): the loop that scores completions under a policy and its reference."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    device = same_device(policy=policy, reference=reference)
    max_length = max_length or context_length(policy)
    with evaluating(policy, reference):
        for start in range(0, len(prompts), batch_size):
            sl = slice(start, start + batch_size)
            batch = tokenize_completions(tokenizer, list(prompts[sl]), list(completions[sl]), max_length=max_length,
                                         first_row=start)
            yield {k: v.to(device) for k, v in batch.items()}


def _token_and_eos_logprobs(model, batch: dict[str, torch.Tensor], eos_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T-1) log p(token t | prefix) and (B, T-1) log p(EOS | the same prefix), from one forward pass."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=position_ids_from_mask(batch["attention_mask"])).logits
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return logp.gather(-1, batch["input_ids"][:, 1:].unsqueeze(-1)).squeeze(-1), logp[..., eos_token_id]


@torch.no_grad()
def log_ratio_parts(
    policy,
    reference,
    tokenizer,
    prompts: Sequence[str],
    completions: Sequence[str | torch.Tensor],
    batch_size: int = 64,
    max_length: int | None = None,
) -> dict[str, torch.Tensor]:
    """Where training moved each completion's log-prob: log pi(y|x) - log pi_ref(y|x), split three ways.

    Each token's log-prob is a decision to stop or go on, then a choice of word: for a word token y_t,
    log p(y_t) = log(1 - p(EOS)) + log p(y_t | not EOS). With D[.] the policy's value minus the reference's, returns,
    each of shape (N,) on the CPU:

    - ``"total"``: sum_t D[log p(y_t)] over the completion's tokens (EOS included): ``beta * total`` is
      :func:`implicit_rewards`;
    - ``"eos"``: D[log p(EOS)] of the final EOS token (0 for an :class:`pref_lab.models.Unfinished` text or cut-off
      ids, which have none): stopping where it stopped;
    - ``"go_on"``: sum over the word tokens of D[log(1 - p(EOS))]: not stopping earlier;
    - ``"words"``: sum over the word tokens of D[log p(y_t | not EOS)]: which words, given that it goes on;
    - ``"word_tokens"``: the number of word (non-EOS) tokens, a float, for per-token means.

    ``total = eos + go_on + words``. ``completions`` are texts (EOS appended unless ``Unfinished``) or sampled id
    tensors used as they are (the exact tokens that were sampled).
    """
    eos_id = tokenizer.eos_token_id
    parts: dict[str, list[torch.Tensor]] = {"total": [], "eos": [], "go_on": [], "words": [], "word_tokens": []}
    for batch in _scoring_batches(policy, reference, tokenizer, prompts, completions, batch_size, max_length):
        (pi_tok, pi_eos), (ref_tok, ref_eos) = (_token_and_eos_logprobs(m, batch, eos_id) for m in (policy, reference))
        mask = batch["completion_mask"][:, 1:].to(pi_tok.dtype)  # token t is predicted at position t-1
        # EOS is never text in a completion (tokenize_completions refuses it), so an EOS inside the mask is the end
        is_eos = mask * (batch["input_ids"][:, 1:] == eos_id).to(pi_tok.dtype)
        is_word = mask - is_eos
        go = torch.log(-torch.expm1(pi_eos)) - torch.log(-torch.expm1(ref_eos))  # D[log(1 - p(EOS))], stable
        delta = pi_tok - ref_tok
        values = {"total": (delta * mask).sum(-1), "eos": (delta * is_eos).sum(-1),
                  "go_on": (go * is_word).sum(-1), "words": ((delta - go) * is_word).sum(-1),
                  "word_tokens": is_word.sum(-1)}
        for key, value in values.items():
            parts[key].append(value.cpu())
    return {key: require_finite(torch.cat(values), f"log_ratio_parts {key}") for key, values in parts.items()}
