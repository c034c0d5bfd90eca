"""pref-lab: small, tested helpers for a hands-on course on preference fine-tuning."""

__version__ = "0.1.0"
