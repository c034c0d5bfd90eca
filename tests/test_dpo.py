"""DPO: the seed's loss against hand-computed values and closed forms, the batch layout, parity with
TRL 1.16's DPOTrainer on a tiny random GPT-2, and a training smoke test."""

import copy
import itertools
import math

import pytest
import torch
from datasets import Dataset
from transformers import GPT2Config, GPT2LMHeadModel

from pref_lab.dpo import (
    build_preference_batch,
    dpo_loss,
    dpo_metrics,
    evaluate_dpo,
    implicit_rewards,
    log_ratio_parts,
    pairs_drawn,
    precompute_reference_logps,
    train_dpo,
)
from pref_lab.logprobs import sequence_logprobs
from pref_lab.losses import dpo_sigmoid_loss, hinge_loss, ipo_loss, pair_loss_fn
from pref_lab.models import Unfinished, format_prompt, train_tokenizer

BETA = 0.1
POSITIVE = ["a charming comedy", "great acting", "a sharp script and great acting", "charming and warm", "a joy"]
NEGATIVE = ["a dull mess", "boring and too long, a mess", "dull", "too long", "a tedious bore"]


# TRL's DPOTrainer still calls transformers' deprecated `is_gradient_checkpointing` internally.
pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")]


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tokenizer():
    texts = POSITIVE + NEGATIVE + ["Write a review of Movie 0123456789."]
    return train_tokenizer(texts * 3, vocab_size=300)


def tiny_gpt2(tokenizer, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=16, n_layer=1, n_head=2,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                        bos_token_id=tokenizer.eos_token_id)
    return GPT2LMHeadModel(config).eval()


def perturbed_copy(model, scale: float = 0.3, seed: int = 1):
    """A policy that differs from the reference, so the loss is not trivially log 2."""
    policy = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return policy


@pytest.fixture(scope="module")
def pairs(tokenizer):
    prompts = [format_prompt(tokenizer, f"Write a review of Movie {i}.") for i in range(len(POSITIVE))]
    return prompts, POSITIVE, NEGATIVE


# ----------------------------------------------------------------------------- dpo_loss
def test_loss_is_log2_and_rewards_zero_when_policy_equals_reference():
    logps = -10 * torch.rand(6)
    losses, rewards = dpo_loss(logps, logps.clone(), torch.tensor([0, 2, 4]), torch.tensor([1, 3, 5]), beta=0.5)
    assert losses.shape == (3,) and rewards.shape == (6,)
    torch.testing.assert_close(losses, torch.full((3,), math.log(2)))
    torch.testing.assert_close(rewards, torch.zeros(6))


def test_loss_matches_hand_computed_values():
    pi = torch.tensor([-1.0, -3.0, -2.0, -2.5])
    ref = torch.tensor([-2.0, -2.0, -2.0, -2.0])
    # pairs given out of order: (w=3, l=0) and (w=1, l=2)
    losses, rewards = dpo_loss(pi, ref, torch.tensor([3, 1]), torch.tensor([0, 2]), beta=0.5)
    # pair 0: pi logratio = -2.5 - (-1) = -1.5, ref logratio = 0 -> loss = log(1 + exp(0.75))
    # pair 1: pi logratio = -3 - (-2) = -1.0 -> loss = log(1 + exp(0.5))
    torch.testing.assert_close(losses, torch.tensor([math.log(1 + math.exp(0.75)), math.log(1 + math.exp(0.5))]))
    torch.testing.assert_close(rewards, torch.tensor([0.5, -0.5, 0.0, -0.25]))
    assert not rewards.requires_grad


