"""Choose PPO's settings on the *development* prompts (:func:`pref_lab.world.dev_prompts`), never on the held-out ones.

    .venv/bin/python scripts/tune_ppo.py --threads 2      # 8 runs, about a minute or two each on 2 cores

Each run trains PPO from the SFT model on the training prompts (the reward model's validation-movie prompts), with
PPOConfig's defaults except the grid's settings, and measures the policy on 128 development prompts with
:func:`pref_lab.world.evaluate_policy`: gold reward (s.e.), KL, RM score, EOS rate, length. The rule: the highest
development gold reward among runs whose development samples are still reviews of the SFT model's kind: EOS
rate at least 0.9 (a rater does not like cut-off reviews) and mean length within 0.6-1.4x the SFT model's on the
same prompts (the frontier's "no degenerate winner" rule). Results go to ``data/results/ppo_tuning.json`` after every run;
a re-run skips the runs already there (delete the file to start over). ``PPOConfig``'s defaults quote the choice.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time

import torch

from pref_lab.config import data_path
from pref_lab.data import load_preferences, read_jsonl
from pref_lab.ppo import PPOConfig, make_value_model, train_ppo
from pref_lab.reward_model import score_texts
from pref_lab.world import dev_prompts, evaluate_policy, load_world

GRID = [{"kl_coef": kl, "missing_eos_penalty": eos} for kl in (0.01, 0.02, 0.05, 0.1) for eos in (None, 2.0)]
N_DEV = 128
MIN_EOS = 0.9
LENGTH_RATIO = (0.6, 1.4)  # mean length relative to the SFT model's, on the same prompts


def choose(runs: list[dict], sft_length: float) -> dict | None:
    """The rule in the module docstring: best development gold reward among runs that finish their texts at a
    length like the SFT model's (``sft_length``, its mean on the development prompts)."""
    lo, hi = LENGTH_RATIO[0] * sft_length, LENGTH_RATIO[1] * sft_length
    finished = [r for r in runs if r["dev"]["eos_rate"] >= MIN_EOS and lo <= r["dev"]["length"] <= hi]
    return max(finished, key=lambda r: r["dev"]["gold_reward"]) if finished else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(data_path("results", "ppo_tuning.json")))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    world = load_world()
    dev_world = dataclasses.replace(world, eval_prompts=dev_prompts(read_jsonl(data_path("corpus", "corpus.jsonl")),
                                                                    world.tokenizer, N_DEV))
    train_prompts = sorted(set(load_preferences("train")["prompt"]))
    manifest = json.loads(data_path("manifest.json").read_text())["assets"]
    world_id = {name: manifest[asset]["files"][f"models/{name}/model.safetensors"]["sha256"]
                for name, asset in (("sft", "sft"), ("rm", "rm"))}  # the runs are only valid for these models
    try:
        results = json.loads(open(args.out).read())
        if results.get("world") != world_id:
            raise SystemExit(f"{args.out} was measured with other SFT/RM weights: delete it to start over")
    except FileNotFoundError:
        results = {"schema": "pref_lab.ppo_tuning/1", "world": world_id, "dev_prompts": N_DEV, "min_eos_rate": MIN_EOS,
                   "length_ratio": LENGTH_RATIO,
                   "sft_dev": evaluate_policy(world.sft, dev_world), "runs": []}
    done = [r["settings"] for r in results["runs"]]

    def rm_reward(prompts, completion_ids):
        return score_texts(world.reward_model, world.tokenizer, prompts, completion_ids)

    for settings in GRID:
        if settings in done:
            continue
        config = dataclasses.replace(PPOConfig(), **settings)
        policy = copy.deepcopy(world.sft)
        start = time.time()
        train_ppo(policy, world.sft, make_value_model(world.reward_model), world.tokenizer, train_prompts, rm_reward,
                  config, progress=False)
        dev = evaluate_policy(policy, dev_world)
        results["runs"].append({"settings": settings, "config": dataclasses.asdict(config), "dev": dev,
                                "seconds": round(time.time() - start, 1)})
        print(f"{settings}: dev gold {dev['gold_reward']:+.3f} ± {dev['gold_reward_sem']:.3f}, KL {dev['kl']:.2f}, "
              f"EOS {dev['eos_rate']:.2f}, length {dev['length']:.1f} ({time.time() - start:.0f} s)", flush=True)
        open(args.out, "w").write(json.dumps(results, indent=1))
    chosen = choose(results["runs"], results["sft_dev"]["length"])
    results["chosen"] = chosen["settings"] if chosen else None
    open(args.out, "w").write(json.dumps(results, indent=1))
    print("chosen:", results["chosen"])


if __name__ == "__main__":
    main()
