"""The shipped results of scripts/overoptimise.py, scripts/tune_ppo.py, scripts/tune_rm.py and scripts/online_2x2.py:
measured on the shipped weights, with the schedule and the sizes their docstrings promise, and chosen by their own rules."""

from __future__ import annotations

import json
import math

import pytest

from pref_lab.assets import RECIPES
from pref_lab.config import data_path
from pref_lab.ppo import PPOConfig

pytestmark = pytest.mark.shipped  # reads the shipped data/


def manifest_sha(asset: str, path: str) -> str:
    return json.loads(data_path("manifest.json").read_text())["assets"][asset]["files"][path]["sha256"]


def read(name: str) -> dict:
    return json.loads(data_path("results", name).read_text())  # shipped: a missing file is a failure


def test_overoptimisation_runs_are_of_the_shipped_world_and_complete():
    over = read("ppo_overoptimisation.json")
    rerun = "re-run scripts/overoptimise.py (after every `make assets` that changes the SFT model or the RM)"
    assert over["world"] == {name: manifest_sha(name, f"models/{name}/model.safetensors") for name in ("sft", "rm")}, rerun
    config = over["config"]
    assert config["kl_coef"] == 0.0 and config["steps"] == 36
    # every other setting is notebook 06's PPOConfig: only beta and the iterations differ from section 4's run
    defaults = PPOConfig().__dict__
    assert {k: v for k, v in config.items() if k not in ("kl_coef", "steps")} == {
        k: v for k, v in defaults.items() if k not in ("kl_coef", "steps")}
    assert sorted(run["seed"] for run in over["runs"]) == [0, 1, 2]
    for run in over["runs"]:
        assert [p["step"] for p in run["curve"]] == list(range(0, 37, over["eval_every"]))
        assert run["curve"][0] == over["sft"] and [row["step"] for row in run["history"]] == list(range(1, 37))
        for p in run["curve"]:
            assert len(p["gold_rewards"]) == len(p["rm_scores"]) == over["eval_prompts"]
            assert len(p["show"]) == len(over["show_prompts"])


def test_ppo_tuning_chose_the_defaults_by_its_rule(load_script):
    tuning = read("ppo_tuning.json")
    assert tuning["world"] == {"sft": manifest_sha("sft", "models/sft/model.safetensors"),
                               "rm": manifest_sha("rm", "models/rm/model.safetensors")}, "re-run scripts/tune_ppo.py"
    chosen = load_script("tune_ppo").choose(tuning["runs"], tuning["sft_dev"]["length"])
    assert chosen["settings"] == tuning["chosen"]
    assert {k: getattr(PPOConfig(), k) for k in tuning["chosen"]} == tuning["chosen"]


def test_rm_tuning_never_read_test_pairs_and_records_its_choice(load_script):
    tuning = read("rm_tuning.json")
    assert tuning["world"]["sft"] == manifest_sha("sft", "models/sft/model.safetensors"), "re-run scripts/tune_rm.py"
    assert tuning["world"]["pairs"] == {f: manifest_sha("preferences", f)
                                        for f in ("preferences/train.jsonl", "preferences/rm_extra.jsonl.gz")}
    metrics = json.loads(data_path("manifest.json").read_text())["assets"]["oracle"]["metrics"]
    # the same split as the feature oracle's L2 choice: its validation pairs are these
    assert tuning["validation_pairs"] == metrics["validation_pairs"]
    assert tuning["train_pairs"] + tuning["validation_pairs"] == metrics["train_pairs"]
    script = load_script("tune_rm")
    assert tuning["recipe"] == RECIPES["full"]["rm"] and [r["change"] for r in tuning["runs"]] == script.GRID
    best = max(tuning["runs"], key=lambda r: r["validation"]["accuracy"])  # the first of equals, as the script
    assert tuning["chosen"] == best["change"]
    for run in tuning["runs"]:
        assert run["curve"][-1]["step"] == tuning["steps"] and run["validation"] == run["curve"][-1]