def test_swapping_chosen_and_rejected_flips_the_margins():
    gen = torch.Generator().manual_seed(0)
    pi, ref = -5 * torch.rand(8, generator=gen), -5 * torch.rand(8, generator=gen)
    yw, yl = torch.arange(4), torch.arange(4, 8)
    losses, rewards = dpo_loss(pi, ref, yw, yl, BETA)
    swapped_losses, swapped_rewards = dpo_loss(pi, ref, yl, yw, BETA)
    m, s = dpo_metrics(losses, rewards, pi, yw, yl), dpo_metrics(swapped_losses, swapped_rewards, pi, yl, yw)
    assert m["rewards/margins"] != 0
    assert s["rewards/margins"] == pytest.approx(-m["rewards/margins"])
    assert s["rewards/accuracies"] == pytest.approx(1 - m["rewards/accuracies"])  # no ties here
    # -log s(x) - (-log s(-x)) = -x: the loss difference is minus beta times the margin h
    h = (pi[yw] - pi[yl]) - (ref[yw] - ref[yl])
    torch.testing.assert_close(losses - swapped_losses, -BETA * h)


def test_gradient_matches_closed_form():
    gen = torch.Generator().manual_seed(0)
    pi = (-5 * torch.rand(6, generator=gen)).requires_grad_()
    ref = -5 * torch.rand(6, generator=gen)
    yw, yl = torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5])
    losses, rewards = dpo_loss(pi, ref, yw, yl, BETA)
    losses.sum().backward()
    # d/d log pi(y_w) = -beta * sigma(r_l - r_w); d/d log pi(y_l) = +beta * sigma(r_l - r_w)
    weight = torch.sigmoid(rewards[yl] - rewards[yw])
    torch.testing.assert_close(pi.grad[yw], -BETA * weight)
    torch.testing.assert_close(pi.grad[yl], BETA * weight)


def test_metrics_hand_computed_and_ties_are_not_accurate():
    losses = torch.tensor([0.5, 0.7])
    rewards = torch.tensor([0.2, 0.1, 0.1, 0.1])  # pair 0 wins (0.2 > 0.1), pair 1 ties (0.1 vs 0.1)
    logps = torch.tensor([-1.0, -2.0, -3.0, -6.0])
    m = dpo_metrics(losses, rewards, logps, torch.tensor([0, 1]), torch.tensor([2, 3]))
    assert m == pytest.approx({"loss": 0.6, "rewards/chosen": 0.15, "rewards/rejected": 0.1, "rewards/margins": 0.05,
                               "rewards/accuracies": 0.5, "logps/chosen": -1.5, "logps/rejected": -4.5})


# ----------------------------------------------------------------------------- batch builder
def test_batch_puts_chosen_and_rejected_in_their_rows(tokenizer, pairs):
    prompts, chosen, rejected = pairs
    batch, yw, yl = build_preference_batch(tokenizer, prompts, chosen, rejected)
    n = len(prompts)
    assert batch["input_ids"].shape[0] == 2 * n and yw.dtype == yl.dtype == torch.long
    for i in range(n):
        for row, text in ((yw[i], chosen[i]), (yl[i], rejected[i])):
            completion = batch["input_ids"][row][batch["completion_mask"][row].bool()]
            prompt = batch["input_ids"][row][batch["attention_mask"][row].bool() & ~batch["completion_mask"][row].bool()]
            assert tokenizer.decode(completion) == text + tokenizer.eos_token
            assert tokenizer.decode(prompt) == prompts[i]


def test_batch_builder_rejects_bad_pairs(tokenizer, pairs):
    prompts, chosen, _ = pairs
    rejected = list(NEGATIVE)
    rejected[1] = chosen[1]
    with pytest.raises(ValueError, match="row 1: chosen == rejected"):
        build_preference_batch(tokenizer, prompts, chosen, rejected)
    with pytest.raises(ValueError, match="must be equal"):
        build_preference_batch(tokenizer, prompts[:2], chosen, NEGATIVE)


