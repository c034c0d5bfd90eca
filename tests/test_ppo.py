"""Tests for pref_lab.ppo: each piece against hand-computed values, closed forms and invariants,
then a few PPO iterations on a tiny random GPT-2 that must learn a trivially learnable reward."""

import copy

import pytest
import torch
from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

from pref_lab.logprobs import tokenize_completions
from pref_lab.ppo import (
    PPOConfig,
    compute_gae,
    make_experience,
    make_value_model,
    masked_mean,
    penalize_missing_eos,
    per_token_rewards,
    policy_logprobs,
    policy_loss,
    ppo_losses,
    rollout,
    train_ppo,
    value_loss,
    whiten,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py

LETTERS = "abcdefghijkl"
PROMPTS = [f"<|user|>{LETTERS[k]} {LETTERS[(k + 1) % 12]} {LETTERS[(k + 2) % 12]}<|assistant|>" for k in range(12)]


@pytest.fixture(scope="module")
def tokenizer(letter_tokenizer):
    return letter_tokenizer


def tiny_config(tokenizer, **kwargs):
    return GPT2Config(vocab_size=len(tokenizer), n_positions=32, n_embd=16, n_layer=1, n_head=2,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **kwargs)


@pytest.fixture
def policy(tokenizer):
    torch.manual_seed(0)
    return GPT2LMHeadModel(tiny_config(tokenizer)).eval()


# ----------------------------------------------------------------------------- GAE
def test_gae_hand_computed():
    gamma, lam = 0.9, 0.8
    # row 0: one prompt action slot, 3 completion tokens, 1 padding; row 1: 1 completion token, then padding
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 1, 0, 0, 0]], dtype=torch.float)
    rewards = torch.tensor([[9.0, 0.5, -1.0, 2.0, 9.0], [9.0, 1.5, 9.0, 9.0, 9.0]])
    values = torch.tensor([[9.0, 1.0, 0.5, -0.5, 9.0], [9.0, 0.25, 9.0, 9.0, 9.0]])
    advantages, returns = compute_gae(rewards, values, mask, gamma, lam)
    # delta_3 = 2 + 0 - (-0.5) = 2.5                 A_3 = 2.5
    # delta_2 = -1 + 0.9 * (-0.5) - 0.5 = -1.95      A_2 = -1.95 + 0.72 * 2.5 = -0.15
    # delta_1 = 0.5 + 0.9 * 0.5 - 1 = -0.05          A_1 = -0.05 + 0.72 * (-0.15) = -0.158
    # row 1: delta = 1.5 - 0.25 = 1.25
    expected_adv = torch.tensor([[0, -0.158, -0.15, 2.5, 0], [0, 1.25, 0, 0, 0]])
    expected_ret = torch.tensor([[0, 0.842, 0.35, 2.0, 0], [0, 1.5, 0, 0, 0]])
    torch.testing.assert_close(advantages, expected_adv)
    torch.testing.assert_close(returns, expected_ret)


def test_gae_with_lambda_one_gives_monte_carlo_return():
    gamma = 0.9
    gen = torch.Generator().manual_seed(1)
    rewards, values = torch.randn(3, 7, generator=gen), torch.randn(3, 7, generator=gen)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [0, 1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 0, 0]], dtype=torch.float)
    advantages, returns = compute_gae(rewards, values, mask, gamma, lam=1.0)
    for i in range(3):
        for t in range(7):
            if mask[i, t]:
                mc = sum(gamma ** (k - t) * rewards[i, k] for k in range(t, 7) if mask[i, k])
                torch.testing.assert_close(returns[i, t], mc)
                torch.testing.assert_close(advantages[i, t], mc - values[i, t])


