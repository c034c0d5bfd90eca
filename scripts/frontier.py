"""The frontier experiment: gold reward against KL from the SFT model for PPO, offline DPO, online DPO and best-of-n.

    .venv/bin/python scripts/frontier.py --tiny                      # seconds: the test configuration
    .venv/bin/python scripts/frontier.py --jobs 2                    # the full grid on 2 CPU cores (make frontier)
    .venv/bin/python scripts/frontier.py --jobs 2 --resume           # ... finishing an interrupted one
    .venv/bin/python scripts/frontier.py --methods ppo --set ppo.steps=10 --set "ppo.kl_coefs=[0.1]"
    .venv/bin/python scripts/frontier.py --report data/results/frontier_full.json   # every point, EOS and length

Every run starts from the same SFT model and uses the same prompts: PPO and online DPO sample on the training
prompts (the prompts of ``preferences/train.jsonl``), offline DPO trains on those pairs, and every run is measured
by :func:`pref_lab.world.evaluate_policy` on the first ``eval.prompts`` held-out prompts of
:func:`pref_lab.world.heldout_prompts`, every ``eval_every`` steps (the trainers' protocol,
:mod:`pref_lab.training`). Best-of-n is not a trained policy: its points use the analytic
KL(pi_bon || pi_ref) <= log n - (n - 1) / n (``kl_kind = "analytic_bound"``). :data:`CONFIGS` below holds the
grids: ``tiny`` runs in seconds for the tests, ``full`` is budgeted at <= 90 min on 2 CPU cores.

Writes ``data/results/frontier_<config>.json`` (``--out`` to change), rewritten after every run so a crash loses at
most one. ``--assets DIR`` loads the world from another folder, e.g. one built by
``python -m pref_lab.assets --scale mini --out DIR``.

Budget of the full grid, 3 training seeds of each setting: 2 PPO runs x 36 iterations (evaluated every 2), offline
DPO one epoch over the reward model's 32,646 pairs (1,021 steps of 32, evaluated every 170), online DPO 100 rounds
(every 20), best-of-n up to 32; 128 held-out prompts. Measured for the shipped ``data/results/frontier_full.json``
with ``--jobs 2`` on 2 CPU cores (2026-12-03): ``total_seconds`` 2318 s, of which about 150 s a pause of two runs
(online DPO seed 0, offline DPO seed 2) while a notebook ran. Per run, one torch thread: offline DPO 905-1053 s of
training (its reference log-probs computed once, then 1,021 steps), online DPO ~175 s, PPO ~65 s plus ~50 s of
evaluation, best-of-n ~48 s (one nested pool for all n). If the machine is busy, lower
the steps with ``--set``.

Results JSON (schema ``pref_lab.frontier/2``; /1 had one training seed and no per-prompt rewards)::

    {
      "schema": "pref_lab.frontier/2",
      "config_name": "tiny" | "full",
      "config": {...},            # the exact grid and every hyper-parameter (CONFIGS[name], after CLI overrides)
      "seeds": [int, ...],        # every setting runs once per training seed (the eval sampling seed is
                                  # config["eval"]["seed"], the same for every run)
      "methods": [str, ...],      # the methods run (--methods)
      "tasks_done": [str, ...],   # the grid's tasks finished so far (what --resume skips)
      "assets": str,              # folder the world was loaded from
      "environment": {"python", "torch", "transformers", "platform", "device", "threads", "jobs"},
      "started": str,             # ISO 8601, local time
      "total_seconds": float,     # wall time of the whole grid (with --resume: of every session, runs later
                                  # replaced included)
      "rerun": [{"methods", "date"}],   # only after --resume with changed method settings: what was run again
      "complete": bool,           # false while the grid is still running (the file is rewritten after each task)
      "data": {"train_prompts": int, "train_pairs": int, "eval_prompts": int},
      "sft": POINT,               # the SFT model itself (kl = 0): every curve starts here
      "runs": [RUN, ...]          # PPO runs, then offline DPO, online DPO, best-of-n; each setting's seeds in order
    }
    RUN = {
      "name": str,                # e.g. "ppo/kl_coef=0.05", "dpo/beta=0.1", "online_dpo/beta=0.1", "best_of_n/n=4"
      "method": "ppo" | "dpo" | "online_dpo" | "best_of_n",
      "knob": "kl_coef" | "beta" | "n", "value": float,   # the swept setting
      "seed": int,                # its training seed (best-of-n: its sampling seeds are offset by 1000 x seed)
      "settings": {...},          # every hyper-parameter of this run (e.g. the PPOConfig as a dict; offline DPO
                                  # adds pairs_in_dataset and epochs_covered)
      "curve": [POINT, ...],      # step 0 (= the SFT point), then every config[method]["eval_every"] steps and the last
      "final": POINT,             # the last point of the curve
      "history": [{...}, ...],    # the trainer's rows (pref_lab.training), every history_every-th + the last, "eval"
                                  # dropped (a file written before that protocol holds each trainer's older rows)
      "history_every": int,
      "cost": COST
    }
    POINT = {"step": int,         # PPO iterations / DPO steps / online-DPO rounds done (best-of-n: n)
             "gold_reward": float, "gold_reward_sem": float,
             "gold_rewards": [float, ...],   # one per eval prompt, in order (same prompts everywhere: pairs)
             "examples": [{"text": str, "finished": bool}, ...],   # the first EXAMPLES completions
             "kl": float, "kl_sem": float, "kl_kind": "sampled" | "analytic_bound",
             "rm_score": float,     # the reward model's mean score of the same samples (the proxy)
             "eos_rate": float, "length": float,     # share of samples that ended with EOS, mean tokens
             "train_seconds": float, "samples_generated": int}   # training cost so far (eval excluded)
    COST = {"wall_seconds": float,     # train + eval
            "train_seconds": float, "eval_seconds": float,
            "samples_generated": int,  # completions sampled for training (best-of-n: P * n); eval excluded
            "eval_samples": int,       # completions sampled for evaluation
            "reward_model_calls": int, # (prompt, completion) pairs the RM scored for training or selection
            "gold_judge_calls": int,   # texts the gold judge labeled as a training signal (oracle labeler only)
            "pairs_seen": int,         # DPO: preference pairs in all gradient steps (0 for PPO and best-of-n)
            "models_in_memory": [str, ...], "n_models": int,   # networks held during training
            "parameters_in_memory": int, "trainable_parameters": int,
            "peak_rss_mb": float,      # peak RSS (getrusage) of the process that ran it, *so far*: monotone within a
                                       # process (imports alone are ~0.5 GB), so compare the parameter counts too
            "cuda_peak_mb": float | None}   # torch.cuda.max_memory_allocated during the run, on CUDA
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import multiprocessing
import platform
import resource
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path

import torch
import transformers

from pref_lab.config import DATA_DIR, model_device, seed_everything
from pref_lab.data import read_jsonl, validate_records
from pref_lab.dpo import train_dpo
from pref_lab.models import generate
from pref_lab.online import OnlineDPOConfig, gold_judge, reward_model_judge, train_online_dpo
from pref_lab.ppo import PPOConfig, make_value_model, train_ppo
from pref_lab.reward_model import score_texts
from pref_lab.rlhf import best_of_n, best_of_n_kl
from pref_lab.training import thin_history
from pref_lab.world import (
    EVAL_BATCH_SIZE,
    EVAL_SEED,
    MAX_NEW_TOKENS,
    World,
    evaluate_policy,
    example_records,
    load_world,
    score_samples,
    sft_point,
    unique_prompts,
)

# ----------------------------------------------------------------------------- the grids
# "max_new_tokens" is shared by training rollouts and evaluation, so every method writes text of the same length
# limit. "full" was sized from short timings on the shipped assets (numbers in the module docstring).
CONFIGS = {
    "tiny": {
        "seeds": [0], "max_new_tokens": 6,
        "eval": {"prompts": 4, "seed": EVAL_SEED},
        "ppo": {"kl_coefs": [0.01, 0.05, 0.1, 0.5], "steps": 2, "batch_size": 4, "minibatch_size": 2, "ppo_epochs": 1,
                "lr": 1e-4, "missing_eos_penalty": None, "eval_every": 2},
        "dpo": {"betas": [0.05, 0.1, 0.3, 1.0], "pool": "train", "steps": 2, "epochs": None, "batch_size": 4, "lr": 1e-4,
                "precompute_ref_logps": True, "eval_every": 2},
        "online_dpo": {"betas": [0.1, 0.3], "rounds": 2, "prompts_per_round": 4, "completions_per_prompt": 2,
                       "minibatch_size": 4, "lr": 1e-4, "judge": "reward_model", "eval_every": 2},
        "best_of_n": {"ns": [1, 2, 4]},
    },
    "full": {
        # three training seeds per run; 128 held-out prompts, the same ones as notebook 10's 2x2 (one prompt set for
        # the notebooks after DPO), every run evaluated on the same samples' seed, so same-prompt differences pair
        "seeds": [0, 1, 2], "max_new_tokens": MAX_NEW_TOKENS,
        "eval": {"prompts": 128, "seed": EVAL_SEED},
        # PPO: PPOConfig's defaults (chosen on development prompts by scripts/tune_ppo.py: kl_coef 0.01), run 3x
        # longer than notebook 06, and at 3x that KL coefficient; evaluated every 2 iterations, because PPO moves
        # from about 6 to 24 nats between iterations 6 and 12 (a curve read at equal KL needs points in between)
        "ppo": {"kl_coefs": [PPOConfig.kl_coef, round(3 * PPOConfig.kl_coef, 6)], "steps": 36, "batch_size": PPOConfig.batch_size,
                "minibatch_size": PPOConfig.minibatch_size, "ppo_epochs": PPOConfig.ppo_epochs, "lr": PPOConfig.lr,
                "missing_eos_penalty": PPOConfig.missing_eos_penalty, "eval_every": 2},
        # offline DPO: equal information, so it trains on the reward model's own human-labelled pairs (train.jsonl +
        # rm_extra.jsonl.gz, 32,646), for one full epoch (steps = ceil(epochs x pairs / batch_size)); the shipped
        # recipe otherwise (batch 32, lr 1e-4, beta 0.1). The reference log-probs are computed once (same numbers
        # as a forward pass per step: the reference is frozen), to fit the epoch in the budget.
        "dpo": {"betas": [0.1], "pool": "rm_pairs", "steps": None, "epochs": 1, "batch_size": 32, "lr": 1e-4,
                "precompute_ref_logps": True, "eval_every": 170},
        # online DPO: offline DPO's pairs per step, learning rate and beta; its labels come from the reward model
        # (trained on those same human pairs), on fresh samples of the training prompts
        "online_dpo": {"betas": [0.1], "rounds": 100, "prompts_per_round": 32, "completions_per_prompt": 2,
                       "minibatch_size": 32, "lr": 1e-4, "judge": "reward_model", "eval_every": 20},
        "best_of_n": {"ns": [1, 2, 4, 8, 16, 32]},
    },
}
SCHEMA = "pref_lab.frontier/2"
METHODS = ("ppo", "dpo", "online_dpo", "best_of_n")
POINT_KEYS = ("step", "gold_reward", "gold_reward_sem", "gold_rewards", "kl", "kl_sem", "kl_kind", "rm_score", "eos_rate",
              "length", "examples", "train_seconds", "samples_generated")
EXAMPLES = 3  # completions kept at every point (those of the first eval prompts), to read next to its numbers
COST_KEYS = ("wall_seconds", "train_seconds", "eval_seconds", "samples_generated", "eval_samples", "reward_model_calls",
             "gold_judge_calls", "pairs_seen", "models_in_memory", "n_models", "parameters_in_memory",
             "trainable_parameters", "peak_rss_mb", "cuda_peak_mb")
RUN_KEYS = ("name", "method", "knob", "value", "seed", "settings", "curve", "final", "history", "history_every", "cost")
TOP_KEYS = ("schema", "config_name", "config", "seeds", "assets", "environment", "started", "total_seconds", "complete",
            "data", "sft", "runs")


# ----------------------------------------------------------------------------- measuring a run
class Meter:
    """Times a run, splitting evaluation time from training time; its :meth:`evaluate` is the trainers' ``eval_fn``."""

    def __init__(self, world: World, config: dict):
        self.world, self.config = world, config
        self.start = time.perf_counter()
        self.eval_seconds, self.eval_samples = 0.0, 0
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def train_seconds(self) -> float:
        return time.perf_counter() - self.start - self.eval_seconds

    def evaluate(self, policy) -> dict:
        started = time.perf_counter()
        result = evaluate_policy(policy, self.world, max_new_tokens=self.config["max_new_tokens"],
                                 seed=self.config["eval"]["seed"], per_prompt=True, examples=EXAMPLES)
        self.eval_samples += result.pop("samples")
        result.pop("rm_scores", None)
        self.eval_seconds += time.perf_counter() - started
        return {**result, "train_seconds": self.train_seconds()}

    def cost(self, models: dict[str, torch.nn.Module], trainable: Sequence[torch.nn.Module], samples_generated: int,
             **counts) -> dict:
        wall = time.perf_counter() - self.start
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
        return {"wall_seconds": wall, "train_seconds": wall - self.eval_seconds, "eval_seconds": self.eval_seconds,
                "samples_generated": samples_generated, "eval_samples": self.eval_samples,
                "reward_model_calls": counts.get("reward_model_calls", 0), "gold_judge_calls": counts.get("gold_judge_calls", 0),
                "pairs_seen": counts.get("pairs_seen", 0), "models_in_memory": list(models), "n_models": len(models),
                "parameters_in_memory": sum(p.numel() for m in models.values() for p in m.parameters()),
                "trainable_parameters": sum(p.numel() for m in trainable for p in m.parameters() if p.requires_grad),
                "peak_rss_mb": round(rss, 1),
                "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None}


class Counted:
    """Wraps a scorer ``f(prompts, completions)`` and counts the completions it scores."""

    def __init__(self, fn: Callable):
        self.fn, self.calls = fn, 0

    def __call__(self, prompts, completions):
        self.calls += len(completions)
        return self.fn(prompts, completions)


def curve(history: list[dict], sft: dict) -> list[dict]:
    """The SFT point, then every evaluated row of a trainer's history as a point (any trainer: one protocol)."""
    return [dict(sft)] + [{"step": row["step"], **row["eval"], "samples_generated": row["samples"]}
                          for row in history if "eval" in row]


def run_record(method: str, knob: str, value: float, seed: int, settings: dict, points: list[dict],
               history: list[dict], cost: dict) -> dict:
    rows, every = thin_history([{k: v for k, v in row.items() if k != "eval"} for row in history])
    return {"name": f"{method}/{knob}={value:g}", "method": method, "knob": knob, "value": value, "seed": seed,
            "settings": settings, "curve": points, "final": points[-1], "history": rows, "history_every": every,
            "cost": cost}


# ----------------------------------------------------------------------------- the four methods
def run_ppo(world: World, pairs: list[dict], kl_coef: float, config: dict, sft: dict, progress: bool = False) -> dict:
    """PPO against the reward model, value model initialised from it; reference = the SFT model."""
    meter = Meter(world, config)
    settings = {k: v for k, v in config["ppo"].items() if k not in ("kl_coefs", "eval_every")}
    ppo_config = PPOConfig(**settings, kl_coef=kl_coef, max_new_tokens=config["max_new_tokens"], seed=config["seed"])
    policy, value_model = copy.deepcopy(world.sft), make_value_model(world.reward_model)
    reward_fn = Counted(lambda prompts, ids: score_texts(world.reward_model, world.tokenizer, prompts, ids))
    history = train_ppo(policy, world.sft, value_model, world.tokenizer, unique_prompts(pairs), reward_fn, ppo_config,
                        eval_fn=meter.evaluate, eval_every=config["ppo"]["eval_every"], progress=progress)
    models = {"policy": policy, "reference": world.sft, "reward_model": world.reward_model, "value_model": value_model}
    cost = meter.cost(models, [policy, value_model], history[-1]["samples"], reward_model_calls=reward_fn.calls)
    settings = {**asdict(ppo_config), "eval_every": config["ppo"]["eval_every"]}
    return run_record("ppo", "kl_coef", kl_coef, config["seed"], settings, curve(history, sft), history, cost)


def dpo_steps(settings: dict, pool_size: int) -> int:
    """Offline DPO's gradient steps: ``steps`` if set, else enough batches for ``epochs`` passes over the pool."""
    if settings.get("steps"):
        return int(settings["steps"])
    if not settings.get("epochs"):
        raise ValueError("dpo needs steps or epochs")
    return math.ceil(settings["epochs"] * pool_size / settings["batch_size"])


def run_dpo(world: World, pairs: list[dict], beta: float, config: dict, sft: dict, progress: bool = False) -> dict:
    """Offline DPO on a shipped pool of human-labelled pairs (sampled once from the SFT model, labeled by BT on gold
    rewards): ``config["dpo"]["pool"]`` is ``"train"`` (``train.jsonl``) or ``"rm_pairs"`` (the reward model's)."""
    meter = Meter(world, config)
    settings = {k: v for k, v in config["dpo"].items() if k != "betas"}
    pool = load_pool(world.source, settings["pool"]) if settings["pool"] != "train" else pairs
    settings["steps"] = dpo_steps(settings, len(pool))
    policy = copy.deepcopy(world.sft)
    history = train_dpo(policy, world.sft, world.tokenizer, pool, beta=beta, steps=settings["steps"],
                        batch_size=settings["batch_size"], lr=settings["lr"], seed=config["seed"],
                        precompute_ref_logps=settings["precompute_ref_logps"], eval_fn=meter.evaluate,
                        eval_every=settings["eval_every"], progress=progress)
    cost = meter.cost({"policy": policy, "reference": world.sft}, [policy], 0, pairs_seen=history[-1]["pairs"])
    settings = {**settings, "beta": beta, "pairs_in_dataset": len(pool),
                "epochs_covered": history[-1]["pairs"] / len(pool)}
    return run_record("dpo", "beta", beta, config["seed"], settings, curve(history, sft), history, cost)


def run_online_dpo(world: World, pairs: list[dict], beta: float, config: dict, sft: dict, progress: bool = False) -> dict:
    """Online DPO: fresh pairs from the current policy each round, labeled by the RM (or the gold judge)."""
    meter = Meter(world, config)
    settings = {k: v for k, v in config["online_dpo"].items() if k not in ("betas", "judge", "eval_every")}
    judge_name = config["online_dpo"].get("judge", "reward_model")
    if judge_name not in ("reward_model", "gold"):
        raise ValueError(f"online_dpo judge must be 'reward_model' or 'gold', got {judge_name!r}")
    judge = Counted(reward_model_judge(world.reward_model, world.tokenizer) if judge_name == "reward_model"
                    else gold_judge(world.gold))
    online_config = OnlineDPOConfig(**settings, beta=beta, max_new_tokens=config["max_new_tokens"], seed=config["seed"])
    policy = copy.deepcopy(world.sft)
    history = train_online_dpo(policy, world.sft, world.tokenizer, unique_prompts(pairs), judge, online_config,
                               eval_fn=meter.evaluate, eval_every=config["online_dpo"]["eval_every"], progress=progress)
    models = {"policy": policy, "reference": world.sft}
    if judge_name == "reward_model":
        models["reward_model"] = world.reward_model
    cost = meter.cost(models, [policy], history[-1]["samples"],
                      reward_model_calls=judge.calls if judge_name == "reward_model" else 0,
                      gold_judge_calls=judge.calls if judge_name == "gold" else 0, pairs_seen=history[-1]["pairs"])
    settings = {**asdict(online_config), "judge": judge_name, "eval_every": config["online_dpo"]["eval_every"]}
    return run_record("online_dpo", "beta", beta, config["seed"], settings, curve(history, sft), history, cost)


@torch.no_grad()
def run_best_of_n(world: World, config: dict, sft: dict) -> list[dict]:
    """Best-of-n on the held-out prompts: n SFT samples each, keep the one the reward model scores highest.

    The pool is nested: best-of-n for a larger n reuses the samples of the smaller ones and adds more, so
    one pool serves every n. Each run's cost (samples, RM calls, seconds) is what that n alone needs.
    """
    tokenizer, prompts, ns = world.tokenizer, world.eval_prompts, sorted(set(config["best_of_n"]["ns"]))
    if ns[0] < 1:
        raise ValueError(f"best-of-n needs n >= 1, got {ns}")
    meter = Meter(world, config)
    ids: list[list[torch.Tensor]] = [[] for _ in prompts]
    scores: list[list[float]] = [[] for _ in prompts]
    runs = []
    for n in ns:
        extra = n - len(ids[0])  # samples per prompt still missing for this n
        # seed 0's first chunk uses the evaluation's seed, so its best-of-1 is exactly the SFT point's samples
        new = generate(world.sft, tokenizer, [p for p in prompts for _ in range(extra)], max_new_tokens=config["max_new_tokens"],
                       temperature=1.0, seed=config["eval"]["seed"] + n - 1 + 1000 * config["seed"],
                       batch_size=EVAL_BATCH_SIZE, progress=False, return_ids=True)
        new_scores = score_texts(world.reward_model, tokenizer, [p for p in prompts for _ in range(extra)], new)
        for i in range(len(prompts)):
            ids[i] += new[i * extra:(i + 1) * extra]
            scores[i] += new_scores[i * extra:(i + 1) * extra].tolist()
        picks, best_scores = best_of_n(torch.tensor(scores))
        chosen = [ids[i][int(j)] for i, j in enumerate(picks)]
        examples = example_records(tokenizer, chosen[:EXAMPLES])
        point = {"step": n, **score_samples(world, chosen, per_prompt=True), "examples": examples,
                 "kl": best_of_n_kl(n), "kl_sem": 0.0,
                 "kl_kind": "analytic_bound", "rm_score": best_scores.mean().item(), "train_seconds": meter.train_seconds(),
                 "samples_generated": len(prompts) * n}
        cost = meter.cost({"policy": world.sft, "reward_model": world.reward_model}, [], len(prompts) * n,
                          reward_model_calls=len(prompts) * n)
        settings = {"n": n, "temperature": 1.0, "selection": "argmax reward-model score (first on ties)",
                    "prompts": "eval prompts",
                    "sample_seed": "eval seed + n - 1 + 1000 x seed for the samples added at each n (nested pool)"}
        runs.append(run_record("best_of_n", "n", n, config["seed"], settings, [dict(sft), point], [], cost))
    return runs


# ----------------------------------------------------------------------------- the grid
def grid(config: dict, methods: Sequence[str] = METHODS) -> list[tuple[str, float | None, int]]:
    """The runs of a config, in order: (method, swept value, training seed), every seed of a run before the next
    run; best-of-n is one task per seed for all its n."""
    tasks = []
    for method, knob in (("ppo", "kl_coefs"), ("dpo", "betas"), ("online_dpo", "betas")):
        if method in methods:
            tasks += [(method, float(v), seed) for v in config[method][knob] for seed in config["seeds"]]
    if "best_of_n" in methods:
        tasks += [("best_of_n", None, seed) for seed in config["seeds"]]
    return tasks


def start_point(world: World, config: dict) -> dict:
    """Step 0 of every curve: :func:`pref_lab.world.sft_point` (KL exactly 0), with no training cost."""
    point = sft_point(world, max_new_tokens=config["max_new_tokens"], seed=config["eval"]["seed"], per_prompt=True,
                      examples=EXAMPLES)
    point.pop("samples")
    point.pop("rm_scores", None)
    return {**point, "train_seconds": 0.0, "samples_generated": 0}


def run_task(world: World, pairs: list[dict], task: tuple[str, float | None, int], config: dict, sft: dict,
             progress: bool = False) -> list[dict]:
    """Run one task of :func:`grid`; returns its run records (best-of-n gives one per n)."""
    method, value, seed = task
    config = {**config, "seed": seed}  # the run's training seed (best-of-n: its sampling seeds, offset by it)
    seed_everything(seed)
    trainers = {"ppo": run_ppo, "dpo": run_dpo, "online_dpo": run_online_dpo}
    if method in trainers:
        return [trainers[method](world, pairs, value, config, sft, progress)]
    if method == "best_of_n":
        return run_best_of_n(world, config, sft)
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def _task_of(run: dict) -> tuple[str, float | None, int]:
    """The :func:`grid` task a run record came from."""
    return run["method"], (None if run["method"] == "best_of_n" else float(run["value"])), run["seed"]


def environment(world: World, jobs: int = 1) -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "platform": platform.platform(), "device": str(model_device(world.sft)),
            "threads": torch.get_num_threads(), "jobs": jobs}


