"""The sequence log-prob convention: sum over completion tokens (EOS included), prompt and padding masked."""

import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from pref_lab.logprobs import sequence_logprobs, token_logprobs, tokenize_completions


def log_softmax_row(row, index):
    return row[index].item() - math.log(sum(math.exp(v) for v in row.tolist()))


def test_tokenize_completions_masks(word_tokenizer):
    batch = tokenize_completions(word_tokenizer, ["a b", "c"], ["c", "a b"])
    # row 0: a b | c <eos> ; row 1: c | a b <eos>
    assert batch["input_ids"].tolist() == [[2, 3, 4, 0], [4, 2, 3, 0]]
    assert batch["completion_mask"].tolist() == [[0, 0, 1, 1], [0, 1, 1, 1]]
    left = tokenize_completions(word_tokenizer, ["a b", "c"], ["c", "a"], padding_side="left")
    assert left["input_ids"].tolist() == [[2, 3, 4, 0], [1, 4, 2, 0]]
    assert left["attention_mask"].tolist() == [[1, 1, 1, 1], [0, 1, 1, 1]]
    assert left["completion_mask"].tolist() == [[0, 0, 1, 1], [0, 0, 1, 1]]


def test_sequence_logprob_by_hand(word_tokenizer, bigram_lm):
    batch = tokenize_completions(word_tokenizer, ["a b", "c"], ["c", "a"])
    got = sequence_logprobs(bigram_lm, **batch)
    t = bigram_lm.table.detach()
    # row 0: log p(c | b) + log p(eos | c); row 1: log p(a | c) + log p(eos | a) (padding ignored)
    expected = [log_softmax_row(t[3], 4) + log_softmax_row(t[4], 0), log_softmax_row(t[4], 2) + log_softmax_row(t[2], 0)]
    assert got.tolist() == pytest.approx(expected, abs=1e-5)
    average = sequence_logprobs(bigram_lm, **batch, average=True)
    assert average.tolist() == pytest.approx([e / 2 for e in expected], abs=1e-5)


def test_token_logprobs_shape_and_normalisation():
    logits = torch.randn(2, 6, 7)
    ids = torch.randint(0, 7, (2, 6))
    lp = token_logprobs(logits, ids)
    assert lp.shape == (2, 5)
    assert (lp <= 0).all()


@pytest.fixture(scope="module")
def tiny_gpt2():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=5, n_positions=32, n_embd=16, n_layer=2, n_head=2)).eval()


def test_padding_side_and_length_do_not_change_logprobs(word_tokenizer, tiny_gpt2):
    prompts, completions = ["a b c", "c"], ["c a", "b"]
    right = sequence_logprobs(tiny_gpt2, **tokenize_completions(word_tokenizer, prompts, completions))
    left = sequence_logprobs(tiny_gpt2, **tokenize_completions(word_tokenizer, prompts, completions, padding_side="left"))
    alone = torch.cat([sequence_logprobs(tiny_gpt2, **tokenize_completions(word_tokenizer, [p], [c]))
                       for p, c in zip(prompts, completions)])
    assert torch.allclose(right, left, atol=1e-5)
    assert torch.allclose(right, alone, atol=1e-5)
    # a longer pad run (batched with a long neighbour) changes nothing either
    padded = sequence_logprobs(tiny_gpt2, **tokenize_completions(word_tokenizer, ["c", "a b c a b c"], ["b", "a"]))
    assert padded[0].item() == pytest.approx(alone[1].item(), abs=1e-5)


def test_prompt_tokens_are_masked(word_tokenizer, tiny_gpt2):
    # changing the *prompt* changes the conditional but the prompt's own tokens are never scored:
    # the log-prob of "a" after "c" equals the total log-prob of row "c|a<eos>"
    batch = tokenize_completions(word_tokenizer, ["c"], ["a"])
    lp = token_logprobs(tiny_gpt2(batch["input_ids"]).logits, batch["input_ids"])
    assert sequence_logprobs(tiny_gpt2, **batch).item() == pytest.approx(lp[0, 0].item() + lp[0, 1].item(), abs=1e-5)


def test_bad_input_is_named(word_tokenizer):
    with pytest.raises(ValueError, match="row 1: empty completion"):
        tokenize_completions(word_tokenizer, ["a", "b"], ["c", torch.tensor([], dtype=torch.long)])
    with pytest.raises(ValueError, match="row 0: prompt \\+ completion is 6 tokens > max_length=4"):
        tokenize_completions(word_tokenizer, ["a b c a"], ["b"], max_length=4)
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        tokenize_completions(word_tokenizer, ["a", "b"], ["c"])
