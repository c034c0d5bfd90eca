"""A zoo of preference losses, each a few lines on per-pair (or per-example) quantities.

Notation, per pair i (all tensors of shape (P,)):

    chosen_logratios   = log pi(y_w|x) - log pi_ref(y_w|x)      (TRL's name; beta times it is r_hat_w)
    rejected_logratios = log pi(y_l|x) - log pi_ref(y_l|x)
    h = chosen_logratios - rejected_logratios                     (the DPO "logits")

Every function returns the per-pair (or per-example) loss; train on its ``.mean()``. Each one plugs into the DPO
trainer as it is, through :func:`pair_loss_fn`: ``train_dpo(..., loss_fn=pair_loss_fn(ipo_loss, beta=0.1))``.
Conventions follow TRL 1.16 (``trl/trainer/dpo_trainer.py`` ``DPOTrainer._compute_loss``,
``trl/experimental/cpo/cpo_trainer.py``, ``trl/experimental/orpo/orpo_trainer.py``,
``trl/trainer/kto_trainer.py``); where we differ, the docstring says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .rlhf import check_beta

# What the DPO trainer calls instead of DPO's loss (``train_dpo(loss_fn=...)``): per-pair losses (P,) from one
# batch of 2P rows laid out [chosen..., rejected...],
#   loss_fn(pi_logps (B,), ref_logps (B,), yw_ids (P,), yl_ids (P,), lengths (B,)) -> losses (P,),
# where lengths are the completion token counts (EOS included), for length-normalised losses such as SimPO.
PairLossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _check_per_pair(name: str, x: torch.Tensor) -> None:
    """A per-pair (or per-example) input: a non-empty 1-D float tensor of finite values."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"{name} must be a float tensor with one entry per pair (P,), got "
                         f"{type(x).__name__ if not isinstance(x, torch.Tensor) else x.dtype}")
    if x.dim() != 1 or len(x) == 0:
        hint = " (did you pass logits or per-token log-probs? these losses take one number per pair)" if x.dim() > 1 else ""
        raise ValueError(f"{name} must have shape (P,) with P >= 1, got {tuple(x.shape)}{hint}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} has non-finite values (row {int((~torch.isfinite(x)).nonzero()[0][0])}): a log-prob of "
                         "-inf or NaN means a broken model or batch")


def _margin(chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, beta: float | None = None) -> torch.Tensor:
    _check_per_pair("chosen", chosen_logratios)
    _check_per_pair("rejected", rejected_logratios)
    if chosen_logratios.shape != rejected_logratios.shape:
        raise ValueError(f"chosen {tuple(chosen_logratios.shape)} and rejected {tuple(rejected_logratios.shape)} "
                         "must have the same shape (one entry per pair)")
    if beta is not None:
        check_beta(beta)
    return chosen_logratios - rejected_logratios


def dpo_sigmoid_loss(chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO: -log sigma(beta * h).  Rafailov et al. 2023, arXiv:2305.18290 (TRL ``loss_type="sigmoid"``)."""
    return -F.logsigmoid(beta * _margin(chosen_logratios, rejected_logratios, beta))


def cdpo_loss(chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, beta: float,
              label_smoothing: float) -> torch.Tensor:
    """Conservative DPO: -(1-eps) log sigma(beta h) - eps log sigma(-beta h).

    Mitchell 2023, "A note on DPO with noisy preferences & relationship to IPO": assume each label is
    flipped with probability eps (``label_smoothing``); the loss is DPO against soft targets (1-eps, eps),
    so it no longer pushes h to infinity: its minimum is at beta*h = log((1-eps)/eps).
    eps = 0 is DPO. TRL 1.16 writes this expression in its ``aot`` branch and in CPO's ``sigmoid``; its
    ``robust`` loss (Chowdhury et al. 2024) is the *unbiased* variant, ((1-eps)(-log s(bh)) + eps log s(-bh))/(1-2eps).
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    h = _margin(chosen_logratios, rejected_logratios, beta)
    return -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)


