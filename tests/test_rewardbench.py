"""RewardBench-style scoring (strict ties, count-weighted sections) by hand, reference-free scores by hand on a
bigram 'language model', and the shipped mini RewardBench: valid, deterministic, answers known by construction."""

import re
from collections import Counter

import pytest
import torch

from pref_lab import rewardbench as E
from pref_lab.config import data_path
from pref_lab.data import CORPUS_FILE, read_jsonl, validate_records
from pref_lab.dpo import implicit_rewards
from pref_lab.models import format_prompt, load_tokenizer
from pref_lab.sft import PLOT_INSTRUCTIONS, REVIEW_INSTRUCTIONS, first_sentences


# ----------------------------------------------------------------------------- scoring rules
def test_ties_are_wrong():
    correct = E.pairwise_correct(torch.tensor([1.0, 2.0, 3.0, 0.5]), torch.tensor([1.0, 1.0, 4.0, 0.5]))
    assert correct.tolist() == [False, True, False, False]


def test_sections_are_weighted_by_example_counts():
    # section "x": subset a (1 pair, right), subset b (3 pairs, 1 right); section "y": subset c (2 pairs, both right)
    subsets = ["a", "b", "b", "b", "c", "c"]
    chosen = torch.tensor([1.0, 1.0, 0.0, 0.0, 2.0, 2.0])
    rejected = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])  # pair 2 is a tie: wrong
    result = E.rewardbench_results(subsets, chosen, rejected, sections={"x": ("a", "b"), "y": ("c",)})
    assert result["subsets"] == {"a": {"accuracy": 1.0, "n": 1}, "b": {"accuracy": pytest.approx(1 / 3), "n": 3},
                                 "c": {"accuracy": 1.0, "n": 2}}
    # weighted: (1*1 + 3*(1/3)) / 4 = 0.5, not the unweighted mean of subsets (1 + 1/3) / 2 = 0.667
    assert result["sections"] == pytest.approx({"x": 0.5, "y": 1.0})
    assert result["score"] == pytest.approx(0.75)  # mean of the sections
    assert result["accuracy"] == pytest.approx(4 / 6)  # mean over pairs


def test_a_constant_scorer_gets_zero():
    result = E.rewardbench_results(["a"] * 4, torch.zeros(4), torch.zeros(4), sections={"x": ("a",)})
    assert result["score"] == 0.0


def test_scoring_rejects_bad_input():
    with pytest.raises(ValueError, match="belong to no section"):
        E.section_scores({"nope": {"accuracy": 1.0, "n": 1}})
    with pytest.raises(ValueError, match="same length"):
        E.pairwise_correct(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="NaN"):
        E.pairwise_correct(torch.tensor([float("nan")]), torch.zeros(1))
    with pytest.raises(ValueError, match="2 subset names but 3"):
        E.subset_accuracies(["a", "a"], torch.ones(3, dtype=torch.bool))


def test_evaluate_reward_model_scores_chosen_and_rejected_in_one_call():
    records = [{"prompt": "p", "chosen": "long answer here", "rejected": "short", "subset": "negation"},
               {"prompt": "p", "chosen": "tiny", "rejected": "much longer answer", "subset": "negation"},
               {"prompt": "p", "chosen": "same", "rejected": "size", "subset": "repetition"}]
    calls = []

    def by_length(prompts, completions):
        calls.append(len(completions))
        return torch.tensor([float(len(c.split())) for c in completions])

    result = E.evaluate_reward_model(by_length, records)
    assert calls == [6]
    assert result["subsets"] == {"negation": {"accuracy": 0.5, "n": 2}, "repetition": {"accuracy": 0.0, "n": 1}}
    assert result["sections"] == {"chat-hard": 0.5, "degenerate": 0.0}
    assert result["chosen"].tolist() == [3.0, 1.0, 1.0] and result["rejected"].tolist() == [1.0, 3.0, 1.0]


