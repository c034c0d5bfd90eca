"""scripts/rm_data_scaling.py: nested prompt subsets. (Its results file is not shipped: the world was rebuilt on the
honest gold judge, and the scaling runs take about an hour; run the script to measure them.)"""

from __future__ import annotations

import pytest


def make_pairs(n_prompts: int, per_prompt: int = 3) -> list[dict]:
    return [{"prompt": f"p{i}", "chosen": f"c{i}-{j}", "rejected": f"r{i}"} for i in range(n_prompts) for j in range(per_prompt)]


def test_subsets_keep_whole_prompts_are_nested_and_keep_order(load_script):
    scaling = load_script("rm_data_scaling")
    pairs = make_pairs(40)
    subsets = {f: scaling.nested_prompt_subset(pairs, f) for f in (0.125, 0.25, 0.5, 1.0)}
    assert subsets[1.0] == pairs  # all of it, in order: fraction 1 is the shipped RM's training list
    for small, large in ((0.125, 0.25), (0.25, 0.5), (0.5, 1.0)):
        small_prompts = {p["prompt"] for p in subsets[small]}
        assert small_prompts < {p["prompt"] for p in subsets[large]}
    for f, subset in subsets.items():
        prompts = {p["prompt"] for p in subset}
        assert len(prompts) == round(40 * f)
        assert len(subset) == 3 * len(prompts)  # every pair of a kept prompt
        assert subset == [p for p in pairs if p["prompt"] in prompts]  # original order


def test_subset_rounds_up_and_rejects_bad_fractions(load_script):
    scaling = load_script("rm_data_scaling")
    pairs = make_pairs(10)
    assert len({p["prompt"] for p in scaling.nested_prompt_subset(pairs, 0.01)}) == 1
    assert len({p["prompt"] for p in scaling.nested_prompt_subset(pairs, 0.15)}) == 2  # ceil(1.5)
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            scaling.nested_prompt_subset(pairs, bad)


def test_counts_of_distinct_texts_and_prompts(load_script):
    scaling = load_script("rm_data_scaling")
    pairs = [{"prompt": "a", "chosen": "x", "rejected": "y"}, {"prompt": "a", "chosen": "y", "rejected": "z"},
             {"prompt": "b", "chosen": "x", "rejected": "y"}]
    assert scaling.count_texts(pairs) == 5  # (a,x) (a,y) (a,z) (b,x) (b,y): the same text under two prompts is two
    assert scaling.count_prompts(pairs) == 2
