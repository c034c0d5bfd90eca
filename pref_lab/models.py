"""The world's tokenizer and tiny GPT-2 models: build, save, load (safetensors), sample.

Chat format (one user turn, one assistant turn)::

    <|user|>Write a review of About A Boy.<|assistant|>A charming comedy.<|endoftext|>

``<|endoftext|>`` is EOS (a response is finished when the model emits it), ``<|pad|>`` pads.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedModel, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

from .config import data_path, get_device, model_device

# Our checkpoints load in milliseconds: transformers' per-file "Loading weights" bars are only noise in notebooks.
hf_logging.disable_progress_bar()

EOS, PAD, USER, ASSISTANT = "<|endoftext|>", "<|pad|>", "<|user|>", "<|assistant|>"
SPECIAL_TOKENS = [EOS, PAD, USER, ASSISTANT]
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}{{ '<|user|>' + m['content'] }}"
    "{% elif m['role'] == 'assistant' %}{{ '<|assistant|>' + m['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
MODEL_NAMES = ("base", "sft", "dpo")  # the shipped language models, data/models/<name>


# ----------------------------------------------------------------------------- tokenizer
def train_tokenizer(texts: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` and wrap it with EOS/PAD and the chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable: no <unk>
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return wrap_tokenizer(tok)


def wrap_tokenizer(tok) -> PreTrainedTokenizerFast:
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        bos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[USER, ASSISTANT],
        model_max_length=128,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def load_tokenizer(path: str | Path | None = None) -> PreTrainedTokenizerFast:
    """The shipped tokenizer (``data/tokenizer``)."""
    path = Path(path) if path else data_path("tokenizer")
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `make assets`")
    return PreTrainedTokenizerFast.from_pretrained(str(path))


def format_prompt(tokenizer: PreTrainedTokenizerFast, instruction: str) -> str:
    """The chat-formatted prompt for one user instruction, ending where the assistant speaks."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": instruction}], tokenize=False, add_generation_prompt=True
    )


# ----------------------------------------------------------------------------- models
def make_config(tokenizer: PreTrainedTokenizerFast, n_layer: int, n_embd: int, n_head: int,
                n_positions: int = 128) -> GPT2Config:
    """A GPT-2 config sized for a laptop, with the tokenizer's special-token ids."""
    return GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        resid_pdrop=0.1,
        embd_pdrop=0.1,
        attn_pdrop=0.1,
        tie_word_embeddings=True,
    )


def model_path(name: str) -> Path:
    return data_path("models", name)


def load_checkpoint(model_class, folder: Path):
    """``model_class.from_pretrained(folder)`` (safetensors only) with the checks a loader owes its user: a missing
    or unreadable file is named; the weights of a world's model (``<world>/models/<name>``, the shipped ``data/`` or
    one built by ``pref_lab.assets``) must match the sha256 its ``<world>/manifest.json`` records; and every weight
    must be finite (overwritten bytes can load silently as NaN)."""
    folder = Path(folder)
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing: not a model folder, or an interrupted copy (`make assets` "
                                "rebuilds the shipped ones)")
    manifest = folder.parent.parent / "manifest.json"
    if folder.parent.name == "models" and manifest.is_file():
        recorded = f"models/{folder.name}/model.safetensors"
        entries = [a["files"][recorded] for a in json.loads(manifest.read_text())["assets"].values()
                   if recorded in a.get("files", {})]
        if entries and hashlib.sha256(weights.read_bytes()).hexdigest() != entries[0]["sha256"]:
            raise ValueError(f"{weights} does not match the sha256 that {manifest} records for it: the file is "
                             "damaged or was replaced; restore it (git checkout data/) or rebuild it (`make assets`)")
    try:
        model = model_class.from_pretrained(str(folder), use_safetensors=True)
    except Exception as error:  # safetensors, OSError, ValueError: all mean the same thing to a student
        raise ValueError(f"{folder}: cannot load the model ({type(error).__name__}: {error}); the folder is incomplete "
                         "or its files are damaged") from error
    for name, parameter in model.named_parameters():
        if not torch.isfinite(parameter).all():
            raise ValueError(f"{weights}: weight {name} has NaN/inf values: the file is damaged")
    return model


