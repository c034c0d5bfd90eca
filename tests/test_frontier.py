"""The frontier runner: its tiny configuration runs end to end in seconds on a tiny world written to disk
(random GPT-2s, a small BPE tokenizer, a hand-made gold judge) and writes a results file with the documented
schema, whose counts match the configuration it ran."""

import copy
import json
import math
import time
from pathlib import Path

import pytest
import torch
from conftest import import_script
from transformers import GPT2LMHeadModel

from pref_lab.data import read_jsonl, write_jsonl
from pref_lab.judge import BagOfWordsJudge, GoldJudge, RaterRules
from pref_lab.models import format_prompt, generate, load_model, load_tokenizer, make_config, save_model, train_tokenizer
from pref_lab.reward_model import init_reward_model
from pref_lab.sft import REVIEW_INSTRUCTIONS
from pref_lab.world import heldout_prompts

FRONTIER = import_script("frontier")
CONFIGS, SCHEMA, check_results = FRONTIER.CONFIGS, FRONTIER.SCHEMA, FRONTIER.check_results

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py

ROOT = Path(__file__).resolve().parent.parent
GOOD, BAD = ["a charming comedy", "great acting", "warm and funny"], ["a dull mess", "too long", "boring plot"]
MOVIES = ["Alpha Dog", "Big Fish", "Cold Mountain", "Dark Water", "Eight Below", "Fast Five"]


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    """A world folder laid out like data/: tokenizer, models/sft, models/rm, judges/gold, preferences, corpus."""
    out = tmp_path_factory.mktemp("world")
    corpus = [{"movie_id": m.lower().replace(" ", "_"), "movie_title": m, "kind": "review", "label": "fresh", "text": t,
               "split": split} for i, m in enumerate(MOVIES) for t, split in ((GOOD[i % 3], "test" if i < 4 else "val"),)]
    write_jsonl(corpus, out / "corpus" / "corpus.jsonl")
    tokenizer = train_tokenizer((GOOD + BAD + [f"Write a review of {m}. What did you think of it?" for m in MOVIES]) * 3,
                                vocab_size=300)
    tokenizer.save_pretrained(str(out / "tokenizer"))
    torch.manual_seed(0)
    save_model(GPT2LMHeadModel(make_config(tokenizer, n_layer=1, n_embd=16, n_head=2, n_positions=64)),
               out / "models" / "sft", tokenizer)
    save_model(init_reward_model(out / "models" / "sft"), out / "models" / "rm", tokenizer)
    vocab = ["charming", "great", "warm", "funny", "dull", "mess", "long", "boring"]
    sentiment = BagOfWordsJudge(vocab, torch.tensor([1.0, 1.0, 0.5, 0.5, -1.0, -1.0, -0.5, -0.5]), 0.1, ("rotten", "fresh"))
    # the world's judge form, its reader the tiny SFT model (a fluency floor this low never charges: the tests here
    # are about the grid's bookkeeping, tests/test_gold_judge.py about the judge)
    rules = RaterRules(bound=3.0, fluency_floor=-1e9, fluency_weight=1.0, max_fluency_penalty=1.0, repetition_weight=1.0,
                       unfinished_penalty=1.0)
    GoldJudge(sentiment, load_model(out / "models" / "sft"), tokenizer, rules).save(out / "judges" / "gold", "models/sft")
    pairs = [{"prompt": format_prompt(tokenizer, t.format(title=m)), "chosen": g, "rejected": b,
              "gold_chosen": 1.0, "gold_rejected": -1.0, "p_chosen": 0.88}
             for m in MOVIES[4:] for t in REVIEW_INSTRUCTIONS for g, b in zip(GOOD, BAD)]
    write_jsonl(pairs, out / "preferences" / "train.jsonl")
    # the reward model's extra pairs (other movies' prompts), which offline DPO's "rm_pairs" pool adds
    extra = [{**pair, "prompt": format_prompt(tokenizer, REVIEW_INSTRUCTIONS[0].format(title=m))}
             for m in MOVIES[:2] for pair in pairs[:2]]
    write_jsonl(extra, out / "preferences" / "rm_extra.jsonl.gz")
    return out


