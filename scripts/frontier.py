"""Gold reward vs KL frontier: PPO, offline DPO, online DPO and best-of-n from one SFT model.

    .venv/bin/python scripts/frontier.py --tiny                      # seconds: the test configuration
    .venv/bin/python scripts/frontier.py --jobs 2                    # the full grid on 2 CPU cores
    .venv/bin/python scripts/frontier.py --methods ppo --set ppo.steps=10 --set "ppo.kl_coefs=[0.1]"

Writes ``data/results/frontier_<config>.json`` (``--out`` to change), rewritten after every run so a crash
loses at most one. The schema, what is measured and how: ``pref_lab/experiments.py``'s docstring.
``--assets DIR`` loads the world from another folder, e.g. one built by
``python -m pref_lab.assets --scale mini --out DIR``.

Budget of the full grid (4 PPO runs x 36 iterations, 4 offline DPO x 100 steps, 2 online DPO x 100 rounds,
best-of-n up to 32; PPO evaluated 7 times, DPO and online DPO 6 times, on 256 held-out prompts). Measured for the
shipped ``data/results/frontier_full.json`` with ``--jobs 2`` on 2 otherwise idle CPU cores: 886 s in all (its
``total_seconds``); per run (train + eval, one torch thread) PPO ~90-120 s, offline DPO ~165 s, online DPO ~230 s,
best-of-n ~110 s for all n (one nested pool). The budget is <= 40 min on 2 CPU cores; if the machine is busy,
lower the steps with ``--set``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

from pref_lab.config import DATA_DIR
from pref_lab.experiments import CONFIGS, METHODS, load_world, run_frontier


def apply_override(config: dict, assignment: str) -> None:
    """``section.key=value`` (value parsed as JSON, else kept as a string) sets ``config[section][key]``."""
    path, sep, raw = assignment.partition("=")
    if not sep:
        raise ValueError(f"--set expects key=value, got {assignment!r}")
    *parents, key = path.split(".")
    node = config
    for part in parents:
        if part not in node or not isinstance(node[part], dict):
            raise ValueError(f"--set {assignment!r}: no section {part!r} in the config")
        node = node[part]
    if key not in node:
        raise ValueError(f"--set {assignment!r}: unknown key {key!r} (known: {sorted(node)})")
    try:
        node[key] = json.loads(raw)
    except json.JSONDecodeError:
        node[key] = raw


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="the seconds-long test configuration")
    parser.add_argument("--assets", type=Path, default=DATA_DIR, help="world folder (default: data/)")
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default: data/results/frontier_<config>.json)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value (JSON), e.g. ppo.steps=30; repeatable")
    parser.add_argument("--seed", type=int, default=None, help="training seed of every run (default: the config's)")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel, each in its own 1-thread process")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for in-process runs")
    parser.add_argument("--device", default=None, help="cpu / cuda / mps (default: pref_lab's choice)")
    parser.add_argument("--progress", action="store_true", help="progress bars for each run")
    args = parser.parse_args(argv)

    name = "tiny" if args.tiny else "full"
    config = copy.deepcopy(CONFIGS[name])
    for assignment in args.set:
        apply_override(config, assignment)
    if args.seed is not None:
        config["seed"] = args.seed
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    out = args.out or DATA_DIR / "results" / f"frontier_{name}.json"
    world = load_world(args.assets, config["eval"]["prompts"], config["seed"], args.device)
    results = run_frontier(world, config, name, methods, out=out, jobs=args.jobs, progress=args.progress)
    print(f"wrote {out} ({len(results['runs'])} runs, {results['total_seconds']:.0f} s)")
    for run in results["runs"]:
        final = run["final"]
        print(f"  {run['name']:<24} gold {final['gold_reward']:+.3f}  kl {final['kl']:7.3f}  "
              f"({run['cost']['wall_seconds']:.0f} s)")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
