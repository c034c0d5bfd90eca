"""Over-optimisation, measured: PPO without its KL leash (kl_coef = 0), over several training seeds.

    .venv/bin/python scripts/overoptimise.py --threads 2      # 3 seeds, a few minutes each on 2 quiet cores

Notebook 06 trains PPO with ``PPOConfig``'s defaults for 12 iterations (its section 4) and then asks what the KL
penalty does. Its section 6 runs the *same* PPO with ``kl_coef = 0`` for 12 iterations live (the controlled
comparison: only beta differs) and reads the long runs from here, three times as long as section 4's, which
would not fit its 3-minute budget on 2 CPU cores: the reward model's score keeps rising while the gold reward peaks
and falls (Gao et al. 2022).

Every run: ``PPOConfig()`` with ``kl_coef=0`` and ``steps=ITERATIONS``, the SFT model as start and reference, the
training prompts of ``preferences/train.jsonl`` (sorted, as in notebook 06), one seed of ``--seeds``. Every
``EVAL_EVERY`` iterations it is measured by :func:`pref_lab.world.evaluate_policy` on the first ``N_EVAL`` held-out
prompts (the notebook's tiny preset: the same prompts and sampling seed as its live runs), per prompt so that
points can be compared with paired standard errors, and samples a few of the notebook's display prompts. With two
torch threads, as notebook 06 uses, seed 0 reproduces the notebook's live 12-iteration run on the same kind of CPU
(the notebook prints both); other thread counts, CPUs or devices round differently.

Writes ``data/results/ppo_overoptimisation.json`` after every seed; a re-run skips the seeds already there (it
refuses a file measured with other SFT/RM weights: delete it to start over)::

    {"schema": "pref_lab.ppo_overoptimisation/1", "world": {"sft": sha256, "rm": sha256}, "config": PPOConfig dict,
     "eval_every": int, "eval_prompts": int, "show_prompts": [str], "sft": POINT,
     "runs": [{"seed": int, "curve": [POINT, ...],     # step 0 = the SFT point, then every eval_every iterations
               "history": [{"step", "objective/scores", "gold/reward", "objective/kl", "objective/eos_rate"}, ...],
               "seconds": float}, ...]}
    POINT = evaluate_policy(..., per_prompt=True) without "samples", plus "step" and
            "show": [{"text", "finished", "gold", "rm"}, ...] (one sample per show prompt, sampling seed SHOW_SEED)
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time

import torch

from pref_lab.config import data_path
from pref_lab.data import load_preferences
from pref_lab.models import Unfinished, generate
from pref_lab.ppo import PPOConfig, make_value_model, train_ppo
from pref_lab.reward_model import score_texts
from pref_lab.world import evaluate_policy, load_world

ITERATIONS = 36  # 3x notebook 06's section 4
EVAL_EVERY = 6
N_EVAL = 128
SHOW_SEED = 7  # notebook 06's sampling seed for its side-by-side samples
HISTORY_KEYS = ("step", "objective/scores", "gold/reward", "objective/kl", "objective/eos_rate")


def show_prompts(eval_prompts: list[str], n: int = 6) -> list[str]:
    """Notebook 06's display prompts: ``n`` evenly spaced held-out prompts."""
    return eval_prompts[:: max(1, len(eval_prompts) // n)][:n]


def point(policy, world, step: int, show: list[str]) -> dict:
    """The held-out point of ``policy`` (per prompt) and one sample for each ``show`` prompt, with its scores."""
    result = {"step": step, **evaluate_policy(policy, world, per_prompt=True)}
    result.pop("samples")
    texts = generate(policy, world.tokenizer, show, max_new_tokens=PPOConfig.max_new_tokens, seed=SHOW_SEED,
                     progress=False)
    golds, rms = world.gold.gold_reward(texts), score_texts(world.reward_model, world.tokenizer, show, texts)
    result["show"] = [{"text": str(t), "finished": not isinstance(t, Unfinished), "gold": g, "rm": r}
                      for t, g, r in zip(texts, golds.tolist(), rms.tolist())]
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    parser.add_argument("--out", default=str(data_path("results", "ppo_overoptimisation.json")))
    parser.add_argument("--steps", type=int, default=ITERATIONS, help="PPO iterations per run (a smoke test: 2)")
    parser.add_argument("--eval-every", type=int, default=EVAL_EVERY)
    parser.add_argument("--prompts", type=int, default=N_EVAL, help="held-out evaluation prompts")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    world = load_world(n_prompts=args.prompts)
    train_prompts = sorted(set(load_preferences("train")["prompt"]))
    show = show_prompts(world.eval_prompts)
    manifest = json.loads(data_path("manifest.json").read_text())["assets"]
    world_id = {name: manifest[name]["files"][f"models/{name}/model.safetensors"]["sha256"] for name in ("sft", "rm")}
    config = dataclasses.replace(PPOConfig(), kl_coef=0.0, steps=args.steps)
    try:
        results = json.loads(open(args.out).read())
        if (results.get("world"), results.get("config"), results.get("eval_every"), results.get("eval_prompts")) != (
                world_id, dataclasses.asdict(config), args.eval_every, args.prompts):
            raise SystemExit(f"{args.out} was measured with other weights or settings: delete it to start over")
    except FileNotFoundError:
        results = {"schema": "pref_lab.ppo_overoptimisation/1", "world": world_id, "config": dataclasses.asdict(config),
                   "eval_every": args.eval_every, "eval_prompts": args.prompts, "show_prompts": show,
                   "sft": point(world.sft, world, 0, show), "runs": []}

    def rm_reward(prompts, completion_ids):
        return score_texts(world.reward_model, world.tokenizer, prompts, completion_ids)

    for seed in (int(s) for s in args.seeds.split(",")):
        if seed in [run["seed"] for run in results["runs"]]:
            continue
        policy, started = copy.deepcopy(world.sft), time.time()
        history = train_ppo(policy, world.sft, make_value_model(world.reward_model), world.tokenizer, train_prompts,
                            rm_reward, dataclasses.replace(config, seed=seed), gold_fn=world.gold.gold_reward,
                            eval_fn=lambda p: point(p, world, -1, show), eval_every=args.eval_every, progress=False)
        curve = [results["sft"]] + [{**row["eval"], "step": row["step"]} for row in history if "eval" in row]
        results["runs"].append({"seed": seed, "curve": curve, "history": [{k: row[k] for k in HISTORY_KEYS}
                                                                          for row in history],
                                "seconds": round(time.time() - started, 1)})
        print(f"seed {seed}: " + ", ".join(f"{p['step']}: gold {p['gold_reward']:+.2f} rm {p['rm_score']:+.2f} "
                                           f"kl {p['kl']:.1f} eos {p['eos_rate']:.2f} len {p['length']:.1f}"
                                           for p in curve) + f" ({time.time() - started:.0f} s)", flush=True)
        open(args.out, "w").write(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
