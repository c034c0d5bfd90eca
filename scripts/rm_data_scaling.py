"""How does the reward model's held-out accuracy grow with the number of labelled texts? The pipeline's RM recipe on
nested subsets of its training prompts.

    .venv/bin/python scripts/rm_data_scaling.py --jobs 2      # fractions 1/8, 1/4, 1/2 (~10 min on 2 cores)

Every run keeps all of ``train.jsonl`` (the val movies' pairs) and a seeded random subset of the train-movie prompts
of ``rm_extra.jsonl.gz``, each kept prompt with all its samples and all their pairs. The subsets are nested: the
prompts of fraction 1/8 are among those of 1/4, and so on. Each run trains the pipeline's recipe
(``RECIPES["full"]["rm"]``: same learning rate, prompts per step, centering and seed) with its steps scaled by its
number of prompts, so every run makes the same number of passes over its own prompts (about two) as the shipped RM
over all of them. Fraction 1 *is* the shipped RM (same recipe, seed and pairs in the same order), so its numbers
are read from the manifest, not re-trained.

Writes ``data/results/rm_data_scaling.json`` (the shipped file is quoted by the RM-vs-oracle test's reason in
``tests/test_reward_model.py``): per fraction its train-movie prompts, texts, pairs
and steps, the accuracy on the test pairs and the agreement with the gold order. The held-out accuracy is only
monitored, never used to pick anything. Re-run it after every ``make assets`` that changes the pairs or the RM.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import platform
import random
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor

import torch
import transformers

from pref_lab.assets import RECIPES
from pref_lab.config import data_path
from pref_lab.data import read_jsonl
from pref_lab.models import load_tokenizer
from pref_lab.reward_model import agreement_with_gold_order, evaluate_pairs, init_reward_model, train_reward_model
from pref_lab.training import columns

SCHEMA = "pref_lab.rm_data_scaling/1"
SUBSET_SEED = 0


def nested_prompt_subset(pairs: Sequence[Mapping], fraction: float, seed: int = SUBSET_SEED) -> list[Mapping]:
    """The pairs of a ``fraction`` of the distinct prompts (at least one), in their original order.

    The prompts are shuffled once with ``seed`` and the first ``ceil(fraction * n)`` kept, so a smaller fraction's
    prompts are always among a larger one's; ``fraction = 1`` returns every pair, in order.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    prompts = list(dict.fromkeys(p["prompt"] for p in pairs))  # distinct, in order of first appearance
    random.Random(seed).shuffle(prompts)
    keep = set(prompts[: max(1, math.ceil(len(prompts) * fraction))])
    return [p for p in pairs if p["prompt"] in keep]


def count_prompts(pairs: Sequence[Mapping]) -> int:
    """Distinct prompts among ``pairs``."""
    return len({p["prompt"] for p in pairs})


def count_texts(pairs: Sequence[Mapping]) -> int:
    """Distinct (prompt, completion) texts among ``pairs``."""
    return len({(p["prompt"], p[side]) for p in pairs for side in ("chosen", "rejected")})


def run_fraction(fraction: float) -> dict:
    """Train the pipeline's RM recipe on ``fraction`` of the train-movie prompts (plus all val-movie pairs)."""
    torch.set_num_threads(1)
    recipe = RECIPES["full"]["rm"]
    tokenizer = load_tokenizer(data_path("tokenizer"))
    all_extra = read_jsonl(data_path("preferences", "rm_extra.jsonl.gz"))
    extra = nested_prompt_subset(all_extra, fraction)
    val_movie_pairs = read_jsonl(data_path("preferences", "train.jsonl"))
    train = val_movie_pairs + extra
    test = read_jsonl(data_path("preferences", "test.jsonl"))
    # the same passes over the prompts as the shipped RM: its steps times this run's share of its prompts
    share = count_prompts(train) / count_prompts(val_movie_pairs + all_extra)
    steps = max(1, round(recipe["steps"] * share))
    rm = init_reward_model(data_path("models", "sft"), seed=0)
    started = time.perf_counter()
    history = train_reward_model(rm, tokenizer, train, steps=steps, prompts_per_step=recipe["prompts_per_step"],
                                 lr=recipe["lr"], center_coef=recipe["center_coef"], seed=0,
                                 eval_fn=lambda m: {"accuracy": evaluate_pairs(m, tokenizer, test)["accuracy"]},
                                 eval_every=max(1, steps // 4), progress=False)
    seconds = time.perf_counter() - started
    eval_steps, val_accuracy = columns(history, "accuracy", where="eval")
    result = evaluate_pairs(rm, tokenizer, test)
    agreement = agreement_with_gold_order(result["chosen"], result["rejected"], test)
    return {"fraction": fraction, "extra_prompts": count_prompts(extra), "texts": count_texts(train),
            "pairs": len(train), "steps": steps, "test_accuracy": round(result["accuracy"], 4),
            "agreement_with_gold_order": round(agreement, 4),
            "history": {"eval_step": eval_steps, "val_accuracy": val_accuracy},
            "seconds": round(seconds, 1)}


def shipped_point() -> dict:
    """Fraction 1: the shipped RM's recorded metrics (the same run this script would do)."""
    manifest = json.loads(data_path("manifest.json").read_text())["assets"]
    extra = read_jsonl(data_path("preferences", "rm_extra.jsonl.gz"))
    train = read_jsonl(data_path("preferences", "train.jsonl")) + extra
    metrics = manifest["rm"]["metrics"]
    return {"fraction": 1.0, "extra_prompts": count_prompts(extra),
            "texts": count_texts(train), "pairs": len(train), "steps": manifest["rm"]["recipe"]["steps"],
            "test_accuracy": metrics["test_accuracy"], "agreement_with_gold_order": metrics["agreement_with_gold_order"],
            "seconds": manifest["rm"]["seconds"], "source": "data/manifest.json (the shipped RM)"}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fractions", default="0.125,0.25,0.5", help="comma-separated fractions of rm_extra's prompts")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel, each in its own 1-thread process")
    parser.add_argument("--out", default=str(data_path("results", "rm_data_scaling.json")))
    args = parser.parse_args(argv)
    fractions = [float(x) for x in args.fractions.split(",")]
    start = time.time()
    if args.jobs > 1:
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            # largest first: the longest run starts at once and the short ones fill the other worker
            points = list(pool.map(run_fraction, sorted(fractions, reverse=True)))
    else:
        points = [run_fraction(f) for f in fractions]
    for point in points:
        print(f"fraction {point['fraction']:.3f}: {point['texts']:6d} texts, {point['pairs']:6d} pairs, "
              f"{point['steps']:4d} steps -> test accuracy {point['test_accuracy']:.4f}, "
              f"agreement {point['agreement_with_gold_order']:.4f} ({point['seconds']:.0f} s)", flush=True)
    rm = json.loads(data_path("manifest.json").read_text())["assets"]["rm"]["metrics"]
    results = {"schema": SCHEMA, "recipe": RECIPES["full"]["rm"], "subset_seed": SUBSET_SEED,
               "test_pairs": rm["test_pairs"], "test_bayes_ceiling": rm["test_bayes_ceiling"],
               "points": sorted(points + [shipped_point()], key=lambda p: p["fraction"]),
               "environment": {"python": platform.python_version(), "torch": torch.__version__,
                               "transformers": transformers.__version__, "platform": platform.platform(),
                               "threads": 1, "jobs": args.jobs},
               "total_seconds": round(time.time() - start, 1)}
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {args.out} ({results['total_seconds']:.0f} s)")
    return results


if __name__ == "__main__":
    main()