def check_results(results: dict) -> None:
    """Raise ``ValueError`` naming the first field that breaks the documented schema."""
    missing = [k for k in TOP_KEYS if k not in results]
    if missing or results["schema"] != SCHEMA:
        raise ValueError(f"results: missing {missing} or schema {results.get('schema')!r} != {SCHEMA!r}")
    for where, point in [("sft", results["sft"])] + [(f"{r.get('name')}.curve[{i}]", p)
                                                    for r in results["runs"] for i, p in enumerate(r.get("curve", []))]:
        missing = [k for k in POINT_KEYS if k not in point]
        if missing:
            raise ValueError(f"{where}: missing {missing}")
    for run in results["runs"]:
        missing = [k for k in RUN_KEYS if k not in run] or [f"cost.{k}" for k in COST_KEYS if k not in run["cost"]]
        if missing:
            raise ValueError(f"run {run.get('name')}: missing {missing}")
        if run["method"] not in METHODS or run["final"] != run["curve"][-1]:
            raise ValueError(f"run {run['name']}: bad method {run['method']!r} or final point != last curve point")


def load_pairs(assets: str | Path) -> list[dict]:
    """The offline preference pairs every method's training prompts come from (``preferences/train.jsonl``)."""
    path = Path(assets) / "preferences" / "train.jsonl"
    pairs = read_jsonl(path)
    validate_records(pairs, "preference", str(path))
    return pairs


