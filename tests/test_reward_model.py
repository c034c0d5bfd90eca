"""Reward model: the loss against TRL 1.16's RewardTrainer, the head reading the last real token under
left and right padding, a tiny training run on a toy task, and the shipped RM against its manifest."""

import copy
import json
import math
import random

import pytest
import torch
from datasets import Dataset
from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

from pref_lab import config
from pref_lab.data import read_jsonl
from pref_lab.logprobs import tokenize_completions
from pref_lab.models import format_prompt, load_tokenizer, train_tokenizer
from pref_lab.reward_model import (
    _group_rewards,
    agreement_with_gold_order,
    evaluate_pairs,
    group_pairs_by_prompt,
    held_out_prompts,
    init_reward_model,
    load_reward_model,
    pairwise_loss,
    reward_scores,
    train_reward_model,
)

POSITIVE = ["a charming comedy", "great acting", "a sharp script and great acting", "charming and warm", "a joy"]
NEGATIVE = ["a dull mess", "boring and too long, a mess", "dull", "too long", "a tedious bore"]

# TRL's trainers still call transformers' deprecated `is_gradient_checkpointing` internally.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on a busy 2-core machine run ~10x faster on one thread (no thread contention)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    texts = POSITIVE + NEGATIVE + ["Write a review of Movie 0123456789."]
    return train_tokenizer(texts * 3, vocab_size=300)


def tiny_config(tokenizer, dropout: float = 0.0) -> GPT2Config:
    return GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=16, n_layer=1, n_head=2,
                      resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                      bos_token_id=tokenizer.eos_token_id)


def tiny_rm(tokenizer, seed: int = 0) -> GPT2ForSequenceClassification:
    torch.manual_seed(seed)
    cfg = tiny_config(tokenizer)
    cfg.num_labels = 1
    model = GPT2ForSequenceClassification(cfg)
    with torch.no_grad():  # a non-trivial head (the default init is small): rewards spread over ~±1
        model.score.weight.normal_(0, 1.0)
    return model.eval()


@pytest.fixture(scope="module")
def pairs(tokenizer):
    prompts = [format_prompt(tokenizer, f"Write a review of Movie {i}.") for i in range(len(POSITIVE))]
    return prompts, POSITIVE, NEGATIVE


# ----------------------------------------------------------------------------- the loss
def test_agreement_with_gold_order_by_hand():
    pairs = [{"gold_chosen": 1.0, "gold_rejected": 0.0},   # gold agrees with the label
             {"gold_chosen": -1.0, "gold_rejected": 2.0},  # the label went against gold (label noise)
             {"gold_chosen": 0.5, "gold_rejected": 0.4},
             {"gold_chosen": 3.0, "gold_rejected": 1.0}]
    chosen, rejected = torch.tensor([2.0, 0.0, 1.0, 0.0]), torch.tensor([1.0, 1.0, 1.0, 5.0])
    # RM orders: c>r, r>c (agrees with gold on the noisy pair), tie (counts as r>=c: disagrees), r>c (disagrees)
    assert agreement_with_gold_order(chosen, rejected, pairs) == 0.5
    with pytest.raises(ValueError, match="4 pairs"):
        agreement_with_gold_order(chosen[:3], rejected[:3], pairs)


def test_pairwise_loss_hand_computed():
    r_c, r_r = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    # -log sigma(1) = log(1 + e^-1); -log sigma(-2) = log(1 + e^2); centering: ((1+0)^2 + (0+2)^2) / 2 = 2.5
    expected = (torch.log1p(torch.exp(torch.tensor(-1.0))) + torch.log1p(torch.exp(torch.tensor(2.0)))) / 2
    torch.testing.assert_close(pairwise_loss(r_c, r_r), expected)
    torch.testing.assert_close(pairwise_loss(r_c, r_r, center_coef=0.1), expected + 0.1 * 2.5)
    # Bradley–Terry is shift invariant; only the centering term sees a shift of both rewards
    torch.testing.assert_close(pairwise_loss(r_c + 5, r_r + 5), expected)


