"""DPO's beta, swept: gold reward vs KL of DPO policies trained from the SFT model; also ships the DPO checkpoint.

    .venv/bin/python scripts/dpo_beta_sweep.py                  # the sweep + data/models/dpo (see total_seconds)
    .venv/bin/python scripts/dpo_beta_sweep.py --betas 0.1 --no-save   # one run, nothing shipped

Every run starts from the shipped SFT model (also the frozen reference) and trains on the shipped preference pairs
(``preferences/train.jsonl``) with the same steps, batch size, learning rate and seed (:data:`RECIPE`); only beta
changes. Every ``eval_every`` steps it samples one completion per held-out prompt (review prompts of the test-split
movies, ``sorted(set(load_preferences("test")["prompt"]))``, a seeded subset) with the same sampling seed, and records
their mean gold reward and sequence KL to the SFT model, each with its standard error
(``pref_lab.experiments.evaluate_policy``), and at the end the implicit-reward accuracy on 256 held-out pairs
(the sample notebook 09 scores, ``pref_lab.evaluate.sample_pairs``).

Writes ``data/results/dpo_beta_sweep.json`` (read by notebook 08) and, unless ``--no-save``, saves the policy of
the run at ``RECIPE["checkpoint_beta"]`` as ``data/models/dpo`` (fp16 weights, loaded back as fp32; read by
notebook 09) and records it in ``data/manifest.json`` as asset ``dpo``. Re-run it after every ``make assets``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import random
import time
from pathlib import Path

import torch
import transformers

from pref_lab.assets import fixed_input_logit_sum, record
from pref_lab.config import DATA_DIR, get_device, seed_everything
from pref_lab.data import read_jsonl, validate_records
from pref_lab.dpo import evaluate_dpo, implicit_rewards, train_dpo
from pref_lab.evaluate import benchmark_rows, load_rewardbench, pairwise_correct, results_from_scores, sample_pairs
from pref_lab.experiments import World, evaluate_policy, unique_prompts
from pref_lab.judge import load_gold_judge
from pref_lab.models import load_model, load_tokenizer, save_model
from pref_lab.reward_model import load_reward_model

SCHEMA = "pref_lab.dpo_beta_sweep/1"
RECIPE = {
    "betas": [0.03, 0.1, 0.3, 1.0],
    # A fixed number of steps, well under one epoch of the shipped pairs. Measured on an earlier world with 2.5k pairs:
    # a second epoch memorises the training pairs (train accuracy -> 1, held-out accuracy flat) and the samples
    # degenerate (EOS rate falls, gold reward turns down).
    "steps": 100, "batch_size": 32, "lr": 1e-4, "seed": 0, "precompute_ref_logps": False,
    "eval": {"prompts": 128, "every": 50, "seed": 1234, "max_new_tokens": 48},
    "checkpoint_beta": 0.1,
}
HELDOUT_SAMPLE = {"n": 256, "seed": 0}  # the held-out pairs notebook 09 scores (pref_lab.evaluate.sample_pairs)


def heldout_prompts(assets: Path, n: int, seed: int) -> list[str]:
    """``n`` of the held-out review prompts (those of ``preferences/test.jsonl``), a seeded sample of the sorted set."""
    prompts = sorted(set(unique_prompts(read_jsonl(assets / "preferences" / "test.jsonl"))))
    return sorted(random.Random(seed).sample(prompts, min(n, len(prompts))))


def sft_point(world: World, recipe: dict) -> dict:
    """The SFT model's own point (KL 0): the first point of every run's curve."""
    ev = recipe["eval"]
    return {"step": 0, **evaluate_policy(world.sft, world.sft, world, ev["max_new_tokens"], ev["seed"])}


def run(world: World, test_pairs: list[dict], beta: float, recipe: dict, start_point: dict,
        progress: bool) -> tuple[torch.nn.Module, dict]:
    """Train one DPO policy at ``beta``; returns it and its record (curve of eval points, thinned history).
    ``start_point``: :func:`sft_point`, computed once and shared by every beta (the same samples)."""
    ev = recipe["eval"]
    policy = copy.deepcopy(world.sft).requires_grad_(True)
    curve = [dict(start_point)]
    started = time.perf_counter()

    def evaluate(row):
        if row["step"] % ev["every"] == 0 or row["step"] == recipe["steps"]:
            curve.append({"step": row["step"], **evaluate_policy(policy, world.sft, world, ev["max_new_tokens"], ev["seed"])})

    history = train_dpo(policy, world.sft, world.tokenizer, world.train_pairs, beta=beta, steps=recipe["steps"],
                        batch_size=recipe["batch_size"], lr=recipe["lr"], seed=recipe["seed"], callback=evaluate,
                        progress=progress, precompute_ref_logps=recipe["precompute_ref_logps"])
    heldout = evaluate_dpo(policy, world.sft, world.tokenizer, test_pairs, beta)  # test_pairs: the 256-pair sample
    return policy, {"beta": beta, "curve": curve, "final": curve[-1], "heldout": heldout,
                    "history": history[:: max(1, len(history) // 60)] + [history[-1]],
                    "seconds": time.perf_counter() - started}


def save_checkpoint(policy, world: World, assets: Path, beta: float, recipe: dict, run_record: dict) -> None:
    """Ship ``policy`` as ``models/dpo``: fp16 weights (half the bytes), config dtype float32 so ``load_model``
    upcasts it; its metrics (computed on the *saved* weights) go to the manifest."""
    folder = assets / "models" / "dpo"
    started = time.perf_counter()
    save_model(copy.deepcopy(policy).half(), folder, world.tokenizer)
    config = json.loads((folder / "config.json").read_text())
    config["dtype"] = "float32"
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    shipped = load_model(folder, get_device())
    # the implicit reward of every held-out completion, once; accuracies on all pairs and on notebook 09's sample
    test_pairs = read_jsonl(assets / "preferences" / "test.jsonl")
    rewards = implicit_rewards(shipped, world.sft, world.tokenizer, *benchmark_rows(test_pairs), beta)
    correct = pairwise_correct(rewards[: len(test_pairs)], rewards[len(test_pairs):])
    is_correct = {(r["prompt"], r["chosen"], r["rejected"]): bool(c) for r, c in zip(test_pairs, correct.tolist())}
    sample = sample_pairs(test_pairs, HELDOUT_SAMPLE["n"], HELDOUT_SAMPLE["seed"])
    metrics = {"beta": beta, "heldout_pairs": len(test_pairs),
               "heldout_implicit_accuracy": round(correct.float().mean().item(), 4),
               f"heldout{HELDOUT_SAMPLE['n']}_implicit_accuracy":
                   round(sum(is_correct[(r["prompt"], r["chosen"], r["rejected"])] for r in sample) / len(sample), 4),
               f"heldout{HELDOUT_SAMPLE['n']}_implicit_accuracy_fp32": round(run_record["heldout"]["rewards/accuracies"], 4),
               "gold_reward": round(run_record["final"]["gold_reward"], 4), "kl": round(run_record["final"]["kl"], 4),
               "sft_gold_reward": round(run_record["curve"][0]["gold_reward"], 4),
               # which SFT model this policy was trained from (tests compare it with the shipped one's)
               "sft_fixed_input_logit_sum": fixed_input_logit_sum(world.sft, world.tokenizer)}
    if (assets / "rewardbench" / "test.jsonl").exists():
        bench = load_rewardbench(assets / "rewardbench" / "test.jsonl")
        rewards = implicit_rewards(shipped, world.sft, world.tokenizer, *benchmark_rows(bench), beta)
        result = results_from_scores(bench, rewards)
        metrics["rewardbench_score"] = round(result["score"], 4)
        metrics["rewardbench"] = {s: round(v["accuracy"], 4) for s, v in result["subsets"].items()}
    settings = {k: v for k, v in recipe.items() if k not in ("betas", "checkpoint_beta")}
    record(assets, "dpo", {**settings, "beta": beta, "saved_dtype": "float16"}, recipe["seed"], folder, metrics,
           run_record["seconds"] + time.perf_counter() - started)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--assets", type=Path, default=DATA_DIR, help="the world's folder (default: data/)")
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default: <assets>/results/dpo_beta_sweep.json)")
    parser.add_argument("--betas", default=None, help="comma-separated betas (default: the recipe's)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default: the recipe's)")
    parser.add_argument("--no-save", action="store_true", help="do not write models/dpo nor touch the manifest")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--progress", action="store_true", help="progress bars")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = copy.deepcopy(RECIPE)
    if args.betas:
        recipe["betas"] = [float(b) for b in args.betas.split(",")]
    assets, started = args.assets, time.perf_counter()
    seed_everything(recipe["seed"])
    device = get_device()
    train_pairs = read_jsonl(assets / "preferences" / "train.jsonl")
    test_pairs = read_jsonl(assets / "preferences" / "test.jsonl")
    validate_records(train_pairs, "preference", "preferences/train.jsonl")
    recipe["steps"] = args.steps or recipe["steps"]
    tokenizer = load_tokenizer(assets / "tokenizer")
    world = World(tokenizer=tokenizer, sft=load_model(assets / "models" / "sft", device),
                  reward_model=load_reward_model(assets / "models" / "rm", device),
                  gold=load_gold_judge(assets / "judges" / "gold"), train_pairs=train_pairs,
                  train_prompts=unique_prompts(train_pairs),
                  eval_prompts=heldout_prompts(assets, recipe["eval"]["prompts"], recipe["seed"]), source=str(assets))
    results = {"schema": SCHEMA, "recipe": recipe, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
               "environment": {"python": platform.python_version(), "torch": torch.__version__,
                               "transformers": transformers.__version__, "device": str(device),
                               "threads": torch.get_num_threads()},
               "data": {"train_pairs": len(train_pairs), "test_pairs": len(test_pairs),
                        "eval_prompts": len(world.eval_prompts)},
               "runs": []}
    out = args.out or assets / "results" / "dpo_beta_sweep.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    heldout_sample = sample_pairs(test_pairs, HELDOUT_SAMPLE["n"], HELDOUT_SAMPLE["seed"])
    start_point = sft_point(world, recipe)
    for beta in recipe["betas"]:
        policy, run_record = run(world, heldout_sample, beta, recipe, start_point, args.progress)
        results["runs"].append(run_record)
        final = run_record["final"]
        print(f"[beta={beta:g}] gold {final['gold_reward']:.3f} ± {final['gold_reward_sem']:.3f}, "
              f"KL {final['kl']:.2f} ± {final['kl_sem']:.2f}, held-out implicit accuracy "
              f"{run_record['heldout']['rewards/accuracies']:.3f} ({run_record['seconds']:.0f} s)", flush=True)
        results["total_seconds"] = time.perf_counter() - started
        out.write_text(json.dumps(results, indent=1) + "\n")
        if beta == recipe["checkpoint_beta"] and not args.no_save:
            save_checkpoint(policy, world, assets, beta, recipe, run_record)
    return results


if __name__ == "__main__":
    main()