def ipo_loss(chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, beta: float,
             chosen_lengths: torch.Tensor | None = None, rejected_lengths: torch.Tensor | None = None) -> torch.Tensor:
    """IPO: (h - 1/(2 beta))^2.  Azar et al. 2023, arXiv:2310.12036, Eq. 17 (beta is their tau).

    A squared loss regresses h onto the finite target 1/(2 beta) instead of pushing it to infinity,
    so IPO does not overfit deterministic preferences. Pass ``chosen_lengths``/``rejected_lengths``
    (completion token counts, (P,)) to use per-token *average* log-ratios, as TRL 1.16 does
    (``loss_type="ipo"``: it divides each side's log-ratio by its completion length before the difference).
    """
    if (chosen_lengths is None) != (rejected_lengths is None):
        raise ValueError("give both chosen_lengths and rejected_lengths, or neither")
    if chosen_lengths is not None:
        chosen_logratios = chosen_logratios / chosen_lengths.clamp(min=1)
        rejected_logratios = rejected_logratios / rejected_lengths.clamp(min=1)
    return (_margin(chosen_logratios, rejected_logratios, beta) - 1 / (2 * beta)) ** 2


def hinge_loss(chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, beta: float) -> torch.Tensor:
    """Hinge on the reference-normalised likelihood (RSO's "hinge-norm"): max(0, 1 - beta * h).  Liu et al. 2023,
    arXiv:2309.06657 (TRL ``loss_type="hinge"``).

    SLiC's calibration loss (Zhao et al. 2023, arXiv:2305.10425) is a hinge on the policy's own log-likelihoods,
    max(0, delta - log pi(y_w|x) + log pi(y_l|x)), with no reference; RSO put SLiC's hinge on DPO's
    log-ratios h, which is this loss. Zero loss, hence zero gradient, once the margin beta*h exceeds 1: confident
    pairs stop training.
    """
    return torch.relu(1 - beta * _margin(chosen_logratios, rejected_logratios, beta))


