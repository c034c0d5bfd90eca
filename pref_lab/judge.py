"""Transparent text judges.

The **gold judge** plays "the human" of the course. It reads a text the way a rater would, in four readable terms:

    S(y) = b + sum_{w in words(y)} theta_w        sentiment: word-presence logistic regression on the real
                                                   fresh/rotten labels (``words(y)``: the *set* of lower-cased
                                                   words and word bigrams of y in its vocabulary)
    F(y) = (1/T) sum_t log p_reader(y_t | y_<t)   fluency: mean log-prob per token under the reader, the world's
                                                   fixed base language model of real reviews (EOS counted when
                                                   the text finished)
    rho(y)                                        repetition: share of word bigrams that repeat an earlier one

    r_gold(y) = A tanh(n/(n + n0) S/A)            bounded: piling up positive words saturates; a blurb of n
                                                   words convinces less than a review
                - b max(0, L0 - n)                 too short to be a review
                - min(lambda max(0, F0 - F), P)   a list of words is not a review: below the floor F0 (a low
                                                   percentile of real validation reviews) every nat costs lambda
                - mu rho                          saying it again does not count twice
                - c [y did not finish]            a cut-off review is worse than the same review, finished

The constants (``RaterRules``) are chosen in ``pref_lab.assets`` from real validation reviews and recorded in the
manifest. Every sentiment weight is a number attached to a word, and every fluency is a mean of per-token
log-probs, so a student can read why the human scores a text as it does. What it cannot see: the prompt (whether
the review is about the right movie), facts, and anything beyond word pairs and the reader's short memory.
The **task judge** is the sentiment model's form trained to tell a review from a plot summary; it measures
instruction following.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

from .config import data_path
from .models import Unfinished, completion_texts

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


# ----------------------------------------------------------------------------- the gold judge ("the human")
@dataclass(frozen=True)
class RaterRules:
    """The gold judge's rules beyond sentiment (module docstring), each a readable number.

    ``bound`` A: sentiment enters as A·tanh(S/A), so piling up positive words saturates.
    ``fluency_floor`` F0 (nats per token): the reader's mean log-prob below which a text stops reading like a review;
    chosen as a low percentile of real *validation* reviews (the reader was pretrained on the training ones).
    ``fluency_weight`` λ: reward lost per nat below F0.
    ``max_fluency_penalty``: the most that (dis)fluency can cost (keeps the reward bounded below).
    ``repetition_weight`` μ: reward lost per unit of repeated word bigrams (0 = none repeated, 0.5 = said twice).
    ``unfinished_penalty`` c: reward lost by a text that never ended (no EOS): a rater dislikes a cut-off review.
    ``evidence_words`` n0: a text of n distinct words convinces by n/(n + n0) of its sentiment (a blurb says less).
    ``min_words`` L0 and ``brevity_weight`` b: each distinct word short of L0 costs b (too short to be a review).
    The shipped rules use n0 = 16 and switch L0 and b off (``pref_lab.assets.RATER`` says why).
    """

    bound: float
    fluency_floor: float
    fluency_weight: float
    max_fluency_penalty: float
    repetition_weight: float
    unfinished_penalty: float
    evidence_words: float = 0.0
    min_words: float = 0.0
    brevity_weight: float = 0.0

    def __post_init__(self):
        for name, value in asdict(self).items():
            if not math.isfinite(value) or (name != "fluency_floor" and value < 0):
                raise ValueError(f"RaterRules.{name} must be a finite{'' if name == 'fluency_floor' else ' non-negative'}"
                                 f" number, got {value}")
        if self.bound == 0:
            raise ValueError("RaterRules.bound must be > 0")


def repetition(text: str) -> float:
    """Share of the text's word bigrams that repeat an earlier one: 0 for none, 0.5 for a text said twice."""
    words = WORD_RE.findall(text.lower())
    bigrams = list(zip(words, words[1:]))
    return 1 - len(set(bigrams)) / len(bigrams) if bigrams else 0.0


