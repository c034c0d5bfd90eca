"""Behaviour pin: the ``--scale mini`` asset pipeline and the ``tiny`` frontier grid on that mini world give the
numbers they gave before the package's top floor was reorganised (issue 15).

``tests/pinned/mini_world.json`` was written by this file's ``--write`` mode on commit b776254 (before the move of
``pref_lab.experiments`` into ``pref_lab.world`` and ``scripts/frontier.py``, the trainer protocol and the asset
stages for the DPO checkpoint and the mini RewardBench), and rewritten on purpose for issue 16 (the honest gold
judge: bounded sentiment, a reader, repetition and cut-off rules; cut-off samples kept in the pairs; the feature
oracle stage; 4 samples per prompt in rm_extra), and again when the development prompts moved from
train-split movies to a third of the test-split movies (the held-out prompts are the other two thirds), and
when the frontier's points gained their per-prompt gold rewards and example texts (every number before it unchanged).
A refactor must leave every number here unchanged; a change that *means* to change them (a new world, a new
recipe) rewrites the pin in the same commit and says why:

    .venv/bin/python tests/test_pinned_mini.py --write

What "unchanged" means. The same code gives the same bits on one machine, but not across machines: float32 sums on
CPUs with other vector widths differ in their last bits (the pin written on one CPU and checked on another differed by
at most 1e-4 in the 4th decimal of a rounded metric, and by float32 rounding, ~1e-7 relative, elsewhere). So a
weight file is pinned by its tensors' names, shapes, mean |x| and rms, the judges' and the preferences' JSON(L)
files by their content, any other file (the corpus, the tokenizer, the configs) by its sha256. Floats match within
``REL_TOL``/``ABS_TOL``, everything else exactly. A recipe or seed change moves these numbers by percent, far
outside the tolerance.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent
PIN = HERE / "pinned" / "mini_world.json"
# timings and environment: everything else a stage or a run records is pinned
# (reader_sha256: the gold judge's record of its reader's bytes, which are pinned by their tensors instead)
UNPINNED = {"seconds", "train_seconds", "eval_seconds", "wall_seconds", "texts_per_second", "peak_rss_mb", "cuda_peak_mb",
            "torch", "threads", "reader_sha256"}
REL_TOL, ABS_TOL = 1e-4, 1e-4  # see the module docstring: float32 rounding across CPUs, and a rounded last digit


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in UNPINNED}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _fingerprint(path: Path, sha256: str):
    """What a built file pins: a weight file {tensor: [dtype, shape, mean |x|, rms]}; a JSON or JSON-lines file
    (gzipped or not) that holds computed floats (the judges' rules, the scored pairs) its parsed content; any other
    file (text, tokenizers, configs) its sha256 from the manifest."""
    name = path.name
    if name.endswith(".safetensors"):
        return {k: [str(t.dtype), list(t.shape), t.double().abs().mean().item(), t.double().pow(2).mean().sqrt().item()]
                for k, t in sorted(load_file(path).items())}
    if path.parent.name not in ("gold", "task", "preferences"):
        return sha256
    if name.endswith(".json"):
        return json.loads(path.read_text())
    if name.endswith((".jsonl", ".jsonl.gz")):
        text = gzip.decompress(path.read_bytes()).decode() if name.endswith(".gz") else path.read_text()
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return sha256


def mismatches(now, pinned, path: str = "") -> list[str]:
    """Where ``now`` differs from ``pinned``: floats beyond the tolerance, anything else not equal; a dict in ``now``
    may hold keys the pin lacks only under a ``history`` (a trainer may log more metrics than it did, never others)."""
    if isinstance(pinned, dict) and isinstance(now, dict):
        extra = set(now) - set(pinned) if not path.endswith("/history") else set()
        out = [f"{path}/{k}: not in the pin" for k in sorted(extra)]
        for k, v in pinned.items():
            out += mismatches(now[k], v, f"{path}/{k}") if k in now else [f"{path}/{k}: missing"]
        return out
    if isinstance(pinned, list) and isinstance(now, list):
        if len(now) != len(pinned):
            return [f"{path}: {len(now)} items, pinned {len(pinned)}"]
        return [m for i, (a, b) in enumerate(zip(now, pinned)) for m in mismatches(a, b, f"{path}[{i}]")]
    if isinstance(pinned, float) and isinstance(now, (int, float)) and not isinstance(now, bool):
        return [] if math.isclose(now, pinned, rel_tol=REL_TOL, abs_tol=ABS_TOL) else [f"{path}: {now!r}, pinned {pinned!r}"]
    return [] if (now == pinned and type(now) is type(pinned)) else [f"{path}: {now!r}, pinned {pinned!r}"]


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
    stages = {name: {"metrics": a["metrics"], "files": {f: _fingerprint(world / f, e["sha256"]) for f, e in a["files"].items()
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
    assert set(now["frontier"]["runs"]) == set(pinned["frontier"]["runs"])
    found = mismatches(now, pinned)
    assert not found, f"{len(found)} numbers differ from the pin, first ones:\n" + "\n".join(found[:20])


def test_the_pin_comparison_catches_a_change_and_forgives_float32_rounding():
    """The tolerance is tight enough to fail on a real change and loose enough for another CPU's rounding."""
    pin = {"metrics": {"val_ppl": 297.49, "count": 3}, "w": [1.0, -77.24734497070312], "history": {"loss": [0.6929]}}
    cross_cpu = {"metrics": {"val_ppl": 297.49, "count": 3}, "w": [1.0000001, -77.24735260009766],
                 "history": {"loss": [0.69290006], "new_metric": [1.0]}}
    assert mismatches(cross_cpu, pin) == []
    assert mismatches({**cross_cpu, "w": [1.001, -77.24734497070312]}, pin) == ["/w[0]: 1.001, pinned 1.0"]
    assert mismatches({**cross_cpu, "metrics": {"val_ppl": 297.49, "count": 4}}, pin) == ["/metrics/count: 4, pinned 3"]
    assert mismatches({**cross_cpu, "metrics": {"val_ppl": 297.49, "count": 3, "x": 1}}, pin) == ["/metrics/x: not in the pin"]
    assert mismatches({**cross_cpu, "w": [1.0]}, pin) == ["/w: 1 items, pinned 2"]

if __name__ == "__main__":
    if "--write" not in sys.argv:
        sys.exit("usage: python tests/test_pinned_mini.py --write   (rewrites tests/pinned/mini_world.json)")
    with tempfile.TemporaryDirectory() as tmp:
        numbers = mini_numbers(Path(tmp))
    PIN.parent.mkdir(exist_ok=True)
    PIN.write_text(json.dumps(numbers, indent=1, sort_keys=True) + "\n")
    print(f"wrote {PIN}")
