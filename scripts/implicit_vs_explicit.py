"""DPO's implicit reward against an explicit reward model trained on *the same pairs* (Lin et al., 2024).

    .venv/bin/python scripts/implicit_vs_explicit.py          # 3 seeds, about 4 min on 2 cores

Notebook 09 scores the shipped DPO policy as a reward model. The shipped Bradley–Terry reward model saw ten times
more human-labelled pairs than that policy, so comparing the two mixes "implicit vs explicit" with "3,200 vs 32,646
pairs". Here, for each seed:

1. **DPO** (the implicit reward, DPORM): the shipped checkpoint's recipe (``RECIPES["full"]["dpo"]``: 100 steps of
   32 pairs of ``preferences/train.jsonl`` from the SFT model, which is also its reference) with this seed; seed 0
   *is* the shipped checkpoint's run (before its fp16 rounding).
2. **The explicit reward model** (EXRM): the pipeline's RM recipe (``RECIPES["full"]["rm"]``: a scalar head on the
   SFT trunk, Bradley–Terry loss) on exactly the pairs that DPO run drew, no others, with its steps scaled to the
   number of prompts those pairs come from (the same passes over its prompts as the shipped RM makes over its own).
3. Both are scored **in distribution** on every held-out pair of ``preferences/test.jsonl`` (SFT samples of
   held-out movies, like the training pairs; accuracy against their noisy human labels) and **out of
   distribution** on the mini RewardBench (critics' snippets, plot summaries and edits; known answers).

Writes ``data/results/implicit_vs_explicit.json`` (read by notebook 09) after every seed: per seed and model the
held-out accuracy, the benchmark's subset accuracies and score, and every pair's verdict (for paired standard
errors). A re-run skips the seeds already there. Test pairs and the benchmark only report: nothing is chosen on them.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path

import torch
import transformers

from pref_lab.assets import RECIPES
from pref_lab.config import data_path
from pref_lab.data import read_jsonl
from pref_lab.dpo import implicit_rewards, pairs_drawn, train_dpo
from pref_lab.models import load_model, load_tokenizer
from pref_lab.reward_model import evaluate_pairs, init_reward_model, score_texts, train_reward_model
from pref_lab.rewardbench import benchmark_rows, load_rewardbench, pairwise_correct, results_from_scores

SCHEMA = "pref_lab.implicit_vs_explicit/1"


def verdicts(chosen: torch.Tensor, rejected: torch.Tensor) -> list[int]:
    return pairwise_correct(chosen, rejected).int().tolist()


def run_seed(seed: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    dpo_recipe, rm_recipe = RECIPES["full"]["dpo"], RECIPES["full"]["rm"]
    tokenizer = load_tokenizer(data_path("tokenizer"))
    sft = load_model("sft", device="cpu")
    train = read_jsonl(data_path("preferences", "train.jsonl"))
    test = read_jsonl(data_path("preferences", "test.jsonl"))
    bench = load_rewardbench()
    started = time.perf_counter()

    policy = copy.deepcopy(sft)
    train_dpo(policy, sft, tokenizer, train, beta=dpo_recipe["beta"], steps=dpo_recipe["steps"],
              batch_size=dpo_recipe["batch_size"], lr=dpo_recipe["lr"], seed=seed,
              precompute_ref_logps=dpo_recipe["precompute_ref_logps"], progress=False)
    dpo_seconds = time.perf_counter() - started
    drawn = pairs_drawn(len(train), dpo_recipe["batch_size"], dpo_recipe["steps"], seed)
    seen = [train[i] for i in dict.fromkeys(drawn)]  # each distinct pair once: the information DPO had

    started = time.perf_counter()
    all_prompts = len({p["prompt"] for p in train + read_jsonl(data_path("preferences", "rm_extra.jsonl.gz"))})
    prompts = len({p["prompt"] for p in seen})
    steps = max(1, round(rm_recipe["steps"] * prompts / all_prompts))
    rm = init_reward_model(data_path("models", "sft"), seed=seed)
    train_reward_model(rm, tokenizer, seen, steps=steps, prompts_per_step=rm_recipe["prompts_per_step"],
                       lr=rm_recipe["lr"], center_coef=rm_recipe["center_coef"], seed=seed, progress=False)
    rm_seconds = time.perf_counter() - started

    out = {"seed": seed, "pairs_drawn": len(drawn), "distinct_pairs": len(seen), "prompts": prompts,
           "rm_steps": steps, "seconds": {"dpo": round(dpo_seconds, 1), "rm": round(rm_seconds, 1)}, "models": {}}
    beta = dpo_recipe["beta"]
    h_prompts, h_completions = benchmark_rows(test)
    b_prompts, b_completions = benchmark_rows(bench)
    scorers = {"implicit (DPO)": lambda p, c: implicit_rewards(policy, sft, tokenizer, p, c, beta),
               "explicit (RM)": lambda p, c: score_texts(rm, tokenizer, p, c)}
    for name, score in scorers.items():
        h = score(h_prompts, h_completions)
        b = results_from_scores(bench, score(b_prompts, b_completions))
        out["models"][name] = {
            "heldout_accuracy": (h[: len(test)] > h[len(test):]).float().mean().item(),
            "heldout_correct": verdicts(h[: len(test)], h[len(test):]),
            "bench_score": b["score"], "bench_sections": b["sections"],
            "bench_subsets": {s: v["accuracy"] for s, v in b["subsets"].items()},
            "bench_correct": b["correct"].int().tolist()}
    rm_check = evaluate_pairs(rm, tokenizer, test)["accuracy"]  # the RM's own evaluation agrees with the verdicts
    assert abs(rm_check - out["models"]["explicit (RM)"]["heldout_accuracy"]) < 1e-6, rm_check
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(data_path("results", "implicit_vs_explicit.json")))
    args = parser.parse_args(argv)
    path = Path(args.out)
    manifest = json.loads(data_path("manifest.json").read_text())["assets"]
    world = {"sft": manifest["sft"]["files"]["models/sft/model.safetensors"]["sha256"],
             "train_pairs": manifest["preferences"]["files"]["preferences/train.jsonl"]["sha256"],
             "recipes": {"dpo": RECIPES["full"]["dpo"], "rm": RECIPES["full"]["rm"]}}
    results = json.loads(path.read_text()) if path.exists() else {}
    if results and results.get("world") != world:
        raise SystemExit(f"{path} was measured in another world (SFT weights, pairs or recipes): delete it to start over")
    results = results or {"schema": SCHEMA, "world": world, "command": "scripts/implicit_vs_explicit.py",
                          "environment": {"torch": torch.__version__, "transformers": transformers.__version__,
                                          "python": platform.python_version(), "threads": args.threads},
                          "runs": []}
    for seed in (int(s) for s in args.seeds.split(",")):
        if seed in [r["seed"] for r in results["runs"]]:
            continue
        run = run_seed(seed, args.threads)
        results["runs"].append(run)
        path.write_text(json.dumps(results) + "\n")
        m = run["models"]
        print(f"seed {seed}: {run['distinct_pairs']} distinct pairs of {run['prompts']} prompts; held-out accuracy "
              f"implicit {m['implicit (DPO)']['heldout_accuracy']:.4f}, explicit {m['explicit (RM)']['heldout_accuracy']:.4f}; "
              f"benchmark implicit {m['implicit (DPO)']['bench_score']:.4f}, explicit {m['explicit (RM)']['bench_score']:.4f} "
              f"({run['seconds']})", flush=True)
    return results


if __name__ == "__main__":
    main()