# ----------------------------------------------------------------------------- whitening, rewards
def test_whiten_gives_masked_mean_zero_and_variance_one():
    gen = torch.Generator().manual_seed(2)
    x = 3.0 + 5.0 * torch.randn(4, 9, generator=gen)
    mask = (torch.rand(4, 9, generator=gen) < 0.6).float()
    white = whiten(x, mask)
    kept = white[mask.bool()]
    assert abs(kept.mean().item()) < 1e-5
    assert abs(kept.var().item() - 1.0) < 1e-4  # unbiased, as masked_var
    assert (white[~mask.bool()] == 0).all()
    torch.testing.assert_close(whiten(torch.where(mask.bool(), x, 1e6), mask), white)  # padding ignored


def test_per_token_rewards_put_score_on_last_completion_token():
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 0, 0]], dtype=torch.float)
    logprobs = torch.tensor([[-1.0, -1.0, -2.0, -0.5, -3.0], [-1.0, -1.0, -0.2, -3.0, -3.0]])
    ref_logprobs = torch.tensor([[-2.0, -1.5, -1.0, -1.5, -1.0], [-2.0, -2.0, -0.7, -1.0, -1.0]])
    rewards, kl = per_token_rewards(logprobs, ref_logprobs, torch.tensor([10.0, 20.0]), mask, kl_coef=0.1)
    torch.testing.assert_close(kl, torch.tensor([[0, 0.5, -1.0, 1.0, 0], [0, 0, 0.5, 0, 0]]))
    torch.testing.assert_close(rewards, torch.tensor([[0, -0.05, 0.1, -0.1 + 10.0, 0], [0, 0, -0.05 + 20.0, 0, 0]]))


def test_missing_eos_penalty_hits_only_truncated_completions():
    scores, has_eos = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([True, False, True])
    torch.testing.assert_close(penalize_missing_eos(scores, has_eos, 1.5), torch.tensor([1.0, 0.5, 3.0]))
    torch.testing.assert_close(penalize_missing_eos(scores, has_eos, None), scores)


# ----------------------------------------------------------------------------- losses
def clipped_loss_and_grad(ratio: float, advantage: float, eps: float = 0.2):
    old = torch.tensor([[-1.0]])
    new = (old + torch.log(torch.tensor(ratio))).requires_grad_(True)
    loss, stats = policy_loss(new, old, torch.tensor([[advantage]]), torch.ones(1, 1), eps)
    loss.backward()
    return loss.item(), new.grad.item(), stats["clipfrac"]


@pytest.mark.parametrize("ratio,advantage", [(1.1, 2.0), (0.9, 2.0), (1.1, -2.0), (0.85, -0.5)])
def test_policy_loss_equals_unclipped_inside_trust_region(ratio, advantage):
    loss, grad, clipfrac = clipped_loss_and_grad(ratio, advantage)
    assert loss == pytest.approx(-ratio * advantage, rel=1e-5)
    assert grad == pytest.approx(-ratio * advantage, rel=1e-5)  # d(-rho A)/d log pi = -rho A
    assert clipfrac == 0.0


@pytest.mark.parametrize("ratio,advantage", [(1.5, 2.0), (0.5, -2.0)])
def test_policy_loss_has_zero_gradient_past_the_clip_in_the_favoured_direction(ratio, advantage):
    loss, grad, clipfrac = clipped_loss_and_grad(ratio, advantage)
    clipped_ratio = min(max(ratio, 0.8), 1.2)
    assert loss == pytest.approx(-clipped_ratio * advantage, rel=1e-5)
    assert grad == 0.0
    assert clipfrac == 1.0


@pytest.mark.parametrize("ratio,advantage", [(1.5, -2.0), (0.5, 2.0)])
def test_policy_loss_keeps_gradient_when_the_step_went_the_wrong_way(ratio, advantage):
    loss, grad, _ = clipped_loss_and_grad(ratio, advantage)
    assert loss == pytest.approx(-ratio * advantage, rel=1e-5)  # pessimistic bound: the unclipped term
    assert grad == pytest.approx(-ratio * advantage, rel=1e-5)


