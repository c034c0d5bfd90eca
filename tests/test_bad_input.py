"""Bad input and faults, one row per class a tired student meets (issue "Bad input and faults"): each raises a clear,
specific error whose message names the file, the row, the argument or the step, and says what was expected. The
last section checks that valid input (non-ASCII text, extra columns, a byte-order mark) is still accepted.

Everything here is built in the test (a tiny BPE tokenizer with the course's chat tokens, 1-layer GPT-2s with a
64-token context); no test reads the shipped data/.
"""

import copy
import json
import os
import subprocess
import sys
import time

import datasets
import pytest
import torch
from transformers import GPT2LMHeadModel

from pref_lab import config
from pref_lab.data import load_corpus, load_preferences, read_jsonl, validate_records, write_jsonl
from pref_lab.dpo import dpo_loss, implicit_rewards, train_dpo
from pref_lab.logprobs import tokenize_completions
from pref_lab.losses import ipo_loss, kto_loss, simpo_loss
from pref_lab.models import (
    Unfinished,
    completion_texts,
    format_prompt,
    generate,
    load_model,
    make_config,
    save_model,
    train_tokenizer,
)
from pref_lab.online import OnlineDPOConfig, train_online_dpo
from pref_lab.ppo import PPOConfig, make_value_model, train_ppo
from pref_lab.real_model import load_real_model
from pref_lab.reward_model import evaluate_pairs, init_reward_model, score_texts, train_reward_model
from pref_lab.world import EVAL_BATCH_SIZE, EVAL_SEED, MAX_NEW_TOKENS, World, evaluate_policy

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py

