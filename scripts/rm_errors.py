"""Where does the shipped reward model disagree with the gold judge? Its held-out pairs split by what decides them.

    .venv/bin/python scripts/rm_errors.py      # about half a minute on one thread

For every test pair the gold difference r(y_c) - r(y_r) is split into its sentiment part, A·tanh(S/A) of each side
(the bounded bag of words), and the rest (fluency, repetition, cut-off: the rater's rules, ``GoldJudge.rate``).
Printed per group: how often the RM orders the pair as the gold judge does (noise-free) and its accuracy on the
noisy labels. A diagnosis, not a selection: nothing is chosen on these pairs.
"""

from __future__ import annotations

import torch

from pref_lab.config import data_path
from pref_lab.data import as_completion, read_jsonl
from pref_lab.judge import load_gold_judge
from pref_lab.models import load_tokenizer
from pref_lab.reward_model import evaluate_pairs, load_reward_model


def main() -> None:
    torch.set_num_threads(1)
    test = read_jsonl(data_path("preferences", "test.jsonl"))
    tokenizer, reward_model, gold = load_tokenizer(), load_reward_model(), load_gold_judge()
    result = evaluate_pairs(reward_model, tokenizer, test)
    terms = {side: gold.rate([as_completion(p[side], p[f"{side}_finished"]) for p in test])
             for side in ("chosen", "rejected")}
    bound = gold.rules.bound
    sentiment = (bound * torch.tanh(terms["chosen"]["sentiment"] / bound)
                 - bound * torch.tanh(terms["rejected"]["sentiment"] / bound))
    total = terms["chosen"]["reward"] - terms["rejected"]["reward"]
    rules = total - sentiment
    margin = result["chosen"] - result["rejected"]
    agrees = ((margin > 0) == (total > 0)).float()
    unfinished = torch.tensor([not (p["chosen_finished"] and p["rejected_finished"]) for p in test])
    groups = {"all": torch.ones(len(test), dtype=torch.bool), "sentiment decides": sentiment.abs() >= rules.abs(),
              "the rules decide": sentiment.abs() < rules.abs(), "an unfinished side": unfinished,
              "both finished": ~unfinished, "|gold difference| > 1": total.abs() > 1}
    print(f"{len(test)} test pairs")
    for name, m in groups.items():
        print(f"{name:24s} {int(m.sum()):5d} pairs: RM orders them as the gold judge does {agrees[m].mean():.3f}, "
              f"accuracy on the labels {(margin[m] > 0).float().mean():.3f}")


if __name__ == "__main__":
    main()