def test_clipped_value_loss():
    returns, old_values = torch.ones(1, 3), torch.zeros(1, 3)
    values = torch.tensor([[0.5, -0.5, 0.1]], requires_grad=True)
    loss, clipfrac = value_loss(values, old_values, returns, torch.ones(1, 3), clip_range_value=0.2)
    # token 0: moved 0.5 towards the return, clipped to 0.2: max(0.25, 0.64) = 0.64, flat in V
    # token 1: moved away: max((-1.5)^2, (-1.2)^2) = 2.25, unclipped gradient
    # token 2: inside the range: 0.81 either way
    assert loss.item() == pytest.approx(0.5 * (0.64 + 2.25 + 0.81) / 3, rel=1e-5)
    assert clipfrac == pytest.approx(1 / 3)
    loss.backward()
    torch.testing.assert_close(values.grad, torch.tensor([[0.0, -1.5 / 3, -0.9 / 3]]))


# ----------------------------------------------------------------------------- masking
def test_padding_changes_no_reward_advantage_loss_or_gradient():
    """Garbage (huge log-probs, values, advantages) on masked positions must change nothing."""
    mask = torch.tensor([[0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]], dtype=torch.float)
    pad = ~mask.bool()

    def run(garbage: float):
        t = {k: torch.randn(2, 6, generator=torch.Generator().manual_seed(i)) for i, k in
             enumerate(["logprobs", "ref", "values", "old_logprobs", "new_values"])}
        for i, k in enumerate(t):  # alternate signs: new - old log-prob on padding is then 2 * garbage
            t[k] = torch.where(pad, garbage * (-1) ** i, t[k])
        new_logprobs = t["logprobs"].clone().requires_grad_(True)
        new_values = t["new_values"].clone().requires_grad_(True)
        rewards, kl = per_token_rewards(t["logprobs"], t["ref"], torch.tensor([1.0, -1.0]), mask, 0.1)
        advantages, returns = compute_gae(rewards, t["values"], mask, 1.0, 0.95)
        advantages = whiten(advantages, mask)
        pg, _ = policy_loss(new_logprobs, t["old_logprobs"], torch.where(pad, garbage, advantages), mask, 0.2)
        vf, _ = value_loss(new_values, t["values"], torch.where(pad, garbage, returns), mask, 0.2)
        (pg + vf).backward()
        return rewards, kl, advantages, returns, pg, vf, new_logprobs.grad, new_values.grad

    clean, dirty = run(0.0), run(100.0)  # exp(200) overflows float32: NaN would leak without masking first
    for a, b in zip(clean, dirty):
        torch.testing.assert_close(a, b)
    assert (clean[-2][pad] == 0).all() and (clean[-1][pad] == 0).all()


def test_pad_token_ids_do_not_change_experience_or_loss(tokenizer, policy):
    batch = rollout(policy, tokenizer, PROMPTS[:6], max_new_tokens=5, seed=0)
    assert not (batch["attention_mask"] == 1).all(), "fixture must produce some padding"
    value_model = make_value_model(policy)
    torch.nn.init.normal_(value_model.head.weight)  # non-zero values so they matter
    config = PPOConfig(batch_size=6, minibatch_size=6)
    scores = torch.arange(6.0)

    def loss_with_pad_ids(fill: int):
        ids = torch.where(batch["attention_mask"].bool(), batch["input_ids"], fill)
        tensors = {**batch, "input_ids": ids}
        experience = make_experience(policy, copy.deepcopy(policy), value_model, tensors, scores, config)
        experience["logprobs"] = experience["logprobs"] - 0.1  # so the ratio is not exactly 1
        loss, _ = ppo_losses(policy, value_model, experience, config)
        return experience, loss

    (exp_a, loss_a), (exp_b, loss_b) = loss_with_pad_ids(tokenizer.pad_token_id), loss_with_pad_ids(7)
    torch.testing.assert_close(loss_a, loss_b)
    for key in ("advantages", "returns", "kl"):
        torch.testing.assert_close(exp_a[key], exp_b[key])