def load_pool(assets: str | Path, pool: str) -> list[dict]:
    """Offline DPO's pairs: ``"train"`` is ``preferences/train.jsonl``; ``"rm_pairs"`` the reward model's training
    pairs, ``train.jsonl`` + ``rm_extra.jsonl.gz`` (:func:`pref_lab.assets.stage_rm` with ``extra_pairs``)."""
    pairs = load_pairs(assets)
    if pool == "train":
        return pairs
    if pool != "rm_pairs":
        raise ValueError(f"dpo pool must be 'train' or 'rm_pairs', got {pool!r}")
    path = Path(assets) / "preferences" / "rm_extra.jsonl.gz"
    extra = read_jsonl(path)
    validate_records(extra, "preference", str(path))
    return pairs + extra


_WORKER: tuple[World, list[dict]] | None = None


def _load_worker(assets: str, device: str, threads: int, config: dict) -> None:
    """Initializer of each ``jobs > 1`` worker: one torch thread, and the world loaded once per process."""
    global _WORKER
    torch.set_num_threads(threads)
    _WORKER = load_world(assets, config["eval"]["prompts"], device), load_pairs(assets)


def _task_in_worker(task, config: dict, sft: dict) -> list[dict]:
    return run_task(*_WORKER, task, config, sft)


