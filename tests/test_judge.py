"""The gold judge (the course's "human") and the task judge."""

import json
import time

import pytest
import torch

from pref_lab import config
from pref_lab.data import load_corpus
from pref_lab.judge import BagOfWordsJudge, load_gold_judge, load_task_judge, text_features


@pytest.fixture(scope="module")
def gold():
    return load_gold_judge()


@pytest.mark.shipped  # reads the shipped data/
def test_gold_judge_accuracy_on_test_movies(gold):
    test = load_corpus(split="test", kind="review")
    accuracy = gold.accuracy(test["text"], test["label"])
    majority = max(test["label"].count("fresh"), test["label"].count("rotten")) / len(test)
    assert accuracy >= 0.73
    assert accuracy > majority + 0.15
    recorded = json.loads(config.data_path("manifest.json").read_text())["assets"]["judge_gold"]["metrics"]
    assert accuracy == pytest.approx(recorded["test_accuracy"], abs=1e-4)
    assert gold.sentiment.accuracy(test["text"], test["label"]) == pytest.approx(recorded["sentiment_test_accuracy"],
                                                                                 abs=1e-4)


@pytest.mark.shipped  # reads the shipped data/
def test_gold_judge_is_monotonic_on_clear_cases(gold):
    clear = [
        ("A brilliant, moving masterpiece.", "A dull, boring mess."),
        ("Funny and charming from start to finish.", "Stupid and unfunny from start to finish."),
        ("One of the best films of the year.", "One of the worst films of the year."),
    ]
    good, bad = gold.gold_reward([g for g, _ in clear]), gold.gold_reward([b for _, b in clear])
    assert (good > 0).all() and (bad < 0).all() and (good > bad).all()
    # adding a strongly positive word raises the reward; a negative one lowers it
    base = gold.gold_reward(["The film is long."])
    assert gold.gold_reward(["The film is long and brilliant."]) > base > gold.gold_reward(["The film is long and dull."])


@pytest.mark.shipped  # reads the shipped data/
def test_gold_judge_speed(gold):
    # sentiment is a pure-Python loop of dictionary look-ups; the reader is one forward pass of the tiny base model
    texts = load_corpus(split="test", kind="review")["text"][:500]
    start = time.perf_counter()
    gold.sentiment.score(texts)
    assert len(texts) / (time.perf_counter() - start) >= 1000
    start = time.perf_counter()
    gold.gold_reward(texts)
    assert len(texts) / (time.perf_counter() - start) >= 50  # a 256-prompt evaluation is scored in seconds


@pytest.mark.shipped  # reads the shipped data/
def test_sentiment_logit_is_bias_plus_sum_of_present_weights(gold):
    text = "not good, not good at all"
    sentiment = gold.sentiment
    feats = [f for f in text_features(text) if f in sentiment.index]
    expected = sentiment.bias + sum(sentiment.weights[sentiment.index[f]].item() for f in feats)
    assert gold.rate([text])["sentiment"].item() == pytest.approx(expected, abs=1e-5)
    assert "not good" in text_features(text)  # bigrams let the judge see simple negation


@pytest.mark.shipped  # reads the shipped data/
def test_task_judge_tells_reviews_from_plots():
    task = load_task_judge()
    recorded = json.loads(config.data_path("manifest.json").read_text())["assets"]["judge_task"]["metrics"]
    assert recorded["test_accuracy"] >= 0.9
    assert task.predict(["A gripping, beautifully acted thriller.",
                         "A young woman moves to Paris to find her missing brother."]) == ["review", "plot"]


def test_fit_save_load_round_trip(tmp_path):
    texts = ["good fun", "great fun", "bad mess", "awful mess"] * 3
    labels = ["pos", "pos", "neg", "neg"] * 3
    judge = BagOfWordsJudge.fit(texts, labels, ("neg", "pos"), min_count=1, l2=1e-3)
    assert judge.accuracy(texts, labels) == 1.0
    judge.save(tmp_path)
    again = BagOfWordsJudge.load(tmp_path)
    assert torch.allclose(judge.score(texts), again.score(texts))
    with pytest.raises(ValueError, match="not in classes"):
        BagOfWordsJudge.fit(texts, ["x"] * len(texts), ("neg", "pos"))
    with pytest.raises(ValueError, match="list of texts"):
        judge.score("good fun")