def load_model(name_or_path: str | Path = "base", device: str | torch.device | None = None) -> GPT2LMHeadModel:
    """A shipped model by name (``"base"``, ``"sft"``, ``"dpo"``: always ``data/models/<name>``, whatever folders
    the working directory holds), or a model folder given as a path; on ``device``, in eval mode.

    A world's weights are checked against its manifest's sha256 and every weight must be finite (:func:`load_checkpoint`).
    """
    if isinstance(name_or_path, str) and name_or_path in MODEL_NAMES:
        path = model_path(name_or_path)
    else:
        path = Path(name_or_path)
        if not path.is_dir():
            raise FileNotFoundError(f"no model folder {str(path)!r}: give a folder, or one of the shipped names "
                                    f"{MODEL_NAMES} (in {data_path('models')}; `make assets` rebuilds them)")
    return load_checkpoint(GPT2LMHeadModel, path).to(get_device(device)).eval()


def save_model(model: PreTrainedModel, path: str | Path, tokenizer: PreTrainedTokenizerFast | None = None) -> None:
    """Save as safetensors (never pickle), optionally with the tokenizer beside it."""
    model.save_pretrained(str(path), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))


def context_length(model) -> int:
    """The most tokens (prompt + completion) ``model`` can read: GPT-2's ``n_positions``, else
    ``max_position_embeddings``; 1024 (TRL's ``max_length``) for a model with no config (a test's toy model)."""
    config = getattr(model, "config", None)
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None) or 1024


