"""Time pref_lab's training loops per step on the shipped world: did a change slow them down?

    .venv/bin/python scripts/bench_loops.py                 # ~1 min on one core
    PYTHONPATH=/path/to/other/checkout .venv/bin/python scripts/bench_loops.py   # the same loops, another version

Each loop runs ``--steps`` steps from the shipped SFT model (or the reward model's init) with the course's batch
sizes, ``--repeats`` times; it prints the median seconds per step of each (whole ``train_*`` calls, so the input
validation a trainer does before its first step is counted too). Uses only keyword arguments that every version
of the trainers since b776254 accepts, so two checkouts can be compared with the same command.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

import pref_lab
import pref_lab.data
from pref_lab.config import data_path, seed_everything
from pref_lab.data import load_corpus, read_jsonl, validate_records
from pref_lab.dpo import train_dpo
from pref_lab.models import load_model, load_tokenizer
from pref_lab.online import OnlineDPOConfig, reward_model_judge, train_online_dpo
from pref_lab.ppo import PPOConfig, make_value_model, train_ppo
from pref_lab.reward_model import init_reward_model, load_reward_model, score_texts, train_reward_model
from pref_lab.sft import build_sft_examples, train_sft


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", default=None, help="comma-separated words: run the loops whose name has one (e.g. dpo)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seed_everything(0)
    tokenizer, sft, rm = load_tokenizer(), load_model("sft", "cpu"), load_reward_model(device="cpu")
    pairs = read_jsonl(data_path("preferences", "train.jsonl"))
    prompts = list(dict.fromkeys(p["prompt"] for p in pairs))
    examples, _ = build_sft_examples(load_corpus(split="val").to_list(), tokenizer, seed=0)
    n = args.steps
    fresh = lambda: copy.deepcopy(sft).requires_grad_(True)  # b776254's PPO froze its reference (the shared SFT) in place
    loops = {
        "sft (32 examples)": lambda: train_sft(fresh(), tokenizer, examples, steps=n, batch_size=32,
                                               progress=False),
        "reward model (4 prompts, all pairs)": lambda: train_reward_model(
            init_reward_model(data_path("models", "sft")), tokenizer, pairs, steps=n, prompts_per_step=4, lr=1e-3,
            progress=False),
        "dpo (32 pairs)": lambda: train_dpo(fresh(), sft, tokenizer, pairs, beta=0.1, steps=n, batch_size=32,
                                            lr=1e-4, seed=0, progress=False),
        "ppo (32 rollouts)": lambda: train_ppo(fresh(), sft, make_value_model(rm), tokenizer, prompts,
                                               lambda p, ids: score_texts(rm, tokenizer, p, ids),
                                               PPOConfig(steps=n), progress=False),
        "online dpo (32 prompts x 2)": lambda: train_online_dpo(
            fresh(), sft, tokenizer, prompts, reward_model_judge(rm, tokenizer),
            OnlineDPOConfig(rounds=n, prompts_per_round=32, minibatch_size=32), progress=False),
    }
    print(f"pref_lab from {pref_lab.__file__}; {n} steps x {args.repeats} repeats, {args.threads} thread(s)")
    # the validation layer's one-off cost (the layer is absent before issue 18)
    if hasattr(pref_lab.data, "check_token_lengths") and not args.only:
        all_pairs = pairs + read_jsonl(data_path("preferences", "rm_extra.jsonl.gz"))
        start = time.perf_counter()
        validate_records(all_pairs, "preference", "rm pairs", tokenizer, 128)
        print(f"validate_records, {len(all_pairs)} RM pairs with token lengths: {time.perf_counter() - start:.1f} s "
              "(once per train_reward_model call)")
    for name, run in loops.items():
        if args.only and not any(word in name for word in args.only.split(",")):
            continue
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            run()
            seconds.append((time.perf_counter() - start) / n)
        print(f"{name:<38s} median {1e3 * statistics.median(seconds):7.1f} ms/step "
              f"(min {1e3 * min(seconds):.1f}, max {1e3 * max(seconds):.1f})", flush=True)


if __name__ == "__main__":
    main()
