"""scripts/train_dpo_trl.py under `accelerate launch` (2 steps on CPU), and the accelerate configs it ships with."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pref_lab.config import REPO_ROOT, data_path

SCRIPT = REPO_ROOT / "scripts" / "train_dpo_trl.py"
CONFIGS = REPO_ROOT / "scripts" / "accelerate"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """The shipped SFT model when it exists, else a tiny random GPT-2 with a course-format tokenizer."""
    if (data_path("models", "sft") / "model.safetensors").exists():
        return data_path("models", "sft")
    from transformers import GPT2LMHeadModel

    from pref_lab.models import make_config, save_model, train_tokenizer

    tokenizer = train_tokenizer(["a charming comedy", "a dull mess", "Write a review of Jaws."] * 3, vocab_size=300)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_gpt2")
    save_model(GPT2LMHeadModel(make_config(tokenizer, n_layer=1, n_embd=16, n_head=2, n_positions=64)), path, tokenizer)
    return path


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory, model_dir) -> Path:
    """8 preference pairs: the first rows of the shipped train split when it exists, else made up."""
    shipped = data_path("preferences", "train.jsonl")
    if shipped.exists():
        rows = [json.loads(line) for line in shipped.read_text().splitlines()[:8]]
    else:
        from pref_lab.models import format_prompt, load_tokenizer

        tokenizer = load_tokenizer(model_dir)
        good = ["a charming comedy", "great acting", "warm and funny", "a joy", "moving", "sharp", "lovely", "fun"]
        bad = ["a dull mess", "boring", "too long", "a bore", "flat", "tedious", "dull", "weak"]
        rows = [{"prompt": format_prompt(tokenizer, f"Write a review of Movie {i}."), "chosen": g, "rejected": b}
                for i, (g, b) in enumerate(zip(good, bad))]
    path = tmp_path_factory.mktemp("prefs") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.shipped  # reads the shipped data/
def test_two_dpo_steps_on_cpu_write_a_safetensors_checkpoint(model_dir, pairs_file, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch",
               "--config_file", str(CONFIGS / "single_gpu.yaml"), "--cpu", "--mixed_precision", "no",
               str(SCRIPT), "--model", str(model_dir), "--train-file", str(pairs_file), "--eval-file", "none",
               "--max-steps", "2", "--batch-size", "4", "--logging-steps", "1", "--output-dir", str(out)]
    # One thread: a tiny model on a busy 2-core machine runs faster without thread contention.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    assert (out / "model.safetensors").exists() and not (out / "training_args.bin").exists()  # nothing pickled
    trained, start = load_file(out / "model.safetensors"), load_file(Path(model_dir) / "model.safetensors")
    assert trained.keys() == start.keys()
    assert any(not torch.equal(trained[k], start[k]) for k in start)  # the optimizer stepped

    logs = [x for x in json.loads((out / "log_history.json").read_text()) if "loss" in x]
    assert [x["step"] for x in logs] == [1, 2]
    # Step 1: the policy IS its reference (an explicit copy), so every implicit reward is 0 and
    # the loss is -log sigmoid(0) = log 2 exactly.
    assert logs[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert logs[0]["rewards/chosen"] == pytest.approx(0.0, abs=1e-6)
    assert logs[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name, launcher", [("single_gpu", "simple"), ("multi_gpu_zero2", "deepspeed"),
                                            ("multi_gpu_fsdp", "fsdp")])
def test_accelerate_configs_parse_into_the_intended_plugin(name, launcher, monkeypatch):
    """Each YAML goes through accelerate's own launcher parsing and builds the plugin the Trainer will use."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(CONFIGS / f"{name}.yaml"), str(SCRIPT)])
    args, defaults, mixed_precision_from_config = _validate_launch_command(args)
    assert args.mixed_precision == "bf16"
    assert (args.use_deepspeed, args.use_fsdp) == (launcher == "deepspeed", launcher == "fsdp")
    if launcher == "simple":
        assert args.num_processes == 1
        return
    assert args.num_processes == 8
    if launcher == "deepspeed":
        # what `accelerate launch` sets before calling the DeepSpeed launcher
        args.deepspeed_fields_from_accelerate_config = ",".join([*defaults.deepspeed_config, "mixed_precision"])
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if launcher == "deepspeed":
        plugin = DeepSpeedPlugin()
        assert plugin.zero_stage == 2
        # batch size, accumulation and clipping are left to the Trainer's arguments
        config = plugin.deepspeed_config
        assert config["gradient_accumulation_steps"] == config["gradient_clipping"] == "auto"
    else:
        plugin = FullyShardedDataParallelPlugin()
        assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
        assert plugin.state_dict_type.name == "FULL_STATE_DICT"  # one ordinary safetensors file at the end


def test_script_refuses_bad_input(tmp_path, load_script):
    script = load_script("train_dpo_trl")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--bf16 needs a CUDA GPU"):
            script.parse_args(["--bf16"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "good": "a", "bad": "b"}) + "\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['chosen', 'rejected'\]"):
        script.load_jsonl(str(bad))
    with pytest.raises(FileNotFoundError, match="make assets"):
        script.load_jsonl(str(tmp_path / "absent.jsonl"))


@pytest.mark.shipped  # reads the shipped data/
def test_course_rows_become_chat_messages_for_other_tokenizers(model_dir, word_tokenizer, load_script):
    from datasets import Dataset

    from pref_lab.models import load_tokenizer

    script = load_script("train_dpo_trl")
    row = {"prompt": "<|user|>Write a review of Jaws.<|assistant|>", "chosen": "tense", "rejected": "dull"}
    rows = Dataset.from_list([row])
    assert not script.wants_messages("auto", load_tokenizer(model_dir), rows)  # the course's tokenizer: keep the text
    assert script.wants_messages("auto", word_tokenizer, rows)  # any other tokenizer: use its own chat template
    converted = script.to_messages(rows, "train")[0]
    assert converted["prompt"] == [{"role": "user", "content": "Write a review of Jaws."}]
    assert converted["chosen"] == [{"role": "assistant", "content": "tense"}]
    assert converted["rejected"] == [{"role": "assistant", "content": "dull"}]
    with pytest.raises(ValueError, match="train row 0: prompt 'Hello' is not in the course's"):
        script.to_messages(Dataset.from_list([{"prompt": "Hello", "chosen": "a", "rejected": "b"}]), "train")