# ----------------------------------------------------------------------------- rollouts and models
def test_rollout_stops_at_eos_and_respects_length_limit(tokenizer, policy):
    batch = rollout(policy, tokenizer, PROMPTS, max_new_tokens=4, seed=0)
    eos = tokenizer.eos_token_id
    lengths = torch.tensor([len(c) for c in batch["completion_ids"]])
    assert batch["has_eos"].any() and not batch["has_eos"].all(), "seed must give both kinds of completion"
    for ids, has_eos in zip(batch["completion_ids"], batch["has_eos"]):
        assert 1 <= len(ids) <= 4
        assert (ids[:-1] != eos).all()  # EOS, if any, only at the end
        assert has_eos == (ids[-1] == eos)
        if not has_eos:
            assert len(ids) == 4  # no EOS means it ran to the limit
    assert torch.equal(batch["completion_mask"].sum(-1), lengths)
    for row, ids in enumerate(batch["completion_ids"]):
        assert torch.equal(batch["input_ids"][row][batch["completion_mask"][row].bool()], ids)


def test_policy_logprobs_match_the_sampling_distribution(tokenizer, policy):
    """The log-probs PPO computes on a rollout are those of the distribution generate() sampled from."""
    for p in policy.parameters():
        p.data.mul_(3.0)  # sharper than the random init, so a mismatch would show
    prompts, temperature = PROMPTS[:3] + ["<|user|>a<|assistant|>"], 0.7
    tokenizer.padding_side = "left"
    inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(0)
    out = policy.generate(**inputs, do_sample=True, temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=5,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                          output_scores=True, return_dict_in_generate=True)
    sampled = out.sequences[:, inputs["input_ids"].shape[1]:]
    sampled_logprobs = torch.log_softmax(torch.stack(out.scores, 1), -1).gather(-1, sampled[..., None]).squeeze(-1)
    completions = []
    for row in sampled:
        ends = (row == tokenizer.eos_token_id).nonzero()
        completions.append(row[:int(ends[0]) + 1] if len(ends) else row)
    batch = tokenize_completions(tokenizer, prompts, completions)
    logprobs, _ = policy_logprobs(policy, batch["input_ids"], batch["attention_mask"], temperature)
    for row, ids in enumerate(completions):
        mine = logprobs[row][batch["completion_mask"][row, 1:].bool()]
        torch.testing.assert_close(mine, sampled_logprobs[row, :len(ids)], atol=1e-5, rtol=1e-5)


def test_value_model_from_reward_model_reproduces_its_score(tokenizer):
    torch.manual_seed(0)
    reward_model = GPT2ForSequenceClassification(tiny_config(tokenizer, num_labels=1)).eval()
    value_model = make_value_model(reward_model)
    batch = tokenize_completions(tokenizer, PROMPTS[:3], ["a b", "c", "d e f g"])
    with torch.no_grad():
        scores = reward_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
        values = value_model(batch["input_ids"], batch["attention_mask"])
    last = batch["attention_mask"].sum(-1) - 1
    torch.testing.assert_close(values[torch.arange(3), last], scores)
    value_model.head.weight.data.zero_()  # a copy: training the value model leaves the RM alone
    assert reward_model.score.weight.abs().sum() > 0
    with pytest.raises(ValueError, match="num_labels=1"):
        make_value_model(GPT2ForSequenceClassification(tiny_config(tokenizer, num_labels=2)))


def test_value_model_from_lm_copies_trunk_and_starts_at_zero(tokenizer, policy):
    value_model = make_value_model(policy)
    batch = tokenize_completions(tokenizer, PROMPTS[:2], ["a", "b c"])
    assert (value_model(batch["input_ids"], batch["attention_mask"]) == 0).all()
    for (name, p), q in zip(policy.transformer.named_parameters(), value_model.transformer.parameters()):
        assert torch.equal(p, q) and p.data_ptr() != q.data_ptr(), name


