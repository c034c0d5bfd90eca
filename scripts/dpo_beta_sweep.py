"""DPO's beta, swept: gold reward vs KL of DPO policies trained from the SFT model.

    .venv/bin/python scripts/dpo_beta_sweep.py                  # the sweep (see its total_seconds)
    .venv/bin/python scripts/dpo_beta_sweep.py --betas 0.1 --out /tmp/one.json   # one run

Every run starts from the shipped SFT model (also the frozen reference) and trains on the shipped preference pairs
(``preferences/train.jsonl``) with the recipe of the shipped DPO checkpoint (``pref_lab.assets.RECIPES["full"]["dpo"]``:
the same steps, batch size, learning rate and seed); only beta changes. Every ``EVAL_EVERY`` steps (and after the
last) it measures the policy on the held-out prompts (``pref_lab.world.evaluate_policy``: the first
``RECIPES["full"]["dpo"]["eval_prompts"]`` of ``pref_lab.world.heldout_prompts``), and at the end its implicit-reward
accuracy on the seeded sample of held-out pairs that notebook 09 scores (``pref_lab.rewardbench.sample_pairs``).

Writes ``data/results/dpo_beta_sweep.json`` (read by notebook 08), rewritten after every run: the recipe, and per run
its curve of evaluation points, its whole training history (one row per step, :mod:`pref_lab.training`) and its
held-out accuracy. The checkpoint itself is the asset stage ``dpo`` (``python -m pref_lab.assets --stages dpo``), with
the same recipe and seed as the run at its beta here. Re-run both after every ``make assets``.
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
from pref_lab.config import DATA_DIR, model_device
from pref_lab.data import read_jsonl, validate_records
from pref_lab.dpo import evaluate_dpo, train_dpo
from pref_lab.rewardbench import sample_pairs
from pref_lab.world import World, evaluate_policy, load_world, sft_point

SCHEMA = "pref_lab.dpo_beta_sweep/2"
BETAS = [0.03, 0.1, 0.3, 1.0]
EVAL_EVERY = 50
RECIPE = RECIPES["full"]["dpo"]  # steps, batch size, learning rate, eval prompts, held-out sample: the shipped stage's
SEED = RECIPES["full"]["seed"]


def run(world: World, pairs: list[dict], heldout: list[dict], beta: float, steps: int, start: dict,
        progress: bool) -> dict:
    """Train one DPO policy at ``beta``; its record: the curve (``start``, the SFT point, then every evaluation),
    the history and the implicit-reward metrics on ``heldout``."""
    policy = copy.deepcopy(world.sft)
    started = time.perf_counter()
    history = train_dpo(policy, world.sft, world.tokenizer, pairs, beta=beta, steps=steps, batch_size=RECIPE["batch_size"],
                        lr=RECIPE["lr"], seed=SEED, precompute_ref_logps=RECIPE["precompute_ref_logps"],
                        eval_fn=lambda model: evaluate_policy(model, world), eval_every=EVAL_EVERY, progress=progress)
    curve = [dict(start)] + [{"step": row["step"], **row["eval"]} for row in history if "eval" in row]
    return {"beta": beta, "curve": curve, "final": curve[-1],
            "heldout": evaluate_dpo(policy, world.sft, world.tokenizer, heldout, beta),
            "history": [{k: v for k, v in row.items() if k != "eval"} for row in history],
            "seconds": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--assets", type=Path, default=DATA_DIR, help="the world's folder (default: data/)")
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default: <assets>/results/dpo_beta_sweep.json)")
    parser.add_argument("--betas", default=None, help=f"comma-separated betas (default: {BETAS})")
    parser.add_argument("--steps", type=int, default=RECIPE["steps"], help="training steps per run (default: the recipe's)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--progress", action="store_true", help="progress bars")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    betas = [float(b) for b in args.betas.split(",")] if args.betas else BETAS
    started = time.perf_counter()
    world = load_world(args.assets, n_prompts=RECIPE["eval_prompts"])
    pairs_path = args.assets / "preferences" / "train.jsonl"
    pairs, test_pairs = read_jsonl(pairs_path), read_jsonl(args.assets / "preferences" / "test.jsonl")
    validate_records(pairs, "preference", str(pairs_path))
    heldout = sample_pairs(test_pairs, RECIPE["heldout_sample"], SEED)
    results = {"schema": SCHEMA, "recipe": {**RECIPE, "seed": SEED, "steps": args.steps, "betas": betas,
                                            "eval_every": EVAL_EVERY},
               "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
               "environment": {"python": platform.python_version(), "torch": torch.__version__,
                               "transformers": transformers.__version__, "device": str(model_device(world.sft)),
                               "threads": torch.get_num_threads()},
               "data": {"train_pairs": len(pairs), "test_pairs": len(test_pairs), "heldout_sample": len(heldout),
                        "eval_prompts": len(world.eval_prompts)},
               "runs": []}
    out = args.out or args.assets / "results" / "dpo_beta_sweep.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    start = sft_point(world)  # computed once: every beta starts from these very samples
    for beta in betas:
        record = run(world, pairs, heldout, beta, args.steps, start, args.progress)
        results["runs"].append(record)
        final = record["final"]
        print(f"[beta={beta:g}] gold {final['gold_reward']:.3f} ± {final['gold_reward_sem']:.3f}, "
              f"KL {final['kl']:.2f} ± {final['kl_sem']:.2f}, EOS {final['eos_rate']:.2f}, length {final['length']:.1f}, "
              f"held-out implicit accuracy {record['heldout']['rewards/accuracies']:.3f} ({record['seconds']:.0f} s)",
              flush=True)
        results["total_seconds"] = time.perf_counter() - started
        out.write_text(json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