def task_key(task: tuple[str, float | None, int]) -> str:
    method, value, seed = task
    return f"{method}/{value:g}/seed={seed}" if value is not None else f"{method}/seed={seed}"


def run_frontier(world: World, pairs: list[dict], config: dict, config_name: str, methods: Sequence[str] = METHODS,
                 out: str | Path | None = None, jobs: int = 1, progress: bool = False, resume: bool = False) -> dict:
    """Run the grid of ``config`` on ``world`` and return the results (schema in the module docstring).

    ``out``: the JSON file, rewritten after every task (``"complete": false`` until the last one), so a
    crash loses at most one task; ``resume=True`` keeps the runs of an earlier ``out`` made with the same world,
    methods and shared settings, and runs the rest: the tasks it lacks, and every task of a method whose own
    settings (``config[method]``) changed since. ``jobs > 1`` runs tasks in that many worker processes with one torch
    thread each (longest methods first, so the workers finish together); each worker loads the world from
    ``world.source`` (an assets folder) once.
    """
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    started, start = time.strftime("%Y-%m-%dT%H:%M:%S"), time.perf_counter()
    results = {"schema": SCHEMA, "config_name": config_name, "config": config, "seeds": config["seeds"],
               "methods": list(methods), "assets": world.source, "environment": environment(world, jobs),
               "started": started, "total_seconds": 0.0, "complete": False,
               "data": {"train_prompts": len(unique_prompts(pairs)), "train_pairs": len(pairs),
                        "eval_prompts": len(world.eval_prompts)},
               "sft": start_point(world, config), "runs": [], "tasks_done": []}
    earlier = 0.0  # seconds spent by the runs kept from an unfinished file
    if resume and out is not None and Path(out).exists():
        old = json.loads(Path(out).read_text())
        # what every run shares must be unchanged; a method whose own section changed is run again
        shared = [k for k in config if k not in METHODS]
        if ({k: old["config"].get(k) for k in shared} != {k: config[k] for k in shared}
                or {k: old.get(k) for k in ("methods", "data", "sft")} != {k: results[k] for k in ("methods", "data", "sft")}):
            raise ValueError(f"--resume: {out} was made with another config, methods or world; move it away first")
        changed = {m for m in METHODS if old["config"].get(m) != config.get(m)}
        kept = [r for r in old["runs"] if r["method"] not in changed]
        done_before = [t for t in old["tasks_done"] if t.split("/")[0] not in changed]
        results.update(runs=kept, tasks_done=done_before, started=old["started"])
        reruns = old.get("rerun", []) + ([{"methods": sorted(changed), "date": started}] if changed else [])
        if reruns:
            results["rerun"] = reruns
        earlier = old["total_seconds"]
        print(f"[frontier] resuming {out}: {len(done_before)} tasks kept"
              + (f", {', '.join(sorted(changed))} rerun (its settings changed)" if changed else ""), flush=True)
    all_tasks = grid(config, methods)
    tasks = [t for t in all_tasks if task_key(t) not in results["tasks_done"]]
    rank = {t: i for i, t in enumerate(all_tasks)}

    def save():
        results["total_seconds"] = earlier + time.perf_counter() - start
        if out is not None:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            Path(out).write_text(json.dumps(results, indent=1) + "\n")

    def done(task, runs):
        results["tasks_done"].append(task_key(task))
        results["runs"] = sorted(results["runs"] + runs, key=lambda r: (rank[_task_of(r)], r["value"]))
        print(f"[frontier] {task_key(task)} done ({time.perf_counter() - start:.0f} s)", flush=True)
        save()

    if jobs <= 1:
        for task in tasks:
            done(task, run_task(world, pairs, task, config, results["sft"], progress))
    else:
        if world.source == "<in-memory>":
            raise ValueError("jobs > 1 needs a world loaded from an assets folder (workers reload it)")
        longest_first = sorted(tasks, key=lambda t: ("dpo", "online_dpo", "ppo", "best_of_n").index(t[0]))
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_load_worker,
                                 initargs=(world.source, str(model_device(world.sft)), 1, config)) as pool:
            futures = {pool.submit(_task_in_worker, task, config, results["sft"]): task for task in longest_first}
            for future in as_completed(futures):
                done(futures[future], future.result())
    results["complete"] = True
    save()
    check_results(results)
    return results