# ----------------------------------------------------------------------------- training loop
def fraction_of_letter_c(tokenizer):
    target = tokenizer.convert_tokens_to_ids("c")
    return lambda prompts, completion_ids: torch.tensor([(ids == target).float().mean().item()
                                                         for ids in completion_ids])


SMOKE = dict(steps=10, batch_size=12, minibatch_size=6, ppo_epochs=2, lr=1e-2, kl_coef=0.01, max_new_tokens=6)


def test_ppo_raises_a_learnable_reward_and_is_deterministic(tokenizer, policy):
    ref_model = copy.deepcopy(policy)
    ref_state = {k: v.clone() for k, v in ref_model.state_dict().items()}
    start_state = copy.deepcopy(policy.state_dict())

    def run():
        policy.load_state_dict(start_state)
        return train_ppo(policy, ref_model, make_value_model(policy), tokenizer, PROMPTS, fraction_of_letter_c(tokenizer),
                         PPOConfig(**SMOKE), gold_fn=lambda texts: torch.tensor([float(len(t)) for t in texts]),
                         eval_fn=lambda model: {"called": 1.0}, eval_every=4, progress=False)

    history = run()
    scores = [row["objective/scores"] for row in history]
    assert sum(scores[-3:]) / 3 > sum(scores[:3]) / 3 + 0.3, scores  # starts near 1/16
    assert history[-1]["objective/kl"] > 0.5  # the policy moved away from the reference to get there
    for key in ("objective/kl", "objective/rlhf_reward", "objective/scores", "policy/clipfrac", "policy/approxkl",
                "policy/entropy", "loss/policy", "loss/value", "val/ratio"):
        assert key in history[0]
    assert all(row["gold/reward"] >= 0 for row in history) and "loss" in history[0]
    assert [row["step"] for row in history] == list(range(1, 11))  # iterations counted from 1
    assert [row["samples"] for row in history] == [12 * s for s in range(1, 11)] and {r["pairs"] for r in history} == {0}
    assert [row["step"] for row in history if "eval" in row] == [4, 8, 10]  # every 4 iterations and the last
    for k, v in ref_model.state_dict().items():
        assert torch.equal(v, ref_state[k]), f"reference model changed: {k}"
    assert run() == history  # same seed, same numbers (CPU)


def test_first_minibatch_ratio_is_one(tokenizer, policy):
    """Old log-probs and the first update's log-probs come from the same weights: ratio 1, nothing clipped."""
    history = train_ppo(policy, copy.deepcopy(policy), make_value_model(policy), tokenizer, PROMPTS,
                        fraction_of_letter_c(tokenizer),
                        PPOConfig(steps=1, batch_size=6, minibatch_size=6, ppo_epochs=1, max_new_tokens=4),
                        progress=False)
    assert history[0]["val/ratio"] == pytest.approx(1.0, abs=1e-6)
    assert history[0]["policy/clipfrac"] == 0.0
    assert history[0]["objective/kl"] == pytest.approx(0.0, abs=1e-6)


def test_nan_loss_names_the_iteration(tokenizer, policy):
    value_model = make_value_model(policy)
    value_model.head.weight.data.fill_(float("nan"))
    with pytest.raises(RuntimeError, match="PPO iteration 1"):
        train_ppo(policy, copy.deepcopy(policy), value_model, tokenizer, PROMPTS, fraction_of_letter_c(tokenizer),
                  PPOConfig(steps=1, batch_size=4, minibatch_size=4, max_new_tokens=3), progress=False)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="minibatch_size"):
        PPOConfig(batch_size=4, minibatch_size=8)
    with pytest.raises(ValueError, match="gamma"):
        PPOConfig(lam=1.5)
    assert masked_mean(torch.tensor([1.0, float("inf")]), torch.tensor([1.0, 0.0])).item() == 1.0
