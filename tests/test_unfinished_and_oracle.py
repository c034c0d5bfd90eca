"""Cut-off samples through the pipeline (pref_lab.models.Unfinished) and the feature oracle (pref_lab.oracle)."""

import pytest
import torch
from datasets import Dataset
from transformers import GPT2Config, GPT2LMHeadModel

from pref_lab.data import pair_completions, validate_record
from pref_lab.dpo import _columns
from pref_lab.judge import BagOfWordsJudge, GoldJudge, RaterRules
from pref_lab.logprobs import tokenize_completions
from pref_lab.models import Unfinished, format_prompt
from pref_lab.oracle import feature_oracle, fit, oracle_rewards, text_table
from pref_lab.preferences import make_pairs
from pref_lab.reward_model import group_pairs_by_prompt

pytestmark = pytest.mark.usefixtures("one_thread")


def test_an_unfinished_text_is_tokenized_without_eos(letter_tokenizer):
    prompt = format_prompt(letter_tokenizer, "a b")
    batch = tokenize_completions(letter_tokenizer, [prompt, prompt], ["c d", Unfinished("c d")])
    completion = [batch["input_ids"][i][batch["completion_mask"][i].bool()].tolist() for i in range(2)]
    eos = letter_tokenizer.eos_token_id
    assert completion[0][-1] == eos and completion[1] == completion[0][:-1]


def test_unfinished_is_never_equal_to_the_finished_text():
    assert Unfinished("x") != "x" and "x" != Unfinished("x") and Unfinished("x") == Unfinished("x")
    assert len({Unfinished("x"), "x"}) == 2 and str(Unfinished("x")) == "x"


def test_records_carry_the_flags_and_loaders_read_them_back():
    gen = torch.Generator().manual_seed(0)
    pairs = make_pairs("<|user|>p<|assistant|>", ["good", Unfinished("bad")], torch.tensor([5.0, -5.0]), gen)
    assert len(pairs) == 1
    record = pairs[0]
    flags = {record["chosen"]: record["chosen_finished"], record["rejected"]: record["rejected_finished"]}
    assert flags == {"good": True, "bad": False} and type(record["rejected"]) is str  # plain JSON text
    for source in (pairs, Dataset.from_list(pairs)):
        completions = pair_completions(source, "chosen") + pair_completions(source, "rejected")
        assert sorted(map(type, completions), key=str) == sorted([str, Unfinished], key=str)
    trl_style = [{"prompt": "p", "chosen": "a", "rejected": "b"}]  # no flags: both finished
    assert pair_completions(trl_style, "rejected") == ["b"]
    with pytest.raises(ValueError, match="chosen_finished"):
        validate_record({**record, "chosen_finished": "yes"}, "preference", chat_format=False)


def test_the_reward_model_and_dpo_see_the_cut_off_side(letter_tokenizer):
    prompt = format_prompt(letter_tokenizer, "a")
    pairs = [{"prompt": prompt, "chosen": "b c", "rejected": "b c", "chosen_finished": True, "rejected_finished": False},
             {"prompt": prompt, "chosen": "d", "rejected": "b c", "rejected_finished": False}]
    with pytest.raises(ValueError, match="chosen == rejected"):  # the same text finished and cut off is not a pair
        _columns(pairs[:1])
    group = group_pairs_by_prompt(pairs[1:] + [{"prompt": prompt, "chosen": "b c", "rejected": "d"}])[0]
    assert group["completions"] == ["d", Unfinished("b c"), "b c"]  # three distinct completions
    _, chosen, rejected = _columns(pairs[1:])
    assert chosen == ["d"] and rejected == [Unfinished("b c")]