@pytest.fixture(scope="module")
def tiny_results(world_dir, tmp_path_factory, load_script):
    out = tmp_path_factory.mktemp("results") / "frontier.json"
    start = time.perf_counter()
    results = load_script("frontier").main(["--tiny", "--assets", str(world_dir), "--out", str(out), "--threads", "1"])
    return results, out, time.perf_counter() - start


def test_tiny_configuration_completes_in_seconds_and_writes_the_schema(tiny_results):
    results, out, seconds = tiny_results
    assert seconds < 20, f"the tiny frontier took {seconds:.1f} s"  # the grid itself takes ~1-2 s on 2 busy cores
    assert json.loads(out.read_text()) == results
    check_results(results)
    assert results["schema"] == SCHEMA and results["config_name"] == "tiny" and results["complete"]
    assert results["config"] == CONFIGS["tiny"] and results["seeds"] == CONFIGS["tiny"]["seeds"] == [0]
    assert len(results["tasks_done"]) == len(FRONTIER.grid(CONFIGS["tiny"])) == 4 + 4 + 2 + 1
    for key in ("python", "torch", "transformers", "device", "threads", "jobs"):
        assert key in results["environment"], key
    assert results["data"] == {"train_prompts": 6, "train_pairs": 18, "eval_prompts": 4}


def test_the_grid_has_every_run_with_its_exact_settings(tiny_results):
    results, _, _ = tiny_results
    config = CONFIGS["tiny"]
    by_method = {}
    for run in results["runs"]:
        by_method.setdefault(run["method"], []).append(run)
    assert [r["value"] for r in by_method["ppo"]] == config["ppo"]["kl_coefs"]
    assert [r["value"] for r in by_method["dpo"]] == config["dpo"]["betas"]
    assert [r["value"] for r in by_method["online_dpo"]] == config["online_dpo"]["betas"]
    assert [r["value"] for r in by_method["best_of_n"]] == config["best_of_n"]["ns"]
    assert len(config["ppo"]["kl_coefs"]) >= 4 and len(config["dpo"]["betas"]) >= 4
    assert len(config["online_dpo"]["betas"]) >= 2
    for run in by_method["ppo"]:
        assert run["settings"]["kl_coef"] == run["value"] and run["settings"]["seed"] == run["seed"] == 0
        assert run["settings"]["steps"] == config["ppo"]["steps"]
    for run in by_method["dpo"] + by_method["online_dpo"]:
        assert run["settings"]["beta"] == run["value"]


def test_curves_start_at_the_sft_point_and_are_evaluated_on_schedule(tiny_results):
    results, _, _ = tiny_results
    sft = results["sft"]
    assert sft["kl"] == 0.0 and sft["step"] == 0 and sft["samples_generated"] == 0  # the SFT model vs itself
    config = CONFIGS["tiny"]
    last = {"ppo": config["ppo"]["steps"], "dpo": config["dpo"]["steps"], "online_dpo": config["online_dpo"]["rounds"]}
    for run in results["runs"]:
        assert run["curve"][0] == sft and run["final"] == run["curve"][-1]
        if run["method"] in last:
            steps, every = [p["step"] for p in run["curve"]], config[run["method"]]["eval_every"]
            assert steps == sorted(set(list(range(0, last[run["method"]], every)) + [last[run["method"]]])), run["name"]
            assert run["settings"]["eval_every"] == every
            assert all(p["kl_kind"] == "sampled" for p in run["curve"])
            assert run["cost"]["eval_samples"] == 4 * (len(steps) - 1)  # one sample per eval prompt per evaluation