@pytest.mark.parametrize("center_coef", [None, 0.01])
def test_loss_and_gradients_match_trl_reward_trainer(tokenizer, pairs, tmp_path, center_coef):
    from trl import RewardConfig, RewardTrainer

    prompts, chosen, rejected = pairs
    ours = tiny_rm(tokenizer)
    theirs = copy.deepcopy(ours)

    # pref_lab: rows [chosen..., rejected...], right padding, our last-real-token head
    batch = tokenize_completions(tokenizer, prompts * 2, chosen + rejected)
    rewards = reward_scores(ours, batch["input_ids"], batch["attention_mask"])
    r_chosen, r_rejected = rewards.chunk(2)
    loss = pairwise_loss(r_chosen, r_rejected, center_coef or 0.0)
    loss.backward()
    assert abs(loss.item() - torch.log(torch.tensor(2.0)).item()) > 0.05  # the head makes the comparison non-trivial

    # TRL: its own tokenization, collator, model forward (GPT2ForSequenceClassification's pooling) and compute_loss
    args = RewardConfig(output_dir=str(tmp_path), bf16=False, activation_checkpointing=False, use_cpu=True,
                        report_to=[], save_strategy="no", disable_tqdm=True, per_device_train_batch_size=len(prompts),
                        center_rewards_coefficient=center_coef)
    dataset = Dataset.from_dict({"prompt": prompts, "chosen": chosen, "rejected": rejected})
    trainer = RewardTrainer(model=theirs, args=args, train_dataset=dataset, processing_class=tokenizer)
    trl_inputs = trainer.data_collator([trainer.train_dataset[i] for i in range(len(dataset))])
    # Same ids: TRL appends the EOS text and tokenizes prompt + completion as one string; our prompts end on the
    # special token <|assistant|>, so no BPE merge crosses the boundary.
    for key in ("input_ids", "attention_mask"):
        torch.testing.assert_close(trl_inputs[key], batch[key], rtol=0, atol=0)
    trl_loss, trl_outputs = trainer.compute_loss(trainer.model, trl_inputs, return_outputs=True)
    trl_loss.backward()

    torch.testing.assert_close(trl_outputs.logits.squeeze(-1), rewards.detach(), atol=1e-5, rtol=1e-5)
    assert trl_loss.item() == pytest.approx(loss.item(), abs=1e-6)
    ours_grads = dict(ours.named_parameters())
    for name, p in trainer.model.named_parameters():
        torch.testing.assert_close(p.grad, ours_grads[name].grad, atol=1e-6, rtol=1e-5, msg=name)


# ----------------------------------------------------------------------------- the head
def test_head_reads_the_last_real_token_under_left_and_right_padding(tokenizer, pairs):
    prompts, chosen, rejected = pairs
    rm = tiny_rm(tokenizer)
    texts = chosen + rejected  # lengths differ, so every batch has padding
    right = tokenize_completions(tokenizer, prompts * 2, texts, padding_side="right")
    left = tokenize_completions(tokenizer, prompts * 2, texts, padding_side="left")
    assert (right["attention_mask"] == 0).any(), "the fixture must pad"
    with torch.no_grad():
        scores_right = reward_scores(rm, right["input_ids"], right["attention_mask"])
        scores_left = reward_scores(rm, left["input_ids"], left["attention_mask"])
        # By hand: each sequence alone (no padding at all), the head applied to the hidden state of its last token
        by_hand = []
        for ids, mask in zip(right["input_ids"], right["attention_mask"]):
            real = ids[mask.bool()][None]
            hidden = rm.transformer(input_ids=real).last_hidden_state[0, -1]
            assert real[0, -1].item() == tokenizer.eos_token_id  # the last real token is the EOS we appended
            by_hand.append(rm.score(hidden).squeeze(-1))
        by_hand = torch.stack(by_hand)
        # and the HF model's own pooling (last non-pad id) under right padding, as TRL and PPO call it
        hf = rm(input_ids=right["input_ids"], attention_mask=right["attention_mask"]).logits.squeeze(-1)
    assert scores_right.shape == (len(texts),)
    assert by_hand.std() > 0.1  # distinct rows: a head reading the wrong position would be caught
    torch.testing.assert_close(scores_right, by_hand, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scores_left, by_hand, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hf, by_hand, atol=1e-5, rtol=1e-5)