# ----------------------------------------------------------------------------- parity with TRL
def trl_trainer(tokenizer, policy, reference, dataset, tmp_path, **config):
    from trl import DPOConfig, DPOTrainer

    # CPU-sane settings: TRL's DPOConfig defaults to bf16=True and (activation) gradient checkpointing on.
    args = DPOConfig(output_dir=str(tmp_path), bf16=False, activation_checkpointing=False, use_cpu=True,
                     report_to=[], save_strategy="no", disable_tqdm=True, per_device_train_batch_size=len(dataset),
                     beta=BETA, **config)
    # An explicit ref_model: with ref_model=None TRL would rebuild the reference from the model's hub name.
    return DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=dataset, processing_class=tokenizer)


def trl_batch(trainer):
    """The first len(dataset) examples of TRL's tokenized dataset, in order, through TRL's own collator."""
    return trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])


def test_loss_metrics_and_gradients_match_trl(tokenizer, pairs, tmp_path):
    prompts, chosen, rejected = pairs
    reference = tiny_gpt2(tokenizer)
    policy = perturbed_copy(reference)

    # pref_lab, on its own copy of the policy
    ours = copy.deepcopy(policy)
    batch, yw, yl = build_preference_batch(tokenizer, prompts, chosen, rejected)
    pi_logps = sequence_logprobs(ours, **batch)
    with torch.no_grad():
        ref_logps = sequence_logprobs(reference, **batch)
    losses, rewards = dpo_loss(pi_logps, ref_logps, yw, yl, BETA)
    losses.mean().backward()
    metrics = dpo_metrics(losses, rewards, pi_logps, yw, yl)
    assert abs(metrics["loss"] - math.log(2)) > 0.05  # the perturbation made the comparison non-trivial

    # TRL
    dataset = Dataset.from_dict({"prompt": prompts, "chosen": chosen, "rejected": rejected})
    trainer = trl_trainer(tokenizer, policy, copy.deepcopy(reference), dataset, tmp_path)
    trl_inputs = trl_batch(trainer)
    # Same tokenization: TRL appends the EOS *text* to chosen/rejected and tokenizes prompt+completion as one
    # string; our prompts end on the special token <|assistant|>, so no BPE merge crosses the boundary and the
    # ids, masks and row order [chosen..., rejected...] are identical.
    for key in ("input_ids", "attention_mask", "completion_mask"):
        torch.testing.assert_close(trl_inputs[key], batch[key], rtol=0, atol=0)
    trl_loss = trainer.compute_loss(trainer.model, trl_inputs)
    trl_loss.backward()
    mode = "train" if trainer.model.training else "eval"
    trl_metrics = {key: values[-1] for key, values in trainer._metrics[mode].items()}

    assert trl_loss.item() == pytest.approx(metrics["loss"], abs=1e-5)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                "logps/chosen", "logps/rejected"):
        assert trl_metrics[key] == pytest.approx(metrics[key], abs=1e-5), key
    ours_grads = dict(ours.named_parameters())
    for name, p in trainer.model.named_parameters():
        torch.testing.assert_close(p.grad, ours_grads[name].grad, atol=1e-5, rtol=1e-4, msg=name)


def test_precomputed_reference_logps_match_trl(tokenizer, pairs, tmp_path):
    prompts, chosen, rejected = pairs
    reference = tiny_gpt2(tokenizer)
    dataset = Dataset.from_dict({"prompt": prompts, "chosen": chosen, "rejected": rejected})
    ref_chosen, ref_rejected = precompute_reference_logps(reference, tokenizer, dataset, batch_size=2)
    trainer = trl_trainer(tokenizer, perturbed_copy(reference), copy.deepcopy(reference), dataset, tmp_path,
                          precompute_ref_log_probs=True)
    torch.testing.assert_close(torch.tensor(trainer.train_dataset["ref_chosen_logps"]), ref_chosen, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(trainer.train_dataset["ref_rejected_logps"]), ref_rejected,
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo"])
def test_loss_zoo_matches_trl_loss_types(tokenizer, pairs, tmp_path, loss_type):
    prompts, chosen, rejected = pairs
    reference = tiny_gpt2(tokenizer)
    policy = perturbed_copy(reference)
    batch, yw, yl = build_preference_batch(tokenizer, prompts, chosen, rejected)
    with torch.no_grad():
        logratios = sequence_logprobs(policy, **batch) - sequence_logprobs(reference, **batch)
    lengths = batch["completion_mask"].sum(-1).float()
    ours = {
        "sigmoid": lambda: dpo_sigmoid_loss(logratios[yw], logratios[yl], BETA),
        "hinge": lambda: hinge_loss(logratios[yw], logratios[yl], BETA),
        "ipo": lambda: ipo_loss(logratios[yw], logratios[yl], BETA, lengths[yw], lengths[yl]),  # TRL: per-token
    }[loss_type]().mean()
    dataset = Dataset.from_dict({"prompt": prompts, "chosen": chosen, "rejected": rejected})
    trainer = trl_trainer(tokenizer, policy, copy.deepcopy(reference), dataset, tmp_path, loss_type=[loss_type])
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, trl_batch(trainer))
    assert trl_loss.item() == pytest.approx(ours.item(), abs=1e-5)