def test_online_2x2_has_every_arm_and_seed_at_one_budget(load_script):
    """scripts/online_2x2.py: the shipped world, every arm x >= 3 seeds, the same steps and pairs for every arm,
    and counts that match what each arm is said to consume."""
    script, shipped = load_script("online_2x2"), read("online_2x2.json")
    assert shipped["world"] == {"sft": manifest_sha("sft", "models/sft/model.safetensors"),
                                "rm": manifest_sha("rm", "models/rm/model.safetensors"),
                                "train_pairs": manifest_sha("preferences", "preferences/train.jsonl")}, \
        "re-run scripts/online_2x2.py (after every `make assets` that changes the SFT model, the RM or the pairs)"
    settings = shipped["settings"]
    assert (settings["steps"], settings["batch"], settings["lr"], settings["beta"], settings["eval_every"]) == (
        script.STEPS, script.BATCH, script.LR, script.BETA, script.EVAL_EVERY)
    assert settings["live_steps"] % settings["eval_every"] == 0  # notebook 10's live slice ends on a shipped point
    seeds = {arm: sorted(run["seed"] for run in shipped["runs"] if run["arm"] == arm) for arm in script.ARMS}
    assert all(s == [0, 1, 2] for s in seeds.values()), seeds
    pool = json.loads(data_path("manifest.json").read_text())["assets"]["preferences"]["metrics"]["train"]["pairs"]
    for run in shipped["runs"]:
        c, budget = run["counts"], settings["steps"] * settings["batch"]
        assert [p["step"] for p in run["curve"]] == list(range(settings["eval_every"], settings["steps"] + 1,
                                                               settings["eval_every"]))
        assert len(run["curve"][-1]["gold_rewards"]) == settings["eval_prompts"]
        assert len(run["shift"]["offline"]) == len(run["shift"]["fresh"]) == settings["shift_prompts"]
        if run["arm"].startswith("offline/"):
            assert (c["gradient_steps"], c["pairs_trained"], c["samples_generated"], c["offline_pool_pairs"]) == (
                settings["steps"], budget, 0, pool)
        else:  # one round per step, one pair per prompt unless the two samples tie or are identical
            assert c["samples_generated"] == 2 * budget and c["offline_pool_pairs"] == 0
            assert c["gradient_steps"] == settings["steps"] and 0.9 * budget <= c["pairs_trained"] <= budget
        labels = {"offline/human": (0, 0, 0), "offline/rm": (0, pool, 0), "fresh/rm": (0, c["pairs_trained"], 0),
                  "fresh/human": (c["pairs_trained"], 0, 0), "fresh/gold": (0, 0, c["pairs_trained"])}[run["arm"]]
        assert (c["new_human_labels"], c["rm_labels"], c["gold_labels"]) == labels, run["arm"]
        assert run["arm"] != "fresh/gold" or run["label_agreement"] == 1.0


def test_implicit_vs_explicit_is_at_equal_information_and_reproduces_the_shipped_dpo():
    ive = read("implicit_vs_explicit.json")
    assets = json.loads(data_path("manifest.json").read_text())["assets"]
    rerun = "re-run scripts/implicit_vs_explicit.py (after every `make assets` that changes the SFT model or the pairs)"
    assert ive["world"] == {"sft": manifest_sha("sft", "models/sft/model.safetensors"),
                            "train_pairs": manifest_sha("preferences", "preferences/train.jsonl"),
                            "recipes": {"dpo": RECIPES["full"]["dpo"], "rm": RECIPES["full"]["rm"]}}, rerun
    assert sorted(r["seed"] for r in ive["runs"]) == [0, 1, 2]
    dpo = RECIPES["full"]["dpo"]
    n_test = assets["rm"]["metrics"]["test_pairs"]
    for run in ive["runs"]:
        # the explicit model saw exactly DPO's pairs: one epoch's draws are distinct, so every drawn pair once
        assert run["pairs_drawn"] == run["distinct_pairs"] == dpo["steps"] * dpo["batch_size"]
        for model in run["models"].values():
            assert len(model["heldout_correct"]) == n_test
            assert model["heldout_accuracy"] == pytest.approx(sum(model["heldout_correct"]) / n_test)
    seed0 = next(r for r in ive["runs"] if r["seed"] == 0)["models"]["implicit (DPO)"]
    # seed 0 is the shipped checkpoint's run (the checkpoint is its fp16 rounding)
    assert seed0["heldout_accuracy"] == pytest.approx(assets["dpo"]["metrics"]["heldout_implicit_accuracy"], abs=0.005)