def simpo_loss(chosen_avg_logps: torch.Tensor, rejected_avg_logps: torch.Tensor, beta: float,
               gamma: float) -> torch.Tensor:
    """SimPO: -log sigma(beta * (avg log pi(y_w) - avg log pi(y_l)) - gamma).

    Meng et al. 2024, arXiv:2405.14734, Eq. 6. Reference-free: the implicit reward is the policy's
    *length-normalised* log-prob beta/|y| log pi(y|x) (pass ``sequence_logprobs(..., average=True)``),
    so a long answer is not penalised for having more tokens, and gamma > 0 demands a target margin.
    TRL 1.16 (``trl/experimental/cpo``, ``loss_type="simpo"``) writes it as beta * (diff - gamma/beta): the same.
    """
    if not math.isfinite(gamma):
        raise ValueError(f"gamma must be finite, got {gamma!r}")
    return -F.logsigmoid(beta * _margin(chosen_avg_logps, rejected_avg_logps, beta) - gamma)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable near both 0 and -inf (Maechler 2012)."""
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_loss(chosen_avg_logps: torch.Tensor, rejected_avg_logps: torch.Tensor, lam: float) -> torch.Tensor:
    """ORPO: -avg log pi(y_w|x) + lam * (-log sigma(log odds(y_w) - log odds(y_l))).

    Hong et al. 2024, arXiv:2403.07691, Eqs. 4-7: odds(y) = p/(1-p) with p = exp(avg log pi(y|x))
    (length-normalised), so log odds = a - log(1 - exp(a)). Reference-free, and SFT in one loss:
    the first term is the NLL of the chosen answer. TRL 1.16 (``trl/experimental/orpo``, where lam is
    ``beta``) computes the same odds-ratio term, but its NLL is a token mean over all chosen tokens in the
    batch, whereas ours is per pair (each pair weighs the same); equal when completions have equal length.
    """
    margin = _margin(chosen_avg_logps, rejected_avg_logps)
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam < 0:
        raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
    if (chosen_avg_logps > 0).any() or (rejected_avg_logps > 0).any():
        raise ValueError("average log-probs must be <= 0")
    log_odds = margin - (
        _log1mexp(chosen_avg_logps) - _log1mexp(rejected_avg_logps))
    return -chosen_avg_logps - lam * F.logsigmoid(log_odds)


def kto_loss(logratios: torch.Tensor, desirable: torch.Tensor, beta: float, z_ref: torch.Tensor | float,
             desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> torch.Tensor:
    """KTO: lam_D (1 - sigma(beta (r - z_ref))) for desirable y, lam_U (1 - sigma(beta (z_ref - r))) for undesirable.

    Ethayarajh et al. 2024, arXiv:2402.01306, Eq. 7. Unpaired: each example is one completion with a
    thumbs-up/down label, ``logratios`` (N,) = log pi(y|x) - log pi_ref(y|x) and ``desirable`` (N,) bool.
    The reference point z_ref estimates KL(pi || pi_ref); TRL 1.16 (``trl/trainer/kto_trainer.py``) estimates
    it from mismatched (x, y') pairs in the batch, detaches it and clamps it at 0. We take it as given:
    pass a detached scalar or tensor.
    """
    _check_per_pair("logratios", logratios)
    check_beta(beta)
    if not isinstance(desirable, torch.Tensor) or logratios.shape != desirable.shape:
        raise ValueError(f"logratios {tuple(logratios.shape)} and desirable {tuple(getattr(desirable, 'shape', ()))} must "
                         "be tensors of one shape (N,): one thumbs-up/down label per example")
    desirable = desirable.bool()
    gain = desirable_weight * (1 - torch.sigmoid(beta * (logratios - z_ref)))
    loss_aversion = undesirable_weight * (1 - torch.sigmoid(beta * (z_ref - logratios)))
    return torch.where(desirable, gain, loss_aversion)


# ----------------------------------------------------------------------------- into the DPO trainer
def pair_loss_fn(loss: Callable[..., torch.Tensor], **params) -> PairLossFn:
    """One of this module's losses as the DPO trainer's ``loss_fn`` (:data:`PairLossFn`), with its other
    arguments (``beta``, ``gamma``, ...) fixed: ``pair_loss_fn(simpo_loss, beta=2.0, gamma=1.0)``.

    Each loss is fed the per-pair quantities its paper defines, read off the batch:

    - DPO, cDPO, IPO, hinge: the log-ratios log pi - log pi_ref of y_w and y_l (IPO, given ``lengths=True``,
      also the completion lengths, for TRL's per-token average);
    - SimPO, ORPO: the length-normalised log-probs log pi(y|x) / |y| (reference-free);
    - KTO: every completion as one unpaired example, y_w desirable and y_l undesirable, with the reference point
      z_ref = max(0, mean log-ratio of the batch), detached (TRL estimates it from mismatched pairs instead); the
      two examples of a pair are averaged, so the mean over pairs is the mean over the batch's examples.
    """
    if loss in (dpo_sigmoid_loss, cdpo_loss, hinge_loss):
        return lambda pi, ref, yw, yl, lengths: loss((pi - ref)[yw], (pi - ref)[yl], **params)
    if loss is ipo_loss:
        per_token = params.pop("lengths", False)
        if per_token:
            return lambda pi, ref, yw, yl, lengths: loss((pi - ref)[yw], (pi - ref)[yl], **params,
                                                          chosen_lengths=lengths[yw], rejected_lengths=lengths[yl])
        return lambda pi, ref, yw, yl, lengths: loss((pi - ref)[yw], (pi - ref)[yl], **params)
    if loss in (simpo_loss, orpo_loss):
        return lambda pi, ref, yw, yl, lengths: loss((pi / lengths)[yw], (pi / lengths)[yl], **params)
    if loss is kto_loss:
        def kto(pi, ref, yw, yl, lengths):
            logratios = torch.cat([(pi - ref)[yw], (pi - ref)[yl]])
            desirable = torch.cat([torch.ones_like(yw, dtype=torch.bool), torch.zeros_like(yl, dtype=torch.bool)])
            z_ref = logratios.detach().mean().clamp(min=0)
            per_example = loss(logratios, desirable, z_ref=z_ref, **params)
            return (per_example[: len(yw)] + per_example[len(yw):]) / 2
        return kto
    raise ValueError(f"{getattr(loss, '__name__', loss)!r} is not a loss of pref_lab.losses")
