"""Time one training step of pref_lab's plain loops against TRL's trainers, on the same tiny GPT-2.

    .venv/bin/python scripts/bench_dpo.py            # ~2-3 min on 2 busy CPU cores (1 thread)
    .venv/bin/python scripts/bench_dpo.py --steps 10 --rounds 1   # quicker

What is compared (same process, same random GPT-2 weights, same 16 synthetic pairs, same CPU threads, fp32):

- DPO step: ``pref_lab.dpo.train_dpo`` vs TRL ``DPOTrainer`` (``bf16=False``, no activation checkpointing,
  otherwise TRL's defaults), each with the reference forward every step and with cached reference
  log-probs (pref_lab ``precompute_ref_logps=True``, TRL ``precompute_ref_log_probs=True``).
- SFT step: prompt-masked token-mean cross-entropy (``pref_lab.sft.sft_loss``) in a plain AdamW loop vs
  TRL ``SFTTrainer`` on prompt/completion data (completion-only loss, its default for that format).

A step is the wall time between the ends of consecutive optimizer steps, so it includes everything a
training loop does per step (fetching and collating/tokenizing the batch, forward, backward, clipping,
AdamW, logging). Warm-up steps are excluded; each cell is the median over all measured steps of all rounds
(rounds alternate pref_lab and TRL so a change in background load hits both).
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings

import datasets
import torch
from datasets import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, PrinterCallback, TrainerCallback

from pref_lab.dpo import train_dpo
from pref_lab.logprobs import tokenize_completions
from pref_lab.models import format_prompt, train_tokenizer
from pref_lab.sft import sft_loss

WORDS = ("the film a charming comedy with sharp script great acting but dull long boring plot twist ending "
         "cast director camera music score scene story character warm funny sad tense slow quick bright dark "
         "moving clever silly gentle brutal honest").split()
BETA, LR = 0.1, 1e-5


def synthetic_pairs(tokenizer, n_pairs: int, seed: int = 0) -> list[dict]:
    """n pairs of a chat prompt (~10 tokens) and two different random completions (~30 tokens)."""
    gen = torch.Generator().manual_seed(seed)

    def sentence(n_words: int) -> str:
        return " ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (n_words,), generator=gen).tolist())

    return [{"prompt": format_prompt(tokenizer, f"Write a review of Movie {i}."),
             "chosen": sentence(26), "rejected": sentence(26)} for i in range(n_pairs)]


def tiny_gpt2(tokenizer, vocab_size: int) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=vocab_size, n_positions=128, n_embd=160, n_layer=4, n_head=4,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                        bos_token_id=tokenizer.eos_token_id)
    return GPT2LMHeadModel(config)


class StepClock(TrainerCallback):
    """Records the time at the end of every optimizer step of a transformers Trainer."""

    def __init__(self):
        self.times = []

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter())


def step_times(ends: list[float], warmup: int) -> list[float]:
    """Durations of steps warmup+1, ... from the end times of steps 1, 2, ..."""
    return [b - a for a, b in zip(ends[warmup:], ends[warmup + 1:], strict=False)]


def ms_quartiles(times: list[float]) -> tuple[float, float, float]:
    """25th, 50th (median) and 75th percentile of step times, in milliseconds."""
    q25, q50, q75 = statistics.quantiles(times, n=4)
    return 1e3 * q25, 1e3 * q50, 1e3 * q75


# ----------------------------------------------------------------------------- DPO
def time_pref_lab_dpo(model, tokenizer, pairs, n_steps, warmup, precompute) -> list[float]:
    policy, reference = copy.deepcopy(model), copy.deepcopy(model)
    ends = []
    train_dpo(policy, reference, tokenizer, pairs, beta=BETA, steps=warmup + n_steps + 1, batch_size=len(pairs),
              lr=LR, seed=0, callback=lambda record: ends.append(time.perf_counter()),
              progress=False, precompute_ref_logps=precompute)
    return step_times(ends, warmup)


def time_trl_dpo(model, tokenizer, pairs, n_steps, warmup, precompute) -> list[float]:
    from trl import DPOConfig, DPOTrainer

    clock = StepClock()
    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(output_dir=out, bf16=False, activation_checkpointing=False, use_cpu=True, report_to=[],
                         save_strategy="no", disable_tqdm=True, per_device_train_batch_size=len(pairs),
                         max_steps=warmup + n_steps + 1, learning_rate=LR, beta=BETA,
                         precompute_ref_log_probs=precompute)
        trainer = DPOTrainer(model=copy.deepcopy(model), ref_model=copy.deepcopy(model), args=args,
                             train_dataset=Dataset.from_list(pairs), processing_class=tokenizer, callbacks=[clock])
        trainer.remove_callback(PrinterCallback)  # only silences the printed logs; logging itself still runs
        trainer.train()
    return step_times(clock.times, warmup)


# ----------------------------------------------------------------------------- SFT
def time_pref_lab_sft(model, tokenizer, pairs, n_steps, warmup) -> list[float]:
    """pref_lab's SFT step, as in ``pref_lab.sft.train_sft``: tokenize the batch, prompt-masked token-mean
    cross-entropy (``sft_loss``), backward, clip at 1, AdamW."""
    model = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    prompts, responses = [p["prompt"] for p in pairs], [p["chosen"] for p in pairs]
    ends = []
    for _ in range(warmup + n_steps + 1):
        loss = sft_loss(model, tokenize_completions(tokenizer, prompts, responses))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        loss.item()  # a real loop reads the loss (logging); it also waits for the step to finish
        ends.append(time.perf_counter())
    return step_times(ends, warmup)


def time_trl_sft(model, tokenizer, pairs, n_steps, warmup) -> list[float]:
    from trl import SFTConfig, SFTTrainer

    clock = StepClock()
    data = Dataset.from_list([{"prompt": p["prompt"], "completion": p["chosen"]} for p in pairs])
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(output_dir=out, bf16=False, activation_checkpointing=False, use_cpu=True, report_to=[],
                         save_strategy="no", disable_tqdm=True, per_device_train_batch_size=len(pairs),
                         max_steps=warmup + n_steps + 1, learning_rate=LR)
        trainer = SFTTrainer(model=copy.deepcopy(model), args=args, train_dataset=data, processing_class=tokenizer,
                             callbacks=[clock])
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    return step_times(clock.times, warmup)


# ----------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=15, help="measured steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="steps excluded from the timing")
    parser.add_argument("--rounds", type=int, default=2, help="alternating pref_lab/TRL rounds")
    # One thread by default: on a small or busy CPU, several threads on these tiny matrices mostly wait on
    # each other (measured here: a DPO step took ~4x longer with 2 threads on 2 busy cores than with 1).
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads, the same for both")
    args = parser.parse_args()

    warnings.filterwarnings("ignore")
    datasets.disable_progress_bars()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")  # TRL's "Computing reference log probs" bar
    torch.set_num_threads(args.threads)
    start = time.time()

    tokenizer = train_tokenizer([" ".join(WORDS)] * 4, vocab_size=400)
    model = tiny_gpt2(tokenizer, vocab_size=4096)
    pairs = synthetic_pairs(tokenizer, args.pairs)
    batch = tokenize_completions(tokenizer, [p["prompt"] for p in pairs] * 2,
                                 [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs])
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: GPT-2 n_layer=4 n_embd=160 n_head=4 vocab=4096, {n_params / 1e6:.2f}M parameters")
    print(f"batch: {args.pairs} pairs = {2 * args.pairs} rows, padded length {batch['input_ids'].shape[1]} tokens "
          f"({batch['completion_mask'].sum(-1).float().mean():.0f} completion tokens per row on average)")
    print(f"torch {torch.__version__}, threads={args.threads}, load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs; {args.warmup} warm-up steps excluded, median of "
          f"{args.steps} x {args.rounds} steps", flush=True)
    from trl import DPOConfig

    with tempfile.TemporaryDirectory() as out:
        trl_optim = DPOConfig(output_dir=out, use_cpu=True, bf16=False, activation_checkpointing=False).optim
    print(f"optimizers: pref_lab torch.optim.AdamW (defaults), TRL optim={getattr(trl_optim, 'value', trl_optim)} "
          "(its default); both clip gradients at 1.0, fp32", flush=True)

    runs = {
        "DPO step (reference forward every step)": (
            lambda: time_pref_lab_dpo(model, tokenizer, pairs, args.steps, args.warmup, precompute=False),
            lambda: time_trl_dpo(model, tokenizer, pairs, args.steps, args.warmup, precompute=False)),
        "DPO step (cached reference log-probs)": (
            lambda: time_pref_lab_dpo(model, tokenizer, pairs, args.steps, args.warmup, precompute=True),
            lambda: time_trl_dpo(model, tokenizer, pairs, args.steps, args.warmup, precompute=True)),
        "SFT step (prompt-masked token-mean CE)": (
            lambda: time_pref_lab_sft(model, tokenizer, pairs, args.steps, args.warmup),
            lambda: time_trl_sft(model, tokenizer, pairs, args.steps, args.warmup)),
    }
    rows = []
    for name, (ours, theirs) in runs.items():
        ours_times, trl_times = [], []
        for _ in range(args.rounds):
            ours_times += ours()
            trl_times += theirs()
        rows.append((name, ms_quartiles(ours_times), ms_quartiles(trl_times)))
        print(f"  {name}: pref_lab {rows[-1][1][1]:.1f} ms, TRL {rows[-1][2][1]:.1f} ms", file=sys.stderr, flush=True)

    print()
    print("| step | pref_lab median (ms) | pref_lab p25-p75 | TRL median (ms) | TRL p25-p75 | TRL / pref_lab |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (o25, o50, o75), (t25, t50, t75) in rows:
        print(f"| {name} | {o50:.1f} | {o25:.0f}-{o75:.0f} | {t50:.1f} | {t25:.0f}-{t75:.0f} | {t50 / o50:.2f} |")
    print(f"\ntotal wall time {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
