"""Execute every notebook in order from a clean kernel into build/ (executed .ipynb + .html).

    python scripts/run_course.py            # all notebooks
    python scripts/run_course.py 02 05      # only those whose names start with these numbers

Prints each notebook's run time; exits non-zero if any notebook fails.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbconvert import HTMLExporter

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS, BUILD = ROOT / "notebooks", ROOT / "build"


def main(prefixes: list[str]) -> int:
    BUILD.mkdir(exist_ok=True)
    notebooks = sorted(p for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb") if not prefixes or p.name[:2] in prefixes)
    failed, total = [], 0.0
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        start = time.time()
        try:
            NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
            status = "ok"
        except Exception as error:  # keep going: report every broken notebook, not just the first
            status = f"FAILED: {type(error).__name__}: {str(error).strip().splitlines()[-1][:200]}"
            failed.append(path.name)
        seconds = time.time() - start
        total += seconds
        nbformat.write(nb, BUILD / path.name)
        html, _ = HTMLExporter().from_notebook_node(nb)
        (BUILD / path.with_suffix(".html").name).write_text(html, encoding="utf-8")
        print(f"{path.name:45s} {seconds:7.1f} s  {status}", flush=True)
    print(f"{'total':45s} {total:7.1f} s  ({len(notebooks)} notebooks, written to {BUILD.relative_to(ROOT)}/)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