def check_finite_parameters(model: torch.nn.Module, where: str) -> None:
    """``RuntimeError("<where>: parameter <name> has NaN/inf ...")`` if any weight is not finite: a blown-up policy
    would otherwise crash deep inside the sampler ("probability tensor contains nan")."""
    for name, parameter in model.named_parameters():
        if not torch.isfinite(parameter).all():
            raise RuntimeError(f"{where}: parameter {name} has NaN/inf values: the model diverged "
                               "(try a smaller learning rate) or loaded broken weights")


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- sampling
@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    prompts: Sequence[str],
    max_new_tokens: int = 48,
    temperature: float = 1.0,
    top_k: int | None = None,
    batch_size: int = 64,
    seed: int | None = 0,
    progress: bool = True,
    return_ids: bool = False,
):
    """Sample one completion per prompt (prompts are already formatted text).

    Prompts are left-padded so every row's next token sits at the same position. Sampling stops
    at EOS or after ``max_new_tokens``. Returns the completions as text (special tokens dropped; a completion that
    ran into the limit without EOS is an :class:`Unfinished` text, see :func:`completion_texts`),
    or, with ``return_ids=True``, a list of 1-D tensors of completion token ids *including* the
    EOS if one was produced (what the log-prob convention counts).
    """
    if temperature <= 0:
        raise ValueError("temperature must be > 0 (sampling); use top_k=1 for greedy")
    if isinstance(prompts, str):
        raise ValueError("prompts must be a list of strings, got one string (it would be sampled once per character): "
                         "pass [prompt]")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    context = context_length(model)
    for row, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt:
            raise ValueError(f"prompt {row} must be a non-empty string, got {prompt!r:.60}: the model needs at least "
                             "one token to condition on (e.g. tokenizer.eos_token, or a chat prompt)")
    if prompts:
        lengths = [len(ids) for ids in tokenizer(list(prompts), add_special_tokens=False)["input_ids"]]
        longest = max(range(len(lengths)), key=lengths.__getitem__)
        if lengths[longest] + max_new_tokens > context:
            raise ValueError(f"prompt {longest} is {lengths[longest]} tokens; with max_new_tokens={max_new_tokens} it "
                             f"exceeds the model's context of {context} tokens: shorten it or lower max_new_tokens")
    device = model_device(model)
    if seed is not None:
        torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"  # restored below
    outputs = []
    batches = range(0, len(prompts), batch_size)
    for start in tqdm(batches, desc="sampling", disable=not progress or len(batches) < 2):
        batch = tokenizer(list(prompts[start:start + batch_size]), return_tensors="pt", padding=True,
                          add_special_tokens=False).to(device)
        verbosity = hf_logging.get_verbosity()
        # generate() warns about a missing attention_mask from inside its own decoding loop although we pass one
        # (the sampled log-probs match a masked forward pass; tests/test_ppo.py checks it): keep notebooks clean.
        hf_logging.set_verbosity_error()
        out = model.generate(
            **batch,
            do_sample=True,
            temperature=temperature,
            top_k=top_k if top_k is not None else 0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        hf_logging.set_verbosity(verbosity)
        completions = out[:, batch["input_ids"].shape[1]:].cpu()
        for row in completions:
            ends = (row == tokenizer.eos_token_id).nonzero()
            length = int(ends[0]) + 1 if len(ends) else len(row)  # no EOS: ran to the limit, no padding
            outputs.append(row[:length])
    model.train(was_training)
    tokenizer.padding_side = padding_side
    if return_ids:
        return outputs
    return completion_texts(tokenizer, outputs)


class Unfinished(str):
    """A completion that ran into the length limit: the text of a sample that never emitted EOS.

    Every other completion text is *finished*: :func:`pref_lab.logprobs.tokenize_completions` appends EOS to it.
    An ``Unfinished`` text is tokenized without EOS, so a reward model or DPO sees what was sampled, and it is never
    equal to the finished text with the same characters. :func:`completion_texts` writes sampled ids this way;
    preference records mark such a side with ``chosen_finished`` / ``rejected_finished`` = false
    (:func:`pref_lab.data.pair_completions` reads them back).
    """

    def __eq__(self, other):
        return isinstance(other, Unfinished) and str.__eq__(self, other)

    def __ne__(self, other):
        return not self.__eq__(other)

    def __hash__(self):
        return hash(("unfinished", str(self)))

    def __repr__(self):
        return f"Unfinished({str.__repr__(self)})"


def as_completion(text: str, finished: bool = True) -> str:
    """``text`` itself if it finished, else ``Unfinished(text)``."""
    return text if finished else Unfinished(text)


def decode_completions(tokenizer: PreTrainedTokenizerFast, completion_ids: Sequence[torch.Tensor]) -> list[str]:
    """The texts a judge reads: each completion's ids decoded with special tokens (EOS) dropped, whitespace stripped."""
    return [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in completion_ids]


def completion_texts(tokenizer: PreTrainedTokenizerFast, completion_ids: Sequence[torch.Tensor]) -> list[str]:
    """What a judge reads of sampled ids: :func:`decode_completions`, with each sample that never emitted EOS (it ran
    into the length limit) as an :class:`Unfinished` text, so judges and tokenizers know it was cut off."""
    ended = ends_with_eos(completion_ids, tokenizer.eos_token_id).tolist()
    return [as_completion(t, e) for t, e in zip(decode_completions(tokenizer, completion_ids), ended)]


def ends_with_eos(completion_ids: Sequence[torch.Tensor], eos_token_id: int) -> torch.Tensor:
    """(N,) bool: completion i finished, i.e. its last id is EOS (one without EOS ran into the length limit)."""
    return torch.tensor([len(ids) > 0 and int(ids[-1]) == eos_token_id for ids in completion_ids], dtype=torch.bool)


def eos_rate(completion_ids: Sequence[torch.Tensor], eos_token_id: int) -> float:
    """Share of completions that ended with EOS (see :func:`ends_with_eos`)."""
    return ends_with_eos(completion_ids, eos_token_id).float().mean().item() if len(completion_ids) else 0.0


@contextmanager
def evaluating(*models: torch.nn.Module) -> Iterator[None]:
    """Eval mode (dropout off) for ``models`` inside the block; each model's own mode is restored after."""
    modes = [model.training for model in models]
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for model, mode in zip(models, modes):
            model.train(mode)


def disable_dropout(model: torch.nn.Module) -> None:
    """Set every dropout probability to 0, as TRL's ``disable_dropout=True`` (its DPO and reward-model default).

    Training then sees the same function the evaluation sees; the modules stay in place, so ``train()`` and
    ``eval()`` still work as usual.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