def test_smollm_bridge_is_of_the_shipped_world_and_measured_before_and_after(load_script):
    """scripts/smollm_bridge.py: DPO with LoRA on SmolLM2 trained on the shipped pairs, with the counts, held-out
    accuracies and judged generations before and after that notebook 12 reads."""
    script, shipped = load_script("smollm_bridge"), read("smollm_bridge.json")
    assert shipped["world"] == script.world_id(json.loads(data_path("manifest.json").read_text())["assets"]), \
        "re-run scripts/smollm_bridge.py"
    s = shipped["settings"]
    assert (s["beta"], s["lr"], s["batch_pairs"], s["seed"]) == (script.BETA, script.LR, script.BATCH, script.SEED)
    assert shipped["counts"]["pairs_trained"] == s["steps"] * s["batch_pairs"] == len(shipped["history"]) * s["batch_pairs"]
    assert shipped["history"][0]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # step 1: policy = reference
    before, after = shipped["held_out"]["before"], shipped["held_out"]["after"]
    assert "implicit" not in before and {"implicit", "avg_logprob"} <= set(after)  # no implicit reward before training
    gens = shipped["generations"]
    for side in ("before", "after"):
        assert len(gens[side]["gold_rewards"]) == s["gen_prompts"] and 0 <= gens[side]["eos_rate"] <= 1
    gain, _ = gens["gold_gain_paired"]
    assert gain == pytest.approx(sum(gens["after"]["gold_rewards"]) / s["gen_prompts"]
                                 - sum(gens["before"]["gold_rewards"]) / s["gen_prompts"], abs=1e-6)


def test_loss_zoo_chose_on_development_prompts_and_has_every_seed(load_script):
    """scripts/loss_zoo.py: the shipped world and settings; each loss's learning rate follows from its development
    runs alone by the script's rule; every loss has every seed at that rate, evaluated along training."""
    script, shipped = load_script("loss_zoo"), read("loss_zoo.json")
    manifest = json.loads(data_path("manifest.json").read_text())["assets"]
    assert shipped["world"]["sft"] == manifest_sha("sft", "models/sft/model.safetensors"), "re-run scripts/loss_zoo.py"
    assert shipped["world"]["train_pairs"] == manifest_sha("preferences", "preferences/train.jsonl")
    assert shipped["world"]["gold"] == {f: v["sha256"] for f, v in sorted(manifest["judge_gold"]["files"].items())}
    s = shipped["settings"]
    assert s["lrs"] == script.LRS and s["seeds"] == script.SEEDS and s["dev_seed"] not in script.SEEDS
    assert s["losses"] == {k: v[1] for k, v in script.LOSSES.items()}
    dev = [r for r in shipped["runs"] if r["split"] == "dev"]
    assert sorted((r["loss"], r["lr"]) for r in dev) == sorted((k, lr) for k in script.LOSSES for lr in script.LRS)
    for name in script.LOSSES:
        assert shipped["chosen_lr"][name] == script.choose_lr(shipped["runs"], name, shipped["sft"]["dev"]["eos_rate"])
        held = [r for r in shipped["runs"] if r["split"] == "heldout" and r["loss"] == name]
        assert sorted(r["seed"] for r in held) == script.SEEDS and {r["lr"] for r in held} == {shipped["chosen_lr"][name]}
        for r in held:
            steps = [p["step"] for p in r["curve"]]
            assert steps == list(range(s["eval_every"], s["steps"] + 1, s["eval_every"])), steps
            assert all(len(p["gold_rewards"]) == s["eval_prompts"] for p in r["curve"])


def test_loss_zoo_rule_by_hand(load_script):
    choose = load_script("loss_zoo").choose_lr
    runs = [{"split": "dev", "loss": "L", "lr": lr, "eos_rate": eos, "gold_reward": g}
            for lr, eos, g in ((3e-5, 0.9, 0.70), (1e-4, 0.9, 0.705), (3e-4, 0.5, 2.0))]
    assert choose(runs, "L", 0.9) == 3e-5  # 3e-4 degenerates (EOS far below SFT's); 1e-4 is within the tie of 3e-5
    runs[1]["gold_reward"] = 0.80
    assert choose(runs, "L", 0.9) == 1e-4
    assert choose([dict(r, eos_rate=0.1) for r in runs], "L", 0.9) == 3e-5  # none qualifies: the smallest rate
