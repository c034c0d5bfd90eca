"""scripts/rm_data_scaling.py: nested prompt subsets, and the shipped results file it writes."""

from __future__ import annotations

import json

import pytest

from pref_lab.config import data_path
from pref_lab.data import read_jsonl


def make_pairs(n_prompts: int, per_prompt: int = 3) -> list[dict]:
    return [{"prompt": f"p{i}", "chosen": f"c{i}-{j}", "rejected": f"r{i}"} for i in range(n_prompts) for j in range(per_prompt)]


@pytest.mark.shipped  # reads the shipped data/
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


@pytest.mark.shipped  # reads the shipped data/
def test_shipped_results_match_the_shipped_world():
    results = json.loads(data_path("results", "rm_data_scaling.json").read_text())
    manifest = json.loads(data_path("manifest.json").read_text())["assets"]["rm"]
    assert results["schema"] == "pref_lab.rm_data_scaling/1"
    assert results["recipe"] == manifest["recipe"], "re-run scripts/rm_data_scaling.py after changing the RM recipe"
    points = results["points"]
    assert [p["fraction"] for p in points] == sorted(p["fraction"] for p in points) and points[-1]["fraction"] == 1.0
    full = points[-1]
    assert full["test_accuracy"] == manifest["metrics"]["test_accuracy"], "re-run scripts/rm_data_scaling.py"
    assert full["pairs"] == manifest["metrics"]["train_pairs"]
    for smaller, larger in zip(points, points[1:]):
        assert smaller["texts"] < larger["texts"] and smaller["pairs"] < larger["pairs"]
        assert smaller["steps"] <= larger["steps"]


@pytest.mark.shipped  # reads the shipped data/
def test_every_run_makes_the_shipped_rms_passes_over_its_prompts():
    results = json.loads(data_path("results", "rm_data_scaling.json").read_text())
    val_movie_prompts = len({p["prompt"] for p in read_jsonl(data_path("preferences", "train.jsonl"))})
    full = results["points"][-1]
    for point in results["points"]:
        share = (point["extra_prompts"] + val_movie_prompts) / (full["extra_prompts"] + val_movie_prompts)
        assert point["steps"] == max(1, round(full["steps"] * share))