def test_costs_count_what_each_method_used(tiny_results):
    results, _, _ = tiny_results
    config, n_eval = CONFIGS["tiny"], results["data"]["eval_prompts"]
    for run in results["runs"]:
        cost = run["cost"]
        assert cost["wall_seconds"] >= cost["train_seconds"] >= 0 and cost["eval_seconds"] >= 0
        assert cost["n_models"] == len(cost["models_in_memory"]) and cost["peak_rss_mb"] > 0
        if run["method"] == "ppo":
            rollouts = config["ppo"]["steps"] * config["ppo"]["batch_size"]
            assert cost["samples_generated"] == cost["reward_model_calls"] == rollouts
            assert cost["models_in_memory"] == ["policy", "reference", "reward_model", "value_model"]
        elif run["method"] == "dpo":
            assert cost["samples_generated"] == cost["reward_model_calls"] == 0
            assert cost["pairs_seen"] == config["dpo"]["steps"] * config["dpo"]["batch_size"]
            assert cost["models_in_memory"] == ["policy", "reference"]
            assert cost["parameters_in_memory"] == 2 * cost["trainable_parameters"]
        elif run["method"] == "online_dpo":
            c = config["online_dpo"]
            fresh = c["rounds"] * c["prompts_per_round"] * c["completions_per_prompt"]
            assert cost["samples_generated"] == cost["reward_model_calls"] == run["final"]["samples_generated"] == fresh
            assert cost["models_in_memory"] == ["policy", "reference", "reward_model"]
        else:
            n = run["value"]
            assert cost["samples_generated"] == cost["reward_model_calls"] == n_eval * n
            assert run["final"]["kl"] == pytest.approx(math.log(n) - (n - 1) / n)
            assert run["final"]["kl_kind"] == "analytic_bound"


def test_best_of_one_is_a_plain_sft_sample(tiny_results, world_dir):
    """n = 1 keeps the only sample: its gold reward is the SFT samples', recomputed here independently (and, with
    the evaluation's seed, the SFT point's)."""
    results, _, _ = tiny_results
    tokenizer = load_tokenizer(world_dir / "tokenizer")
    sft = load_model(world_dir / "models" / "sft", "cpu")
    corpus = [json.loads(line) for line in (world_dir / "corpus" / "corpus.jsonl").read_text().splitlines()]
    prompts = heldout_prompts(corpus, tokenizer, CONFIGS["tiny"]["eval"]["prompts"])
    texts = generate(sft, tokenizer, prompts, max_new_tokens=CONFIGS["tiny"]["max_new_tokens"],
                     seed=CONFIGS["tiny"]["eval"]["seed"], progress=False)
    gold = GoldJudge.load(world_dir / "judges" / "gold").gold_reward(texts).mean().item()
    best_of_one = next(r for r in results["runs"] if r["name"] == "best_of_n/n=1")
    assert best_of_one["final"]["gold_reward"] == pytest.approx(gold, abs=1e-6)
    assert best_of_one["final"]["gold_reward"] == results["sft"]["gold_reward"]


def test_a_run_gives_the_same_numbers_alone_as_in_the_grid(tiny_results, world_dir, tmp_path, load_script):
    """Every run reseeds: run on its own (CLI overrides), PPO at one KL coefficient reproduces its grid curve."""
    results, _, _ = tiny_results
    alone = load_script("frontier").main(["--tiny", "--assets", str(world_dir), "--out", str(tmp_path / "one.json"),
                                          "--methods", "ppo", "--set", "ppo.kl_coefs=[0.05]", "--threads", "1"])
    assert alone["config"]["ppo"]["kl_coefs"] == [0.05] and len(alone["runs"]) == 1
    numbers = lambda run: [{k: v for k, v in p.items() if k != "train_seconds"} for p in run["curve"]]
    in_grid = next(r for r in results["runs"] if r["name"] == "ppo/kl_coef=0.05")
    assert numbers(alone["runs"][0]) == numbers(in_grid)


def test_seeds_are_separate_runs_and_seed_0_is_the_grids_run(tiny_results, world_dir, tmp_path, load_script):
    """--seeds runs every setting once per training seed: seed 0 reproduces the grid's run, seed 1 is another run."""
    results, _, _ = tiny_results
    two = load_script("frontier").main(["--tiny", "--assets", str(world_dir), "--out", str(tmp_path / "two.json"),
                                        "--methods", "dpo", "--set", "dpo.betas=[0.1]", "--seeds", "0,1", "--threads", "1"])
    assert two["seeds"] == [0, 1] and [r["seed"] for r in two["runs"]] == [0, 1]
    numbers = lambda run: [{k: v for k, v in p.items() if k != "train_seconds"} for p in run["curve"]]
    in_grid = next(r for r in results["runs"] if r["name"] == "dpo/beta=0.1")
    assert numbers(two["runs"][0]) == numbers(in_grid)
    assert [row["loss"] for row in two["runs"][1]["history"]] != [row["loss"] for row in in_grid["history"]]