def test_evaluate_pairs_returns_rewards_in_input_order(tokenizer, pairs):
    prompts, chosen, rejected = pairs
    rm = tiny_rm(tokenizer)
    records = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in zip(prompts, chosen, rejected)]
    result = evaluate_pairs(rm, tokenizer, records, batch_size=2)  # length-sorted batches inside
    with torch.no_grad():
        for i, x in enumerate(records):
            one = tokenize_completions(tokenizer, [x["prompt"]] * 2, [x["chosen"], x["rejected"]])
            r_c, r_r = reward_scores(rm, one["input_ids"], one["attention_mask"])
            torch.testing.assert_close(result["chosen"][i], r_c, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(result["rejected"][i], r_r, atol=1e-5, rtol=1e-5)
    assert result["accuracy"] == pytest.approx((result["chosen"] > result["rejected"]).float().mean().item())
    assert result["loss"] == pytest.approx(pairwise_loss(result["chosen"], result["rejected"]).item())
    with pytest.raises(ValueError, match="pairs: no records"):
        evaluate_pairs(rm, tokenizer, [])


def test_init_reward_model_keeps_the_sft_trunk(tokenizer, tmp_path):
    torch.manual_seed(0)
    sft = GPT2LMHeadModel(tiny_config(tokenizer))
    sft.save_pretrained(str(tmp_path), safe_serialization=True)
    rm = init_reward_model(tmp_path, seed=0)
    assert rm.score.weight.shape == (1, sft.config.n_embd)
    for name, p in sft.transformer.named_parameters():
        torch.testing.assert_close(rm.transformer.get_parameter(name), p, rtol=0, atol=0, msg=name)
    torch.testing.assert_close(init_reward_model(tmp_path, seed=0).score.weight, rm.score.weight, rtol=0, atol=0)
    assert not torch.equal(init_reward_model(tmp_path, seed=1).score.weight, rm.score.weight)


# ----------------------------------------------------------------------------- training
def toy_pairs(n: int, seed: int) -> list[dict]:
    """Word-level toy task: the chosen completion has more 'b's than the rejected one (lengths vary)."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        x, y = (" ".join(rng.choice("bc") for _ in range(rng.randint(1, 5))) for _ in range(2))
        nx, ny = x.split().count("b"), y.split().count("b")
        if nx != ny:
            prompt = " ".join("a" * rng.randint(1, 4))  # four prompts: "a" ... "a a a a"
            out.append({"prompt": prompt, "chosen": x if nx > ny else y, "rejected": y if nx > ny else x})
    return out


def test_tiny_training_run_raises_accuracy(word_tokenizer, tmp_path):
    torch.manual_seed(0)
    sft = GPT2LMHeadModel(GPT2Config(vocab_size=5, n_positions=16, n_embd=16, n_layer=1, n_head=2,
                                     pad_token_id=1, eos_token_id=0, bos_token_id=0))
    sft.save_pretrained(str(tmp_path), safe_serialization=True)
    rm = init_reward_model(tmp_path, seed=0)
    train, val = toy_pairs(256, seed=0), toy_pairs(128, seed=1)
    before = evaluate_pairs(rm, word_tokenizer, val)
    history = train_reward_model(rm, word_tokenizer, train, steps=60, prompts_per_step=2, lr=3e-3, center_coef=0.01,
                                 eval_fn=lambda m: {"accuracy": evaluate_pairs(m, word_tokenizer, val)["accuracy"]},
                                 eval_every=30, progress=False)
    after = evaluate_pairs(rm, word_tokenizer, val)
    assert [row["step"] for row in history] == list(range(1, 61))
    assert [row["step"] for row in history if "eval" in row] == [30, 60]
    # 4 prompts, 2 a step with all their pairs: every 2 steps are one epoch over the 256 pairs
    assert [row["pairs"] for row in history[1::2]] == [256 * epoch for epoch in range(1, 31)]
    assert history[-1]["eval"]["accuracy"] == pytest.approx(after["accuracy"])
    assert after["accuracy"] >= 0.85 and after["accuracy"] >= before["accuracy"] + 0.2
    assert after["loss"] < before["loss"]
    assert abs((after["chosen"] + after["rejected"]).mean().item()) < 1.0  # centering keeps rewards near 0


def test_regularisers_do_what_they_say(word_tokenizer):
    """freeze_embeddings leaves both embedding tables bit-identical while the rest trains; weight_decay shrinks
    weights that get no gradient by exactly (1 - lr * wd) per step (AdamW's decoupled decay)."""
    pairs = toy_pairs(64, seed=0)
    rm = tiny_rm(word_tokenizer)
    before = {k: v.clone() for k, v in rm.state_dict().items()}
    train_reward_model(rm, word_tokenizer, pairs, steps=3, prompts_per_step=2, lr=1e-2, freeze_embeddings=True,
                       progress=False)
    after = rm.state_dict()
    for name in ("transformer.wte.weight", "transformer.wpe.weight"):
        assert torch.equal(after[name], before[name]), name
    for name in ("score.weight", "transformer.h.0.mlp.c_fc.weight"):  # the head and the blocks did train
        assert not torch.equal(after[name], before[name]), name
    assert all(p.requires_grad for p in rm.parameters()), "the freeze ends with the training run"
    # decoupled decay on an untouched parameter: position rows no text reaches get zero gradient
    rm = tiny_rm(word_tokenizer)
    row = rm.transformer.wpe.weight[-1].detach().clone()
    lr, wd, steps = 1e-2, 0.5, 3
    train_reward_model(rm, word_tokenizer, pairs, steps=steps, prompts_per_step=2, lr=lr, weight_decay=wd,
                       center_coef=0.0, progress=False)
    # LambdaLR decays lr linearly: step k (0-based) uses lr * (1 - k / steps)
    factor = math.prod(1 - lr * (1 - k / steps) * wd for k in range(steps))
    torch.testing.assert_close(rm.transformer.wpe.weight[-1].detach(), row * factor)
    with pytest.raises(ValueError, match="weight_decay"):
        train_reward_model(tiny_rm(word_tokenizer), word_tokenizer, pairs, steps=1, weight_decay=-1, progress=False)


def test_dropout_switch(word_tokenizer, tmp_path):
    """dropout=True keeps the config's dropout probabilities while training (off by default, as TRL's)."""
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=5, n_positions=16, n_embd=16, n_layer=1, n_head=2, pad_token_id=1, eos_token_id=0,
                        bos_token_id=0, resid_pdrop=0.5, embd_pdrop=0.5, attn_pdrop=0.5)
    GPT2LMHeadModel(config).save_pretrained(str(tmp_path), safe_serialization=True)
    probabilities = {}
    for dropout in (False, True):
        rm = init_reward_model(tmp_path, seed=0)
        train_reward_model(rm, word_tokenizer, toy_pairs(16, seed=0), steps=1, prompts_per_step=1, dropout=dropout,
                           progress=False)
        probabilities[dropout] = {m.p for m in rm.modules() if isinstance(m, torch.nn.Dropout)}
    assert probabilities == {False: {0.0}, True: {0.5}}


def test_held_out_prompts_is_the_feature_oracles_split():
    """One seeded share of the distinct prompts, all samples of a prompt on one side; the same split the oracle
    used before it called this helper (sorted prompts, random.Random(seed).sample)."""
    pairs = [{"prompt": f"p{i % 37}", "chosen": "x", "rejected": "y"} for i in range(200)]
    held = held_out_prompts(pairs, 0.1, seed=0)
    prompts = sorted({p["prompt"] for p in pairs})
    assert held == set(random.Random(0).sample(prompts, 3)) and len(held) == 3
    assert held_out_prompts(pairs, 0.1, seed=0) == held and held_out_prompts(pairs, 0.1, seed=1) != held
    assert len(held_out_prompts(pairs[:1], 0.1)) == 1  # at least one


def test_group_pairs_by_prompt_lists_each_completion_once():
    pairs = [{"prompt": "p", "chosen": "x", "rejected": "y"}, {"prompt": "q", "chosen": "x", "rejected": "z"},
             {"prompt": "p", "chosen": "z", "rejected": "x"}, {"prompt": "p", "chosen": "y", "rejected": "z"}]
    assert group_pairs_by_prompt(pairs) == [
        {"prompt": "p", "completions": ["x", "y", "z"], "pairs": [(0, 1), (2, 0), (1, 2)]},
        {"prompt": "q", "completions": ["x", "z"], "pairs": [(0, 1)]},
    ]


def test_group_rewards_equal_scoring_each_pair(word_tokenizer):
    """Scoring each distinct completion once gives the rewards of scoring every pair separately."""
    rm = tiny_rm(word_tokenizer)
    pairs = toy_pairs(40, seed=3)
    groups = group_pairs_by_prompt(pairs)
    assert sum(len(g["pairs"]) for g in groups) == 40 and len(groups) > 1
    chosen, rejected = _group_rewards(rm, word_tokenizer, groups, "cpu")
    ordered = [p for g in groups for p in pairs if p["prompt"] == g["prompt"]]  # the pairs in group order
    expected = evaluate_pairs(rm, word_tokenizer, ordered)
    torch.testing.assert_close(chosen.detach(), expected["chosen"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rejected.detach(), expected["rejected"], rtol=1e-5, atol=1e-5)


def test_training_rejects_bad_input(word_tokenizer, tmp_path):
    rm = tiny_rm(word_tokenizer)
    with pytest.raises(ValueError, match="train_pairs: no records"):
        train_reward_model(rm, word_tokenizer, [], steps=1, progress=False)
    with pytest.raises(ValueError, match="steps"):
        train_reward_model(rm, word_tokenizer, toy_pairs(4, 0), steps=0, progress=False)


# ----------------------------------------------------------------------------- the shipped RM
def shipped_rm_metrics() -> dict:
    manifest = json.loads(config.data_path("manifest.json").read_text())
    if "rm" not in manifest["assets"]:
        pytest.skip("no shipped reward model yet (run `make assets`)")
    return manifest["assets"]["rm"]["metrics"]


@pytest.mark.shipped  # reads the shipped data/
def test_shipped_rm_beats_chance_and_agrees_with_gold_order():
    m = shipped_rm_metrics()
    assert m["test_accuracy"] > 0.6 and m["agreement_with_gold_order"] > 0.6, m


@pytest.mark.xfail(strict=True, reason="known gap (issue 16): the shipped RM reaches 0.645 held-out accuracy against "
                   "the feature oracle's 0.682 on the same pairs (the bar is 0.652); neither the recipes of "
                   "scripts/tune_rm.py (validation 0.660 for the recipe, 0.654 for lr 1e-3, 0.660 for weight decay 0.1, "
                   "the oracle 0.702) nor more pairs (data/results/rm_data_scaling.json: 0.621 at 14.6k and 17.2k "
                   "pairs, 0.638 at 22.3k, the shipped RM 0.645 at 32.6k) close it; strict: passing means the gap "
                   "closed, so drop this mark")
@pytest.mark.shipped  # reads the shipped data/
def test_shipped_rm_is_within_3_points_of_the_feature_oracle():
    """The bar: the data-limited ceiling (the gold judge's own model form fit on the same pairs, pref_lab.oracle),
    not the Bayes ceiling, which assumes the exact gold reward."""
    m = shipped_rm_metrics()
    oracle = json.loads(config.data_path("manifest.json").read_text())["assets"]["oracle"]["metrics"]
    assert oracle["test_accuracy"] - m["test_accuracy"] <= 0.03, (oracle["test_accuracy"], m["test_accuracy"])


@pytest.mark.shipped  # reads the shipped data/
def test_the_feature_oracle_is_fit_on_the_rms_pairs_inside_its_grid():
    m = shipped_rm_metrics()
    assets = json.loads(config.data_path("manifest.json").read_text())["assets"]
    oracle = assets["oracle"]["metrics"]
    assert oracle["train_pairs"] == m["train_pairs"]  # the same training pairs
    assert oracle["test_accuracy"] <= m["test_bayes_ceiling"] + 0.02  # the right features, still below the ceiling
    grid = assets["oracle"]["recipe"]["l2_grid"]
    assert min(grid) < oracle["l2"] < max(grid), "the chosen L2 strength lies inside the grid, not at its edge"


@pytest.mark.shipped  # reads the shipped data/
def test_shipped_rm_reproduces_its_recorded_accuracy():
    m = shipped_rm_metrics()
    test = read_jsonl(config.data_path("preferences", "test.jsonl"))
    assert len(test) == m["test_pairs"]
    result = evaluate_pairs(load_reward_model(device="cpu"), load_tokenizer(), test)
    gold_order = torch.tensor([x["gold_chosen"] > x["gold_rejected"] for x in test])
    agreement = ((result["chosen"] > result["rejected"]) == gold_order).float().mean().item()
    # recorded values are rounded to 4 decimals
    assert result["accuracy"] == pytest.approx(m["test_accuracy"], abs=5e-5)
    assert agreement == pytest.approx(m["agreement_with_gold_order"], abs=5e-5)
