#!/usr/bin/env python3
"""How much the evaluation's numbers depend on the forest's random seed: `risk evaluate` on synthetic sets with
the batch model fitted under several seeds.

    python examples/forest_seeds.py [--seeds 0 1 2] [--sets 7 11] [--out build/forest-seeds]   # about 4 minutes

For each set seed it generates a synthetic set of scale 1 (`data/synthetic.py`), then evaluates its test trace
(`risk.evaluate.evaluate`, the README's settings) with a forest fitted on its train file under each forest
seed, and prints one row per pair and the spread of each column. The committed sample (`data/synthetic`) is
evaluated too.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from risk.evaluate import evaluate
from risk.traces import read_trace

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = ("auroc", "tpr_at_fpr_1pct", "tpr_at_fpr_3pct", "attack_sessions_stopped", "benign_sessions_interrupted")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="forest seeds")
    parser.add_argument("--sets", type=int, nargs="+", default=[7, 11], help="seeds of the synthetic sets")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "forest-seeds")
    args = parser.parse_args(argv)

    folders = {"sample": ROOT / "data" / "synthetic"}
    for seed in args.sets:
        folder = args.out / f"set-{seed}"
        subprocess.run([sys.executable, str(ROOT / "data" / "synthetic.py"), "--out", str(folder), "--seed",
                        str(seed), "--scale", "1"], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        folders[f"scale 1, seed {seed}"] = folder

    print(f"| data | forest seed | {' | '.join(COLUMNS)} |")
    print("|---|---|" + "---|" * len(COLUMNS))
    for name, folder in folders.items():
        test, train = list(read_trace(folder / "test.jsonl")), list(read_trace(folder / "train.jsonl"))
        rows = [evaluate(test, train, seed=seed) for seed in args.seeds]
        for seed, found in zip(args.seeds, rows, strict=True):
            print(f"| {name} | {seed} | " + " | ".join(f"{found[c]:.2f}" for c in COLUMNS) + " |", flush=True)
        spread = [f"{min(r[c] for r in rows):.2f} to {max(r[c] for r in rows):.2f}" for c in COLUMNS]
        print(f"| {name} | all | {' | '.join(spread)} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
