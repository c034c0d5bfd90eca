"""The gold judge ("the human", pref_lab.judge.GoldJudge): its terms computed by hand on a tiny world, and the
properties the course relies on, measured on the shipped judge."""

import json
import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from pref_lab import config
from pref_lab.assets import blurbs, spearman, stuffed
from pref_lab.data import load_corpus, pair_completions, read_jsonl
from pref_lab.judge import WORD_RE, BagOfWordsJudge, GoldJudge, RaterRules, load_gold_judge, repetition
from pref_lab.models import Unfinished, completion_texts

pytestmark = pytest.mark.usefixtures("one_thread")

RULES = RaterRules(bound=2.0, fluency_floor=-2.5, fluency_weight=3.0, max_fluency_penalty=4.0,
                   repetition_weight=1.5, unfinished_penalty=0.75, evidence_words=3.0, min_words=4.0, brevity_weight=0.5)


@pytest.fixture(scope="module")
def tiny(letter_tokenizer):
    torch.manual_seed(0)
    reader = GPT2LMHeadModel(GPT2Config(vocab_size=len(letter_tokenizer), n_positions=16, n_embd=8, n_layer=1,
                                        n_head=2, eos_token_id=0, pad_token_id=1)).eval()
    sentiment = BagOfWordsJudge(["a", "b", "a b"], torch.tensor([2.0, -1.0, 0.5]), 0.25, ("rotten", "fresh"))
    return GoldJudge(sentiment, reader, letter_tokenizer, RULES)


def hand_fluency(judge, text, finished):
    ids = judge.tokenizer(text, add_special_tokens=False)["input_ids"] + ([0] if finished else [])
    x = torch.tensor([[0] + ids])
    logp = torch.log_softmax(judge.reader(x).logits[0, :-1], -1)
    return sum(logp[t, token].item() for t, token in enumerate(ids)) / len(ids)


@pytest.mark.parametrize("text,expected", [("a b c", 0.0), ("a b a b", 1 / 3), ("c", 0.0), ("", 0.0),
                                           ("a b c a b c", 1 - 3 / 5)])
def test_repetition_is_the_share_of_repeated_word_bigrams(text, expected):
    assert repetition(text) == pytest.approx(expected)


def test_every_term_matches_a_hand_computation(tiny):
    texts = ["a b", "b b b c", "c d e f g h", Unfinished("a c"), "a b a b a b"]
    rating = tiny.rate(texts)
    for i, text in enumerate(texts):
        finished = not isinstance(text, Unfinished)
        words = text.split()
        s = 0.25 + 2.0 * ("a" in words) - 1.0 * ("b" in words) + 0.5 * ("a b" in text)
        f = hand_fluency(tiny, str(text), finished)
        assert rating["sentiment"][i].item() == pytest.approx(s, abs=1e-5)
        assert rating["fluency"][i].item() == pytest.approx(f, abs=1e-4)
        n = len(set(words))
        expected = (2.0 * math.tanh(n / (n + 3.0) * s / 2.0) - min(3.0 * max(0.0, -2.5 - f), 4.0)
                    - 1.5 * repetition(text) - 0.75 * (not finished) - 0.5 * max(0, 4 - n))
        assert rating["reward"][i].item() == pytest.approx(expected, abs=1e-4)
        assert rating["finished"][i].item() == float(finished)


def test_a_cut_off_text_is_worse_than_the_same_text_finished(tiny):
    texts = ["a b", "c d e", "a", "b c d e f"]
    no_fluency = GoldJudge(tiny.sentiment, tiny.reader, tiny.tokenizer, RaterRules(2.0, -1e9, 3.0, 4.0, 1.5, 0.75, 3.0, 4.0, 0.5))
    # without the fluency term the difference is exactly the unfinished penalty
    diff = no_fluency.gold_reward(texts) - no_fluency.gold_reward([Unfinished(t) for t in texts])
    torch.testing.assert_close(diff, torch.full((4,), 0.75))


def test_sampled_ids_are_read_with_their_ending(tiny, letter_tokenizer):
    eos = letter_tokenizer.eos_token_id
    ids = [torch.tensor(letter_tokenizer("a b", add_special_tokens=False)["input_ids"] + [eos]),
           torch.tensor(letter_tokenizer("c d", add_special_tokens=False)["input_ids"])]  # ran into the limit
    texts = completion_texts(letter_tokenizer, ids)
    assert texts == ["a b", Unfinished("c d")] and texts[1] != "c d"
    torch.testing.assert_close(tiny.gold_reward(ids), tiny.gold_reward(["a b", Unfinished("c d")]))


def test_the_reward_is_bounded_above_however_many_positive_words(tiny):
    rewards = tiny.gold_reward(["a " * n for n in (1, 2, 5)])
    assert (rewards <= RULES.bound + 1e-6).all()


def test_save_and_load_check_the_reader(tiny, tmp_path):
    world = tmp_path / "world"
    tiny.reader.save_pretrained(world / "models" / "base")
    tiny.tokenizer.save_pretrained(world / "tokenizer")
    tiny.save(world / "judges" / "gold", reader_folder="models/base")
    again = GoldJudge.load(world / "judges" / "gold")
    texts = ["a b", Unfinished("c d e"), "b"]
    torch.testing.assert_close(again.gold_reward(texts), tiny.gold_reward(texts))
    assert again.rules == RULES
    with torch.no_grad():  # a different reader: the judge refuses to load rather than silently change
        tiny.reader.transformer.wte.weight.add_(1.0)
    tiny.reader.save_pretrained(world / "models" / "base")
    with pytest.raises(ValueError, match="not the model the gold judge was built with"):
        GoldJudge.load(world / "judges" / "gold")


