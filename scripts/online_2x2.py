"""What is special about online data? A 2 x 2 of {fixed SFT samples, fresh policy samples} x {human labels,
reward-model labels}, plus a noise-free labeller, each arm over several training seeds.

    .venv/bin/python scripts/online_2x2.py                    # 5 arms x 3 seeds, about 10 min on 2 cores
    .venv/bin/python scripts/online_2x2.py --steps 2 --seeds 0 --out /tmp/2x2.json   # a smoke test, seconds

Every arm is DPO from the SFT model (also the reference) with one budget: ``STEPS`` gradient steps of ``BATCH``
pairs, learning rate ``LR``, ``BETA``, the training prompts of ``preferences/train.jsonl``. Only where the pair
comes from differs:

===================  ============================================  ================================================
arm                  completions                                   label
===================  ============================================  ================================================
``offline/human``    the fixed SFT samples of ``train.jsonl``      their stored label (a Bradley–Terry draw on gold)
``offline/rm``       the same pairs                                the reward model's order of the two
``fresh/rm``         2 fresh samples of the current policy         the reward model's order (online DPO)
``fresh/human``      2 fresh samples of the current policy         a new Bradley–Terry draw on gold ("ask new humans")
``fresh/gold``       2 fresh samples of the current policy         the gold order, noise-free (better than any human)
===================  ============================================  ================================================

Information: every label traces back to the same human. The reward model was trained on 32,646 human-labelled pairs
(``train.jsonl``'s 12,012, the offline arms' pool, plus ``rm_extra``'s 20,634 on other movies); the human arms ask
that human directly (offline: the stored draws; fresh: new draws, one per pair, so ``fresh/human`` spends new
human labels where the RM arms spend none). Each arm's counts are in its ``counts``.

Every ``EVAL_EVERY`` steps each policy is measured by :func:`pref_lab.world.evaluate_policy` on the first
``--prompts`` held-out prompts, per prompt (the shared sampling seed: paired comparisons). After the last step,
distribution shift is measured alike for every arm (:func:`pref_lab.online.log_ratio_shift`): log pi/pi_SFT of
one fixed SFT sample on each of ``SHIFT_PROMPTS`` training prompts, and of one fresh sample of the policy on each.
No setting was tuned for this experiment: ``STEPS, BATCH, LR, BETA`` are notebook 10's (the DPO recipe of
notebook 08 at a smaller batch); notebook 10 runs two arms live for ``LIVE_STEPS`` steps with the same code.

Writes ``data/results/online_2x2.json`` after every run; a re-run skips the (arm, seed) runs already there and
refuses a file measured with other weights or settings (delete it to start over)::

    {"schema": "pref_lab.online_2x2/1", "world": {"sft", "rm", "train_pairs": sha256}, "settings": {...},
     "environment": {"torch", "threads"}, "sft": POINT, "shift_prompts": [str],
     "runs": [{"arm", "seed", "curve": [POINT, ...],       # every EVAL_EVERY steps (step 0 is "sft", stored once)
               "shift": {"offline": [N floats], "fresh": [N floats]},
               "label_agreement": float,    # share the gold judge orders alike: fresh arms, of the pairs they labelled;
                                            # offline arms, of their whole pool (the trained pairs are a random subset)
               "counts": {"gradient_steps", "pairs_trained", "samples_generated", "new_human_labels",
                          "rm_labels", "gold_labels", "offline_pool_pairs"},   # labels: pairs labelled
               "train_seconds", "eval_seconds"}, ...]}
    POINT = evaluate_policy(..., per_prompt=True) plus "step"
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import time

import torch

from pref_lab.config import data_path
from pref_lab.data import load_preferences, pair_completions
from pref_lab.dpo import train_dpo
from pref_lab.online import (
    OnlineDPOConfig,
    bradley_terry_judge,
    gold_judge,
    log_ratio_shift,
    reward_model_judge,
    train_online_dpo,
)
from pref_lab.reward_model import score_texts
from pref_lab.world import evaluate_policy, load_world, unique_prompts

ARMS = ("offline/human", "offline/rm", "fresh/rm", "fresh/human", "fresh/gold")
STEPS, BATCH, LR, BETA = 60, 16, 1.5e-4, 0.1
EVAL_EVERY = 15
LIVE_STEPS = 30  # notebook 10's live slice: two arms for this many steps (a point of every curve)
SHIFT_PROMPTS, SHIFT_SEED = 128, 99
N_EVAL = 128


def rm_relabelled(pairs: list[dict], reward_model, tokenizer) -> tuple[list[dict], int]:
    """The same pairs with chosen/rejected in the reward model's order (ties keep the stored order); and the
    number of pairs whose label the reward model flipped."""
    prompts = [p["prompt"] for p in pairs]
    first = score_texts(reward_model, tokenizer, prompts, pair_completions(pairs, "chosen"))
    second = score_texts(reward_model, tokenizer, prompts, pair_completions(pairs, "rejected"))
    out, flipped = [], 0
    for pair, a, b in zip(pairs, first.tolist(), second.tolist()):
        if b > a:
            flipped += 1
            pair = {"prompt": pair["prompt"], "chosen": pair["rejected"], "rejected": pair["chosen"],
                    "gold_chosen": pair["gold_rejected"], "gold_rejected": pair["gold_chosen"],
                    "p_chosen": round(1 - pair["p_chosen"], 4), "chosen_finished": pair["rejected_finished"],
                    "rejected_finished": pair["chosen_finished"]}
        out.append(pair)
    return out, flipped


def shift_set(pairs: list[dict], n: int, seed: int = SHIFT_SEED) -> tuple[list[str], list]:
    """``n`` training prompts (the first of the sorted distinct ones: in this world all of one instruction template)
    and, for each, one of its distinct SFT sample texts drawn uniformly (either side of any pair, so neither the chosen
    nor the rejected side is favoured; a text the SFT model sampled twice counts once)."""
    samples: dict[str, dict[str, object]] = {}
    for side in ("chosen", "rejected"):
        for pair, text in zip(pairs, pair_completions(pairs, side)):
            samples.setdefault(pair["prompt"], {})[str(text)] = text
    rng = random.Random(seed)
    prompts = sorted(samples)[:n]
    return prompts, [rng.choice(sorted(samples[p].items()))[1] for p in prompts]


def run_arm(arm: str, seed: int, world, pairs: list[dict], rm_pairs: list[dict], steps: int, eval_every: int,
            shift: tuple[list[str], list]) -> dict:
    """Train one arm from the SFT model; its curve, shift, label agreement, counts and times."""
    policy, eval_seconds = copy.deepcopy(world.sft), 0.0
    curve = []

    def measure(model) -> dict:
        nonlocal eval_seconds
        started = time.time()
        result = evaluate_policy(model, world, per_prompt=True)
        eval_seconds += time.time() - started
        return result

    started = time.time()
    counts = {"gradient_steps": 0, "pairs_trained": 0, "samples_generated": 0, "new_human_labels": 0,
              "rm_labels": 0, "gold_labels": 0, "offline_pool_pairs": 0}
    if arm.startswith("offline/"):
        data = pairs if arm == "offline/human" else rm_pairs
        history = train_dpo(policy, world.sft, world.tokenizer, data, beta=BETA, steps=steps, batch_size=BATCH, lr=LR,
                            seed=seed, eval_fn=measure, eval_every=eval_every, progress=False)
        trained = history[-1]["pairs"]
        # which pairs were drawn is not logged: agreement over the whole pool (its draws are a random subset)
        agreement = sum(p["gold_chosen"] > p["gold_rejected"] for p in data) / len(data)
        counts.update(gradient_steps=len(history), pairs_trained=trained, offline_pool_pairs=len(data),
                      rm_labels=len(data) if arm == "offline/rm" else 0)
    else:
        judge = {"fresh/rm": lambda: reward_model_judge(world.reward_model, world.tokenizer),
                 "fresh/human": lambda: bradley_terry_judge(world.gold, seed=1000 + seed),
                 "fresh/gold": lambda: gold_judge(world.gold)}[arm]()
        config = OnlineDPOConfig(rounds=steps, prompts_per_round=BATCH, completions_per_prompt=2,
                                 minibatch_size=BATCH, beta=BETA, lr=LR, seed=seed)
        history = train_online_dpo(policy, world.sft, world.tokenizer, unique_prompts(pairs), judge, config,
                                   gold_fn=world.gold.gold_reward, eval_fn=measure, eval_every=eval_every,
                                   progress=False)
        labelled = sum(row["round/pairs"] for row in history)
        agree = sum(row["gold/label_agreement"] * row["round/pairs"] for row in history if row["round/pairs"])
        agreement = agree / max(labelled, 1)
        counts.update(gradient_steps=history[-1]["optimizer_steps"], pairs_trained=history[-1]["pairs"],
                      samples_generated=history[-1]["samples"],
                      new_human_labels=labelled if arm == "fresh/human" else 0,
                      rm_labels=labelled if arm == "fresh/rm" else 0, gold_labels=labelled if arm == "fresh/gold" else 0)
    curve = [{"step": row["step"], **row["eval"]} for row in history if "eval" in row]
    train_seconds = time.time() - started - eval_seconds
    shifted = log_ratio_shift(policy, world.sft, world.tokenizer, *shift, seed=SHIFT_SEED)
    return {"arm": arm, "seed": seed, "curve": curve, "shift": shifted, "label_agreement": agreement,
            "counts": counts, "train_seconds": round(train_seconds, 1), "eval_seconds": round(eval_seconds, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (notebook 10 uses 2)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--steps", type=int, default=STEPS, help="gradient steps per arm (a smoke test: 2)")
    parser.add_argument("--eval-every", type=int, default=EVAL_EVERY)
    parser.add_argument("--prompts", type=int, default=N_EVAL, help="held-out evaluation prompts")
    parser.add_argument("--out", default=str(data_path("results", "online_2x2.json")))
    args = parser.parse_args(argv)
    arms = args.arms.split(",")
    if unknown := set(arms) - set(ARMS):
        raise SystemExit(f"unknown arm(s) {sorted(unknown)}; choose from {ARMS}")
    torch.set_num_threads(args.threads)
    world = load_world(n_prompts=args.prompts)
    pairs = load_preferences("train").to_list()
    manifest = json.loads(data_path("manifest.json").read_text())["assets"]
    world_id = {name: manifest[name]["files"][f"models/{name}/model.safetensors"]["sha256"] for name in ("sft", "rm")}
    world_id["train_pairs"] = manifest["preferences"]["files"]["preferences/train.jsonl"]["sha256"]
    settings = {"steps": args.steps, "batch": BATCH, "lr": LR, "beta": BETA, "eval_every": args.eval_every,
                "eval_prompts": args.prompts, "shift_prompts": SHIFT_PROMPTS, "shift_seed": SHIFT_SEED,
                "live_steps": LIVE_STEPS, "human_seed": "1000 + seed"}
    shift = shift_set(pairs, SHIFT_PROMPTS)
    try:
        results = json.loads(open(args.out).read())
        if (results.get("world"), results.get("settings")) != (world_id, settings):
            raise SystemExit(f"{args.out} was measured with other weights or settings: delete it to start over")
    except FileNotFoundError:
        results = {"schema": "pref_lab.online_2x2/1", "world": world_id, "settings": settings,
                   "environment": {"torch": torch.__version__, "threads": args.threads},
                   "sft": {"step": 0, **evaluate_policy(world.sft, world, per_prompt=True)},
                   "shift_prompts": shift[0], "runs": []}
    rm_pairs, flipped = rm_relabelled(pairs, world.reward_model, world.tokenizer)
    print(f"{len(pairs)} offline pairs; the reward model flips {flipped} of their labels", flush=True)
    for seed in (int(s) for s in args.seeds.split(",")):
        for arm in arms:
            if any((run["arm"], run["seed"]) == (arm, seed) for run in results["runs"]):
                continue
            run = run_arm(arm, seed, world, pairs, rm_pairs, args.steps, args.eval_every, shift)
            results["runs"].append(run)
            end = run["curve"][-1]
            print(f"{arm:14s} seed {seed}: gold {end['gold_reward']:+.2f} kl {end['kl']:.1f} eos {end['eos_rate']:.2f} "
                  f"len {end['length']:.1f}; shift fresh {sum(run['shift']['fresh']) / SHIFT_PROMPTS:+.2f} offline "
                  f"{sum(run['shift']['offline']) / SHIFT_PROMPTS:+.2f}; agreement {run['label_agreement']:.3f} "
                  f"({run['train_seconds']:.0f} s train, {run['eval_seconds']:.0f} s eval)", flush=True)
            open(args.out, "w").write(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