def test_one_epoch_of_the_reward_models_pairs(world_dir, tmp_path, load_script):
    """pool "rm_pairs" trains offline DPO on train.jsonl + rm_extra.jsonl.gz (the reward model's pairs); epochs sets
    the steps to ceil(epochs x pairs / batch), and the run records how much of the pool it saw."""
    script = load_script("frontier")
    pool = read_jsonl(world_dir / "preferences" / "train.jsonl") + read_jsonl(world_dir / "preferences" / "rm_extra.jsonl.gz")
    assert len(script.load_pool(world_dir, "rm_pairs")) == len(pool) == 18 + 4
    assert script.dpo_steps({"steps": None, "epochs": 1, "batch_size": 4}, 22) == 6  # ceil(22 / 4)
    assert script.dpo_steps({"steps": 3, "epochs": 1, "batch_size": 4}, 22) == 3
    with pytest.raises(ValueError, match="steps or epochs"):
        script.dpo_steps({"steps": None, "epochs": None, "batch_size": 4}, 22)
    with pytest.raises(ValueError, match="pool must be"):
        script.load_pool(world_dir, "everything")
    results = script.main(["--tiny", "--assets", str(world_dir), "--out", str(tmp_path / "epoch.json"), "--methods", "dpo",
                           "--set", "dpo.betas=[0.1]", "--set", "dpo.pool=\"rm_pairs\"", "--set", "dpo.steps=null",
                           "--set", "dpo.epochs=1", "--set", "dpo.eval_every=3", "--threads", "1"])
    run = results["runs"][0]
    assert run["settings"]["pairs_in_dataset"] == 22 and run["settings"]["steps"] == 6
    assert run["cost"]["pairs_seen"] == 24 and run["settings"]["epochs_covered"] == pytest.approx(24 / 22)
    assert [p["step"] for p in run["curve"]] == [0, 3, 6]


def test_resume_runs_only_what_an_unfinished_file_lacks(tiny_results, world_dir, tmp_path, load_script):
    """A crash leaves a file with "complete": false: --resume keeps its runs and tasks and runs the others, giving the
    numbers of an uninterrupted grid; a file made with another config is refused."""
    results, out, _ = tiny_results
    partial = copy.deepcopy(results)
    partial["complete"] = False
    partial["tasks_done"] = [t for t in partial["tasks_done"] if not t.startswith("ppo/")]
    partial["runs"] = [r for r in partial["runs"] if r["method"] != "ppo"]
    partial["runs"][0]["history"][0]["marker"] = "kept"  # a run that is kept is not rerun
    path = tmp_path / "partial.json"
    path.write_text(json.dumps(partial))
    resumed = load_script("frontier").main(["--tiny", "--assets", str(world_dir), "--out", str(path), "--resume",
                                            "--threads", "1"])
    assert resumed["complete"] and sorted(resumed["tasks_done"]) == sorted(results["tasks_done"])
    assert [r["name"] for r in resumed["runs"]] == [r["name"] for r in results["runs"]]
    numbers = lambda run: [{k: v for k, v in p.items() if k != "train_seconds"} for p in run["curve"]]
    assert [numbers(r) for r in resumed["runs"]] == [numbers(r) for r in results["runs"]]
    assert next(r for r in resumed["runs"] if r["method"] == "dpo")["history"][0]["marker"] == "kept"
    with pytest.raises(ValueError, match="another config"):  # a setting every run shares
        load_script("frontier").main(["--tiny", "--assets", str(world_dir), "--out", str(path), "--resume",
                                      "--set", "max_new_tokens=5", "--threads", "1"])
    # a change to one method's settings reruns that method's tasks only, and says so
    again = load_script("frontier").main(["--tiny", "--assets", str(world_dir), "--out", str(path), "--resume",
                                          "--set", "ppo.eval_every=1", "--threads", "1"])
    assert again["rerun"][-1]["methods"] == ["ppo"] and again["config"]["ppo"]["eval_every"] == 1
    assert all([p["step"] for p in r["curve"]] == [0, 1, 2] for r in again["runs"] if r["method"] == "ppo")
    assert [numbers(r) for r in again["runs"] if r["method"] != "ppo"] == [numbers(r) for r in results["runs"]
                                                                           if r["method"] != "ppo"]
    assert next(r for r in again["runs"] if r["method"] == "dpo")["history"][0]["marker"] == "kept"


