"""Tokenizer, shipped models, device/seed/preset helpers and sampling."""

import json

import pytest
import torch

from pref_lab import config
from pref_lab.models import EOS, PAD, format_prompt, generate, load_model, load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.mark.shipped  # reads the shipped data/
def test_tokenizer_round_trip_and_special_ids(tokenizer):
    text = "A gorgeous, heartfelt film -- and Nicholson's best work in years!"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert tokenizer.eos_token == EOS and tokenizer.pad_token == PAD
    assert tokenizer.eos_token_id != tokenizer.pad_token_id
    assert tokenizer.convert_tokens_to_ids(EOS) == tokenizer.eos_token_id
    assert 1000 < len(tokenizer) <= 8192


@pytest.mark.shipped  # reads the shipped data/
def test_chat_template(tokenizer):
    prompt = format_prompt(tokenizer, "Write a review of Up.")
    assert prompt == "<|user|>Write a review of Up.<|assistant|>"
    full = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."}], tokenize=False)
    assert full == "<|user|>Hi.<|assistant|>Hello.<|endoftext|>"
    # special tokens are single ids, never split into bytes
    assert len(tokenizer("<|assistant|>", add_special_tokens=False)["input_ids"]) == 1


@pytest.mark.shipped  # reads the shipped data/
@pytest.mark.parametrize("name", ["base", "sft"])
def test_shipped_model_shapes_and_deterministic_logits(tokenizer, name):
    model = load_model(name, device="cpu")
    ids = tokenizer("The movie was", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        first = model(ids).logits
        second = model(ids).logits
    assert first.shape == (1, ids.shape[1], len(tokenizer))
    assert torch.equal(first, second)  # eval mode: no dropout
    manifest = json.loads(config.data_path("manifest.json").read_text())
    recorded = manifest["assets"][name]["metrics"]["fixed_input_logit_sum"]
    assert first.sum().item() == pytest.approx(recorded, rel=1e-4, abs=1e-2)


@pytest.mark.shipped  # reads the shipped data/
def test_load_model_unknown_name():
    with pytest.raises(FileNotFoundError, match="no model folder 'nope'"):
        load_model("nope")


@pytest.mark.shipped  # reads the shipped data/
def test_generate_is_seeded_and_stops_at_eos(tokenizer):
    model = load_model("sft", device="cpu")
    prompts = [format_prompt(tokenizer, "Write a review of Up.")] * 4
    a = generate(model, tokenizer, prompts, max_new_tokens=20, seed=1, return_ids=True, progress=False)
    b = generate(model, tokenizer, prompts, max_new_tokens=20, seed=1, return_ids=True, progress=False)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    for ids in a:
        assert 0 < len(ids) <= 20
        eos = (ids == tokenizer.eos_token_id).nonzero()
        assert len(eos) == 0 or int(eos[0]) == len(ids) - 1  # nothing after the first EOS
    assert tokenizer.padding_side == "right"  # generate() restores it
    with pytest.raises(ValueError, match="temperature"):
        generate(model, tokenizer, prompts, temperature=0)


def test_device_seed_and_preset(monkeypatch):
    assert config.get_device("cpu").type == "cpu"
    monkeypatch.setenv("PREF_LAB_DEVICE", "cpu")
    assert config.get_device().type == "cpu"
    config.seed_everything(3)
    a = torch.rand(3)
    config.seed_everything(3)
    assert torch.equal(a, torch.rand(3))
    monkeypatch.setenv("PREF_LAB_PRESET", "gpu")
    assert config.get_preset().name == "gpu"
    monkeypatch.setenv("PREF_LAB_PRESET", "huge")
    with pytest.raises(ValueError, match="PREF_LAB_PRESET"):
        config.get_preset()


@pytest.mark.shipped  # reads the shipped data/
def test_data_path_is_independent_of_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert config.data_path("tokenizer").exists()
