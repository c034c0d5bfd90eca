"""Online DPO: the pairing rule against hand-made scores, the loop's labels against the judge it was given,
skips counted, a few rounds on a tiny random GPT-2 that must raise a trivially learnable reward, and the
distribution-shift helper against hand-computed log-probs."""

import copy
import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import pref_lab.online as online
from pref_lab.models import completion_texts, generate
from pref_lab.online import (
    OnlineDPOConfig,
    bradley_terry_judge,
    distribution_shift,
    gold_judge,
    log_ratio_shift,
    log_ratios,
    mean_logprob,
    reward_model_judge,
    select_pairs,
    train_online_dpo,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py

LETTERS = "abcdefghijkl"
PROMPTS = [f"<|user|>{LETTERS[k]} {LETTERS[(k + 1) % 12]} {LETTERS[(k + 2) % 12]}<|assistant|>" for k in range(12)]


@pytest.fixture(scope="module")
def tokenizer(letter_tokenizer):
    return letter_tokenizer


@pytest.fixture
def policy(tokenizer):
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=32, n_embd=16, n_layer=1, n_head=2,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return GPT2LMHeadModel(config).eval()


def fraction_of_c(prompts, texts):
    """A trivially learnable judge: the share of words that are "c" (0 for an empty text)."""
    return torch.tensor([t.split().count("c") / max(len(t.split()), 1) for t in texts])


# ----------------------------------------------------------------------------- pairing rule
def test_select_pairs_follows_the_stated_rule():
    texts = [["a", "b", "c"],  # distinct: chosen = argmax (1), rejected = argmin (0)
             ["a", "b", "c"],  # all scores equal: a tie
             ["a", "a ", " a"],  # the same text three times: identical
             ["a", "b", "c"],  # two share the max: the first one (0) is chosen
             ["a", "a", "b"],  # a noisy judge scored one text twice differently: best and worst are the same text
             ["a", "b", "c"]]  # within tie_tolerance? no (tolerance 0): kept
    scores = torch.tensor([[0.1, 0.9, 0.5], [2.0, 2.0, 2.0], [1.0, 1.0, 1.0], [3.0, -1.0, 3.0], [5.0, -5.0, 0.0],
                           [1.0, 1.05, 0.99]])
    out = select_pairs(texts, scores)
    assert out["prompt_index"].tolist() == [0, 3, 5]
    assert out["chosen"].tolist() == [1, 0, 1]
    assert out["rejected"].tolist() == [0, 1, 2]
    torch.testing.assert_close(out["margin"], torch.tensor([0.8, 4.0, 0.06]))
    assert (out["ties"], out["identical"]) == (1, 2)
    # with a tolerance the near-tie of the last prompt is a tie too
    tolerant = select_pairs(texts, scores, tie_tolerance=0.1)
    assert tolerant["prompt_index"].tolist() == [0, 3] and tolerant["ties"] == 2


def test_select_pairs_rejects_bad_input():
    with pytest.raises(ValueError, match="k >= 2"):
        select_pairs([["a"]], torch.tensor([[1.0]]))
    with pytest.raises(ValueError, match="NaN"):
        select_pairs([["a", "b"]], torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="k=2"):
        select_pairs([["a", "b", "c"]], torch.tensor([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="completions_per_prompt"):
        OnlineDPOConfig(completions_per_prompt=1)


def test_judges_wrap_the_reward_model_and_the_gold_judge(tokenizer, policy):
    class Gold:
        def gold_reward(self, texts):
            return torch.tensor([float(len(t)) for t in texts])

    assert gold_judge(Gold())(["x", "y"], ["ab", "a"]).tolist() == [2.0, 1.0]
    from transformers import GPT2ForSequenceClassification

    torch.manual_seed(0)
    rm = GPT2ForSequenceClassification(GPT2Config(vocab_size=len(tokenizer), n_positions=32, n_embd=16, n_layer=1,
                                                  n_head=2, num_labels=1, pad_token_id=tokenizer.pad_token_id)).eval()
    from pref_lab.reward_model import score_texts

    expected = score_texts(rm, tokenizer, PROMPTS[:3], ["a", "b c", "d"])
    torch.testing.assert_close(reward_model_judge(rm, tokenizer)(PROMPTS[:3], ["a", "b c", "d"]), expected)


# ----------------------------------------------------------------------------- the loop
def test_loop_trains_on_the_pair_the_judge_prefers(tokenizer, policy, monkeypatch):
    """Spy on the judge's scores and on the completions the DPO batch is built from: in every round each
    chosen completion is the best-scored sample of its prompt and the rejected one the worst."""
    judged, batches = [], []

    def spy_judge(prompts, texts):
        scores = fraction_of_c(prompts, texts) + 1e-3 * torch.tensor([len(t) for t in texts])  # few exact ties
        judged.append((list(prompts), list(texts), scores))
        return scores

    real_tokenize = online.tokenize_completions

    def spy_tokenize(tok, prompts, completions, **kwargs):
        batches.append((list(prompts), completion_texts(tok, completions)))  # what the judge read (cut-off: Unfinished)
        return real_tokenize(tok, prompts, completions, **kwargs)

    monkeypatch.setattr(online, "tokenize_completions", spy_tokenize)
    config = OnlineDPOConfig(rounds=3, prompts_per_round=6, completions_per_prompt=3, max_new_tokens=5, lr=1e-3)
    history = train_online_dpo(policy, copy.deepcopy(policy), tokenizer, PROMPTS, spy_judge, config, progress=False)
    assert len(judged) == 3
    for (prompts, texts, scores), (pair_prompts, pair_texts), row in zip(judged, batches, history):
        k = 3
        n = len(pair_prompts) // 2
        assert n == row["round/pairs"] and n + row["skipped/ties"] + row["skipped/identical"] == 6
        assert pair_prompts[:n] == pair_prompts[n:]
        for prompt, chosen, rejected in zip(pair_prompts[:n], pair_texts[:n], pair_texts[n:]):
            i = prompts.index(prompt) // k
            group = {t: s.item() for t, s in zip(texts[i * k:(i + 1) * k], scores[i * k:(i + 1) * k])}
            assert group[chosen] == max(group.values()) and group[rejected] == min(group.values())
            assert group[chosen] > group[rejected]
        kept_margins = [max(scores[i * k:(i + 1) * k]) - min(scores[i * k:(i + 1) * k]) for i in range(6)
                        if len(set(texts[i * k:(i + 1) * k])) > 1]
        if n:
            assert row["judge/margin"] == pytest.approx(sum(m.item() for m in kept_margins if m > 0) / n, abs=1e-5)
        assert row["judge/score"] == pytest.approx(scores.mean().item())
    assert [row["samples"] for row in history] == [18, 36, 54]  # 6 prompts x 3 completions a round
    assert history[-1]["pairs"] == sum(row["round/pairs"] for row in history)  # one epoch: each pair consumed once


def test_ties_and_identical_completions_are_skipped_and_counted(tokenizer, policy):
    start = copy.deepcopy(policy.state_dict())
    config = OnlineDPOConfig(rounds=2, prompts_per_round=4, completions_per_prompt=2, max_new_tokens=4, lr=1e-2)
    constant = lambda prompts, texts: torch.zeros(len(texts))  # no preference at all
    history = train_online_dpo(policy, copy.deepcopy(policy), tokenizer, PROMPTS, constant, config, progress=False)
    assert [row["skipped/ties"] + row["skipped/identical"] for row in history] == [4, 4]
    assert all(row["round/pairs"] == 0 and row["pairs"] == 0 and row["optimizer_steps"] == 0 and "loss" not in row
               for row in history)
    # near-greedy sampling writes the same completion k times: identical, however the judge scores them
    near_greedy = OnlineDPOConfig(rounds=1, prompts_per_round=4, max_new_tokens=4, temperature=1e-4)
    history = train_online_dpo(policy, copy.deepcopy(policy), tokenizer, PROMPTS, fraction_of_c, near_greedy,
                               progress=False)
    assert history[0]["skipped/identical"] == 4 and history[0]["round/pairs"] == 0
    for name, value in policy.state_dict().items():
        assert torch.equal(value, start[name]), f"{name} changed although no pair was kept"


def test_online_dpo_raises_a_learnable_reward_and_is_deterministic(tokenizer, policy):
    reference = copy.deepcopy(policy)
    ref_state = copy.deepcopy(reference.state_dict())
    start_state = copy.deepcopy(policy.state_dict())
    config = OnlineDPOConfig(rounds=12, prompts_per_round=12, completions_per_prompt=4, minibatch_size=12,
                             max_new_tokens=6, beta=0.1, lr=3e-2, seed=0)

    def run():
        policy.load_state_dict(start_state)
        return train_online_dpo(policy, reference, tokenizer, PROMPTS, fraction_of_c, config,
                                gold_fn=lambda texts: fraction_of_c(None, texts),
                                eval_fn=lambda model: {"called": 1.0}, eval_every=5, progress=False)

    history = run()
    gold = [row["gold/reward"] for row in history]
    assert sum(gold[-3:]) / 3 > sum(gold[:3]) / 3 + 0.3, gold  # starts near 1/16
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
                "logps/rejected", "judge/margin", "gold/margin", "gold/label_agreement", "round/pairs", "pairs", "samples"):
        assert key in history[0], key
    assert history[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # first step: policy == reference
    assert history[0]["gold/label_agreement"] == 1.0  # the judge is the gold reward here
    assert [row["step"] for row in history] == list(range(1, 13))  # rounds counted from 1
    assert [row["step"] for row in history if "eval" in row] == [5, 10, 12]  # every 5 rounds and the last
    for name, value in reference.state_dict().items():
        assert torch.equal(value, ref_state[name]), f"reference changed: {name}"
    assert run() == history  # same seed, same numbers (CPU)

    # the policy's own samples moved; samples of the reference (what offline pairs are) fell behind by nats
    offline = generate(reference, tokenizer, PROMPTS, max_new_tokens=6, seed=99, progress=False, return_ids=True)
    assert abs(distribution_shift(reference, tokenizer, PROMPTS, offline, max_new_tokens=6, seed=5)["gap"]) < 0.5
    assert distribution_shift(policy, tokenizer, PROMPTS, offline, max_new_tokens=6, seed=5)["gap"] > 3.0


def test_bad_input_raises(tokenizer, policy):
    with pytest.raises(ValueError, match="same object"):
        train_online_dpo(policy, policy, tokenizer, PROMPTS, fraction_of_c, OnlineDPOConfig(prompts_per_round=4))
    with pytest.raises(ValueError, match="prompts_per_round"):
        train_online_dpo(policy, copy.deepcopy(policy), tokenizer, PROMPTS[:2], fraction_of_c, OnlineDPOConfig())
    wrong_shape = lambda prompts, texts: torch.zeros(len(texts) + 1)
    with pytest.raises(ValueError, match="round 1: judge must return"):
        train_online_dpo(policy, copy.deepcopy(policy), tokenizer, PROMPTS, wrong_shape,
                         OnlineDPOConfig(rounds=1, prompts_per_round=2, max_new_tokens=2), progress=False)


# ----------------------------------------------------------------------------- distribution shift
def test_mean_logprob_matches_hand_computation(word_tokenizer, bigram_lm):
    """With the bigram LM, log p(token | prefix) = log_softmax(table[previous token])[token]."""
    logp = torch.log_softmax(bigram_lm.table.detach(), -1)
    prompts, completions = ["a", "b a"], ["c b", "c"]
    # row 0: "a" -> c, c -> b, b -> EOS (3 tokens); row 1: a -> c, c -> EOS (2 tokens)
    row0 = logp[2, 4] + logp[4, 3] + logp[3, 0]
    row1 = logp[2, 4] + logp[4, 0]
    sums = mean_logprob(bigram_lm, word_tokenizer, prompts, completions, per_token=False)
    means = mean_logprob(bigram_lm, word_tokenizer, prompts, completions, per_token=True)
    assert sums == pytest.approx(((row0 + row1) / 2).item(), abs=1e-5)
    assert means == pytest.approx(((row0 / 3 + row1 / 2) / 2).item(), abs=1e-5)


def test_distribution_shift_is_zero_on_the_policys_own_samples(tokenizer, policy):
    own = generate(policy, tokenizer, PROMPTS, max_new_tokens=5, seed=3, progress=False, return_ids=True)
    shift = distribution_shift(policy, tokenizer, PROMPTS, own, max_new_tokens=5, seed=3)
    assert shift["gap"] == 0.0 and shift["offline"] == shift["on_policy"] < 0
    other = distribution_shift(policy, tokenizer, PROMPTS, ["c c c"] * len(PROMPTS), max_new_tokens=5, seed=3)
    assert other["on_policy"] == shift["on_policy"]  # same fresh samples, different fixed set
    assert other["gap"] == pytest.approx(other["on_policy"] - other["offline"])


def test_log_ratios_match_the_bigram_tables_and_vanish_against_itself(word_tokenizer, bigram_lm):
    """log pi - log pi_ref by hand from two bigram tables; text and Unfinished text differ by the EOS term only."""
    from pref_lab.models import Unfinished
    other = copy.deepcopy(bigram_lm)
    with torch.no_grad():
        other.table.add_(torch.randn(other.table.shape, generator=torch.Generator().manual_seed(0)))
    lp, lq = (torch.log_softmax(m.table.detach(), -1) for m in (other, bigram_lm))
    prompts = ["a", "a"]
    got = log_ratios(other, bigram_lm, word_tokenizer, prompts, ["c b", Unfinished("c b")])
    # "a" -> c, c -> b, then b -> EOS for the finished text only
    cut = (lp[2, 4] - lq[2, 4]) + (lp[4, 3] - lq[4, 3])
    assert got.tolist() == pytest.approx([(cut + lp[3, 0] - lq[3, 0]).item(), cut.item()], abs=1e-5)
    assert log_ratios(bigram_lm, bigram_lm, word_tokenizer, prompts, ["c b", "c"]).abs().max() == 0


def test_log_ratio_shift_is_zero_at_the_reference_and_scores_fresh_samples_as_sampled(tokenizer, policy):
    fixed = ["c c c"] * len(PROMPTS)
    at_start = log_ratio_shift(policy, copy.deepcopy(policy), tokenizer, PROMPTS, fixed, max_new_tokens=5, seed=3)
    assert set(at_start) == {"offline", "fresh"} and len(at_start["fresh"]) == len(PROMPTS)
    assert max(map(abs, at_start["offline"] + at_start["fresh"])) < 1e-5  # pi = pi_ref: log pi/pi_ref = 0
    reference = copy.deepcopy(policy)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    moved = log_ratio_shift(policy, reference, tokenizer, PROMPTS, fixed, max_new_tokens=5, seed=3)
    fresh = generate(policy, tokenizer, PROMPTS, max_new_tokens=5, seed=3, progress=False, return_ids=True)
    assert moved["fresh"] == pytest.approx(log_ratios(policy, reference, tokenizer, PROMPTS, fresh).tolist())
    # averaged over the policy's own samples the log-ratio estimates KL(pi || pi_ref) >= 0
    assert sum(moved["fresh"]) / len(PROMPTS) > 0


class _FixedGold:
    def __init__(self, values):
        self.values = values

    def gold_reward(self, texts):
        return torch.tensor([self.values[t] for t in texts])


def test_bradley_terry_judge_picks_like_the_shipped_labels():
    """With k = 2 the judge's pick is a Bradley–Terry draw: P(a chosen) = sigma(g_a - g_b) (Gumbel-max trick)."""
    gold = _FixedGold({"a": 1.2, "b": 0.0, "c": -0.5})
    judge = bradley_terry_judge(gold, seed=0)
    n = 20000
    for first, second in (("a", "b"), ("b", "c"), ("c", "a")):
        scores = judge(["x"] * 2 * n, [first, second] * n).view(n, 2)
        share = (scores[:, 0] > scores[:, 1]).double().mean().item()
        expected = torch.sigmoid(torch.tensor(gold.values[first] - gold.values[second])).item()
        assert share == pytest.approx(expected, abs=4 * (expected * (1 - expected) / n) ** 0.5)
    again = bradley_terry_judge(gold, seed=0)(["x"] * 4, ["a", "b", "a", "b"])
    assert torch.equal(again, bradley_terry_judge(gold, seed=0)(["x"] * 4, ["a", "b", "a", "b"]))
    assert not torch.equal(again, bradley_terry_judge(gold, seed=1)(["x"] * 4, ["a", "b", "a", "b"]))