# ----------------------------------------------------------------------------- the command line
def report(results: dict) -> str:
    """Every point of every run, one line each: step, gold reward ± s.e., KL ± s.e., EOS rate, length (tokens);
    the best-gold point of each run is marked with ``*`` and its length given relative to the SFT model's."""
    sft = results["sft"]
    lines = [f"SFT: gold {sft['gold_reward']:+.3f} ± {sft['gold_reward_sem']:.3f}, EOS {sft['eos_rate']:.3f}, "
             f"{sft['length']:.1f} tokens ({results['data']['eval_prompts']} held-out prompts)"]
    for run in results["runs"]:
        best = max(run["curve"][1:] or run["curve"], key=lambda p: p["gold_reward"])
        lines.append(f"{run['name']}  (best gold at step {best['step']}: EOS {best['eos_rate']:.3f}, length "
                     f"{best['length'] / sft['length']:.2f}x SFT's)")
        for p in run["curve"][1:]:
            lines.append(f"  {'*' if p is best else ' '} step {p['step']:4d}  gold {p['gold_reward']:+.3f} ± "
                         f"{p['gold_reward_sem']:.3f}  KL {p['kl']:6.2f} ± {p['kl_sem']:.2f}  EOS {p['eos_rate']:.3f}  "
                         f"{p['length']:5.1f} tokens")
    return "\n".join(lines)


