"""Build the mini RewardBench from the shipped world: ``data/rewardbench/test.jsonl`` and its card ``README.md``.

    .venv/bin/python scripts/build_rewardbench.py               # into data/rewardbench (a few seconds)
    .venv/bin/python scripts/build_rewardbench.py --out /tmp/rb # somewhere else

Deterministic: it reads only the corpus (test-split movies) and the tokenizer (for length limits), so re-running
it after an asset rebuild gives the same file unless those two changed. See ``pref_lab.evaluate.build_rewardbench``.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from pref_lab.config import data_path
from pref_lab.data import CORPUS_FILE, read_jsonl
from pref_lab.evaluate import build_rewardbench, write_rewardbench
from pref_lab.models import format_prompt, load_tokenizer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--assets", type=Path, default=data_path(), help="the world's folder (default: data/)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <assets>/rewardbench)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    tokenizer = load_tokenizer(args.assets / "tokenizer")
    records = build_rewardbench(read_jsonl(args.assets / CORPUS_FILE), tokenizer,
                                lambda instruction: format_prompt(tokenizer, instruction), seed=args.seed)
    folder = write_rewardbench(records, args.out or args.assets / "rewardbench")
    print(f"wrote {len(records)} pairs to {folder}: {dict(Counter(r['subset'] for r in records))}")


if __name__ == "__main__":
    main()
