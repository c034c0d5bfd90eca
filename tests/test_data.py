"""The data layer: the split by movie, the shipped corpus, and the validators' error messages."""

import pytest

from pref_lab import data as D


@pytest.mark.shipped  # reads the shipped data/
def test_split_is_by_movie_with_no_leakage():
    corpus = D.load_corpus()
    movies = {s: set(corpus.filter(lambda r, s=s: r["split"] == s)["movie_id"]) for s in D.SPLITS}
    assert not movies["train"] & movies["val"]
    assert not movies["train"] & movies["test"]
    assert not movies["val"] & movies["test"]
    n = sum(len(m) for m in movies.values())
    assert 0.75 < len(movies["train"]) / n < 0.85


def test_split_is_deterministic_and_seeded():
    ids = [f"movie_{i}" for i in range(100)]
    assert D.split_movies(ids, seed=0) == D.split_movies(list(reversed(ids)), seed=0)
    assert D.split_movies(ids, seed=0) != D.split_movies(ids, seed=1)


@pytest.mark.shipped  # reads the shipped data/
def test_shipped_corpus_counts():
    corpus = D.load_corpus()
    kinds = corpus["kind"]
    assert kinds.count("review") > 12_000 and kinds.count("plot") > 1_000
    D.validate_records(corpus, "corpus", "corpus.jsonl")


@pytest.mark.shipped  # reads the shipped data/
def test_load_corpus_filters():
    test_reviews = D.load_corpus(split="test", kind="review")
    assert set(test_reviews["split"]) == {"test"} and set(test_reviews["kind"]) == {"review"}
    with pytest.raises(ValueError, match="split must be one of"):
        D.load_corpus(split="dev")


GOOD_PAIR = {"prompt": "<|user|>Write a review of Up.<|assistant|>", "chosen": "Lovely.", "rejected": "Dull."}


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ({"prompt": "p", "chosen": "a"}, "missing column 'rejected'"),
        ({**GOOD_PAIR, "chosen": "   "}, "column 'chosen' is empty"),
        ({**GOOD_PAIR, "rejected": 3}, "column 'rejected' must be a string, got int"),
        ({**GOOD_PAIR, "rejected": "Lovely."}, "chosen == rejected"),
        ({**GOOD_PAIR, "chosen": "x" * 5000}, "column 'chosen' is over-long"),
    ],
)
def test_preference_validator_names_file_row_and_problem(record, problem):
    records = [GOOD_PAIR, GOOD_PAIR, record]
    with pytest.raises(ValueError) as error:
        D.validate_records(records, "preference", "pairs.jsonl")
    assert str(error.value).startswith("pairs.jsonl, row 2: ")
    assert problem in str(error.value)


def test_validators_for_corpus_and_sft_records():
    with pytest.raises(ValueError, match="row 0: missing column 'response'"):
        D.validate_records([{"prompt": "Write."}], "sft", "sft.jsonl")
    with pytest.raises(ValueError, match="split 'dev' is not one of"):
        D.validate_record({"movie_id": "a", "movie_title": "A", "kind": "review", "text": "t", "split": "dev"}, "corpus")
    with pytest.raises(ValueError, match="no records"):
        D.validate_records([], "sft", "empty.jsonl")
    with pytest.raises(ValueError, match="unknown record kind"):
        D.validate_record({}, "tweets")


@pytest.mark.shipped  # reads the shipped data/
def test_load_preferences_reports_bad_file(tmp_path):
    path = tmp_path / "bad.jsonl"
    D.write_jsonl([GOOD_PAIR, {**GOOD_PAIR, "rejected": GOOD_PAIR["chosen"]}], path)
    with pytest.raises(ValueError, match=r"bad.jsonl, row 1: chosen == rejected"):
        D.load_preferences(path=path)


def test_movie_title_and_cleaning():
    assert D.movie_title("about_a_boy") == "About A Boy"
    assert D.clean_text("  A  film\n\nabout   time. ") == "A film about time."


@pytest.mark.parametrize("name", ["pairs.jsonl", "pairs.jsonl.gz"])
def test_jsonl_round_trip_and_gzip_is_byte_stable(tmp_path, name):
    records = [GOOD_PAIR, {**GOOD_PAIR, "chosen": "Ünïcode stays as written: « great »"}]
    D.write_jsonl(records, tmp_path / name)
    first = (tmp_path / name).read_bytes()
    assert D.read_jsonl(tmp_path / name) == records
    if name.endswith(".gz"):
        # gzip magic, and a zero MTIME field (bytes 4-8): the bytes depend on the records only (stable checksums)
        assert first[:2] == b"\x1f\x8b" and first[4:8] == bytes(4)
    else:
        assert first.decode("utf-8").count("\n") == 2
