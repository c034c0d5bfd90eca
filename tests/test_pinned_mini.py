"""Behaviour pin: the ``--scale mini`` asset pipeline and the ``tiny`` frontier grid on that mini world give the
numbers they gave before the package's top floor was reorganised (issue 15).

``tests/pinned/mini_world.json`` was written by this file's ``--write`` mode on commit b776254 (before the move of
``pref_lab.experiments`` into ``pref_lab.world`` and ``scripts/frontier.py``, the trainer protocol and the asset
stages for the DPO checkpoint and the mini RewardBench), and rewritten on purpose for issue 16 (the honest gold
judge: bounded sentiment, a reader, repetition and cut-off rules; cut-off samples kept in the pairs; the feature
oracle stage; 4 samples per prompt in rm_extra), and again when the development prompts moved from
train-split movies to a third of the test-split movies (the held-out prompts are the other two thirds).
A refactor must leave every number here unchanged; a change that *means* to change them (a new world, a new
recipe) rewrites the pin in the same commit and says why:

    .venv/bin/python tests/test_pinned_mini.py --write
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
PIN = HERE / "pinned" / "mini_world.json"
# timings and environment: everything else a stage or a run records is pinned
UNPINNED = {"seconds", "train_seconds", "eval_seconds", "wall_seconds", "texts_per_second", "peak_rss_mb", "cuda_peak_mb",
            "torch", "threads"}


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in UNPINNED}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _columns(history: list[dict]) -> dict[str, list]:
    """A run's training log as {metric: [value per logged row]}: the metrics, not the row layout, are pinned
    (counters such as the step, round and sample counts are checked by the curves and costs)."""
    keys = sorted({k for row in history for k, v in row.items() if isinstance(v, float)} - {"step", "round", "samples"})
    return {k: [row.get(k) for row in history] for k in keys}


def _train_losses(history) -> list[float]:
    """Per-step training losses of a shipped ``history.json``: a dict of columns (``train_loss``) on b776254,
    a list of rows (``loss``) in the trainer protocol that replaced it."""
    return history["train_loss"] if isinstance(history, dict) else [row["loss"] for row in history]


def mini_numbers(folder: Path) -> dict:
    """Build the mini world in ``folder``, run the tiny frontier grid on it; return what both recorded."""
    sys.path.insert(0, str(HERE))
    from conftest import write_raw_corpus  # noqa: E402  (a plain function shared with the pipeline test)

    from pref_lab import assets

    raw = folder / "raw.csv.bz2"
    write_raw_corpus(raw)
    world = folder / "world"
    torch.set_num_threads(1)
    stages = ("corpus", "tokenizer", "base", "judges", "sft", "preferences", "rm")  # the stages of b776254
    assets.build(world, stages=stages, scale="mini", raw=raw, progress=False)
    manifest = json.loads((world / "manifest.json").read_text())
    spec = importlib.util.spec_from_file_location("frontier_script", HERE.parent / "scripts" / "frontier.py")
    frontier = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(frontier)
    results = frontier.main(["--tiny", "--assets", str(world), "--out", str(folder / "frontier.json"), "--threads", "1"])
    runs = {r["name"]: {"curve": r["curve"], "cost": r["cost"], "history": _columns(r["history"])} for r in results["runs"]}
    stages = {name: {"metrics": a["metrics"], "files": {f: e["sha256"] for f, e in a["files"].items()
                                                         if not f.endswith("history.json")}}
              for name, a in manifest["assets"].items()}
    for name in ("sft", "rm"):  # a training log holds its run time: pin its per-step training losses instead
        stages[name]["train_losses"] = _train_losses(json.loads((world / "models" / name / "history.json").read_text()))
    return _strip({"assets": stages, "frontier": {"sft": results["sft"], "data": results["data"], "runs": runs}})


@pytest.mark.usefixtures("one_thread")
@pytest.mark.shipped  # its raw corpus is made from the shipped one (conftest.write_raw_corpus)
def test_mini_pipeline_and_tiny_frontier_give_the_pinned_numbers(tmp_path):
    pinned = json.loads(PIN.read_text())
    now = mini_numbers(tmp_path)
    for name, stage in pinned["assets"].items():
        assert now["assets"][name] == stage, f"asset stage {name!r} no longer gives the pinned numbers"
    assert now["frontier"]["sft"] == pinned["frontier"]["sft"]
    assert now["frontier"]["data"] == pinned["frontier"]["data"]
    assert set(now["frontier"]["runs"]) == set(pinned["frontier"]["runs"])
    for name, run in pinned["frontier"]["runs"].items():
        got = now["frontier"]["runs"][name]
        assert got["curve"] == run["curve"], f"frontier run {name!r}: the curve is no longer the pinned one"
        assert got["cost"] == run["cost"], f"frontier run {name!r}: the costs are no longer the pinned ones"
        for metric, values in run["history"].items():  # a trainer may log more metrics than it did, never others
            assert got["history"].get(metric) == values, f"frontier run {name!r}: history {metric!r} changed"


if __name__ == "__main__":
    if "--write" not in sys.argv:
        sys.exit("usage: python tests/test_pinned_mini.py --write   (rewrites tests/pinned/mini_world.json)")
    with tempfile.TemporaryDirectory() as tmp:
        numbers = mini_numbers(Path(tmp))
    PIN.parent.mkdir(exist_ok=True)
    PIN.write_text(json.dumps(numbers, indent=1, sort_keys=True) + "\n")
    print(f"wrote {PIN}")