# ----------------------------------------------------------------------------- training
def toy_preferences(tokenizer, n: int = 8) -> list[dict]:
    """Every chosen completion is positive, every rejected one negative: a learnable preference."""
    return [{"prompt": format_prompt(tokenizer, f"Write a review of Movie {i}."),
             "chosen": POSITIVE[i % len(POSITIVE)], "rejected": NEGATIVE[(i + 1) % len(NEGATIVE)]} for i in range(n)]


def test_train_dpo_raises_accuracy_and_margin(tokenizer):
    data = toy_preferences(tokenizer)
    reference = tiny_gpt2(tokenizer)
    policy = copy.deepcopy(reference)
    reference_before = copy.deepcopy(reference.state_dict())
    seen = []
    measure = lambda model: evaluate_dpo(model, reference, tokenizer, data, BETA)
    first = measure(policy)
    history = train_dpo(policy, reference, tokenizer, data, beta=BETA, steps=30, batch_size=4, lr=3e-3, seed=0,
                        eval_fn=measure, eval_every=10, callback=seen.append, progress=False)
    last = history[-1]["eval"]
    # before training: policy == reference (dropout off, reference frozen), so loss = log 2 and every reward is 0
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["rewards/margins"] == 0 and first["rewards/accuracies"] == 0  # ties are not correct
    # the trainer protocol: steps 1..30, 4 pairs a step, evaluated after steps 10, 20, 30, the callback after each
    assert [row["step"] for row in history] == list(range(1, 31)) and seen == history
    assert [row["pairs"] for row in history] == [4 * s for s in range(1, 31)] and {r["samples"] for r in history} == {0}
    assert [row["step"] for row in history if "eval" in row] == [10, 20, 30]
    assert last["rewards/accuracies"] == 1.0
    assert last["rewards/margins"] > 1.0
    assert last["loss"] < 0.3
    for name, value in reference.state_dict().items():  # the reference stayed frozen
        torch.testing.assert_close(value, reference_before[name], rtol=0, atol=0)
    # dropout is off in the policy (TRL's disable_dropout): train-mode forwards are deterministic
    policy.train()
    ids = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(policy(ids).logits, policy(ids).logits, rtol=0, atol=0)


def test_precomputed_reference_gives_the_same_training(tokenizer):
    data = Dataset.from_list(toy_preferences(tokenizer))
    reference = tiny_gpt2(tokenizer)
    runs = []
    for precompute in (False, True):
        policy = copy.deepcopy(reference)
        runs.append(train_dpo(policy, reference, tokenizer, data, beta=BETA, steps=4, batch_size=3, lr=3e-3,
                              seed=0, progress=False, precompute_ref_logps=precompute))
    for a, b in zip(*runs, strict=True):
        assert a == pytest.approx(b, abs=1e-5)