# ----------------------------------------------------------------------------- reference-free scores by hand
def test_reference_free_scores_by_hand(word_tokenizer, bigram_lm):
    # prompt "a"; completions "b c" -> tokens b, c, EOS and "c" -> tokens c, EOS (the shorter row is padded)
    logp = torch.log_softmax(bigram_lm.table.detach(), -1)  # logp[i, j] = log p(next = j | current = i)
    a, b, c, eos = 2, 3, 4, 0
    long_row = torch.stack([logp[a, b], logp[b, c], logp[c, eos]])
    short_row = torch.stack([logp[a, c], logp[c, eos]])
    expected = {
        "sum": [long_row.sum(), short_row.sum()],
        "avg": [long_row.mean(), short_row.mean()],
        "norm": [-long_row.pow(2).sum().sqrt(), -short_row.pow(2).sum().sqrt()],
    }
    for kind, values in expected.items():
        got = E.logprob_scores(bigram_lm, word_tokenizer, ["a", "a"], ["b c", "c"], kind=kind)
        torch.testing.assert_close(got, torch.stack(values), msg=kind)
    with pytest.raises(ValueError, match="kind must be one of"):
        E.logprob_scores(bigram_lm, word_tokenizer, ["a"], ["b"], kind="mean")


def test_sum_and_avg_rank_completions_differently(word_tokenizer, bigram_lm):
    """The three reference-free scores are different rankings, not rescalings: check on every ordered pair."""
    completions = ["b", "c", "b c", "c b", "b b c", "c c c b"]
    prompts = ["a"] * len(completions)
    scores = {k: E.logprob_scores(bigram_lm, word_tokenizer, prompts, completions, kind=k)
              for k in E.REFERENCE_FREE}
    orders = {k: (v[:, None] > v[None, :]) for k, v in scores.items()}
    assert not torch.equal(orders["sum"], orders["avg"])
    assert (scores["norm"] < 0).all() and (scores["sum"] < 0).all()


def test_implicit_reward_of_an_untrained_policy_ties_everything(word_tokenizer, bigram_lm):
    """policy == reference: r_hat = 0 for every completion, so every pair is a tie and RewardBench scores 0."""
    records = [{"prompt": "a", "chosen": "b c", "rejected": "c", "subset": "negation"},
               {"prompt": "b", "chosen": "a", "rejected": "c c", "subset": "word-salad"}]
    result = E.evaluate_reward_model(
        lambda p, c: implicit_rewards(bigram_lm, bigram_lm, word_tokenizer, p, c, beta=0.1), records)
    assert result["score"] == 0.0 and result["chosen"].abs().max() == 0


# ----------------------------------------------------------------------------- the shipped benchmark
@pytest.fixture(scope="module")
def benchmark():
    return E.load_rewardbench()


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.mark.shipped  # reads the shipped data/
def test_benchmark_validates_and_has_sections_of_subsets(benchmark):
    assert validate_records(benchmark, "preference", "rewardbench") == len(benchmark)
    counts = Counter(r["subset"] for r in benchmark)
    assert set(counts) == set(E.SUBSET_TO_SECTION) and len(counts) >= 5 and len(E.SECTIONS) >= 3
    assert min(counts.values()) >= 30, counts
    assert all(r["section"] == E.SUBSET_TO_SECTION[r["subset"]] for r in benchmark)
    assert len({r["id"] for r in benchmark}) == len(benchmark)
    assert len({(r["prompt"], r["chosen"], r["rejected"]) for r in benchmark}) == len(benchmark)  # no duplicate pair


@pytest.mark.shipped  # reads the shipped data/
def test_benchmark_uses_held_out_movies_and_fits_the_context(benchmark, tokenizer):
    test_movies = {r["movie_id"] for r in read_jsonl(data_path(CORPUS_FILE)) if r["split"] == "test"}
    assert {r["movie_id"] for r in benchmark} <= test_movies
    for r in benchmark:
        assert r["prompt"].startswith("<|user|>") and r["prompt"].endswith("<|assistant|>")
        for side in ("chosen", "rejected"):
            assert len(tokenizer(r[side], add_special_tokens=False)["input_ids"]) <= E.MAX_COMPLETION_TOKENS


