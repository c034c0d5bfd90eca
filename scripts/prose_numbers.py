"""List the decimal numbers a notebook's prose quotes that no code cell above it printed.

    .venv/bin/python scripts/prose_numbers.py notebooks/06_ppo.ipynb      # one notebook
    .venv/bin/python scripts/prose_numbers.py                             # every notebook

The course's rule (CONTRIBUTING.md): a notebook's prose quotes only numbers printed by a cell above it. This
script checks the measurable half of that rule on the stored outputs. A prose number is *backed* when some number
in the outputs of the code cells above it rounds to it at the prose's precision (``0.75`` is backed by a printed
``0.7546``, ``0.76`` is not; ``16.2`` is backed by ``16.21``). Signs are ignored, since prose says "a fall of 0.35"
for a printed ``-0.35``. Only numbers with a decimal point are checked (integers in prose are mostly counts,
sections and years), and links and arXiv ids are left out. Settings quoted from the code (``beta = 0.1``) are
reported too: a reader decides whether they quote code shown above or a measurement. The exit status is 0 either
way; this is a reading aid, not a test.
"""

from __future__ import annotations

import argparse
import json
import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path

NUMBER = re.compile(r"(?<![\w.])[-+−]?\d+\.\d+(?:e[-+]?\d+)?(?![\w])", re.IGNORECASE)


LINK = re.compile(r"https?://\S+|arXiv:\s*\S+", re.IGNORECASE)  # paper ids are not measurements


def numbers(text: str) -> list[str]:
    """Decimal numbers in ``text``, as written, without sign (links and arXiv ids left out)."""
    text = LINK.sub(" ", text)
    return [m.group(0).lstrip("+-−") for m in NUMBER.finditer(text)]


def backed(quoted: str, printed: set[str]) -> bool:
    """Whether some printed number, printed with at least ``quoted``'s decimals, rounds (half up) to ``quoted``
    (a printed ``0.7`` does not back a quoted ``0.70``: the prose would claim a digit nobody printed)."""
    try:
        q = Decimal(quoted)
    except InvalidOperation:
        return True
    step = Decimal(1).scaleb(q.as_tuple().exponent)
    for p in printed:
        try:
            v = Decimal(p)
        except InvalidOperation:
            continue
        if v.as_tuple().exponent <= q.as_tuple().exponent and v.quantize(step, rounding=ROUND_HALF_UP) == q:
            return True
    return False


def output_text(cell: dict) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if "text" in out:
            parts.append("".join(out["text"]))
        data = out.get("data", {})
        for kind in ("text/plain", "text/markdown", "text/html"):
            if kind in data:
                parts.append("".join(data[kind]))
    return "\n".join(parts)


def unbacked(path: Path) -> list[tuple[int, str, str]]:
    """(markdown cell index, number, its line) for every prose number no output above it backs."""
    cells = json.loads(path.read_text())["cells"]
    printed: set[str] = set()
    found = []
    for i, cell in enumerate(cells):
        source = "".join(cell["source"])
        if cell["cell_type"] == "code":
            printed.update(numbers(output_text(cell)))
            continue
        for line in source.splitlines():
            for q in numbers(line):
                if not backed(q, printed):
                    found.append((i, q, line.strip()))
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path)
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted(Path(__file__).resolve().parents[1].glob("notebooks/[0-9][0-9]_*.ipynb"))
    for path in paths:
        found = unbacked(path)
        print(f"{path.name}: {len(found)} prose number(s) not printed above")
        for i, q, line in found:
            print(f"  cell {i}: {q}   | {line[:110]}")


if __name__ == "__main__":
    main()
