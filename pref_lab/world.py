"""The held-out evaluation every notebook and script shares: which prompts, which settings, which numbers.

A policy is measured on review instructions for the *held-out* two thirds of the test-split movies (never seen in
training: the preference pairs come from validation-split movies, the reward model's extra pairs from train-split
ones).
One temperature-1 sample y_i ~ pi(. | x_i) per held-out prompt x_i, then

    gold_reward = (1/N) sum_i r_gold(y_i)                            what "the human" thinks of the samples
    kl          = (1/N) sum_i sum_t (log pi - log pi_ref)(y_i,t)     their sequence KL to the reference (k1)
    rm_score    = (1/N) sum_i r_RM(x_i, y_i)                         what the reward model (the proxy) thinks
    eos_rate, length                                                  share of samples that finished; mean tokens

each mean with its standard error over prompts. The sampling seed is the same at every evaluation (common
random numbers): two policies are compared on the same prompts with the same random draws, and the SFT model
always gives the same point.

The one rule for held-out prompts (:func:`heldout_prompts`): every template of
:data:`pref_lab.sft.REVIEW_INSTRUCTIONS` for every held-out test-split movie, in one fixed shuffled order; a run
that needs ``n`` prompts takes the first ``n``, so smaller sets are nested in larger ones.

Settings are to be chosen on **development** prompts instead (:func:`dev_prompts`): the same rule on a fixed third
of the test-split movies (:data:`DEV_SHARE`), which are never held-out prompts. The development movies are as
unseen as the held-out ones: no policy trains on them, the SFT model never read their reviews, and no reward model
trained on their samples (train-split movies would fail all of that: SFT data and the RM's extra pairs). What is
chosen there so far: PPO's ``kl_coef`` and ``missing_eos_penalty`` (``scripts/tune_ppo.py``). PPO's other settings
and the DPO recipe come from earlier worlds of the course and were not re-tuned; the DPO beta sweep only reports.
``preferences/test.jsonl`` (the reward model's held-out *pairs*) covers every test-split movie, development ones
included: it scores reward models, it never chooses a policy setting.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from .config import data_path, get_device, same_device
from .data import CORPUS_FILE, read_jsonl
from .judge import load_gold_judge
from .models import (
    Unfinished,
    check_finite_parameters,
    completion_texts,
    eos_rate,
    evaluating,
    format_prompt,
    generate,
    load_model,
    load_tokenizer,
)
from .online import log_ratios
from .reward_model import load_reward_model, score_texts
from .sft import REVIEW_INSTRUCTIONS

# The evaluation settings, named once. MAX_NEW_TOKENS is also the length limit of every training rollout that is
# compared with an evaluation, so every method writes text of the same length limit.
MAX_NEW_TOKENS = 48
EVAL_SEED = 1234  # the sampling seed of every evaluation
EVAL_BATCH_SIZE = 64  # sampling batch (the same batches give the same samples for a seed)
HELDOUT_ORDER_SEED = 0  # the fixed order of the held-out prompts (never a run's training seed)
DEV_SHARE = 1 / 3  # of the test-split movies, set aside for development (tuning) prompts: 48 of the 144, 96 held out
N_EVAL_PROMPTS = 128  # load_world's default size (notebooks 06, 08, 10, 12 use 128 on the tiny preset; the frontier 256)


@dataclass
class World:
    """What measuring a policy needs: the tokenizer, the SFT model (the reference of every run), the gold judge
    (``gold_reward(texts) -> (N,)``), the reward model (the proxy, optional) and the held-out prompts."""

    tokenizer: object
    sft: torch.nn.Module
    gold: object
    reward_model: torch.nn.Module | None
    eval_prompts: list[str]
    source: str = "<in-memory>"


def _test_movies(corpus_rows: Sequence[dict], part: str) -> list[str]:
    """The test-split movie titles of ``part``: "dev" (the first :data:`DEV_SHARE` of them, at least one, in a fixed
    shuffled order) or "heldout" (the rest)."""
    movies = sorted({r["movie_title"] for r in corpus_rows if r["split"] == "test"})
    random.Random(HELDOUT_ORDER_SEED).shuffle(movies)
    if len(movies) < 2:
        raise ValueError(f"{len(movies)} test-split movies: need at least 2, one for development and one held out")
    n_dev = max(1, int(len(movies) * DEV_SHARE))
    return movies[:n_dev] if part == "dev" else movies[n_dev:]


def _prompts(corpus_rows: Sequence[dict], tokenizer: PreTrainedTokenizerBase, n: int | None, part: str) -> list[str]:
    movies = _test_movies(corpus_rows, part)
    prompts = [format_prompt(tokenizer, template.format(title=title)) for title in sorted(movies)
               for template in REVIEW_INSTRUCTIONS]
    if n is not None and not 0 < n <= len(prompts):
        raise ValueError(f"asked for {n} {part} prompts, but there are {len(prompts)} "
                         f"({len(movies)} movies x {len(REVIEW_INSTRUCTIONS)} templates)")
    random.Random(HELDOUT_ORDER_SEED).shuffle(prompts)
    return prompts[:n]


def heldout_prompts(corpus_rows: Sequence[dict], tokenizer: PreTrainedTokenizerBase, n: int | None = None) -> list[str]:
    """The first ``n`` (all if None) held-out review prompts, chat-formatted, in the one fixed order (module docstring):
    every template for every held-out test-split movie (the test movies less the development ones).

    Made from the corpus, so they do not depend on which samples ``preferences/test.jsonl`` kept; they are a subset
    of that file's prompts. Raises ``ValueError`` if ``n`` is more than there are.
    """
    return _prompts(corpus_rows, tokenizer, n, "heldout")


def dev_prompts(corpus_rows: Sequence[dict], tokenizer: PreTrainedTokenizerBase, n: int | None = None) -> list[str]:
    """The first ``n`` development prompts: the same rule on the :data:`DEV_SHARE` of development movies, disjoint
    from :func:`heldout_prompts`. Tune on these; report on the held-out ones."""
    return _prompts(corpus_rows, tokenizer, n, "dev")


def load_world(assets: str | Path | None = None, n_prompts: int = N_EVAL_PROMPTS, device: str | torch.device | None = None,
               reward_model: bool = True) -> World:
    """Load the world from an assets folder (default ``data/``, or one built by ``python -m pref_lab.assets``) onto
    ``device``, with the first ``n_prompts`` held-out prompts."""
    assets = Path(assets) if assets is not None else data_path()
    device = get_device(device)
    tokenizer = load_tokenizer(assets / "tokenizer")
    return World(tokenizer=tokenizer, sft=load_model(assets / "models" / "sft", device),
                 gold=load_gold_judge(assets / "judges" / "gold"),
                 reward_model=load_reward_model(assets / "models" / "rm", device) if reward_model else None,
                 eval_prompts=heldout_prompts(read_jsonl(assets / CORPUS_FILE), tokenizer, n_prompts), source=str(assets))


def unique_prompts(pairs: Sequence[dict]) -> list[str]:
    """The distinct prompts of a preference set, in order of first appearance."""
    return list(dict.fromkeys(p["prompt"] for p in pairs))


def mean_sem(x) -> tuple[float, float]:
    """Mean and standard error of the mean, s / sqrt(n) (0 for a single value), of a 1-D tensor or sequence."""
    x = torch.as_tensor(x).double()
    sem = x.std().item() / math.sqrt(len(x)) if len(x) > 1 else 0.0
    return x.mean().item(), sem


def paired_difference(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Mean and *paired* standard error of a - b, for two policies measured on the same prompts (with the same
    sampling seed): the s.e. of the per-prompt differences, smaller than combining two independent s.e.'s whenever
    the prompts' difficulty is shared."""
    if len(a) != len(b) or not len(a):
        raise ValueError(f"paired values must have the same, non-zero length, got {len(a)} and {len(b)}")
    return mean_sem(torch.as_tensor(a, dtype=torch.float64) - torch.as_tensor(b, dtype=torch.float64))