def combine_terms(sentiment: torch.Tensor, fluency: torch.Tensor, repetition: torch.Tensor, finished: torch.Tensor,
                  words: torch.Tensor, rules: RaterRules) -> torch.Tensor:
    """The gold reward from its terms, each of shape (N,) (:meth:`GoldJudge.rate` measures them):

        r = A·tanh(n/(n + n0)·S/A) − min(λ·max(0, F0 − F), P) − μ·ρ − c·[not finished] − b·max(0, L0 − n)

    with S the sentiment logit, F the fluency (nats per token; −inf for a text with no token), ρ the repetition,
    ``finished`` 1/0, n the distinct words, and A, F0, λ, P, μ, c, n0, L0, b the ``rules``. The shipped rules have
    n0 = 16 (a text of 16 distinct words convinces by half its sentiment) and b = 0, so there is no brevity term.
    """
    r = rules
    evidence = words / (words + r.evidence_words) if r.evidence_words else torch.ones_like(words)
    brevity = r.brevity_weight * (r.min_words - words).clamp(min=0)
    below = (r.fluency_floor - fluency).clamp(min=0)  # nats below the floor (inf for a text with no token at all)
    disfluency = (r.fluency_weight * below).clamp(max=r.max_fluency_penalty) if r.fluency_weight else torch.zeros_like(below)
    return (r.bound * torch.tanh(evidence * sentiment / r.bound) - disfluency - r.repetition_weight * repetition
            - r.unfinished_penalty * (1 - finished) - brevity)


