"""The feature oracle: how far can the preference *data* take a reward model that already knows what to look at?

The gold judge's own model form (``pref_lab.judge``), with every weight learned from the noisy pairs by
Bradley–Terry instead of read off the judge:

    r_w(y) = A tanh(e(y) (b + w . phi(y)) / A) - a d(y) - m rho(y) - c u(y) - k s(y)

``phi(y)``: presence of the judge's words and bigrams; ``e(y)`` = n/(n + n0), the judge's evidence factor for a
text of n words; ``d(y)`` = max(0, F0 - F(y)) capped as the judge caps it, ``rho(y)`` repetition, ``u(y)`` = 1 if y
did not finish, ``s(y)`` = max(0, L0 - n): the judge's own measurements of the text. Learned: b, w (L2 penalty
``l2``·|w|^2) and a, m, c, k. A is the judge's bound. Fit by L-BFGS on

    -mean log sigma(r_w(y_chosen) - r_w(y_rejected))

The L2 strength is chosen on pairs of held-out *training* prompts, and the model is then refit on all the training
pairs: nothing is chosen on the test pairs. Its test accuracy is the data-limited ceiling a reward model with the
right features could reach; the Bayes ceiling is what a model that knew the gold reward exactly would reach.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from .data import pair_completions
from .judge import GoldJudge, text_features
from .reward_model import held_out_prompts


def text_table(judge: GoldJudge, pairs: Sequence[Mapping]
               ) -> tuple[dict, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every distinct (prompt, completion) of ``pairs`` once: returns ``index`` {(prompt, completion): row},
    ``phi`` sparse (T, V) feature presence, ``known`` (T, 4) = [d, rho, u, s], ``evidence`` (T,) = e and
    ``pair_rows`` (P, 2) rows of each pair's chosen and rejected completion."""
    chosen, rejected = pair_completions(pairs, "chosen"), pair_completions(pairs, "rejected")
    index: dict = {}
    for pair, c, r in zip(pairs, chosen, rejected):
        for y in (c, r):
            index.setdefault((pair["prompt"], y), len(index))
    texts = [y for _, y in index]
    rating = judge.rate(texts)
    rules = judge.rules
    cap = rules.max_fluency_penalty / max(rules.fluency_weight, 1e-12)  # nats below the floor the judge still counts
    d = (rules.fluency_floor - rating["fluency"]).clamp(min=0, max=cap)
    words = rating["words"]
    short = (rules.min_words - words).clamp(min=0)
    known = torch.stack([d, rating["repetition"], 1 - rating["finished"], short], 1)
    evidence = words / (words + rules.evidence_words) if rules.evidence_words else torch.ones_like(words)
    vocab = judge.sentiment.index
    rows, cols = [], []
    for i, y in enumerate(texts):
        for f in text_features(y):
            if f in vocab:
                rows.append(i), cols.append(vocab[f])
    phi = torch.sparse_coo_tensor([rows, cols], torch.ones(len(rows)), (len(texts), len(vocab)),
                                  check_invariants=True).coalesce()
    pair_rows = torch.tensor([[index[(p["prompt"], c)], index[(p["prompt"], r)]] for p, c, r in zip(pairs, chosen, rejected)])
    return index, phi, known, evidence, pair_rows


def oracle_rewards(params: dict, phi: torch.Tensor, known: torch.Tensor, evidence: torch.Tensor,
                   bound: float) -> torch.Tensor:
    """r_w of every text of a table, shape (T,)."""
    logit = params["bias"] + torch.sparse.mm(phi, params["w"].unsqueeze(1)).squeeze(1)
    return bound * torch.tanh(evidence * logit / bound) - known @ params["known"]


def fit(phi: torch.Tensor, known: torch.Tensor, evidence: torch.Tensor, pair_rows: torch.Tensor, bound: float,
        l2: float, max_iter: int = 200) -> dict:
    """Fit the oracle's parameters on the pairs ``pair_rows`` (chosen, rejected) of one table."""
    params = {"w": torch.zeros(phi.shape[1], requires_grad=True), "bias": torch.zeros((), requires_grad=True),
              "known": torch.zeros(known.shape[1], requires_grad=True)}
    optimizer = torch.optim.LBFGS(list(params.values()), max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        r = oracle_rewards(params, phi, known, evidence, bound)
        loss = -F.logsigmoid(r[pair_rows[:, 0]] - r[pair_rows[:, 1]]).mean() + l2 * params["w"].pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return {k: v.detach() for k, v in params.items()}


def accuracy(params: dict, table: tuple, pair_rows: torch.Tensor, bound: float) -> float:
    """Strict accuracy (r_c > r_r) of the oracle on the pairs ``pair_rows`` of a table (phi, known, evidence),
    against their (noisy) labels."""
    r = oracle_rewards(params, *table, bound)
    return (r[pair_rows[:, 0]] > r[pair_rows[:, 1]]).float().mean().item()


def feature_oracle(judge: GoldJudge, train_pairs: Sequence[Mapping], test_pairs: Sequence[Mapping],
                   l2_grid: Sequence[float] = (1e-3, 3e-4, 1e-4, 3e-5, 1e-5), holdout: float = 0.1,
                   seed: int = 0) -> dict:
    """Choose ``l2`` on the pairs of a held-out ``holdout`` share of the training prompts, refit on all training
    pairs, report test accuracy. Returns ``l2``, ``validation`` (accuracy per l2), ``test_accuracy``, ``known``
    (the learned a, m, c next to the judge's own). Every text is read by the judge once."""
    held = held_out_prompts(train_pairs, holdout, seed)
    _, phi, known, evidence, rows = text_table(judge, list(train_pairs) + list(test_pairs))
    table = (phi, known, evidence)
    train_rows, test_rows = rows[:len(train_pairs)], rows[len(train_pairs):]
    is_held = torch.tensor([p["prompt"] in held for p in train_pairs])
    bound = judge.rules.bound
    validation = {l2: accuracy(fit(*table, train_rows[~is_held], bound, l2), table, train_rows[is_held], bound)
                  for l2 in l2_grid}
    best = max(l2_grid, key=lambda l2: validation[l2])
    params = fit(*table, train_rows, bound, best)
    rules = judge.rules
    return {"l2": best, "validation": {str(k): round(v, 4) for k, v in validation.items()},
            "validation_pairs": int(is_held.sum()), "train_pairs": len(train_pairs),
            "test_accuracy": round(accuracy(params, table, test_rows, bound), 4),
            "known": {"learned": [round(x, 3) for x in params["known"].tolist()],
                      "judge": [rules.fluency_weight, rules.repetition_weight, rules.unfinished_penalty,
                                rules.brevity_weight]}}