CONTEXT = 64
WORDS = ["a charming comedy", "great acting", "a dull mess", "too long", "boring plot", "warm and funny"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer((WORDS + [f"Write a review of Movie {i}." for i in range(10)]) * 3, vocab_size=300)


@pytest.fixture(scope="module")
def lm(tokenizer):
    torch.manual_seed(0)
    return GPT2LMHeadModel(make_config(tokenizer, n_layer=1, n_embd=16, n_head=2, n_positions=CONTEXT)).eval()


@pytest.fixture(scope="module")
def rm(lm, tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sft")
    save_model(lm, folder, tokenizer)
    return init_reward_model(folder, seed=0).eval()


def prompt(tokenizer, i: int = 0) -> str:
    return format_prompt(tokenizer, f"Write a review of Movie {i}.")


def pairs(tokenizer, n: int = 8) -> list[dict]:
    return [{"prompt": prompt(tokenizer, i % 10), "chosen": WORDS[i % 2], "rejected": WORDS[2 + i % 3]} for i in range(n)]


def nan_copy(model):
    broken = copy.deepcopy(model)
    with torch.no_grad():
        next(broken.parameters()).fill_(float("nan"))
    return broken


def train_one_step(policy, reference, tokenizer, dataset):
    return train_dpo(policy, reference, tokenizer, dataset, beta=0.1, steps=1, batch_size=2, lr=1e-3, seed=0,
                     progress=False)


# ----------------------------------------------------------------------------- 1. lengths in tokens, the caller's row
def test_an_over_long_pair_is_refused_in_tokens_naming_the_datasets_row_before_training(tokenizer, lm):
    data_rows = pairs(tokenizer, 70)
    data_rows[68] = {**data_rows[68], "chosen": "great acting " * 40}  # ~500 characters, far past a 64-token context
    policy, before = copy.deepcopy(lm), copy.deepcopy(lm.state_dict())
    with pytest.raises(ValueError, match=r"dataset, row 68: prompt \+ completion \+ EOS is \d+ tokens, more than the "
                                         r"model's context of 64"):
        train_one_step(policy, lm, tokenizer, data_rows)
    assert all(torch.equal(v, before[k]) for k, v in policy.state_dict().items())  # refused before any step
    with pytest.raises(ValueError, match="train_pairs, row 68: prompt"):
        train_reward_model(copy.deepcopy(lm), tokenizer, data_rows, steps=1, progress=False)


def test_batching_scorers_name_the_callers_row_not_the_batchs(tokenizer, rm, lm):
    prompts, completions = [prompt(tokenizer)] * 70, ["great acting"] * 70
    completions[68] = "  "
    with pytest.raises(ValueError, match="row 68: empty completion"):
        score_texts(rm, tokenizer, prompts, completions, batch_size=16)
    with pytest.raises(ValueError, match="row 68: empty completion"):
        implicit_rewards(lm, copy.deepcopy(lm), tokenizer, prompts, completions, beta=0.1, batch_size=16)
    bad = pairs(tokenizer, 70)
    bad[68] = {**bad[68], "rejected": bad[68]["chosen"]}
    with pytest.raises(ValueError, match="pairs, row 68: chosen == rejected"):
        evaluate_pairs(rm, tokenizer, bad)


def test_generate_refuses_prompts_past_the_context_empty_prompts_and_a_single_string(tokenizer, lm):
    with pytest.raises(ValueError, match=r"prompt 1 is \d+ tokens; with max_new_tokens=60 it exceeds the model's context"):
        generate(lm, tokenizer, [prompt(tokenizer), prompt(tokenizer) + " great acting" * 3], max_new_tokens=60,
                 progress=False)
    with pytest.raises(ValueError, match="prompt 1 must be a non-empty string"):
        generate(lm, tokenizer, [prompt(tokenizer), ""], max_new_tokens=4, progress=False)
    with pytest.raises(ValueError, match="got one string"):
        generate(lm, tokenizer, prompt(tokenizer), max_new_tokens=4, progress=False)


# ----------------------------------------------------------------------------- 2. every training path validates
@pytest.mark.parametrize(("change", "message"), [
    ({"chosen": ""}, "row 3: column 'chosen' is empty"),
    ({"rejected": None}, "row 3: column 'rejected' must be a string, got NoneType"),
    ({"chosen": 7}, "row 3: column 'chosen' must be a string, got int"),
    ({"rejected": "a charming comedy"}, "row 3: chosen == rejected"),
    ({"chosen": "great<|endoftext|> acting"}, "row 3: column 'chosen' contains the special token '<|endoftext|>'"),
    ({"prompt": "Write a review of Movie 3."}, "row 3: prompt 'Write a review of Movie 3.' is not one chat turn"),
])
def test_every_training_path_refuses_bad_pairs(tokenizer, lm, tmp_path, change, message):
    rows = pairs(tokenizer)
    rows[3] = {**rows[3], "chosen": "a charming comedy", **change}
    with pytest.raises(ValueError, match=f"train_pairs, {message}"):  # notebook 04's path: a list into the RM trainer
        train_reward_model(copy.deepcopy(lm), tokenizer, rows, steps=1, progress=False)
    with pytest.raises(ValueError, match=f"dataset, {message}"):
        train_one_step(copy.deepcopy(lm), lm, tokenizer, rows)
    if not isinstance(change.get("chosen", change.get("rejected", "")), str):
        return  # JSON has no column of mixed types: datasets refuses those rows itself
    path = tmp_path / "pairs.jsonl"
    write_jsonl(rows, path)
    datasets.disable_progress_bars()
    loaded = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=f"dataset, {message}"):  # datasets.load_dataset, then the trainer
        train_one_step(copy.deepcopy(lm), lm, tokenizer, loaded)
    with pytest.raises(ValueError, match=f"pairs.jsonl, {message}"):  # pref_lab's loader
        load_preferences(path=path)


def test_tokenize_completions_refuses_an_eos_only_completion_and_special_token_text(tokenizer):
    with pytest.raises(ValueError, match="row 0: empty completion"):
        tokenize_completions(tokenizer, [prompt(tokenizer)], [""])
    with pytest.raises(ValueError, match="row 1: the completion holds the special token '<|endoftext|>' as text"):
        tokenize_completions(tokenizer, [prompt(tokenizer)] * 2, ["fine", "fine<|endoftext|>"])
    with pytest.raises(ValueError, match="row 0: a completion must be a string or a tensor of ids, got NoneType"):
        tokenize_completions(tokenizer, [prompt(tokenizer)], [None])


# ----------------------------------------------------------------------------- 3. file faults
def test_broken_jsonl_files_name_the_file_and_line(tmp_path):
    good = json.dumps({"prompt": "<|user|>x<|assistant|>", "chosen": "a", "rejected": "b"})
    for name, text, message in [
        ("invalid.jsonl", f"{good}\n{good}\n{{'prompt': 1}}\n", r"invalid.jsonl, line 3: invalid JSON"),
        ("truncated.jsonl", f"{good}\n{good[:20]}", r"truncated.jsonl, line 2: invalid JSON"),
        ("list.jsonl", f"{good}\n[1, 2]\n", r"list.jsonl, line 2: expected a JSON object per line, got list"),
        ("empty.jsonl", "\n\n", r"empty.jsonl: the file has no records"),
    ]:
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=message):
            read_jsonl(tmp_path / name)
        with pytest.raises(ValueError, match=message):  # pref_lab's loader, which returns a datasets.Dataset
            load_preferences(path=tmp_path / name)
    with pytest.raises(ValueError, match="empty.jsonl: the file has no records"):
        load_corpus(path=tmp_path / "empty.jsonl")
    (tmp_path / "bad.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="bad.jsonl.gz: cannot read it as gzipped UTF-8 JSONL"):
        read_jsonl(tmp_path / "bad.jsonl.gz")
    with pytest.raises(FileNotFoundError, match="missing.jsonl: no such file"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_damaged_weights_are_refused_naming_the_file(tokenizer, lm, tmp_path):
    folder = tmp_path / "model"
    save_model(lm, folder, tokenizer)
    weights = folder / "model.safetensors"
    raw = weights.read_bytes()
    weights.write_bytes(raw[: len(raw) // 2])  # an interrupted copy
    with pytest.raises(ValueError, match=f"{folder}: cannot load the model"):
        load_model(folder)
    header = 8 + int.from_bytes(raw[:8], "little")  # safetensors: an 8-byte length, the JSON header, then the tensors
    weights.write_bytes(raw[:header] + b"\xff" * 64 + raw[header + 64:])  # overwritten bytes: NaN floats
    with pytest.raises(ValueError, match=r"model.safetensors: weight .* has NaN/inf values"):
        load_model(folder)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors is missing"):
        load_model(folder)


def test_a_shipped_model_must_match_its_manifest_checksum(tokenizer, lm, tmp_path, monkeypatch):
    monkeypatch.setattr(config, "DATA_DIR", tmp_path / "data")
    save_model(lm, tmp_path / "data" / "models" / "sft", tokenizer)
    manifest = {"assets": {"sft": {"files": {"models/sft/model.safetensors": {"bytes": 1, "sha256": "0" * 64}}}}}
    (tmp_path / "data" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"does not match the sha256 that .*data/manifest.json records"):
        load_model("sft")
    with pytest.raises(ValueError, match="does not match the sha256"):  # by path too: it is that world's model
        load_model(tmp_path / "data" / "models" / "sft")


# ----------------------------------------------------------------------------- 4. dpo_loss and the loss zoo
@pytest.mark.parametrize(("args", "message"), [
    ((torch.randn(4, 5, 7), torch.randn(4), [0, 1], [2, 3], 0.1), r"\(B,\), got \(4, 5, 7\): did you pass logits\?"),
    ((-torch.rand(4, 5), -torch.rand(4), [0, 1], [2, 3], 0.1), r"got \(4, 5\): did you pass per-token log-probs\?"),
    ((-torch.rand(4), -torch.rand(4), [0, 1], [2, 3], 0.0), r"beta must be a positive finite number .*got 0.0"),
    ((-torch.rand(4), -torch.rand(4), [0, 1], [2, 3], float("nan")), r"beta must be a positive finite number .*got nan"),
    ((-torch.rand(4), -torch.rand(4), [0, -1], [2, 3], 0.1), r"yw_ids must be row indices in \[0, 4\)"),
    ((-torch.rand(4), -torch.rand(4), [0, 1], [2], 0.1), "must index P >= 1 pairs each"),
    ((torch.zeros(0), torch.zeros(0), [], [], 0.1), "empty batch"),
    ((torch.tensor([-1.0, -float("inf"), -2.0, -3.0]), -torch.rand(4), [0, 2], [1, 3], 0.1),
     r"pi_logits has non-finite values \(row 1\)"),
    ((torch.tensor([2.0, 1.0, 0.5, 3.0]), -torch.rand(4), [0, 2], [1, 3], 0.1), "log-probs are <= 0; logits?"),
])
def test_dpo_loss_says_what_it_expected(args, message):
    pi, ref, yw, yl, beta = args
    with pytest.raises(ValueError, match=message):
        dpo_loss(pi, ref, torch.tensor(yw, dtype=torch.long), torch.tensor(yl, dtype=torch.long), beta)


def test_the_loss_zoo_checks_its_inputs():
    with pytest.raises(ValueError, match=r"shape \(P,\) with P >= 1, got \(2, 3\).*logits or per-token"):
        ipo_loss(torch.zeros(2, 3), torch.zeros(2, 3), beta=0.1)
    with pytest.raises(ValueError, match=r"chosen has non-finite values \(row 0\)"):
        simpo_loss(torch.tensor([float("nan")]), torch.tensor([-1.0]), beta=2.0, gamma=1.0)
    with pytest.raises(ValueError, match=r"beta must be a positive finite number .*got -1"):
        ipo_loss(torch.zeros(2), torch.zeros(2), beta=-1)
    with pytest.raises(ValueError, match=r"shape \(P,\) with P >= 1, got \(0,\)"):
        kto_loss(torch.zeros(0), torch.zeros(0, dtype=torch.bool), beta=0.1, z_ref=0.0)


# ----------------------------------------------------------------------------- 5. PPO and online DPO under faults
def test_a_blown_up_policy_is_named_by_its_iteration_before_the_sampler(tokenizer, lm, rm):
    prompts = [prompt(tokenizer, i) for i in range(8)]
    reward = lambda p, ids: torch.zeros(len(ids))
    config_ppo = PPOConfig(steps=2, batch_size=4, minibatch_size=4, max_new_tokens=3)
    with pytest.raises(RuntimeError, match="PPO iteration 1: parameter .* has NaN/inf values"):
        train_ppo(nan_copy(lm), lm, make_value_model(rm), tokenizer, prompts, reward, config_ppo, progress=False)
    with pytest.raises(RuntimeError, match=r"PPO iteration \d"):  # a huge learning rate blows it up in training
        train_ppo(copy.deepcopy(lm), lm, make_value_model(rm), tokenizer, prompts, lambda p, ids: torch.randn(len(ids)),
                  PPOConfig(steps=3, batch_size=4, minibatch_size=2, max_new_tokens=3, lr=1e30), progress=False)
    with pytest.raises(RuntimeError, match="online DPO round 1: parameter .* has NaN/inf values"):
        train_online_dpo(nan_copy(lm), lm, tokenizer, prompts, lambda p, t: torch.randn(len(t)),
                         OnlineDPOConfig(rounds=1, prompts_per_round=4, max_new_tokens=3), progress=False)


def test_ppo_leaves_the_callers_reference_as_it_was(tokenizer, lm, rm):
    reference = copy.deepcopy(lm)
    flags = [p.requires_grad for p in reference.parameters()]
    train_ppo(copy.deepcopy(lm), reference, make_value_model(rm), tokenizer, [prompt(tokenizer, i) for i in range(4)],
              lambda p, ids: torch.randn(len(ids)), PPOConfig(steps=1, batch_size=4, minibatch_size=4, max_new_tokens=3),
              progress=False)
    assert [p.requires_grad for p in reference.parameters()] == flags == [True] * len(flags)
    policy = copy.deepcopy(reference)  # a policy copied from the reference afterwards still trains
    history = train_dpo(policy, reference, tokenizer, pairs(tokenizer), beta=0.1, steps=2, batch_size=4, lr=1e-2, seed=0,
                        progress=False)
    assert history[-1]["rewards/margins"] != 0.0


def test_evaluation_helpers_raise_on_a_broken_model(tokenizer, lm, rm):
    with pytest.raises(ValueError, match=r"reward-model scores: row 0 is nan"):
        score_texts(nan_copy(rm), tokenizer, [prompt(tokenizer)], ["great acting"])
    with pytest.raises(ValueError, match="reward-model scores"):
        evaluate_pairs(nan_copy(rm), tokenizer, pairs(tokenizer))
    with pytest.raises(ValueError, match="implicit_rewards: row 0 is nan"):
        implicit_rewards(nan_copy(lm), lm, tokenizer, [prompt(tokenizer)], ["great acting"], beta=0.1)
    world = World(tokenizer=tokenizer, sft=lm, gold=None, reward_model=rm, eval_prompts=[prompt(tokenizer)])
    with pytest.raises(RuntimeError, match="evaluate_policy: parameter .* has NaN/inf values"):
        evaluate_policy(nan_copy(lm), world)


def test_evaluate_policy_per_prompt_lists_match_its_means(tokenizer, lm, rm):
    class Gold:  # a stand-in judge: one known score per sample
        def gold_reward(self, completions):
            return torch.linspace(-1.0, 1.0, len(completions))

    world = World(tokenizer=tokenizer, sft=lm, gold=Gold(), reward_model=rm,
                  eval_prompts=[prompt(tokenizer, i) for i in range(4)])
    plain, per = evaluate_policy(lm, world), evaluate_policy(lm, world, per_prompt=True)
    assert "gold_rewards" not in plain and "rm_scores" not in plain
    assert per["gold_rewards"] == pytest.approx([-1.0, -1 / 3, 1 / 3, 1.0])
    assert len(per["rm_scores"]) == 4 and per["rm_score"] == pytest.approx(sum(per["rm_scores"]) / 4)
    assert {k: v for k, v in per.items() if k not in ("gold_rewards", "rm_scores")} == plain  # the same samples
    shown = evaluate_policy(lm, world, examples=2)
    assert {k: v for k, v in shown.items() if k != "examples"} == plain  # the same samples, two of them shown
    texts = completion_texts(tokenizer, generate(lm, tokenizer, world.eval_prompts, max_new_tokens=MAX_NEW_TOKENS,
                                                 temperature=1.0, batch_size=EVAL_BATCH_SIZE, seed=EVAL_SEED,
                                                 progress=False, return_ids=True))
    assert len(shown["examples"]) == 2 and shown["examples"][0]["text"] == str(texts[0])
    assert shown["examples"][0]["finished"] == (not isinstance(texts[0], Unfinished))


# ----------------------------------------------------------------------------- 6. environment
def run_python(code: str, **env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "PREF_LAB_"))}
    return subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True, timeout=120)


def test_pref_lab_keeps_itself_offline_unless_the_user_opts_in():
    code = ("import datasets, pref_lab, huggingface_hub.constants as h, datasets.config as d; "
            "print(h.HF_HUB_OFFLINE, d.HF_HUB_OFFLINE, d.HF_DATASETS_OFFLINE)")
    assert run_python(code).stdout.split() == ["True", "True", "True"]  # even with datasets imported first
    assert run_python(code, PREF_LAB_ONLINE="1").stdout.split() == ["False", "False", "False"]


def test_environment_variables_are_validated_naming_the_variable(monkeypatch):
    for value, message in (("", "PREF_LAB_DATA is set but empty"), ("data2", "PREF_LAB_DATA='data2' is a relative path")):
        with pytest.raises(ValueError, match=message):
            config.data_dir_from_env(value)
        result = run_python("import pref_lab.config", PREF_LAB_DATA=value)
        assert result.returncode != 0 and message.split(" is")[0] in result.stderr
    monkeypatch.setenv("PREF_LAB_DEVICE", "gpu0")
    with pytest.raises(ValueError, match="PREF_LAB_DEVICE='gpu0' is not a device"):
        config.get_device()
    if not torch.cuda.is_available():
        monkeypatch.setenv("PREF_LAB_DEVICE", "cuda")
        with pytest.raises(ValueError, match="PREF_LAB_DEVICE='cuda' but this machine has no CUDA GPU"):
            config.get_device()


def test_a_mistyped_local_folder_is_not_taken_for_a_hub_name(tmp_path):
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="no model folder './data/cache/smolm2'"):
        load_real_model("./data/cache/smolm2")
    with pytest.raises(FileNotFoundError, match="is not a folder here, and pref_lab runs offline.*PREF_LAB_ONLINE=1"):
        load_real_model("HuggingFaceTB/SmolLM2-135M-Instructt")
    assert time.perf_counter() - start < 5  # no retries against a hub