def instruction(prompt: str) -> str:
    return prompt.removeprefix("<|user|>").removesuffix("<|assistant|>")


@pytest.mark.shipped  # reads the shipped data/
def test_benchmark_answers_are_known_by_construction(benchmark, tokenizer):
    corpus = read_jsonl(data_path(CORPUS_FILE))
    label = {r["text"]: r["label"] for r in corpus if r["kind"] == "review"}
    plots = {first_sentences(r["text"]) for r in corpus if r["kind"] == "plot"}
    review_templates = [re.escape(t).replace(re.escape("{title}"), ".+") for t in REVIEW_INSTRUCTIONS]
    plot_templates = [re.escape(t).replace(re.escape("{title}"), ".+") for t in PLOT_INSTRUCTIONS]
    for r in benchmark:
        asks_plot = any(re.fullmatch(t, instruction(r["prompt"])) for t in plot_templates)
        asks_review = any(re.fullmatch(t, instruction(r["prompt"])) for t in review_templates)
        assert asks_plot != asks_review, r["id"]
        assert asks_plot == (r["subset"] == "plot-asked"), r["id"]
        s, chosen, rejected = r["subset"], r["chosen"], r["rejected"]
        if s in ("fresh-vs-rotten", "length-trap"):
            assert (label[chosen], label[rejected]) == ("fresh", "rotten"), r["id"]
        if s == "length-trap":
            n_chosen, n_rejected = (len(tokenizer(t)["input_ids"]) for t in (chosen, rejected))
            assert max(n_chosen, n_rejected) >= 2 * min(n_chosen, n_rejected), r["id"]
        if s in ("review-vs-plot", "off-topic", "repetition", "word-salad"):
            assert label[chosen] == "fresh", r["id"]
        if s == "review-vs-plot":
            assert rejected in plots, r["id"]
        if s == "plot-asked":
            assert chosen in plots and label[rejected] == "fresh", r["id"]
        if s == "negation":
            pair = tuple(p for p in E.NEGATIONS if p[0] in chosen and p[1] in rejected)
            assert pair and chosen.replace(pair[0][0], pair[0][1]) == rejected, r["id"]
        if s == "off-topic":
            assert rejected in E.OFF_TOPIC, r["id"]
        if s == "repetition":
            loop = rejected.split()
            period = next(k for k in range(1, len(loop)) if loop[k:] == loop[:-k])
            assert loop.count(loop[0]) >= 3 and chosen.startswith(" ".join(loop[:period]).rstrip(".,;:!?")), r["id"]
        if s == "word-salad":
            def bag(text):
                return Counter(w.strip(".,;:!?").lower() for w in text.split())
            assert bag(chosen) == bag(rejected) and chosen != rejected, r["id"]


@pytest.mark.shipped  # reads the shipped data/
def test_length_alone_scores_half_of_the_length_trap(benchmark):
    trap = [r for r in benchmark if r["subset"] == "length-trap"]
    for scorer in (len, lambda text: -len(text)):  # prefer long answers, or short ones
        scores = torch.tensor([float(scorer(r[side])) for side in ("chosen", "rejected") for r in trap])
        result = E.results_from_scores(trap, scores)
        assert result["subsets"]["length-trap"]["accuracy"] == 0.5


@pytest.mark.shipped  # reads the shipped data/
def test_benchmark_rebuilds_identically(benchmark, tokenizer):
    """The shipped file is exactly what the builder makes from the shipped corpus (so a rebuild is reproducible)."""
    rebuilt = E.build_rewardbench(read_jsonl(data_path(CORPUS_FILE)), tokenizer, lambda i: format_prompt(tokenizer, i),
                                  seed=0)
    assert rebuilt == benchmark
    assert data_path("rewardbench", "README.md").read_text() == E.rewardbench_card(benchmark)
    other_seed = E.build_rewardbench(read_jsonl(data_path(CORPUS_FILE)), tokenizer,
                                     lambda i: format_prompt(tokenizer, i), seed=1)
    assert other_seed != benchmark


