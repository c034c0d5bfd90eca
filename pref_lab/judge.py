"""Transparent text judges: word-presence logistic regression.

The **gold judge** plays "the human" of the course: trained on the real fresh/rotten labels, its
logit is the gold reward

    r_gold(y) = b + sum_{w in words(y)} theta_w          P(fresh | y) = sigma(r_gold(y))

where ``words(y)`` is the *set* of lower-cased words and word bigrams in y that are in the
judge's vocabulary. Every weight is a readable number attached to a word, so students can see
what "the human" likes. The **task judge** is the same model trained to tell a review from a
plot summary; it measures instruction following.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .config import data_path

WORD_RE = re.compile(r"[a-z0-9']+|[!?]")


def text_features(text: str) -> set[str]:
    """The set of lower-cased words and adjacent-word bigrams ("not good") in ``text``."""
    words = WORD_RE.findall(text.lower())
    return set(words) | {f"{a} {b}" for a, b in zip(words, words[1:])}


class BagOfWordsJudge:
    """Logistic regression on word/bigram presence. ``score(texts)`` returns logits, shape (N,)."""

    def __init__(self, vocab: Sequence[str], weights: torch.Tensor, bias: float, labels: tuple[str, str]):
        if len(vocab) != len(weights):
            raise ValueError(f"{len(vocab)} vocabulary entries but {len(weights)} weights")
        self.vocab = list(vocab)
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.weights = weights.float()
        self.bias = float(bias)
        self.labels = labels  # (negative class, positive class): the logit is log P(pos)/P(neg)

    # -- scoring ---------------------------------------------------------------------------
    def score(self, texts: Sequence[str]) -> torch.Tensor:
        """Logit of the positive class for each text: shape (N,). Pure Python lookups: fast on CPU."""
        if isinstance(texts, str):
            raise ValueError("score() takes a list of texts, not a single string")
        w = self.weights.tolist()
        out = []
        for text in texts:
            if not isinstance(text, str):
                raise ValueError(f"expected text, got {type(text).__name__}")
            out.append(self.bias + sum(w[self.index[f]] for f in text_features(text) if f in self.index))
        return torch.tensor(out, dtype=torch.float32)

    def predict(self, texts: Sequence[str]) -> list[str]:
        return [self.labels[int(s > 0)] for s in self.score(texts)]

    def accuracy(self, texts: Sequence[str], labels: Sequence[str]) -> float:
        if not labels:
            raise ValueError("accuracy of an empty set of texts is undefined")
        return sum(p == y for p, y in zip(self.predict(texts), labels)) / len(labels)

    def top_features(self, k: int = 15) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
        """The k most positive and k most negative (feature, weight) pairs."""
        order = torch.argsort(self.weights)
        neg = [(self.vocab[i], self.weights[i].item()) for i in order[:k]]
        pos = [(self.vocab[i], self.weights[i].item()) for i in order.flip(0)[:k]]
        return pos, neg

    # -- training --------------------------------------------------------------------------
    @classmethod
    def fit(cls, texts: Sequence[str], labels: Sequence[str], classes: tuple[str, str], *, min_count: int = 3,
            l2: float = 1e-3, steps: int = 300, progress: bool = False) -> BagOfWordsJudge:
        """Fit by full-batch L-BFGS on the mean logistic loss + ``l2``·||theta||^2 (bias unpenalised).

        Features seen in fewer than ``min_count`` training texts are dropped (too rare to trust).
        """
        if len(texts) != len(labels) or not texts:
            raise ValueError(f"need as many labels as texts, got {len(texts)} and {len(labels)}")
        unknown = set(labels) - set(classes)
        if unknown:
            raise ValueError(f"labels {sorted(unknown)} are not in classes {classes}")
        feats = [text_features(t) for t in texts]
        counts = Counter(f for fs in feats for f in fs)
        vocab = sorted(f for f, c in counts.items() if c >= min_count)
        index = {f: i for i, f in enumerate(vocab)}
        rows = [i for i, fs in enumerate(feats) for f in fs if f in index]
        cols = [index[f] for fs in feats for f in fs if f in index]
        x = torch.sparse_coo_tensor([rows, cols], torch.ones(len(rows)), (len(texts), len(vocab)),
                                    check_invariants=True).coalesce()
        y = torch.tensor([float(lab == classes[1]) for lab in labels])
        theta = torch.zeros(len(vocab), requires_grad=True)
        bias = torch.zeros(1, requires_grad=True)
        opt = torch.optim.LBFGS([theta, bias], lr=1, max_iter=steps, history_size=20, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            logits = torch.sparse.mm(x, theta.unsqueeze(1)).squeeze(1) + bias
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y) + l2 * theta.pow(2).sum()
            loss.backward()
            return loss

        with tqdm(total=1, desc="fitting judge", disable=not progress):
            opt.step(closure)
        return cls(vocab, theta.detach(), bias.item(), classes)

    # -- persistence (safetensors + JSON, never pickle) ------------------------------------------
    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"weights": self.weights.contiguous(), "bias": torch.tensor([self.bias])},
                  str(folder / "judge.safetensors"))
        (folder / "vocab.json").write_text(json.dumps({"labels": list(self.labels), "vocab": self.vocab}))

    @classmethod
    def load(cls, folder: str | Path) -> BagOfWordsJudge:
        folder = Path(folder)
        if not (folder / "judge.safetensors").exists():
            raise FileNotFoundError(f"{folder} has no judge.safetensors: run `make assets`")
        tensors = load_file(str(folder / "judge.safetensors"))
        meta = json.loads((folder / "vocab.json").read_text())
        return cls(meta["vocab"], tensors["weights"], tensors["bias"].item(), tuple(meta["labels"]))


class GoldJudge(BagOfWordsJudge):
    """The course's "human": P(fresh | text). ``gold_reward`` is its logit."""

    def gold_reward(self, texts: Sequence[str]) -> torch.Tensor:
        """Gold reward r_gold(y) for each text: shape (N,). Positive = reads like a fresh review."""
        return self.score(texts)


def load_gold_judge(folder: str | Path | None = None) -> GoldJudge:
    """The shipped gold sentiment judge (``data/judges/gold``)."""
    return GoldJudge.load(folder or data_path("judges", "gold"))


def load_task_judge(folder: str | Path | None = None) -> BagOfWordsJudge:
    """The shipped task judge (``data/judges/task``): logit > 0 means "this is a review", < 0 "a plot summary"."""
    return BagOfWordsJudge.load(folder or data_path("judges", "task"))