def test_pairs_drawn_are_the_pairs_train_dpo_trains_on(tokenizer, monkeypatch):
    import pref_lab.dpo as dpo_module

    data = toy_preferences(tokenizer, n=7)
    reference = tiny_gpt2(tokenizer)
    batches, real_batch = [], dpo_module.dpo_batch

    def recording(policy, reference, tokenizer, prompts, *args, **kwargs):
        batches.append([int(p.split("Movie ")[1].split(".")[0]) for p in prompts])  # which toy pair (its movie number)
        return real_batch(policy, reference, tokenizer, prompts, *args, **kwargs)

    monkeypatch.setattr(dpo_module, "dpo_batch", recording)
    train_dpo(copy.deepcopy(reference), reference, tokenizer, data, beta=BETA, steps=5, batch_size=3, lr=1e-3, seed=4,
              progress=False)
    drawn = pairs_drawn(len(data), batch_size=3, steps=5, seed=4)
    assert [i for b in batches for i in b] == drawn and len(drawn) == 15
    # two full batches per epoch of 7 pairs (the remainder is dropped), each epoch a permutation of its own
    assert len(set(drawn[:6])) == 6 and len(set(drawn[6:12])) == 6
    assert pairs_drawn(len(data), 3, 5, seed=5) != drawn


def test_train_dpo_nan_loss_names_the_step(tokenizer):
    reference = tiny_gpt2(tokenizer)
    policy = copy.deepcopy(reference)
    with torch.no_grad():
        policy.transformer.ln_f.weight.fill_(float("nan"))
    with pytest.raises(RuntimeError, match="DPO step 1"):
        train_dpo(policy, reference, tokenizer, toy_preferences(tokenizer), beta=BETA, steps=2, batch_size=2,
                  lr=1e-3, seed=0, progress=False)


def test_train_dpo_rejects_bad_input(tokenizer):
    model = tiny_gpt2(tokenizer)
    with pytest.raises(ValueError, match="same object"):
        train_dpo(model, model, tokenizer, toy_preferences(tokenizer), beta=BETA, steps=1, batch_size=1,
                  lr=1e-3, seed=0, progress=False)
    with pytest.raises(ValueError, match="row 0: missing column"):
        train_dpo(copy.deepcopy(model), model, tokenizer, [{"prompt": "x", "chosen": "y"}], beta=BETA, steps=1, batch_size=1,
                  lr=1e-3, seed=0, progress=False)


def test_implicit_rewards_agree_with_dpo_rewards(tokenizer, pairs):
    prompts, chosen, rejected = pairs
    reference = tiny_gpt2(tokenizer)
    policy = perturbed_copy(reference)
    torch.testing.assert_close(implicit_rewards(reference, reference, tokenizer, prompts, chosen, BETA),
                               torch.zeros(len(prompts)))
    batch, yw, yl = build_preference_batch(tokenizer, prompts, chosen, rejected)
    with torch.no_grad():
        _, rewards = dpo_loss(sequence_logprobs(policy, **batch), sequence_logprobs(reference, **batch), yw, yl, BETA)
    r_chosen = implicit_rewards(policy, reference, tokenizer, prompts, chosen, BETA, batch_size=2)
    torch.testing.assert_close(r_chosen, rewards[yw], atol=1e-5, rtol=1e-5)