@pytest.mark.shipped  # reads the shipped data/
def test_builder_rejects_unknown_subsets(tokenizer):
    with pytest.raises(ValueError, match="unknown subsets"):
        E.build_rewardbench([], tokenizer, str, sizes={"safety": 3})
    with pytest.raises(ValueError, match="no test-split rows"):
        E.build_rewardbench([], tokenizer, str)


def test_sum_score_is_the_shared_sequence_logprob(word_tokenizer, bigram_lm):
    from pref_lab.logprobs import sequence_logprobs, tokenize_completions

    prompts, completions = ["a", "b", "c"], ["b c", "a", "c c a"]
    batch = tokenize_completions(word_tokenizer, prompts, completions)
    with torch.no_grad():
        expected = sequence_logprobs(bigram_lm, **batch)
    scores = E.reference_free_scores(bigram_lm, word_tokenizer, prompts, completions, batch_size=2)
    torch.testing.assert_close(scores["sum"], expected)
    with pytest.raises(ValueError, match=r"expected \(6,\)"):
        E.results_from_scores([{"subset": "negation"}] * 3, torch.zeros(5))


def test_standard_errors_by_hand():
    # section "x": subset a (2 pairs: 1, 0), subset b (3 pairs: 1, 1, 0); section "y": subset c (2 pairs: 1, 1)
    subsets = ["a", "a", "b", "b", "b", "c", "c"]
    chosen = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0])
    result = E.rewardbench_results(subsets, chosen, torch.full((7,), 0.5), sections={"x": ("a", "b"), "y": ("c",)})
    # sample variances: a: var(1, 0) = 0.5; b: var(1, 1, 0) = 1/3; c: 0
    assert result["subset_se"] == pytest.approx({"a": (0.5 / 2) ** 0.5, "b": (1 / 9) ** 0.5, "c": 0.0})
    x = (2 * 0.5 + 3 / 3) ** 0.5 / 5  # sqrt(sum n_s var_s) / N_sec
    assert result["section_se"] == pytest.approx({"x": x, "y": 0.0})
    assert result["score_se"] == pytest.approx(x / 2)  # sqrt(x^2 + 0^2) / 2 sections
    assert result["correct"].tolist() == [True, False, True, True, False, True, True]


def test_paired_difference_of_scores():
    subsets = ["a"] * 4 + ["c"] * 2
    sections = {"x": ("a",), "y": ("c",)}
    a = E.rewardbench_results(subsets, torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0]), torch.zeros(6), sections)
    b = E.rewardbench_results(subsets, torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 0.0]), torch.zeros(6), sections)
    diff = E.paired_score_difference(a, b, subsets, sections)
    assert diff["score"] == pytest.approx(a["score"] - b["score"]) and diff["score"] == pytest.approx((0.25 + 0.5) / 2)
    # per-pair differences: a: (0, 1, 0, 0) -> var 0.25, se_x = sqrt(4 * 0.25) / 4; c: (1, 0) -> var 0.5, se_y = sqrt(2 * 0.5) / 2
    se_x, se_y = (4 * 0.25) ** 0.5 / 4, (2 * 0.5) ** 0.5 / 2
    assert diff["section_se"] == pytest.approx({"x": se_x, "y": se_y})
    assert diff["score_se"] == pytest.approx((se_x ** 2 + se_y ** 2) ** 0.5 / 2)
    same = E.paired_score_difference(a, a, subsets, sections)
    assert same["score"] == 0 and same["score_se"] == 0  # a model against itself: no difference, no error
    with pytest.raises(ValueError, match="results of 6 and 6 pairs for 5"):
        E.paired_score_difference(a, b, subsets[:5], sections)
    with pytest.raises(ValueError, match="belong to no section"):
        E.score_standard_error(torch.zeros(6), subsets, {"x": ("a",)})
