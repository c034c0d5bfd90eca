"""The asset pipeline runs end to end at a miniature scale (seconds, not the full rebuild of about an hour)."""

import json
from collections import Counter

import pytest
from conftest import write_raw_corpus

from pref_lab import assets
from pref_lab.data import load_corpus, read_jsonl, validate_records
from pref_lab.models import format_prompt, load_tokenizer
from pref_lab.sft import REVIEW_INSTRUCTIONS


@pytest.mark.shipped  # its raw corpus is made from the shipped one (conftest.write_raw_corpus)
def test_pipeline_runs_end_to_end_at_mini_scale(tmp_path):
    raw = tmp_path / "raw.csv.bz2"
    write_raw_corpus(raw)
    out = tmp_path / "world"
    assets.build(out, scale="mini", raw=raw, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["assets"]) == {"corpus", "tokenizer", "base", "judge_gold", "judge_task", "sft", "preferences", "rm",
                                       "oracle", "rewardbench", "dpo"}
    assert manifest["assets"]["oracle"]["files"] == {}  # a measurement: no file of its own
    assert {"test_accuracy", "l2", "validation"} <= set(manifest["assets"]["oracle"]["metrics"])
    assert (out / "judges" / "gold" / "rater.json").exists()  # the gold judge's rules and its reader's checksum
    for name in ("base", "sft", "rm", "dpo"):
        assert (out / "models" / name / "model.safetensors").exists()
    pairs = read_jsonl(out / "preferences" / "train.jsonl")
    validate_records(pairs, "preference", "train.jsonl")
    assert {"gold_chosen", "gold_rejected", "p_chosen", "chosen_finished", "rejected_finished"} <= set(pairs[0])
    counts = manifest["assets"]["preferences"]["metrics"]["train"]
    marked = {(p["prompt"], p[side]) for p in pairs for side in ("chosen", "rejected") if not p[f"{side}_finished"]}
    assert counts["pairs_with_an_unfinished_side"] == sum(not (p["chosen_finished"] and p["rejected_finished"])
                                                          for p in pairs)
    # an 8-token limit cuts most mini samples off: they are kept and marked, not dropped
    assert 0 < len(marked) <= counts["unfinished_samples"]
    # the reward model's extra pairs (train-split movies) are gzipped, valid, and counted in the RM's training set
    extra = read_jsonl(out / "preferences" / "rm_extra.jsonl.gz")
    validate_records(extra, "preference", "rm_extra.jsonl.gz")
    tokenizer = load_tokenizer(out / "tokenizer")
    train_movies = set(load_corpus(path=out / "corpus" / "corpus.jsonl", split="train")["movie_title"])
    train_prompts = {format_prompt(tokenizer, t.format(title=m)) for m in train_movies for t in REVIEW_INSTRUCTIONS}
    assert extra and {p["prompt"] for p in extra} <= train_prompts
    # rm_extra samples 4 completions per prompt at mini scale (3 for train.jsonl): up to 6 pairs a prompt
    per_prompt = Counter(p["prompt"] for p in extra)
    assert max(per_prompt.values()) > 3 and max(per_prompt.values()) <= 6
    assert manifest["assets"]["rm"]["metrics"]["train_pairs"] == len(pairs) + len(extra)
    # deterministic: the same seed rebuilds the same weights
    first = manifest["assets"]["base"]["files"]["models/base/model.safetensors"]["sha256"]
    assets.build(out, stages=("base",), scale="mini", progress=False)
    again = json.loads((out / "manifest.json").read_text())["assets"]["base"]["files"]["models/base/model.safetensors"]
    assert again["sha256"] == first


def test_unknown_stage_is_refused(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="unknown stages"):
        assets.build(tmp_path, stages=("pretrain",))
