"""The frontier experiment: gold reward against KL from the SFT model for PPO, offline DPO, online DPO and best-of-n.

Every run starts from the same SFT model and uses the same prompts: PPO and online DPO sample on the
training prompts (the prompts of ``preferences/train.jsonl``), offline DPO trains on those pairs, and every
run is evaluated on the same held-out prompts (review instructions for test-split movies), periodically:

    gold_reward = mean_i r_gold(y_i)                           y_i ~ pi(. | x_i), temperature 1
    kl          = mean_i sum_t (log pi - log pi_ref)(y_i,t)    the sequence KL of the same samples (k1)

with one sample per held-out prompt and the same sampling seed at every evaluation (common random
numbers: the SFT point is the same for every run). Best-of-n is not a trained policy: its points use the
analytic KL(pi_bon || pi_ref) <= log n - (n - 1) / n (``kl_kind = "analytic_bound"``).
``scripts/frontier.py`` is the command line; :data:`CONFIGS` holds the grids (``tiny`` runs in seconds
for the tests, ``full`` is budgeted at <= 40 min on 2 CPU cores).

Results JSON (schema ``pref_lab.frontier/1``), written under ``data/results/``::

    {
      "schema": "pref_lab.frontier/1",
      "config_name": "tiny" | "full",
      "config": {...},            # the exact grid and every hyper-parameter (CONFIGS[name], after CLI overrides)
      "seed": int,                # every run's training seed (the eval sampling seed is config["eval"]["seed"])
      "assets": str,              # folder the world was loaded from ("<in-memory>" for a test fixture)
      "environment": {"python", "torch", "transformers", "platform", "device", "threads", "jobs"},
      "started": str,             # ISO 8601, local time
      "total_seconds": float,     # wall time of the whole grid
      "complete": bool,           # false while the grid is still running (the file is rewritten after each task)
      "data": {"train_prompts": int, "train_pairs": int, "eval_prompts": int},
      "sft": POINT,               # the SFT model itself (kl = 0): every curve starts here
      "runs": [RUN, ...]          # PPO runs, then offline DPO, online DPO, best-of-n
    }
    RUN = {
      "name": str,                # e.g. "ppo/kl_coef=0.05", "dpo/beta=0.1", "online_dpo/beta=0.1", "best_of_n/n=4"
      "method": "ppo" | "dpo" | "online_dpo" | "best_of_n",
      "knob": "kl_coef" | "beta" | "n", "value": float,   # the swept setting
      "seed": int,
      "settings": {...},          # every hyper-parameter of this run (e.g. the PPOConfig as a dict)
      "curve": [POINT, ...],      # step 0 (= the SFT point), then every config[method]["eval_every"] steps and the last
      "final": POINT,             # the last point of the curve
      "history": [{...}, ...],    # the training log (pref_lab's metric names), every history_every-th row + the last
      "history_every": int,
      "cost": COST
    }
    POINT = {"step": int,         # PPO iterations / DPO steps / online-DPO rounds done (best-of-n: n)
             "gold_reward": float, "gold_reward_sem": float,
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

import copy
import json
import math
import multiprocessing
import platform
import random
import resource
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import transformers

from .config import get_device, seed_everything
from .data import read_jsonl, validate_records
from .dpo import train_dpo
from .judge import load_gold_judge
from .logprobs import sequence_logprobs, tokenize_completions
from .models import format_prompt, generate, load_model, load_tokenizer
from .online import OnlineDPOConfig, gold_judge, reward_model_judge, train_online_dpo
from .ppo import PPOConfig, make_value_model, train_ppo
from .reward_model import load_reward_model, score_texts
from .rlhf import best_of_n, best_of_n_kl
from .sft import REVIEW_INSTRUCTIONS

SCHEMA = "pref_lab.frontier/1"
EVAL_BATCH_SIZE = 64  # sampling batch of evaluations and best-of-n (the same batches give the same samples for a seed)
METHODS = ("ppo", "dpo", "online_dpo", "best_of_n")
POINT_KEYS = ("step", "gold_reward", "gold_reward_sem", "kl", "kl_sem", "kl_kind", "rm_score", "eos_rate", "length",
              "train_seconds", "samples_generated")
COST_KEYS = ("wall_seconds", "train_seconds", "eval_seconds", "samples_generated", "eval_samples", "reward_model_calls",
             "gold_judge_calls", "pairs_seen", "models_in_memory", "n_models", "parameters_in_memory",
             "trainable_parameters", "peak_rss_mb", "cuda_peak_mb")
RUN_KEYS = ("name", "method", "knob", "value", "seed", "settings", "curve", "final", "history", "history_every", "cost")
TOP_KEYS = ("schema", "config_name", "config", "seed", "assets", "environment", "started", "total_seconds", "complete",
            "data", "sft", "runs")

# The grids. "max_new_tokens" is shared by training rollouts and evaluation, so every method writes text of the
# same length limit. "full" was sized from short timings on the shipped assets (numbers in scripts/frontier.py).
CONFIGS = {
    "tiny": {
        "seed": 0, "max_new_tokens": 6,
        "eval": {"prompts": 4, "seed": 1234},
        "ppo": {"kl_coefs": [0.01, 0.05, 0.1, 0.5], "steps": 2, "batch_size": 4, "minibatch_size": 2, "ppo_epochs": 1,
                "lr": 1e-4, "missing_eos_penalty": None, "eval_every": 2},
        "dpo": {"betas": [0.05, 0.1, 0.3, 1.0], "steps": 2, "batch_size": 4, "lr": 1e-4, "precompute_ref_logps": True,
                "eval_every": 2},
        "online_dpo": {"betas": [0.1, 0.3], "rounds": 2, "prompts_per_round": 4, "completions_per_prompt": 2,
                       "minibatch_size": 4, "lr": 1e-4, "judge": "reward_model", "eval_every": 2},
        "best_of_n": {"ns": [1, 2, 4]},
    },
    "full": {
        "seed": 0, "max_new_tokens": 48,
        "eval": {"prompts": 256, "seed": 1234},
        # PPO: PPOConfig's tuned defaults (lr 3e-4, 2 epochs of minibatches of 16), run 3x longer than notebook 06
        "ppo": {"kl_coefs": [0.01, 0.03, 0.1, 0.3], "steps": 36, "batch_size": 32, "minibatch_size": 16, "ppo_epochs": 2,
                "lr": 3e-4, "missing_eos_penalty": None, "eval_every": 6},
        "dpo": {"betas": [0.03, 0.1, 0.3, 1.0], "steps": 100, "batch_size": 32, "lr": 1e-4, "precompute_ref_logps": False,
                "eval_every": 20},
        # online DPO: the same gradient steps, pairs per step and learning rate as offline DPO (the shipped recipe)
        "online_dpo": {"betas": [0.1, 0.3], "rounds": 100, "prompts_per_round": 32, "completions_per_prompt": 2,
                       "minibatch_size": 32, "lr": 1e-4, "judge": "reward_model", "eval_every": 20},
        "best_of_n": {"ns": [1, 2, 4, 8, 16, 32]},
    },
}


# ----------------------------------------------------------------------------- the world
@dataclass
class World:
    """Everything a run needs: the tokenizer, the SFT model (the reference of every run), the reward model,
    the gold judge (``gold_reward(texts) -> (N,)``), the offline pairs and the two prompt sets."""

    tokenizer: object
    sft: torch.nn.Module
    reward_model: torch.nn.Module
    gold: object
    train_pairs: list[dict]
    train_prompts: list[str]
    eval_prompts: list[str]
    source: str = "<in-memory>"


def unique_prompts(pairs: Sequence[dict]) -> list[str]:
    """The distinct prompts of a preference set, in order of first appearance."""
    return list(dict.fromkeys(p["prompt"] for p in pairs))


def heldout_review_prompts(corpus_rows: Sequence[dict], tokenizer, n: int, seed: int = 0) -> list[str]:
    """``n`` chat-formatted review instructions (every template of :data:`pref_lab.sft.REVIEW_INSTRUCTIONS` for
    every test-split movie, in a seeded random order; fewer if there are fewer): the prompts of
    ``preferences/test.jsonl``, made from the corpus so they do not depend on which samples were kept there."""
    movies = sorted({r["movie_title"] for r in corpus_rows if r["split"] == "test"})
    prompts = [format_prompt(tokenizer, template.format(title=title)) for title in movies for template in REVIEW_INSTRUCTIONS]
    random.Random(seed).shuffle(prompts)
    return prompts[:n]


def load_world(assets: str | Path, n_eval_prompts: int, seed: int = 0, device: str | torch.device | None = None) -> World:
    """Load the shipped world from an assets folder (``data/``, or one built by ``python -m pref_lab.assets``)."""
    assets = Path(assets)
    device = get_device(device)
    tokenizer = load_tokenizer(assets / "tokenizer")
    pairs = read_jsonl(assets / "preferences" / "train.jsonl")
    validate_records(pairs, "preference", str(assets / "preferences" / "train.jsonl"))
    eval_prompts = heldout_review_prompts(read_jsonl(assets / "corpus" / "corpus.jsonl"), tokenizer, n_eval_prompts, seed)
    return World(tokenizer=tokenizer, sft=load_model(assets / "models" / "sft", device),
                 reward_model=load_reward_model(assets / "models" / "rm", device),
                 gold=load_gold_judge(assets / "judges" / "gold"), train_pairs=pairs, train_prompts=unique_prompts(pairs),
                 eval_prompts=eval_prompts, source=str(assets))


# ----------------------------------------------------------------------------- evaluation
def _mean_sem(x: torch.Tensor) -> tuple[float, float]:
    x = x.double()
    sem = x.std().item() / math.sqrt(len(x)) if len(x) > 1 else 0.0
    return x.mean().item(), sem


@torch.no_grad()
def evaluate_policy(policy, reference, world: World, max_new_tokens: int, seed: int, batch_size: int = EVAL_BATCH_SIZE) -> dict:
    """Gold reward and sequence KL of one temperature-1 sample per held-out prompt (see the module docstring).

    Returns ``gold_reward``, ``kl`` (each with its standard error ``*_sem`` over prompts), ``rm_score`` (the
    proxy's view of the same samples), ``eos_rate``, ``length`` (mean completion tokens) and ``samples``.
    """
    was_training = policy.training
    policy.eval()
    tokenizer, prompts = world.tokenizer, world.eval_prompts
    ids = generate(policy, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=1.0, batch_size=batch_size,
                   seed=seed, progress=False, return_ids=True)
    device = next(policy.parameters()).device
    kl = []
    for start in range(0, len(prompts), batch_size):
        batch = tokenize_completions(tokenizer, prompts[start:start + batch_size], ids[start:start + batch_size],
                                     max_length=policy.config.n_positions)
        batch = {k: v.to(device) for k, v in batch.items()}
        kl.append((sequence_logprobs(policy, **batch) - sequence_logprobs(reference, **batch)).cpu())
    texts = [tokenizer.decode(x, skip_special_tokens=True).strip() for x in ids]
    gold, gold_sem = _mean_sem(torch.as_tensor(world.gold.gold_reward(texts)))
    kl_mean, kl_sem = _mean_sem(torch.cat(kl))
    policy.train(was_training)
    return {"gold_reward": gold, "gold_reward_sem": gold_sem, "kl": kl_mean, "kl_sem": kl_sem, "kl_kind": "sampled",
            "rm_score": score_texts(world.reward_model, tokenizer, prompts, ids).mean().item(),
            "eos_rate": sum(len(x) > 0 and int(x[-1]) == tokenizer.eos_token_id for x in ids) / len(ids),
            "length": sum(len(x) for x in ids) / len(ids), "samples": len(ids)}


class _Meter:
    """Times a run, splitting evaluation time from training time, and evaluates the policy on request."""

    def __init__(self, world: World, config: dict):
        self.world, self.config = world, config
        self.start = time.perf_counter()
        self.eval_seconds, self.eval_samples, self.samples_generated = 0.0, 0, 0
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def train_seconds(self) -> float:
        return time.perf_counter() - self.start - self.eval_seconds

    def point(self, policy, step: int) -> dict:
        started = time.perf_counter()
        result = evaluate_policy(policy, self.world.sft, self.world, self.config["max_new_tokens"],
                                 self.config["eval"]["seed"])
        self.eval_samples += result.pop("samples")
        self.eval_seconds += time.perf_counter() - started
        return {"step": step, **result, "train_seconds": self.train_seconds(), "samples_generated": self.samples_generated}

    def cost(self, models: dict[str, torch.nn.Module], trainable: Sequence[torch.nn.Module], **counts) -> dict:
        wall = time.perf_counter() - self.start
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
        return {"wall_seconds": wall, "train_seconds": wall - self.eval_seconds, "eval_seconds": self.eval_seconds,
                "samples_generated": self.samples_generated, "eval_samples": self.eval_samples,
                "reward_model_calls": counts.get("reward_model_calls", 0), "gold_judge_calls": counts.get("gold_judge_calls", 0),
                "pairs_seen": counts.get("pairs_seen", 0), "models_in_memory": list(models), "n_models": len(models),
                "parameters_in_memory": sum(p.numel() for m in models.values() for p in m.parameters()),
                "trainable_parameters": sum(p.numel() for m in trainable for p in m.parameters() if p.requires_grad),
                "peak_rss_mb": round(rss, 1),
                "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None}


class _Counted:
    """Wraps a scorer ``f(prompts, completions)`` and counts the completions it scores."""

    def __init__(self, fn: Callable):
        self.fn, self.calls = fn, 0

    def __call__(self, prompts, completions):
        self.calls += len(completions)
        return self.fn(prompts, completions)


def _fresh_policy(world: World) -> torch.nn.Module:
    # requires_grad_(True): PPO freezes its reference (the shared SFT model) in place, and a deepcopy keeps that flag
    return copy.deepcopy(world.sft).requires_grad_(True)


def _thin(history: list[dict], max_rows: int = 50) -> tuple[list[dict], int]:
    every = max(1, math.ceil(len(history) / max_rows))
    rows = history[::every]
    if history and rows[-1] is not history[-1]:
        rows.append(history[-1])
    return rows, every


def _run_record(method: str, knob: str, value: float, seed: int, settings: dict, curve: list[dict],
                history: list[dict], cost: dict) -> dict:
    rows, every = _thin(history)
    return {"name": f"{method}/{knob}={value:g}", "method": method, "knob": knob, "value": value, "seed": seed,
            "settings": settings, "curve": curve, "final": curve[-1], "history": rows, "history_every": every,
            "cost": cost}


def _curve_from_history(history: list[dict], step_key: str, sft_point: dict) -> list[dict]:
    """``eval_fn`` results ride in the history rows under ``eval/``; turn them into curve points."""
    curve = [dict(sft_point)]
    for row in history:
        if "eval/point" in row:
            curve.append({**row.pop("eval/point"), "step": row[step_key] + 1})  # rows count from 0: +1 = steps done
    return curve


# ----------------------------------------------------------------------------- the four methods
def run_ppo(world: World, kl_coef: float, config: dict, sft_point: dict, progress: bool = False) -> dict:
    """PPO against the reward model, value model initialised from it; reference = the SFT model."""
    meter = _Meter(world, config)
    settings = {k: v for k, v in config["ppo"].items() if k not in ("kl_coefs", "eval_every")}
    ppo_config = PPOConfig(**settings, kl_coef=kl_coef, max_new_tokens=config["max_new_tokens"], seed=config["seed"])
    policy, value_model = _fresh_policy(world), make_value_model(world.reward_model)
    reward_fn = _Counted(lambda prompts, ids: score_texts(world.reward_model, world.tokenizer, prompts, ids))
    history = train_ppo(policy, world.sft, value_model, world.tokenizer, world.train_prompts, reward_fn, ppo_config,
                        eval_fn=lambda model: {"eval/point": meter.point(model, -1)}, eval_every=config["ppo"]["eval_every"],
                        extra_metrics_fn=lambda prompts, texts: _count_samples(meter, texts), progress=progress)
    curve = _curve_from_history(history, "step", sft_point)
    models = {"policy": policy, "reference": world.sft, "reward_model": world.reward_model, "value_model": value_model}
    cost = meter.cost(models, [policy, value_model], reward_model_calls=reward_fn.calls)
    settings = {**asdict(ppo_config), "eval_every": config["ppo"]["eval_every"]}
    return _run_record("ppo", "kl_coef", kl_coef, config["seed"], settings, curve, history, cost)


def _count_samples(meter: _Meter, texts: list[str]) -> dict:
    meter.samples_generated += len(texts)  # called once per PPO rollout, before that iteration's evaluation
    return {}


def run_dpo(world: World, beta: float, config: dict, sft_point: dict, progress: bool = False) -> dict:
    """Offline DPO on the shipped pairs (sampled once from the SFT model, labeled by BT on gold rewards)."""
    meter = _Meter(world, config)
    settings = {k: v for k, v in config["dpo"].items() if k != "betas"}
    policy, curve = _fresh_policy(world), [dict(sft_point)]
    steps, every = settings.pop("steps"), settings.pop("eval_every")

    def evaluate(record):
        if record["step"] % every == 0 or record["step"] == steps:
            curve.append(meter.point(policy, record["step"]))

    history = train_dpo(policy, world.sft, world.tokenizer, world.train_pairs, beta=beta, steps=steps,
                        batch_size=settings["batch_size"], lr=settings["lr"], seed=config["seed"],
                        device=next(policy.parameters()).device, callback=evaluate, progress=progress,
                        precompute_ref_logps=settings["precompute_ref_logps"])
    cost = meter.cost({"policy": policy, "reference": world.sft}, [policy],
                      pairs_seen=steps * min(settings["batch_size"], len(world.train_pairs)))
    settings = {**settings, "steps": steps, "eval_every": every, "beta": beta, "pairs_in_dataset": len(world.train_pairs)}
    return _run_record("dpo", "beta", beta, config["seed"], settings, curve, history, cost)


def run_online_dpo(world: World, beta: float, config: dict, sft_point: dict, progress: bool = False) -> dict:
    """Online DPO: fresh pairs from the current policy each round, labeled by the RM (or the gold judge)."""
    meter = _Meter(world, config)
    settings = {k: v for k, v in config["online_dpo"].items() if k not in ("betas", "judge", "eval_every")}
    judge_name = config["online_dpo"].get("judge", "reward_model")
    if judge_name not in ("reward_model", "gold"):
        raise ValueError(f"online_dpo judge must be 'reward_model' or 'gold', got {judge_name!r}")
    judge = _Counted(reward_model_judge(world.reward_model, world.tokenizer) if judge_name == "reward_model"
                     else gold_judge(world.gold))
    online_config = OnlineDPOConfig(**settings, beta=beta, max_new_tokens=config["max_new_tokens"], seed=config["seed"])
    policy = _fresh_policy(world)

    def evaluate(model):
        meter.samples_generated = judge.calls  # the judge scores every fresh sample once
        return {"eval/point": meter.point(model, -1)}

    history = train_online_dpo(policy, world.sft, world.tokenizer, world.train_prompts, judge, online_config,
                               eval_fn=evaluate, eval_every=config["online_dpo"]["eval_every"], progress=progress)
    meter.samples_generated = judge.calls
    curve = _curve_from_history(history, "round", sft_point)
    models = {"policy": policy, "reference": world.sft}
    if judge_name == "reward_model":
        models["reward_model"] = world.reward_model
    cost = meter.cost(models, [policy], reward_model_calls=judge.calls if judge_name == "reward_model" else 0,
                      gold_judge_calls=judge.calls if judge_name == "gold" else 0,
                      pairs_seen=sum(r.get("pairs", 0) for r in history) * online_config.epochs)
    settings = {**asdict(online_config), "judge": judge_name, "eval_every": config["online_dpo"]["eval_every"]}
    return _run_record("online_dpo", "beta", beta, config["seed"], settings, curve, history, cost)


@torch.no_grad()
def run_best_of_n(world: World, config: dict, sft_point: dict) -> list[dict]:
    """Best-of-n on the held-out prompts: n SFT samples each, keep the one the reward model scores highest.

    The pool is nested: best-of-n for a larger n reuses the samples of the smaller ones and adds more, so
    one pool serves every n. Each run's cost (samples, RM calls, seconds) is what that n alone needs.
    """
    tokenizer, prompts, ns = world.tokenizer, world.eval_prompts, sorted(set(config["best_of_n"]["ns"]))
    if ns[0] < 1:
        raise ValueError(f"best-of-n needs n >= 1, got {ns}")
    meter = _Meter(world, config)
    ids: list[list[torch.Tensor]] = [[] for _ in prompts]
    scores: list[list[float]] = [[] for _ in prompts]
    runs = []
    for n in ns:
        extra = n - len(ids[0])  # samples per prompt still missing for this n
        # the first chunk uses the evaluation's seed, so best-of-1 is exactly the SFT point's samples
        new = generate(world.sft, tokenizer, [p for p in prompts for _ in range(extra)], max_new_tokens=config["max_new_tokens"],
                       temperature=1.0, seed=config["eval"]["seed"] + n - 1, batch_size=EVAL_BATCH_SIZE, progress=False,
                       return_ids=True)
        new_scores = score_texts(world.reward_model, tokenizer, [p for p in prompts for _ in range(extra)], new)
        for i in range(len(prompts)):
            ids[i] += new[i * extra:(i + 1) * extra]
            scores[i] += new_scores[i * extra:(i + 1) * extra].tolist()
        picks, best_scores = best_of_n(torch.tensor(scores))
        chosen = [ids[i][int(j)] for i, j in enumerate(picks)]
        texts = [tokenizer.decode(x, skip_special_tokens=True).strip() for x in chosen]
        gold, gold_sem = _mean_sem(torch.as_tensor(world.gold.gold_reward(texts)))
        meter.samples_generated = len(prompts) * n
        point = {"step": n, "gold_reward": gold, "gold_reward_sem": gold_sem, "kl": best_of_n_kl(n), "kl_sem": 0.0,
                 "kl_kind": "analytic_bound", "rm_score": best_scores.mean().item(),
                 "eos_rate": sum(len(x) > 0 and int(x[-1]) == tokenizer.eos_token_id for x in chosen) / len(chosen),
                 "length": sum(len(x) for x in chosen) / len(chosen), "train_seconds": meter.train_seconds(),
                 "samples_generated": len(prompts) * n}
        cost = meter.cost({"policy": world.sft, "reward_model": world.reward_model}, [],
                          reward_model_calls=len(prompts) * n)
        settings = {"n": n, "temperature": 1.0, "selection": "argmax reward-model score (first on ties)",
                    "prompts": "eval prompts", "sample_seed": "eval seed + n - 1 for the samples added at each n (nested pool)"}
        runs.append(_run_record("best_of_n", "n", n, config["seed"], settings, [dict(sft_point), point], [], cost))
    return runs


# ----------------------------------------------------------------------------- the grid
def grid(config: dict, methods: Sequence[str] = METHODS) -> list[tuple[str, float | None]]:
    """The runs of a config, in order: (method, swept value); best-of-n is one task for all its n."""
    tasks = []
    for method, knob in (("ppo", "kl_coefs"), ("dpo", "betas"), ("online_dpo", "betas")):
        if method in methods:
            tasks += [(method, float(v)) for v in config[method][knob]]
    if "best_of_n" in methods:
        tasks.append(("best_of_n", None))
    return tasks


def run_task(world: World, task: tuple[str, float | None], config: dict, sft_point: dict, progress: bool = False) -> list[dict]:
    """Run one task of :func:`grid`; returns its run records (best-of-n gives one per n)."""
    method, value = task
    seed_everything(config["seed"])
    if method == "ppo":
        return [run_ppo(world, value, config, sft_point, progress)]
    if method == "dpo":
        return [run_dpo(world, value, config, sft_point, progress)]
    if method == "online_dpo":
        return [run_online_dpo(world, value, config, sft_point, progress)]
    if method == "best_of_n":
        return run_best_of_n(world, config, sft_point)
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def sft_point(world: World, config: dict) -> dict:
    """The SFT model's own point (its KL to itself is exactly 0)."""
    meter = _Meter(world, config)
    return meter.point(world.sft, 0)


def environment(world: World, jobs: int = 1) -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "platform": platform.platform(), "device": str(next(world.sft.parameters()).device),
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


_WORKER_WORLD: World | None = None


def _load_worker_world(assets: str, device: str, threads: int, config: dict) -> None:
    """Initializer of each ``jobs > 1`` worker: one torch thread, and the world loaded once per process."""
    global _WORKER_WORLD
    torch.set_num_threads(threads)
    _WORKER_WORLD = load_world(assets, config["eval"]["prompts"], config["seed"], device)


def _task_in_worker(task, config: dict, sft: dict) -> list[dict]:
    return run_task(_WORKER_WORLD, task, config, sft)


def run_frontier(world: World, config: dict, config_name: str, methods: Sequence[str] = METHODS,
                 out: str | Path | None = None, jobs: int = 1, progress: bool = False) -> dict:
    """Run the grid of ``config`` on ``world`` and return the results (schema in the module docstring).

    ``out``: the JSON file, rewritten after every task (``"complete": false`` until the last one), so a
    crash loses at most one task. ``jobs > 1`` runs tasks in that many worker processes with one torch
    thread each; each worker loads the world from ``world.source`` (an assets folder) once.
    """
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    started, start = time.strftime("%Y-%m-%dT%H:%M:%S"), time.perf_counter()
    results = {"schema": SCHEMA, "config_name": config_name, "config": config, "seed": config["seed"],
               "assets": world.source, "environment": environment(world, jobs), "started": started,
               "total_seconds": 0.0, "complete": False,
               "data": {"train_prompts": len(world.train_prompts), "train_pairs": len(world.train_pairs),
                        "eval_prompts": len(world.eval_prompts)},
               "sft": sft_point(world, config), "runs": []}
    tasks = grid(config, methods)

    def save():
        results["total_seconds"] = time.perf_counter() - start
        if out is not None:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            Path(out).write_text(json.dumps(results, indent=1) + "\n")

    order = {task: i for i, task in enumerate(tasks)}
    if jobs <= 1:
        for task in tasks:
            results["runs"] += run_task(world, task, config, results["sft"], progress)
            print(f"[frontier] {task[0]} {task[1] if task[1] is not None else ''} done "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
            save()
    else:
        if world.source == "<in-memory>":
            raise ValueError("jobs > 1 needs a world loaded from an assets folder (workers reload it)")
        device = str(next(world.sft.parameters()).device)
        done: dict[int, list[dict]] = {}
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_load_worker_world,
                                 initargs=(world.source, device, 1, config)) as pool:
            futures = {pool.submit(_task_in_worker, task, config, results["sft"]): task for task in tasks}
            for future in as_completed(futures):
                task = futures[future]
                done[order[task]] = future.result()
                results["runs"] = [run for i in sorted(done) for run in done[i]]
                print(f"[frontier] {task[0]} {task[1] if task[1] is not None else ''} done "
                      f"({time.perf_counter() - start:.0f} s)", flush=True)
                save()
    results["complete"] = True
    save()
    check_results(results)
    return results