def score_samples(world: World, completion_ids: Sequence[torch.Tensor], per_prompt: bool = False) -> dict:
    """Gold reward (mean and s.e.), EOS rate and mean length of given samples: what every point reports next to
    its gold reward, whatever drew the samples (:func:`evaluate_policy`, best-of-n). ``per_prompt`` adds
    ``gold_rewards``, the list of each sample's gold reward (for :func:`paired_difference`)."""
    rewards = world.gold.gold_reward(completion_ids)  # ids: a cut-off sample is judged as one
    gold, gold_sem = mean_sem(rewards)
    return {"gold_reward": gold, "gold_reward_sem": gold_sem, **({"gold_rewards": rewards.tolist()} if per_prompt else {}),
            "eos_rate": eos_rate(completion_ids, world.tokenizer.eos_token_id),
            "length": sum(len(x) for x in completion_ids) / len(completion_ids)}


@torch.no_grad()
def evaluate_policy(policy, world: World, reference: torch.nn.Module | None = None, *,
                    max_new_tokens: int = MAX_NEW_TOKENS, seed: int = EVAL_SEED, per_prompt: bool = False,
                    examples: int = 0) -> dict:
    """Measure ``policy`` on the world's held-out prompts (module docstring): one sample per prompt.

    ``reference``: the model the KL is measured against (default: the world's SFT model), on the policy's device.
    Returns ``gold_reward``, ``kl`` (each with its standard error ``*_sem`` over prompts), ``kl_kind`` ("sampled"),
    ``rm_score`` (the proxy's view of the same samples; NaN without a reward model), ``eos_rate``, ``length`` (mean
    completion tokens, EOS included) and ``samples`` (how many were drawn); with ``per_prompt`` also
    ``gold_rewards`` and ``rm_scores`` (one per prompt, for :func:`paired_difference`; ``rm_scores`` only with a
    reward model). ``examples`` > 0 adds ``examples``: the first that many completions as the judge reads them
    (:func:`pref_lab.models.completion_texts`: a cut-off one is marked unfinished), to show next to the numbers.
    Modes are restored after.
    """
    reference = world.sft if reference is None else reference
    same_device(policy=policy, reference=reference)
    check_finite_parameters(policy, "evaluate_policy")  # a NaN model would crash inside the sampler
    tokenizer, prompts = world.tokenizer, world.eval_prompts
    with evaluating(policy, reference):
        ids = generate(policy, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=1.0,
                       batch_size=EVAL_BATCH_SIZE, seed=seed, progress=False, return_ids=True)
        kl = log_ratios(policy, reference, tokenizer, prompts, ids, batch_size=EVAL_BATCH_SIZE)  # per sample (k1)
    kl_mean, kl_sem = mean_sem(kl)
    scores = score_samples(world, ids, per_prompt)
    rm_scores = score_texts(world.reward_model, tokenizer, prompts, ids) if world.reward_model is not None else None
    point = {"gold_reward": scores["gold_reward"], "gold_reward_sem": scores["gold_reward_sem"], "kl": kl_mean,
             "kl_sem": kl_sem, "kl_kind": "sampled",
             "rm_score": rm_scores.mean().item() if rm_scores is not None else math.nan, "eos_rate": scores["eos_rate"],
             "length": scores["length"], "samples": len(ids)}
    if per_prompt:
        point["gold_rewards"] = scores["gold_rewards"]
        if rm_scores is not None:
            point["rm_scores"] = rm_scores.tolist()
    if examples > 0:
        point["examples"] = example_records(tokenizer, ids[:examples])
    return point


def example_records(tokenizer, completion_ids: Sequence[torch.Tensor]) -> list[dict]:
    """Samples as results files store them, ``{"text", "finished"}`` each: the text as the judge reads it
    (:func:`pref_lab.models.completion_texts`), and whether the sample ended with EOS."""
    return [{"text": str(t), "finished": not isinstance(t, Unfinished)} for t in completion_texts(tokenizer, completion_ids)]


def sft_point(world: World, **settings) -> dict:
    """The SFT model's own point, step 0 of every curve: :func:`evaluate_policy` of the SFT model against itself
    (its KL is exactly 0, and with the shared sampling seed every run starts from these very samples)."""
    return {"step": 0, **evaluate_policy(world.sft, world, **settings)}

