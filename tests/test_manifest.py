"""The shipped assets: every file the manifest lists exists with its recorded size and hash, within budget."""

import hashlib
import json

import pytest

from pref_lab import config

pytestmark = pytest.mark.shipped  # every test here checks the shipped data/

MANIFEST = json.loads(config.data_path("manifest.json").read_text())
FILES = [(name, path, entry) for name, asset in MANIFEST["assets"].items() for path, entry in asset["files"].items()]


@pytest.mark.parametrize(("asset", "path", "entry"), FILES, ids=[f"{a}:{p}" for a, p, _ in FILES])
def test_shipped_file_matches_manifest(asset, path, entry):
    file = config.data_path(path)
    assert file.exists(), f"{asset}: {path} is listed in the manifest but missing"
    assert file.stat().st_size == entry["bytes"]
    assert hashlib.sha256(file.read_bytes()).hexdigest() == entry["sha256"]


def test_every_asset_has_recipe_seed_and_metrics():
    for name in ("corpus", "tokenizer", "base", "judge_gold", "judge_task", "sft", "preferences", "rm", "oracle"):
        asset = MANIFEST["assets"][name]
        assert asset["metrics"] and "seed" in asset and "recipe" in asset, name


def test_checkpoints_within_budget():
    weights = [p for _, p, _ in FILES if p.endswith(".safetensors")]
    assert {w.split("/")[1] for w in weights if w.startswith("models/")} >= {"base", "sft", "rm"}
    assert MANIFEST["checkpoint_bytes"] <= 30 * 1024 * 1024
    assert not list(config.DATA_DIR.rglob("*.bin")) and not list(config.DATA_DIR.rglob("*.pt"))  # no pickles


def test_base_model_beats_ngram_baselines():
    metrics = MANIFEST["assets"]["base"]["metrics"]
    assert metrics["val_ppl"] <= 0.15 * metrics["unigram_val_ppl"]
    assert metrics["val_ppl"] < metrics["bigram_val_ppl"]