class GoldJudge:
    """The course's "human". ``gold_reward`` (module docstring) is what it thinks of a text; ``rate`` shows why.

    It holds the sentiment judge (a :class:`BagOfWordsJudge`), the *reader* (the world's base language model,
    fixed, which measures how much a text reads like real reviews), the world's tokenizer and the
    :class:`RaterRules`. The reader runs on the CPU, whatever device the policies use, so the judge's numbers do
    not depend on the device.
    """

    def __init__(self, sentiment: BagOfWordsJudge, reader: torch.nn.Module, tokenizer, rules: RaterRules):
        self.sentiment = sentiment
        self.reader = copy.deepcopy(reader).cpu().eval().requires_grad_(False)  # never moves or freezes the caller's model
        self.tokenizer = tokenizer
        self.rules = rules
        self.labels = sentiment.labels

    # -- reading -----------------------------------------------------------------------------
    def _texts(self, completions) -> tuple[list[str], list[bool]]:
        """Texts and finished flags, from texts (an :class:`pref_lab.models.Unfinished` text did not finish; any
        other text did) or from sampled id tensors (finished iff the last id is EOS)."""
        if isinstance(completions, str):
            raise ValueError("the gold judge takes a list of texts (or of sampled id tensors), not a single string")
        completions = list(completions)
        if completions and all(isinstance(c, torch.Tensor) for c in completions):
            completions = completion_texts(self.tokenizer, completions)
        for c in completions:
            if not isinstance(c, str):
                raise ValueError(f"expected texts or sampled id tensors, got {type(c).__name__}")
        return [str(c) for c in completions], [not isinstance(c, Unfinished) for c in completions]

    @torch.no_grad()
    def fluency(self, texts: Sequence[str], finished: Sequence[bool], batch_size: int = 64) -> torch.Tensor:
        """Mean log-prob per token under the reader, shape (N,): tokens of the text, then EOS if it finished,
        each given what came before (a text starts after an EOS, as in pretraining). Texts beyond the reader's
        context are read up to it. A text with no token at all (empty and unfinished) gets -inf."""
        eos = self.tokenizer.eos_token_id
        limit = self.reader.config.n_positions - 1
        tokens = self.tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=limit)["input_ids"]
        ids = [(t + ([eos] if f else []))[:limit] for t, f in zip(tokens, finished)]
        out = torch.full((len(ids),), -math.inf)
        order = sorted((i for i in range(len(ids)) if ids[i]), key=lambda i: len(ids[i]))  # similar lengths batched
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            width = 1 + max(len(ids[i]) for i in rows)
            batch = torch.full((len(rows), width), eos)
            mask = torch.zeros(len(rows), width)
            for j, i in enumerate(rows):
                batch[j, 1:1 + len(ids[i])] = torch.tensor(ids[i])
                mask[j, :1 + len(ids[i])] = 1
            logp = torch.log_softmax(self.reader(batch, attention_mask=mask).logits[:, :-1].float(), -1)
            token_logp = logp.gather(-1, batch[:, 1:, None]).squeeze(-1) * mask[:, 1:]
            out[rows] = token_logp.sum(1) / mask[:, 1:].sum(1)
        return out

    def rate(self, completions: Sequence) -> dict[str, torch.Tensor]:
        """Every term of the gold reward, each of shape (N,) (module docstring):

        ``sentiment`` S (the word-weight logit), ``fluency`` F, ``repetition`` ρ, ``finished`` (1/0), ``words`` n, and
        ``reward``, combined from them by :func:`combine_terms`.
        """
        texts, flags = self._texts(completions)
        sentiment = self.sentiment.score(texts)
        fluency = self.fluency(texts, flags)
        rep = torch.tensor([repetition(t) for t in texts])
        done = torch.tensor(flags, dtype=torch.float32)
        # distinct words: saying it again adds no evidence and does not make a text longer in the rater's eyes
        words = torch.tensor([len(set(WORD_RE.findall(t.lower()))) for t in texts], dtype=torch.float32)
        return {"sentiment": sentiment, "fluency": fluency, "repetition": rep, "finished": done, "words": words,
                "reward": combine_terms(sentiment, fluency, rep, done, words, self.rules)}

    def gold_reward(self, completions: Sequence) -> torch.Tensor:
        """Gold reward r_gold(y) of each completion, shape (N,); higher = what the human prefers.

        ``completions``: sampled id tensors (a sample finished iff its last id is EOS), or texts: a text is
        finished unless it is an :class:`pref_lab.models.Unfinished` text (see
        :func:`pref_lab.models.completion_texts`). Pass generated text as its ids or as ``completion_texts``, so a
        sample cut off at the length limit is judged as what it is.
        """
        return self.rate(completions)["reward"]

    # -- the sentiment verdict on real reviews ------------------------------------------------------
    def predict(self, texts: Sequence[str]) -> list[str]:
        """The judge's fresh/rotten verdict on finished texts: the sign of the gold reward."""
        return [self.labels[int(s > 0)] for s in self.gold_reward(texts)]

    def accuracy(self, texts: Sequence[str], labels: Sequence[str]) -> float:
        if not labels:
            raise ValueError("accuracy of an empty set of texts is undefined")
        return sum(p == y for p, y in zip(self.predict(texts), labels)) / len(labels)

    def top_features(self, k: int = 15) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
        """The sentiment judge's k most positive and k most negative (feature, weight) pairs."""
        return self.sentiment.top_features(k)

    # -- persistence ---------------------------------------------------------------------------------
    def save(self, folder: str | Path, reader_folder: str) -> None:
        """Save the sentiment weights and the rules; the reader is referenced (``reader_folder``, relative to the
        world's root) with the sha256 of its weights, so a rebuilt base model cannot silently change the judge."""
        folder = Path(folder)
        self.sentiment.save(folder)
        world = folder.parent.parent
        (folder / "rater.json").write_text(json.dumps(
            {"rules": asdict(self.rules), "reader": reader_folder, "tokenizer": "tokenizer",
             "reader_sha256": sha256_of(world / reader_folder / "model.safetensors")}, indent=1))

    @classmethod
    def load(cls, folder: str | Path) -> GoldJudge:
        folder = Path(folder)
        sentiment = BagOfWordsJudge.load(folder)
        if not (folder / "rater.json").exists():
            raise FileNotFoundError(f"{folder} has no rater.json: run `make assets`")
        meta = json.loads((folder / "rater.json").read_text())
        world = folder.parent.parent
        weights = world / meta["reader"] / "model.safetensors"
        if not weights.exists():
            raise FileNotFoundError(f"the gold judge's reader {weights} is missing: run `make assets`")
        if sha256_of(weights) != meta["reader_sha256"]:
            raise ValueError(f"{weights} is not the model the gold judge was built with (sha256 differs): rebuild the "
                             "judge (`python -m pref_lab.assets --stages judges`) after rebuilding the base model")
        reader = GPT2LMHeadModel.from_pretrained(str(world / meta["reader"]))
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(world / meta["tokenizer"]))
        return cls(sentiment, reader, tokenizer, RaterRules(**meta["rules"]))


def sha256_of(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_gold_judge(folder: str | Path | None = None) -> GoldJudge:
    """The shipped gold judge (``data/judges/gold``, reading with ``data/models/base``)."""
    return GoldJudge.load(folder or data_path("judges", "gold"))


def load_task_judge(folder: str | Path | None = None) -> BagOfWordsJudge:
    """The shipped task judge (``data/judges/task``): logit > 0 means "this is a review", < 0 "a plot summary"."""
    return BagOfWordsJudge.load(folder or data_path("judges", "task"))