def test_bad_input_is_refused(tiny):
    with pytest.raises(ValueError, match="not a single string"):
        tiny.gold_reward("a b")
    with pytest.raises(ValueError, match="expected texts"):
        tiny.gold_reward([3])
    with pytest.raises(ValueError, match="bound must be > 0"):
        RaterRules(0.0, 0.0, 1.0, 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="non-negative"):
        RaterRules(1.0, 0.0, -1.0, 1.0, 1.0, 1.0)


# ----------------------------------------------------------------------------- the shipped judge
@pytest.fixture(scope="module")
def gold():
    return load_gold_judge()


@pytest.fixture(scope="module")
def recorded():
    return json.loads(config.data_path("manifest.json").read_text())["assets"]


@pytest.fixture(scope="module")
def test_reviews():
    return load_corpus(split="test", kind="review")


@pytest.mark.shipped
def test_piling_up_praise_words_does_not_beat_the_best_real_reviews(gold, test_reviews, recorded):
    texts = test_reviews["text"]
    real = gold.gold_reward(texts)
    fresh = real[torch.tensor([y == "fresh" for y in test_reviews["label"]])]
    top = [w for w, _ in gold.top_features(len(gold.sentiment.vocab))[0] if " " not in w][:10]
    with_list = gold.gold_reward([stuffed(t, top) for t in texts])
    p90 = torch.quantile(fresh, 0.9).item()
    assert with_list.mean().item() <= p90 - 1.0  # with room: not a near miss
    assert (gold.sentiment.score([stuffed(t, top) for t in texts]) - gold.sentiment.score(texts)).mean() > 10
    metrics = recorded["judge_gold"]["metrics"]
    assert metrics["stuffed_mean_reward"] == pytest.approx(with_list.mean().item(), abs=1e-3)
    assert metrics["fresh_p90_reward"] == pytest.approx(p90, abs=1e-3)
    assert real.max().item() >= p90 and p90 > 0.6 * gold.rules.bound  # real reviews reach the top of the range


@pytest.mark.shipped
def test_a_blurb_of_praise_words_is_not_the_best_review(gold, test_reviews):
    """The evidence factor n/(n + n0) at work: "A w1, w2 and w3 film." says too little to convince like a real review."""
    real = gold.gold_reward(test_reviews["text"])
    p90 = torch.quantile(real[torch.tensor([y == "fresh" for y in test_reviews["label"]])], 0.9).item()
    top = [w for w, _ in gold.top_features(len(gold.sentiment.vocab))[0] if " " not in w][:10]
    short = gold.gold_reward(blurbs(top))
    assert short.mean().item() <= p90 - 1.0, (short.mean().item(), p90)


@pytest.mark.shipped
def test_the_judge_is_not_a_length_detector(gold, test_reviews, recorded):
    words = [len(WORD_RE.findall(t.lower())) for t in test_reviews["text"]]
    assert abs(spearman(gold.gold_reward(test_reviews["text"]).tolist(), words)) <= 0.15
    samples = read_jsonl(config.data_path("preferences", "test.jsonl"))
    texts = list(dict.fromkeys(pair_completions(samples, "chosen") + pair_completions(samples, "rejected")))
    words = [len(WORD_RE.findall(t.lower())) for t in texts]
    assert abs(spearman(gold.gold_reward(texts).tolist(), words)) <= 0.15  # the SFT model's samples
    assert abs(recorded["preferences"]["metrics"]["test"]["spearman_gold_length"]) <= 0.15


@pytest.mark.shipped
def test_repeating_does_not_pay_and_cutting_off_costs(gold, test_reviews):
    texts = test_reviews["text"][:400]
    real = gold.gold_reward(texts)
    assert (gold.gold_reward([f"{t} {t}" for t in texts]) < real).all()
    assert (gold.gold_reward([f"{t} {' '.join(t.split()[:4])}" for t in texts]) <= real + 1e-6).float().mean() >= 0.99
    assert (gold.gold_reward([Unfinished(t) for t in texts]) < real).all()


@pytest.mark.shipped
def test_still_a_good_sentiment_judge_with_human_like_labels(gold, test_reviews, recorded):
    accuracy = gold.accuracy(test_reviews["text"], test_reviews["label"])
    assert accuracy >= 0.74
    assert recorded["judge_gold"]["metrics"]["test_accuracy"] == pytest.approx(accuracy, abs=1e-4)
    for split in ("train", "test", "rm_extra"):
        prefs = recorded["preferences"]["metrics"][split]
        assert 0.15 <= prefs["label_noise"] <= 0.30, (split, prefs["label_noise"])
        assert prefs["bayes_ceiling"] > 0.7
    # cut-off samples are kept and marked (about one SFT sample in ten runs into the 48-token limit)
    pairs = read_jsonl(config.data_path("preferences", "train.jsonl"))
    marked = sum(not (p["chosen_finished"] and p["rejected_finished"]) for p in pairs)
    assert marked == recorded["preferences"]["metrics"]["train"]["pairs_with_an_unfinished_side"] > 0
    cut = [p for p in pairs if not p["rejected_finished"]] + [p for p in pairs if not p["chosen_finished"]]
    assert sum(not p["rejected_finished"] for p in pairs) > sum(not p["chosen_finished"] for p in pairs)
    assert all(p["gold_" + ("rejected" if not p["rejected_finished"] else "chosen")] ==
               pytest.approx(gold.gold_reward([Unfinished(p["rejected"] if not p["rejected_finished"] else p["chosen"])]).item(),
                             abs=1e-3) for p in cut[:20])
