"""The shipped DPO checkpoint (``data/models/dpo``, written by the asset stage ``dpo``): within budget, stored in
fp16 and loaded as fp32, and its implicit reward reproduces the numbers the manifest records (which notebook 09 checks
its own outputs against). Also the sweep results notebook 08 reads."""

import json
from collections import Counter

import pytest
import torch
from safetensors import safe_open

from pref_lab import rewardbench as E
from pref_lab.config import data_path
from pref_lab.data import read_jsonl
from pref_lab.dpo import implicit_rewards
from pref_lab.models import load_model, load_tokenizer

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.shipped]  # one_thread: see tests/conftest.py

MANIFEST = json.loads(data_path("manifest.json").read_text())
DPO = MANIFEST["assets"].get("dpo")
REBUILD = "run `python -m pref_lab.assets --stages dpo` and `python scripts/dpo_beta_sweep.py` (after every `make assets`)"


@pytest.fixture(scope="module")
def models():
    return load_model("dpo", "cpu"), load_model("sft", "cpu")


def test_checkpoint_is_shipped_and_recorded():
    assert DPO is not None, f"data/manifest.json has no 'dpo' asset: {REBUILD}"
    assert data_path("models", "dpo", "model.safetensors").exists(), REBUILD
    # the checkpoint was trained from the SFT model now shipped: the manifest's SFT fingerprint is the one it saw. Equal
    # to float32 rounding, not bit for bit: the dpo stage may run on another CPU than the sft stage did, and a sum of
    # 28k logits then differs in its 7th digit (-28430.4648 here against -28430.4668); another SFT model moves it by
    # percent
    assert DPO["metrics"]["sft_fixed_input_logit_sum"] == pytest.approx(
        MANIFEST["assets"]["sft"]["metrics"]["fixed_input_logit_sum"], rel=1e-6), \
        f"models/dpo was trained from an older SFT model: {REBUILD}"


def test_checkpoint_is_fp16_on_disk_fp32_in_memory_and_within_budget(models):
    path = data_path("models", "dpo", "model.safetensors")
    assert path.stat().st_size <= 8_000_000
    with safe_open(str(path), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    policy, sft = models
    assert {p.dtype for p in policy.parameters()} == {torch.float32}
    assert policy.config.to_dict()["n_layer"] == sft.config.n_layer and policy.config.vocab_size == sft.config.vocab_size
    assert MANIFEST["checkpoint_bytes"] <= 30_000_000


def test_checkpoint_differs_from_its_reference(models):
    policy, sft = models
    changed = max((p - q).abs().max().item() for p, q in zip(policy.parameters(), sft.parameters()))
    assert changed > 1e-3  # trained, not a copy of the SFT model (fp16 rounding alone moves weights by < 1e-3)


def test_implicit_reward_reproduces_the_recorded_rewardbench_accuracy(models):
    """Recompute one subset (80 pairs) of the shipped model's RewardBench run and compare it with the manifest."""
    policy, sft = models
    tokenizer = load_tokenizer()
    subset = "fresh-vs-rotten"
    records = [r for r in E.load_rewardbench() if r["subset"] == subset]
    rewards = implicit_rewards(policy, sft, tokenizer, *E.benchmark_rows(records), DPO["metrics"]["beta"])
    accuracy = E.results_from_scores(records, rewards)["subsets"][subset]["accuracy"]
    # equal on CPU; one flipped pair of slack for a GPU-built checkpoint's last-bit differences
    assert accuracy == pytest.approx(DPO["metrics"]["rewardbench"][subset], abs=1.01 / len(records))


def test_recorded_metrics_are_consistent():
    m = DPO["metrics"]
    # the fp16 copy ranks the held-out pairs like the fp32 policy it was saved from
    assert m["heldout256_implicit_accuracy"] == pytest.approx(m["heldout256_implicit_accuracy_fp32"], abs=0.01)
    # the score is the mean of the sections, each its subsets' accuracies weighted by their pair counts
    counts = Counter(r["subset"] for r in E.load_rewardbench())
    sections = E.section_scores({s: {"accuracy": acc, "n": counts[s]} for s, acc in m["rewardbench"].items()})
    assert sum(sections.values()) / len(sections) == pytest.approx(m["rewardbench_score"], abs=1e-3)


def test_beta_sweep_results_are_complete():
    sweep = json.loads(data_path("results", "dpo_beta_sweep.json").read_text())
    betas = sorted(r["beta"] for r in sweep["runs"])
    assert sweep["schema"] == "pref_lab.dpo_beta_sweep/2" and len(betas) >= 3, REBUILD
    assert DPO["metrics"]["beta"] in betas
    for key in ("steps", "batch_size", "lr", "eval_prompts", "heldout_sample"):  # the checkpoint's recipe
        assert sweep["recipe"][key] == DPO["recipe"][key], key
    assert sweep["recipe"]["seed"] == DPO["seed"]
    sft_points = {json.dumps(r["curve"][0], sort_keys=True) for r in sweep["runs"]}
    assert len(sft_points) == 1  # every run starts from the same SFT point (common random numbers)
    # ... and it is the SFT point of the shipped world: the checkpoint's stage measured it on the same held-out prompts
    assert sweep["runs"][0]["curve"][0]["gold_reward"] == pytest.approx(DPO["metrics"]["sft_gold_reward"], abs=1e-4), REBUILD
    assert sweep["data"]["train_pairs"] == len(read_jsonl(data_path("preferences", "train.jsonl"))), REBUILD
    for run in sweep["runs"]:
        assert run["final"] == run["curve"][-1] and run["final"]["step"] == sweep["recipe"]["steps"]
        assert [row["step"] for row in run["history"]] == list(range(1, sweep["recipe"]["steps"] + 1))  # one row a step
    # the run at the checkpoint's beta has the checkpoint's recipe and seed: its fp32 policy ranks notebook 09's sample
    # alike (to the last flipped pair: the weights agree to float rounding, which depends on thread count and memory)
    same = next(r for r in sweep["runs"] if r["beta"] == DPO["metrics"]["beta"])
    assert same["heldout"]["rewards/accuracies"] == pytest.approx(DPO["metrics"]["heldout256_implicit_accuracy_fp32"],
                                                                  abs=1.01 / DPO["recipe"]["heldout_sample"])
