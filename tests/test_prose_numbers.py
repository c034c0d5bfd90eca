"""scripts/prose_numbers.py: which prose numbers count as printed above (hand-made notebooks)."""

import json


def notebook(tmp_path, cells):
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return path


def code(printed):
    return {"cell_type": "code", "source": ["print(x)"], "outputs": [{"output_type": "stream", "name": "stdout",
                                                                        "text": [printed]}]}


def md(text):
    return {"cell_type": "markdown", "source": [text]}


def test_rounding_and_signs(load_script):
    m = load_script("prose_numbers")
    assert m.backed("0.75", {"0.7546"}) and m.backed("16.2", {"16.21"}) and m.backed("0.35", {"0.35"})
    assert not m.backed("0.76", {"0.7546"}) and not m.backed("1.3", {"1.36"})
    assert not m.backed("0.70", {"0.7"}) and m.backed("0.7", {"0.70"})  # prose may round, not add digits
    assert m.numbers("a fall of −0.35, +1.33 and 2.0e-3; see arXiv:2305.18290 or https://x.org/1.5") == \
        ["0.35", "1.33", "2.0e-3"]


def test_only_outputs_above_back_a_number(tmp_path, load_script):
    m = load_script("prose_numbers")
    path = notebook(tmp_path, [md("early 0.50"), code("accuracy 0.5012\n"), md("then 0.50 and 0.61"),
                               code("0.61\n")])
    assert [(i, q) for i, q, _ in m.unbacked(path)] == [(0, "0.50"), (2, "0.61")]