def apply_override(config: dict, assignment: str) -> None:
    """``section.key=value`` (value parsed as JSON, else kept as a string) sets ``config[section][key]``."""
    path, sep, raw = assignment.partition("=")
    if not sep:
        raise ValueError(f"--set expects key=value, got {assignment!r}")
    *parents, key = path.split(".")
    node = config
    for part in parents:
        if part not in node or not isinstance(node[part], dict):
            raise ValueError(f"--set {assignment!r}: no section {part!r} in the config")
        node = node[part]
    if key not in node:
        raise ValueError(f"--set {assignment!r}: unknown key {key!r} (known: {sorted(node)})")
    try:
        node[key] = json.loads(raw)
    except json.JSONDecodeError:
        node[key] = raw


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="the seconds-long test configuration")
    parser.add_argument("--assets", type=Path, default=DATA_DIR, help="world folder (default: data/)")
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default: data/results/frontier_<config>.json)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value (JSON), e.g. ppo.steps=30; repeatable")
    parser.add_argument("--seeds", default=None, help="comma-separated training seeds of every run (default: the config's)")
    parser.add_argument("--resume", action="store_true", help="keep the finished runs of an unfinished --out file")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel, each in its own 1-thread process")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for in-process runs")
    parser.add_argument("--device", default=None, help="cpu / cuda / mps (default: pref_lab's choice)")
    parser.add_argument("--progress", action="store_true", help="progress bars for each run")
    parser.add_argument("--report", type=Path, default=None, metavar="RESULTS_JSON",
                        help="run nothing: print every point of a results file (gold, KL, EOS rate, length)")
    args = parser.parse_args(argv)
    if args.report is not None:
        results = json.loads(args.report.read_text())
        check_results(results)
        print(report(results))
        return results

    name = "tiny" if args.tiny else "full"
    config = copy.deepcopy(CONFIGS[name])
    for assignment in args.set:
        apply_override(config, assignment)
    if args.seeds is not None:
        config["seeds"] = [int(x) for x in args.seeds.split(",") if x.strip()]
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    out = args.out or DATA_DIR / "results" / f"frontier_{name}.json"
    world = load_world(args.assets, config["eval"]["prompts"], args.device)
    results = run_frontier(world, load_pairs(args.assets), config, name, methods, out=out, jobs=args.jobs,
                           progress=args.progress, resume=args.resume)
    print(f"wrote {out} ({len(results['runs'])} runs, {results['total_seconds']:.0f} s)")
    for run in results["runs"]:
        final = run["final"]
        print(f"  {run['name']:<24} seed {run['seed']}  gold {final['gold_reward']:+.3f}  kl {final['kl']:7.3f}  "
              f"({run['cost']['wall_seconds']:.0f} s)")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