def test_a_shipped_name_never_loads_a_folder_of_that_name_in_the_working_directory(tokenizer, lm, tmp_path, monkeypatch):
    monkeypatch.setattr(config, "DATA_DIR", tmp_path / "data")
    save_model(lm, tmp_path / "data" / "models" / "sft", tokenizer)
    impostor = copy.deepcopy(lm)
    with torch.no_grad():
        next(impostor.parameters()).add_(1.0)
    save_model(impostor, tmp_path / "cwd" / "sft", tokenizer)
    monkeypatch.chdir(tmp_path / "cwd")
    loaded = load_model("sft", "cpu")
    assert torch.equal(next(loaded.parameters()), next(lm.parameters()))
    assert torch.equal(next(load_model(tmp_path / "cwd" / "sft", "cpu").parameters()), next(impostor.parameters()))


# ----------------------------------------------------------------------------- valid input is still accepted
def test_valid_input_is_accepted_non_ascii_extra_columns_and_a_byte_order_mark(tokenizer, lm, tmp_path):
    rows = [{**r, "note": "extra column", "chosen": r["chosen"] + " 🎬 très bien"} for r in pairs(tokenizer)]
    assert validate_records(rows, "preference", "rows", tokenizer, CONTEXT) == len(rows)
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
    assert read_jsonl(path) == rows
    assert load_preferences(path=path).to_list() == rows
    history = train_one_step(copy.deepcopy(lm), lm, tokenizer, load_preferences(path=path))
    assert len(history) == 1 and history[0]["pairs"] == 2


def test_the_reward_model_judge_scores_an_eos_only_sample_as_eos(tokenizer, rm):
    """Online DPO hands the judge decoded texts: a sample that was only EOS decodes to "" and must not stop the run."""
    from pref_lab.online import reward_model_judge

    judge = reward_model_judge(rm, tokenizer)
    eos = torch.tensor([tokenizer.eos_token_id])
    sampled = torch.tensor(tokenizer("great acting")["input_ids"] + [tokenizer.eos_token_id])
    as_text = judge([prompt(tokenizer)] * 2, ["", "great acting"])
    as_ids = score_texts(rm, tokenizer, [prompt(tokenizer)] * 2, [eos, sampled])
    torch.testing.assert_close(as_text, as_ids)
    torch.testing.assert_close(judge([prompt(tokenizer)], [eos]), as_ids[:1])  # ids pass through unchanged