def test_log_ratio_parts_by_hand(word_tokenizer, bigram_lm):
    """Two bigram 'LMs' (logits = table[current token]): every per-token log-ratio can be written down."""
    reference, policy = bigram_lm, type(bigram_lm)(torch.randn(5, 5, generator=torch.Generator().manual_seed(1)))
    lp = lambda m, a, b: torch.log_softmax(m.table.detach()[a].double(), -1)[b].item()  # log p(b | a)
    delta = lambda a, b: lp(policy, a, b) - lp(reference, a, b)
    go = lambda a: (math.log(1 - math.exp(lp(policy, a, eos))) - math.log(1 - math.exp(lp(reference, a, eos))))
    a, b, c, eos = 2, 3, 4, 0
    # prompt "a"; completion "b c" finished (EOS appended), the same text cut off (no EOS), and as sampled ids
    completions = ["b c", Unfinished("b c"), torch.tensor([b, c, eos]), torch.tensor([b, c])]
    parts = log_ratio_parts(policy, reference, word_tokenizer, ["a"] * 4, completions, max_length=8)
    words = (delta(a, b) - go(a)) + (delta(b, c) - go(b))
    expected = {"eos": [delta(c, eos), 0.0], "go_on": [go(a) + go(b)] * 2, "words": [words] * 2, "word_tokens": [2.0, 2.0],
                "total": [delta(a, b) + delta(b, c) + delta(c, eos), delta(a, b) + delta(b, c)]}
    for key, values in expected.items():  # the id rows read exactly as the text rows
        torch.testing.assert_close(parts[key], torch.tensor(values * 2, dtype=torch.float32), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(parts["eos"] + parts["go_on"] + parts["words"], parts["total"])
    # beta * total is the implicit reward, and a model against itself moved nothing
    torch.testing.assert_close(BETA * parts["total"][:2], implicit_rewards(policy, reference, word_tokenizer, ["a", "a"],
                                                                            completions[:2], BETA, max_length=8))
    assert log_ratio_parts(policy, policy, word_tokenizer, ["a"], ["c b"], max_length=8)["total"].abs().item() == 0
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        log_ratio_parts(policy, reference, word_tokenizer, ["a", "a"], ["b"], max_length=8)


def test_on_reference_samples_the_mean_log_ratio_is_minus_the_reverse_kl(word_tokenizer, bigram_lm):
    """E_{y ~ pi_ref}[log pi(y)/pi_ref(y)] = -KL(pi_ref || pi) <= 0 (notebook 08), with samples cut off at a length
    limit L: every completion of at most L tokens, finished (EOS) or cut off at L (no EOS), enumerated exactly."""
    table = bigram_lm.table.detach().clone()
    table[:, 1] = -1e4  # the pad token is never sampled, so a completion is words, then EOS or the limit
    reference = type(bigram_lm)(table)
    policy = type(bigram_lm)(table + torch.randn(5, 5, generator=torch.Generator().manual_seed(2)) * (table > -1e3))
    a, eos, words, limit = 2, 0, (2, 3, 4), 3
    completions = [list(w) + [eos] for n in range(limit) for w in itertools.product(words, repeat=n)]
    completions += [list(w) for w in itertools.product(words, repeat=limit)]  # cut off at the limit
    lp = lambda m, ids: sum(torch.log_softmax(m.table.detach()[prev].double(), -1)[tok].item()
                            for prev, tok in zip([a] + ids[:-1], ids))  # log pi(y | "a") by hand
    p_ref = torch.tensor([math.exp(lp(reference, ids)) for ids in completions], dtype=torch.float64)
    assert p_ref.sum().item() == pytest.approx(1.0, abs=1e-6)  # finished + cut-off: a proper distribution
    kl = sum(p * (lp(reference, ids) - lp(policy, ids)) for p, ids in zip(p_ref.tolist(), completions))
    parts = log_ratio_parts(policy, reference, word_tokenizer, ["a"] * len(completions),
                            [torch.tensor(ids) for ids in completions], max_length=8)
    assert kl > 0.01
    assert (p_ref * parts["total"].double()).sum().item() == pytest.approx(-kl, abs=1e-4)


def test_log_ratio_parts_add_up_to_the_implicit_reward(tokenizer, pairs):
    prompts, chosen, _ = pairs
    reference = tiny_gpt2(tokenizer)
    policy = perturbed_copy(reference)
    parts = log_ratio_parts(policy, reference, tokenizer, prompts, chosen, batch_size=2)
    torch.testing.assert_close(BETA * parts["total"], implicit_rewards(policy, reference, tokenizer, prompts, chosen, BETA),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(parts["eos"] + parts["go_on"] + parts["words"], parts["total"], atol=1e-4, rtol=1e-5)
    assert (parts["eos"] != 0).all() and (parts["go_on"] != 0).all()  # every text here finished; stopping moved too


# ----------------------------------------------------------------------------- the loss_fn hook
def test_loss_fn_hook_trains_with_another_loss(tokenizer):
    data = toy_preferences(tokenizer)
    reference = tiny_gpt2(tokenizer)
    seen = {}

    def hinge(pi_logps, ref_logps, yw_ids, yl_ids, lengths):
        seen.setdefault("first call", (lengths.clone(), yw_ids.clone(), yl_ids.clone()))
        logratios = pi_logps - ref_logps
        return hinge_loss(logratios[yw_ids], logratios[yl_ids], BETA)

    # batch_size = all 8 pairs: the first training batch holds every pair once (in a random order)
    policy = copy.deepcopy(reference)
    measure = lambda model: evaluate_dpo(model, reference, tokenizer, data, BETA, loss_fn=hinge)
    before = measure(policy)
    history = train_dpo(policy, reference, tokenizer, data, beta=BETA, steps=30, batch_size=8,
                        lr=3e-3, seed=0, eval_fn=measure, eval_every=30, loss_fn=hinge, progress=False)
    # policy == reference at the start: h = 0, so the hinge loss is max(0, 1 - 0) = 1 (DPO's would be log 2)
    assert before["loss"] == pytest.approx(1.0, abs=1e-6)
    assert history[0]["loss"] == pytest.approx(1.0, abs=1e-6)
    assert history[-1]["eval"]["rewards/accuracies"] == 1.0 and history[-1]["eval"]["rewards/margins"] > 1.0
    # the first call is the evaluation before training, in dataset order;
    # lengths = completion tokens + EOS, rows [chosen, rejected]
    lengths, yw_ids, yl_ids = seen["first call"]
    n_tokens = [len(tokenizer(row[side], add_special_tokens=False)["input_ids"]) + 1
                for side in ("chosen", "rejected") for row in data]
    assert lengths.tolist() == n_tokens
    assert yw_ids.tolist() == list(range(8)) and yl_ids.tolist() == list(range(8, 16))


def test_default_loss_equals_dpo_through_the_hook(tokenizer):
    data = toy_preferences(tokenizer)
    reference = tiny_gpt2(tokenizer)

    def dpo_via_hook(pi_logps, ref_logps, yw_ids, yl_ids, lengths):
        logratios = pi_logps - ref_logps
        return dpo_sigmoid_loss(logratios[yw_ids], logratios[yl_ids], BETA)

    runs = [train_dpo(copy.deepcopy(reference), reference, tokenizer, data, beta=BETA, steps=4, batch_size=3, lr=3e-3,
                      seed=0, progress=False, loss_fn=fn) for fn in (None, dpo_via_hook)]
    for a, b in zip(*runs, strict=True):
        assert a == pytest.approx(b, abs=1e-5)


def test_ipo_through_the_hook_starts_at_its_closed_form_and_bad_shapes_raise(tokenizer):
    data = toy_preferences(tokenizer)
    reference = tiny_gpt2(tokenizer)

    ipo = pair_loss_fn(ipo_loss, beta=BETA)  # a loss of pref_lab.losses, plugged in as it is
    history = train_dpo(copy.deepcopy(reference), reference, tokenizer, data, beta=BETA, steps=1, batch_size=4,
                        lr=1e-3, seed=0, progress=False, loss_fn=ipo)
    assert history[0]["loss"] == pytest.approx((1 / (2 * BETA)) ** 2, rel=1e-6)  # (0 - 1/(2 beta))^2 at h = 0
    with pytest.raises(ValueError, match="one loss per pair"):
        train_dpo(copy.deepcopy(reference), reference, tokenizer, data, beta=BETA, steps=1, batch_size=4, lr=1e-3,
                  seed=0, progress=False, loss_fn=lambda *args: ipo(*args).mean())
