"""One place for the course's conventions: where data lives, which device, seeding, presets.

Every other module imports these helpers instead of re-deciding them, so a notebook, a test
and the asset pipeline always agree.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# The repository root is the folder above this package; `data/` sits beside it. Notebooks run
# from `notebooks/`, tests from the root, scripts from anywhere: all find the same folder.
REPO_ROOT = Path(__file__).resolve().parent.parent


def data_dir_from_env(value: str | None) -> Path:
    """``$PREF_LAB_DATA`` as the data folder (unset: ``<repo>/data``). It must be an absolute path: a relative one
    would mean a different folder in every working directory (notebooks run in ``notebooks/``, tests in the root)."""
    if value is None:
        return REPO_ROOT / "data"
    if not value.strip():
        raise ValueError("PREF_LAB_DATA is set but empty: unset it to use the shipped data/, or give an absolute path")
    if not Path(value).expanduser().is_absolute():
        raise ValueError(f"PREF_LAB_DATA={value!r} is a relative path, which would change with the working directory: "
                         f"give an absolute path, e.g. PREF_LAB_DATA={Path(value).resolve()}")
    return Path(value).expanduser()


DATA_DIR = data_dir_from_env(os.environ.get("PREF_LAB_DATA"))


def data_path(*parts: str) -> Path:
    """Path of a shipped asset, e.g. ``data_path("models", "base")``."""
    return DATA_DIR.joinpath(*parts)


# The device rule. Loaders (``load_model``, ``load_reward_model``, ``load_world``, ...) take ``device=`` and resolve
# it with get_device(); every other helper runs where its model already lives (model_device) and never moves a
# model it was given. Helpers that take two models check that they share a device (same_device).
def get_device(device: str | torch.device | None = None) -> torch.device:
    """The device a loader puts a model on: the argument if given, else ``$PREF_LAB_DEVICE``, else CUDA, MPS, CPU."""
    source = "device"
    if device is None and os.environ.get("PREF_LAB_DEVICE") is not None:
        device, source = os.environ["PREF_LAB_DEVICE"], "PREF_LAB_DEVICE"
    if device is not None:
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError) as error:
            raise ValueError(f"{source}={device!r} is not a device: use cpu, cuda, cuda:0 or mps") from error
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"{source}={str(device)!r} but this machine has no CUDA GPU: use cpu (or unset it)")
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{source}={str(device)!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
        if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError(f"{source}={str(device)!r} but MPS is not available here: use cpu (or unset it)")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def model_device(model: torch.nn.Module) -> torch.device:
    """Where ``model`` lives (its first parameter's device): helpers put their batches there."""
    return next(model.parameters()).device


def same_device(**models: torch.nn.Module) -> torch.device:
    """The one device all ``models`` live on; ``ValueError`` naming each model's device if they differ."""
    devices = {name: model_device(model) for name, model in models.items()}
    if len(set(devices.values())) > 1:
        where = ", ".join(f"{name} on {device}" for name, device in devices.items())
        raise ValueError(f"models must share one device, got {where}: move them with .to(device) first")
    return next(iter(devices.values()))


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA); returns a CPU ``torch.Generator`` with that seed.

    On CPU the same seed gives the same numbers run after run. On GPU some kernels are not
    bit-deterministic, so expect agreement to a few decimals, not to the bit.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    return torch.Generator().manual_seed(seed)


@dataclass(frozen=True)
class Preset:
    """How big the notebooks' experiments are. ``tiny`` fits 2 CPU cores; ``gpu`` runs longer.

    Notebooks multiply their step counts and batch sizes by these, so one switch scales the
    whole course.
    """

    name: str
    steps_scale: float  # multiply training steps
    batch_scale: int  # multiply batch sizes
    eval_prompts: int  # held-out prompts used for gold-reward evaluation


PRESETS = {
    "tiny": Preset("tiny", steps_scale=1.0, batch_scale=1, eval_prompts=64),
    "gpu": Preset("gpu", steps_scale=4.0, batch_scale=4, eval_prompts=144),  # notebooks take up to 2x: all 288 held-out prompts
}


def get_preset(name: str | None = None) -> Preset:
    """The active preset: the argument, else ``$PREF_LAB_PRESET``, else ``tiny``."""
    name = name or os.environ.get("PREF_LAB_PRESET", "tiny")
    if name not in PRESETS:
        raise ValueError(f"PREF_LAB_PRESET={name!r} is not one of {sorted(PRESETS)}")
    return PRESETS[name]
