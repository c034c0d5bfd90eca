"""pref-lab: small, tested helpers for a hands-on course on preference fine-tuning.

Offline by default: everything the course needs ships in ``data/`` or comes with its pinned packages, so importing
``pref_lab`` switches the Hugging Face libraries to offline mode (no hub lookups, no retries, no telemetry) unless
you opt in with ``PREF_LAB_ONLINE=1`` before the import (e.g. to load a hub model or dataset of your own).
"""

import os as _os
import sys as _sys

__version__ = "0.1.0"

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def _go_offline() -> None:
    for name in OFFLINE_VARIABLES:
        _os.environ.setdefault(name, "1")
    # The libraries read these once, at their own import: patch the ones a user imported before pref_lab.
    if "huggingface_hub" in _sys.modules:
        import huggingface_hub.constants as hub_constants

        hub_constants.HF_HUB_OFFLINE = True
    if "datasets" in _sys.modules:
        import datasets.config as datasets_config

        datasets_config.HF_HUB_OFFLINE = True
        datasets_config.HF_DATASETS_OFFLINE = True


if _os.environ.get("PREF_LAB_ONLINE", "").strip().lower() not in ("1", "true", "yes"):
    _go_offline()
