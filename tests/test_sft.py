"""Supervised fine-tuning: the prompt-masked loss by hand, the data builder, the loop, the shipped model."""

import json
import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from pref_lab import config
from pref_lab.logprobs import tokenize_completions
from pref_lab.sft import build_sft_examples, evaluate_sft_loss, first_sentences, instruction_following, sft_loss, train_sft


def nll(table, prev, nxt):
    row = table[prev].tolist()
    return -(row[nxt] - math.log(sum(math.exp(v) for v in row)))


def test_sft_loss_by_hand(word_tokenizer, bigram_lm):
    # example 0: prompt "a b", response "c a" -> scored tokens c, a, <eos> (3 tokens)
    # example 1: prompt "c",   response "b"   -> scored tokens b, <eos>  (2 tokens; row is padded)
    batch = tokenize_completions(word_tokenizer, ["a b", "c"], ["c a", "b"])
    assert batch["input_ids"][1].tolist()[-2:] == [1, 1]  # padding present
    t = bigram_lm.table.detach()
    terms = [nll(t, 3, 4), nll(t, 4, 2), nll(t, 2, 0), nll(t, 4, 3), nll(t, 3, 0)]
    assert sft_loss(bigram_lm, batch).item() == pytest.approx(sum(terms) / 5, abs=1e-5)  # token mean, 5 tokens


def test_one_token_response_scores_its_eos(word_tokenizer, bigram_lm):
    # response "c" = one token: the loss averages log p(c|b) and log p(eos|c)
    batch = tokenize_completions(word_tokenizer, ["a b"], ["c"])
    t = bigram_lm.table.detach()
    assert sft_loss(bigram_lm, batch).item() == pytest.approx((nll(t, 3, 4) + nll(t, 4, 0)) / 2, abs=1e-5)


def test_prompt_and_padding_do_not_move_the_loss(word_tokenizer, bigram_lm):
    a = sft_loss(bigram_lm, tokenize_completions(word_tokenizer, ["a b"], ["c"]))
    b = sft_loss(bigram_lm, tokenize_completions(word_tokenizer, ["a b"], ["c"], padding_side="left"))
    assert a.item() == pytest.approx(b.item(), abs=1e-6)


@pytest.mark.shipped  # reads the shipped data/
def test_builder_formats_and_rejects_bad_rows(word_tokenizer):
    from pref_lab.models import load_tokenizer

    tokenizer = load_tokenizer()
    rows = [{"movie_id": "up", "movie_title": "Up", "kind": "review", "label": "fresh", "text": "Soaring."},
            {"movie_id": "up", "movie_title": "Up", "kind": "plot", "label": "",
             "text": "An old man ties balloons to his house. He flies to South America. A boy comes along."}]
    examples, counts = build_sft_examples(rows, tokenizer)
    assert counts == {"review": 1, "plot": 1, "dropped_too_long": 0}
    assert examples[0]["prompt"].startswith("<|user|>") and examples[0]["prompt"].endswith("<|assistant|>")
    assert "Up" in examples[0]["prompt"] and examples[0]["response"] == "Soaring."
    assert examples[1]["response"] == "An old man ties balloons to his house. He flies to South America."
    with pytest.raises(ValueError, match="row 0: column 'response' is empty"):
        build_sft_examples([{**rows[0], "text": "   "}], tokenizer)


def test_first_sentences():
    assert first_sentences("Short one. Then another one follows here. And a third.") == \
        "Short one. Then another one follows here."
    long = "word " * 100
    assert len(first_sentences(long)) <= 243 and first_sentences(long).endswith("...")


def test_training_loop_reduces_loss(word_tokenizer):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=5, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    examples = [{"prompt": "a", "response": "b c"}, {"prompt": "c", "response": "a a"}] * 4
    before = evaluate_sft_loss(model, word_tokenizer, examples)
    history = train_sft(model, word_tokenizer, examples, steps=30, batch_size=4, lr=1e-2, eval_every=10, progress=False,
                        eval_fn=lambda m: {"val_loss": evaluate_sft_loss(m, word_tokenizer, examples)})
    assert [row["step"] for row in history if "eval" in row] == [10, 20, 30] and len(history) == 30
    assert history[-1]["eval"]["val_loss"] < 0.5 * before


def test_instruction_following_counts():
    class Judge:
        def predict(self, texts):
            return ["plot" if "about" in t else "review" for t in texts]

    ids = [torch.tensor([5, 0]), torch.tensor([5, 6]), torch.tensor([0])]
    rates = instruction_following(ids, ["great", "about a man", ""], ["review", "review", "plot"], Judge(), eos_token_id=0)
    assert rates["eos_count"] == 2 and rates["following_count"] == 1  # the empty response never follows


def shipped_sft_metrics() -> dict:
    return json.loads(config.data_path("manifest.json").read_text())["assets"]["sft"]["metrics"]


@pytest.mark.shipped  # reads the shipped data/
def test_shipped_sft_model_ends_its_answers_and_beats_base():
    metrics = shipped_sft_metrics()
    assert metrics["sft_eos_rate"] >= 0.90
    assert metrics["val_loss"] < metrics["val_loss_base"]
    assert metrics["sft_following_rate"] > metrics["base_following_rate"] + 0.2


@pytest.mark.shipped  # reads the shipped data/
def test_shipped_sft_model_follows_85_percent_of_instructions():
    assert shipped_sft_metrics()["sft_following_rate"] >= 0.85