def test_bad_overrides_and_broken_results_raise(tiny_results, load_script):
    script = load_script("frontier")
    config = copy.deepcopy(CONFIGS["tiny"])
    with pytest.raises(ValueError, match="unknown key 'stepz'"):
        script.apply_override(config, "ppo.stepz=3")
    with pytest.raises(ValueError, match="key=value"):
        script.apply_override(config, "ppo.steps")
    script.apply_override(config, "ppo.eval_every=5")
    assert config["ppo"]["eval_every"] == 5
    broken = copy.deepcopy(tiny_results[0])
    del broken["runs"][0]["cost"]["reward_model_calls"]
    with pytest.raises(ValueError, match="cost.reward_model_calls"):
        check_results(broken)


def test_report_prints_every_point_and_marks_the_best(tiny_results, load_script, capsys):
    results, out, _ = tiny_results
    returned = load_script("frontier").main(["--report", str(out)])
    assert returned == json.loads(out.read_text())
    text = capsys.readouterr().out
    points = [p for run in results["runs"] for p in run["curve"][1:]]
    point_lines = [line for line in text.splitlines() if line.startswith(("    step", "  * step"))]
    assert len(point_lines) == len(points)
    assert sum(line.startswith("  * step") for line in point_lines) == len(results["runs"])  # one best point per run
    run = results["runs"][0]
    best = max(run["curve"][1:], key=lambda p: p["gold_reward"])
    assert f"best gold at step {best['step']}: EOS {best['eos_rate']:.3f}" in text
    assert f"length {best['length'] / results['sft']['length']:.2f}x SFT's" in text


# ----------------------------------------------------------------------------- the shipped full run
SHIPPED = ROOT / "data" / "results" / "frontier_full.json"
NOTEBOOK_11 = ROOT / "notebooks" / "11_ppo_vs_dpo.ipynb"


@pytest.fixture(scope="module")
def shipped():
    return json.loads(SHIPPED.read_text())


@pytest.mark.shipped  # reads the shipped data/
def test_shipped_full_results_follow_the_schema_and_the_budget(shipped):
    check_results(shipped)
    assert shipped["complete"] and shipped["config_name"] == "full"
    assert shipped["config"] == CONFIGS["full"], "CONFIGS['full'] changed: rerun scripts/frontier.py --jobs 2"
    assert shipped["total_seconds"] <= 90 * 60, "the full grid must fit 90 min on 2 CPU cores (make results: 2 h)"
    assert sorted(shipped["tasks_done"]) == sorted(FRONTIER.task_key(t) for t in FRONTIER.grid(CONFIGS["full"]))


