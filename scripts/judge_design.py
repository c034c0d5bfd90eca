"""Choose the gold judge's rules by measurement, on the *validation* movies' real reviews (never the test movies).

    .venv/bin/python scripts/judge_design.py            # about 1 min on 2 cores

For each candidate (bound A, fluency weight lambda, fluency floor quantile q) it prints, on validation reviews:
- the stuffing test: the mean reward of real reviews with the sentiment judge's 10 most positive words appended,
  against the 90th percentile of real fresh reviews (the stuffed mean must not exceed it);
- the accuracy of the reward's sign on the real fresh/rotten labels;
- |Spearman(reward, length in words)|.
It also prints the designs the issue ruled out (probability-scaled, mean- and sqrt-length-normalised), measured the
same way. ``--brevity`` measures, on the shipped judge's terms, candidate rules against short "blurb" reviews built
from the praise words ("A w1, w2 and w3 film."): sentiment shrunk by n/(n + n0) for n distinct words, and a floor of
L0 distinct words below which every missing word costs lam (``RaterRules.evidence_words``, ``min_words``,
``brevity_weight``, combined by ``pref_lab.judge.combine_terms`` exactly as the judge combines them), each with
|Spearman(reward, length)| on validation reviews and on the SFT samples of ``preferences/train.jsonl`` (the issue's
bar is 0.15 on both), and the mean reward of what today's optimisers write (the example texts of the shipped
frontier's PPO, offline- and online-DPO runs at their last 3 evaluations). It applies a rule fixed before the run
(``MARGIN``) and writes every row to ``data/results/judge_brevity.json``.
``--lengths`` prints the shipped judge's reward of real validation reviews by length, in
tokens: how short real reviews are, and how a rater of this world scores them. ``--reader`` asks whether the
judge's reader can tell the optimisers' texts from real reviews (:func:`reader_view`).

The fluency floor is a quantile of the validation reviews' fluency (the reader, the base model, was pretrained on the
training reviews, so they read likelier than any new review). pref_lab.assets.RATER records the choice.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path

import torch
from transformers import GPT2LMHeadModel

from pref_lab.assets import blurbs, spearman, stuffed
from pref_lab.config import data_path
from pref_lab.data import load_corpus, pair_completions, read_jsonl
from pref_lab.judge import WORD_RE, BagOfWordsJudge, GoldJudge, RaterRules, combine_terms, load_gold_judge, text_features
from pref_lab.models import Unfinished, load_tokenizer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--brevity", action="store_true", help="measure brevity rules on the shipped judge instead")
    parser.add_argument("--lengths", action="store_true", help="the shipped judge's reward of real reviews by length")
    parser.add_argument("--reader", action="store_true", help="can the reader tell the optimisers' texts from reviews?")
    parser.add_argument("--out", default=str(data_path("results", "judge_brevity.json")), help="--brevity's results")
    args = parser.parse_args(argv)
    if args.brevity:
        return brevity(args)
    if args.lengths:
        return lengths(args)
    if args.reader:
        return reader_view(args)
    torch.set_num_threads(args.threads)
    sentiment = BagOfWordsJudge.load(data_path("judges", "gold"))
    reader = GPT2LMHeadModel.from_pretrained(str(data_path("models", "base")))
    probe = GoldJudge(sentiment, reader, load_tokenizer(data_path("tokenizer")), RaterRules(1.0, 0.0, 0.0, 0.0, 0.0, 0.0))
    val = load_corpus(split="val", kind="review")
    texts, labels = val["text"], val["label"]
    fresh = torch.tensor([y == "fresh" for y in labels])
    top = [w for w, _ in sentiment.top_features(len(sentiment.vocab))[0] if " " not in w][:10]
    stuffed_texts = [stuffed(t, top) for t in texts]
    words = [len(WORD_RE.findall(t.lower())) for t in texts]
    s, s_stuffed = sentiment.score(texts), sentiment.score(stuffed_texts)
    f, f_stuffed = probe.fluency(texts, [True] * len(texts)), probe.fluency(stuffed_texts, [True] * len(texts))
    print(f"validation reviews: {len(texts)}; stuffing words: {' '.join(top)}")
    print(f"sentiment logit S: real mean {s.mean():+.2f}, stuffed mean {s_stuffed.mean():+.2f} "
          f"(gain {(s_stuffed - s).mean():+.2f})")

    def report(name: str, real: torch.Tensor, stuffed_reward: torch.Tensor) -> None:
        p90 = torch.quantile(real[fresh], 0.9).item()
        accuracy = ((real > 0) == fresh).float().mean().item()
        verdict = "passes" if stuffed_reward.mean().item() <= p90 else "FAILS"
        print(f"{name:44s} stuffed {stuffed_reward.mean():+6.2f} vs fresh p90 {p90:+6.2f} ({verdict}); "
              f"accuracy {accuracy:.3f}; |rho(len)| {abs(spearman(real.tolist(), words)):.3f}")

    print("-- ruled-out designs")
    report("probability sigma(S)", torch.sigmoid(s), torch.sigmoid(s_stuffed))
    for norm, name in ((lambda n: n, "mean"), (math.sqrt, "sqrt-length")):
        def normalised(batch, norm=norm):
            return torch.tensor([sentiment.bias + sum(sentiment.weights[sentiment.index[x]].item()
                                                      for x in text_features(t) if x in sentiment.index)
                                 / norm(max(1, len(text_features(t)))) for t in batch])
        report(f"{name}-normalised weights", normalised(texts), normalised(stuffed_texts))
    print("-- bounded sentiment A tanh(S/A) - min(lambda max(0, F0 - F), 6)")
    for bound in (2.0, 3.0, 4.0):
        for weight in (1.0, 2.0, 4.0):
            for q in (0.05, 0.1):
                floor = torch.quantile(f, q).item()

                def reward(sent, flu, bound=bound, weight=weight, floor=floor):
                    return bound * torch.tanh(sent / bound) - (weight * (floor - flu).clamp(min=0)).clamp(max=6.0)
                report(f"A={bound:g} lambda={weight:g} floor=q{q:g} ({floor:.2f})", reward(s, f), reward(s_stuffed, f_stuffed))


def optimiser_samples(path) -> list:
    """The example texts that PPO, offline DPO and online DPO wrote at the last 3 evaluation points of every run of
    the shipped frontier (what an optimiser of today's judge produces), unfinished ones marked as such."""
    frontier = json.loads(path.read_text())
    return [e["text"] if e["finished"] else Unfinished(e["text"]) for run in frontier["runs"]
            if run["method"] in ("ppo", "dpo", "online_dpo") for point in run["curve"][-3:] for e in point.get("examples", [])]


BREVITY_GRID = [(n0, 0, 0.0) for n0 in (0, 4, 8, 12, 16, 24)] + [(0, 8, 0.25), (8, 8, 0.25)]
MARGIN = 1.25  # blurbs must average this far below the best tenth of fresh reviews (the test asks 1.0: room)


def brevity(args) -> None:
    """The --brevity measurements (module docstring), written to ``--out`` as well as printed."""
    torch.set_num_threads(args.threads)
    gold = load_gold_judge()
    val = load_corpus(split="val", kind="review")
    texts, fresh = val["text"], torch.tensor([y == "fresh" for y in val["label"]])
    top = [w for w, _ in gold.top_features(len(gold.sentiment.vocab))[0] if " " not in w][:10]
    pairs = read_jsonl(data_path("preferences", "train.jsonl"))
    samples = list(dict.fromkeys(pair_completions(pairs, "chosen") + pair_completions(pairs, "rejected")))
    sets = {"val": texts, "stuffed": [stuffed(t, top) for t in texts], "sft": samples, "blurbs": blurbs(top),
            "twice": [f"{t} {t}" for t in texts], "optimisers": optimiser_samples(data_path("results", "frontier_full.json"))}
    rates = {k: gold.rate(v) for k, v in sets.items()}
    n = {k: rates[k]["words"] for k in sets}  # distinct words, as the judge counts them
    print(f"length in distinct words: validation reviews median {n['val'].median():.0f}, SFT samples median "
          f"{n['sft'].median():.0f}, optimisers' samples median {n['optimisers'].median():.0f}; {len(samples)} distinct "
          f"SFT samples, {len(sets['optimisers'])} optimisers' samples")

    def reward(rating, words, n0, floor, lam):
        rules = replace(gold.rules, evidence_words=n0, min_words=floor, brevity_weight=lam)
        return combine_terms(rating["sentiment"], rating["fluency"], rating["repetition"], rating["finished"], words, rules)

    rows = []
    for n0, floor, lam in BREVITY_GRID:
        r = {k: reward(rates[k], n[k], n0, floor, lam) for k in sets}
        p90 = torch.quantile(r["val"][fresh], 0.9).item()
        row = {"evidence_words": n0, "min_words": floor, "brevity_weight": lam, "fresh_p90": p90,
               "blurbs_mean": r["blurbs"].mean().item(), "blurb_margin": p90 - r["blurbs"].mean().item(),
               "stuffed_mean": r["stuffed"].mean().item(), "optimisers_mean": r["optimisers"].mean().item(),
               "optimisers_above_p90": (r["optimisers"] > p90).float().mean().item(),
               "accuracy": ((r["val"] > 0) == fresh).float().mean().item(),
               "share_raised_by_saying_twice": (r["twice"] > r["val"]).float().mean().item(),
               "spearman_length_val": spearman(r["val"].tolist(), n["val"].tolist()),
               "spearman_length_sft": spearman(r["sft"].tolist(), n["sft"].tolist())}
        rows.append(row)
        print(f"n0={n0:2d} floor={floor:2d} lam={lam:<4g}: blurbs {row['blurbs_mean']:+.2f} vs fresh p90 {p90:+.2f} "
              f"(margin {row['blurb_margin']:.2f}); optimisers' samples {row['optimisers_mean']:+.2f} "
              f"({row['optimisers_above_p90']:.0%} above p90); stuffed {row['stuffed_mean']:+.2f}; accuracy "
              f"{row['accuracy']:.3f}; rho(len) validation {row['spearman_length_val']:+.3f}, SFT "
              f"{row['spearman_length_sft']:+.3f}; raised by saying twice {row['share_raised_by_saying_twice']:.3f}")
    base = rows[0]["accuracy"]
    ok = [r for r in rows if r["blurb_margin"] >= MARGIN and r["accuracy"] >= base - 0.005 and r["min_words"] == 0
          and max(abs(r["spearman_length_val"]), abs(r["spearman_length_sft"])) <= 0.15]
    chosen = min(ok, key=lambda r: r["evidence_words"]) if ok else None
    verdict = f"n0 = {chosen['evidence_words']:g}" if chosen else "none in the grid"
    print(f"rule (fixed before the run): the smallest n0, with no brevity charge, whose blurbs average >= {MARGIN} below "
          f"the fresh p90, at the n0 = 0 accuracy (within 0.005) and |rho(len)| <= 0.15 on both sets: {verdict}")
    out = {"schema": "pref_lab.judge_brevity/1", "split": "val", "margin": MARGIN, "stuffing_words": top,
           "judge_rules": asdict(gold.rules), "rows": rows, "chosen": chosen}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


def reader_view(args) -> None:
    """The --reader measurements: can the judge's reader tell what optimisers write from real reviews? Per set of
    texts, the medians of the reader's fluency F (nats per token), of a unigram model's (token frequencies of the
    training reviews, add-one smoothed) and of their difference, SLOR (Lau et al. 2017; Kann et al. 2018), which
    discounts texts that read well only because their words are frequent."""
    torch.set_num_threads(args.threads)
    gold = load_gold_judge()
    tok = gold.tokenizer
    counts = Counter(i for t in load_corpus(split="train")["text"] for i in tok(t, add_special_tokens=False)["input_ids"])
    counts[tok.eos_token_id] += len(load_corpus(split="train")["text"])
    total, vocab = sum(counts.values()), len(tok)

    def unigram(text: str) -> float:
        ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        return sum(math.log((counts[i] + 1) / (total + vocab)) for i in ids) / len(ids)

    val = load_corpus(split="val", kind="review")
    top = [w for w, _ in gold.top_features(len(gold.sentiment.vocab))[0] if " " not in w][:10]
    pairs = read_jsonl(data_path("preferences", "train.jsonl"))
    sets = {"validation reviews": val["text"],
            "SFT samples": list(dict.fromkeys(pair_completions(pairs, "chosen") + pair_completions(pairs, "rejected"))),
            "optimisers' samples": optimiser_samples(data_path("results", "frontier_full.json")),
            "praise blurbs": blurbs(top), "stuffed reviews": [stuffed(t, top) for t in val["text"]]}
    print(f"{'texts':22s} {'n':>5s} {'F':>6s} {'unigram':>8s} {'SLOR':>6s}  (medians)")
    for name, texts in sets.items():
        texts = [t for t in texts if isinstance(t, str) and not isinstance(t, Unfinished)]  # finished texts only
        f = gold.fluency(texts, [True] * len(texts))
        u = torch.tensor([unigram(t) for t in texts])
        print(f"{name:22s} {len(texts):5d} {f.median():+6.2f} {u.median():+8.2f} {(f - u).median():+6.2f}")


def lengths(args) -> None:
    """The --lengths profile (module docstring): real validation reviews binned by their length in tokens."""
    torch.set_num_threads(args.threads)
    gold = load_gold_judge()
    val = load_corpus(split="val", kind="review")
    texts, fresh = val["text"], torch.tensor([y == "fresh" for y in val["label"]])
    tokens = torch.tensor([len(gold.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts])
    rate = gold.rate(texts)
    print(f"{len(texts)} validation reviews; tokens: median {tokens.median():.0f}, 10th percentile "
          f"{torch.quantile(tokens.float(), 0.1):.0f}")
    print("tokens   n   share  fresh  gold(all)  gold(fresh)  fluency  fluency below floor")
    edges = [0, 10, 13, 16, 20, 25, 30, 40, 1000]
    for lo, hi in zip(edges, edges[1:]):
        sel = (tokens >= lo) & (tokens < hi)
        if not sel.any():
            continue
        g, f = rate["reward"][sel], rate["fluency"][sel]
        print(f"{lo:3d}-{hi - 1:<4d} {int(sel.sum()):4d}  {sel.float().mean():.3f}  {fresh[sel].float().mean():.3f}  "
              f"{g.mean():+8.3f}  {rate['reward'][sel & fresh].mean():+10.3f}  {f.mean():+7.3f}  "
              f"{(f < gold.rules.fluency_floor).float().mean():.3f}")
    print(f"Spearman(gold, tokens) on all {len(texts)}: {spearman(rate['reward'].tolist(), tokens.tolist()):+.3f}; "
          f"on fresh reviews: {spearman(rate['reward'][fresh].tolist(), tokens[fresh].tolist()):+.3f}")


if __name__ == "__main__":
    main()