# ----------------------------------------------------------------------------- feature oracle
@pytest.fixture(scope="module")
def judge(letter_tokenizer):
    torch.manual_seed(0)
    reader = GPT2LMHeadModel(GPT2Config(vocab_size=len(letter_tokenizer), n_positions=16, n_embd=8, n_layer=1,
                                        n_head=2, eos_token_id=0, pad_token_id=1)).eval()
    sentiment = BagOfWordsJudge(["a", "b", "c", "d"], torch.tensor([1.5, -1.5, 0.5, 0.0]), 0.0, ("rotten", "fresh"))
    # a floor inside the tiny reader's range, so every term of the model form is at work
    return GoldJudge(sentiment, reader, letter_tokenizer, RaterRules(3.0, -2.8, 2.0, 0.5, 1.5, 1.0, evidence_words=2.0,
                                                                     min_words=3.0, brevity_weight=0.25))


def labelled_pairs(judge, n_prompts, seed):
    gen = torch.Generator().manual_seed(seed)
    words = "abcdefgh"
    pairs = []
    for i in range(n_prompts):
        texts = [" ".join(words[int(j)] for j in torch.randint(8, (3,), generator=gen)) for _ in range(4)]
        texts = [Unfinished(t) if torch.rand((), generator=gen) < 0.3 else t for t in texts]
        texts = list(dict.fromkeys(texts))
        pairs += make_pairs(f"<|user|>{i}<|assistant|>", texts, judge.gold_reward(texts), gen)
    return pairs


def test_oracle_rewards_are_the_judges_form(judge):
    gen = torch.Generator().manual_seed(0)
    repeated = ["a b a b", "c d c d e", "a c"]  # repetition > 0 (and a short text): every term is exercised
    pairs = labelled_pairs(judge, 5, 0) + make_pairs("<|user|>r<|assistant|>", repeated, judge.gold_reward(repeated), gen)
    index, phi, known, evidence, rows = text_table(judge, pairs)
    params = {"w": judge.sentiment.weights.clone(), "bias": torch.tensor(judge.sentiment.bias),
              "known": torch.tensor([judge.rules.fluency_weight, judge.rules.repetition_weight,
                                     judge.rules.unfinished_penalty, judge.rules.brevity_weight])}
    texts = [y for _, y in index]
    torch.testing.assert_close(oracle_rewards(params, phi, known, evidence, judge.rules.bound), judge.gold_reward(texts))
    assert (known > 0).any(0).all(), "every known term is non-zero for some text"
    assert rows.shape == (len(pairs), 2)


def test_the_oracle_learns_the_judge_from_noisy_pairs(judge):
    train, test = labelled_pairs(judge, 300, 1), labelled_pairs(judge, 100, 2)
    result = feature_oracle(judge, train, test, l2_grid=(1e-2, 1e-4), seed=0)
    gold_order = sum(p["gold_chosen"] > p["gold_rejected"] for p in test) / len(test)  # the labels' own accuracy
    assert result["test_accuracy"] >= gold_order - 0.05  # close to the judge itself on the noisy labels
    assert set(result["validation"]) == {"0.01", "0.0001"} and result["l2"] in (1e-2, 1e-4)
    assert result["known"]["learned"][2] > 0.3  # it learned that a cut-off text loses
    _, phi, known, evidence, rows = text_table(judge, train)
    w = fit(phi, known, evidence, rows, judge.rules.bound, 1e-4)["w"]
    assert w[0] > w[2] > w[1]  # a > c > b, as the judge weighs them


def test_paired_difference_is_the_standard_error_of_the_per_prompt_differences():
    from pref_lab.world import paired_difference

    a, b = [1.0, 2.0, 3.0, 4.0], [0.5, 1.0, 2.5, 3.0]
    mean, sem = paired_difference(a, b)
    diffs = [0.5, 1.0, 0.5, 1.0]  # mean 0.75, sample std 0.2887, s.e. 0.1443
    assert mean == pytest.approx(0.75) and sem == pytest.approx((sum((d - 0.75) ** 2 for d in diffs) / 3) ** 0.5 / 2)
    with pytest.raises(ValueError, match="same, non-zero length"):
        paired_difference([1.0], [1.0, 2.0])