@pytest.mark.shipped  # reads the shipped data/
def test_shipped_frontier_has_three_seeds_equal_information_and_a_full_epoch(shipped):
    """Issue 17's must-show: every run a conclusion rests on has >= 3 training seeds; offline DPO trains on the reward
    model's own human-labelled pairs (the ones PPO, online DPO and best-of-n reach through the reward model), for at
    least one epoch; every run counts its pairs, samples and steps; every point has its EOS rate, length, per-prompt
    rewards and example texts."""
    manifest = json.loads((ROOT / "data" / "manifest.json").read_text())
    rm_pairs = manifest["assets"]["rm"]["metrics"]["train_pairs"]
    assert len(shipped["seeds"]) >= 3
    settings = {}
    for run in shipped["runs"]:
        settings.setdefault((run["method"], run["value"]), []).append(run["seed"])
    assert {m for m, _ in settings} == {"ppo", "dpo", "online_dpo", "best_of_n"}
    assert all(sorted(seeds) == shipped["seeds"] for seeds in settings.values()), settings
    for run in shipped["runs"]:
        cost = run["cost"]
        assert {"pairs_seen", "samples_generated", "reward_model_calls", "train_seconds"} <= set(cost)
        if run["method"] == "dpo":
            assert run["settings"]["pairs_in_dataset"] == rm_pairs, "offline DPO trains on the reward model's pairs"
            assert cost["pairs_seen"] >= rm_pairs and run["settings"]["epochs_covered"] >= 1
        for point in run["curve"]:
            assert len(point["gold_rewards"]) == shipped["data"]["eval_prompts"] and len(point["examples"]) == 3
            assert point["gold_reward"] == pytest.approx(sum(point["gold_rewards"]) / len(point["gold_rewards"]))
            assert 0 <= point["eos_rate"] <= 1 and point["length"] > 0


@pytest.mark.shipped  # reads the shipped data/
def test_notebook_11_shows_the_numbers_of_the_shipped_file(shipped):
    """The notebook prints every run's last point; its stored output must be exactly the shipped file's numbers."""
    notebook = json.loads(NOTEBOOK_11.read_text())
    printed = "".join("".join(out.get("text", "")) for cell in notebook["cells"] if cell["cell_type"] == "code"
                      for out in cell.get("outputs", []))
    for run in shipped["runs"]:
        final = run["final"]
        line = (f"{run['name']:<22} seed {run['seed']}  gold {final['gold_reward']:+.3f} ± {final['gold_reward_sem']:.3f}   "
                f"kl {final['kl']:7.3f} ({final['kl_kind']})   rm {final['rm_score']:+.3f}   "
                f"EOS {final['eos_rate']:.2f}   {final['length']:5.1f} tokens")
        assert line in printed, f"notebook 11 does not show {run['name']} as in {SHIPPED.name}: re-execute it"


@pytest.mark.shipped  # reads the shipped data/
def test_no_run_wins_with_cut_off_text(shipped):
    """Each run's best-gold point ends its texts about as often as the SFT model does, or more often (no lower by more
    than 2 binomial standard errors): a policy whose texts run into the length limit loses gold reward (the judge
    charges a cut-off review) instead of winning with them. (In the first world they ended 0 to 51% of them.)"""
    sft_eos, n = shipped["sft"]["eos_rate"], shipped["data"]["eval_prompts"]
    floor = sft_eos - 2 * (sft_eos * (1 - sft_eos) / n) ** 0.5
    for run in shipped["runs"]:
        best = max(run["curve"], key=lambda point: point["gold_reward"])
        assert best["eos_rate"] >= floor, (run["name"], best["step"], best["eos_rate"], sft_eos)


@pytest.mark.shipped  # reads the shipped data/
def test_no_degenerate_winners(shipped):
    """Issue 16's must-show: each run's best-gold point has an EOS rate >= 0.9 and a mean length within 0.6-1.4x the
    SFT model's. Once text degenerates its gold reward falls: that is over-optimisation, not a win. Best-of-1 is left
    out: it selects nothing, its samples are the SFT model's own (EOS 0.87 here), so it is the baseline, not a winner.
    Not shown by this test: in the one-seed grid before this one, PPO at kl_coef 0.1 and 0.3 won with 12-token texts
    (a KL summed over tokens buys shorter text). The three-seed grid keeps only kl_coef 0.01 (the development-tuned
    default) and 0.03, to fit its budget, so those two settings were not rerun; kl_coef 0.03's best points are
    already 0.62-0.74x the SFT length."""
    sft_length = shipped["sft"]["length"]
    for run in shipped["runs"]:
        if run["method"] == "best_of_n" and run["value"] == 1:
            continue
        best = max(run["curve"], key=lambda point: point["gold_reward"])
        assert best["eos_rate"] >= 0.9, (run["name"], best["step"], best["eos_rate"])
        assert 0.6 * sft_length <= best["length"] <= 1.4 * sft_length, (run["name"], best["length"], sft_length)
