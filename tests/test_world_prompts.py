"""The development / held-out prompt rule of pref_lab.world: disjoint movies, fixed order, nested prefixes."""

import pytest

from pref_lab import world
from pref_lab.sft import REVIEW_INSTRUCTIONS


def corpus(test_movies: int, train_movies: int = 5) -> list[dict]:
    rows = [{"movie_title": f"Test {i}", "split": "test"} for i in range(test_movies) for _ in range(2)]
    return rows + [{"movie_title": f"Train {i}", "split": "train"} for i in range(train_movies)]


def title_of(prompt: str) -> str:
    return next(f"Test {i}" for i in range(1000) if any(f"Test {i}{end}" in prompt for end in ".?"))


def test_dev_and_heldout_prompts_split_the_test_movies(letter_tokenizer):
    rows = corpus(30)
    dev = world.dev_prompts(rows, letter_tokenizer)
    heldout = world.heldout_prompts(rows, letter_tokenizer)
    templates = len(REVIEW_INSTRUCTIONS)
    assert len(dev) == 10 * templates and len(heldout) == 20 * templates  # a third of 30 movies for development
    dev_movies, heldout_movies = {title_of(p) for p in dev}, {title_of(p) for p in heldout}
    assert len(dev_movies) == 10 and len(heldout_movies) == 20
    assert not dev_movies & heldout_movies  # a movie is either for tuning or for reporting, never both
    assert all("Train" not in p for p in dev + heldout)
    # one fixed order: the same call gives the same list, and a smaller n is a prefix of a larger one
    assert world.heldout_prompts(rows, letter_tokenizer) == heldout
    assert world.heldout_prompts(rows, letter_tokenizer, 7) == heldout[:7]
    assert world.dev_prompts(rows, letter_tokenizer, 5) == dev[:5]


def test_asking_for_more_prompts_than_exist_is_an_error(letter_tokenizer):
    rows = corpus(3)  # one development movie, two held out
    templates = len(REVIEW_INSTRUCTIONS)
    with pytest.raises(ValueError, match=f"asked for {2 * templates + 1} heldout prompts, but there are {2 * templates}"):
        world.heldout_prompts(rows, letter_tokenizer, 2 * templates + 1)
    assert len(world.dev_prompts(rows, letter_tokenizer)) == templates
    with pytest.raises(ValueError, match="1 test-split movies: need at least 2"):
        world.heldout_prompts(corpus(1), letter_tokenizer)
