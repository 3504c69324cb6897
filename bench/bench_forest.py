"""CompiledForest against sklearn's IsolationForest.score_samples, measured in one run so the ratios survive a
noisy machine.

The forest: n_estimators=100, max_samples=256, 20 standard-normal features, random_state=0. The script first
checks that both give the same scores (to 1e-9) on every query row, then times

* one row: `CompiledForest.score_one(row)` against `IsolationForest.score_samples(row[None])`, in alternating
  rounds, each call timed on its own with `time.perf_counter_ns`;
* a batch: `CompiledForest.score_many(X)` against `IsolationForest.score_samples(X)` on 10,000 rows.

Usage: python bench/bench_forest.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import sklearn
from common import summarize
from sklearn.ensemble import IsolationForest

from risk.scoring.forest import CompiledForest

N_FEATURES = 20
BATCH_ROWS = 10_000
TOLERANCE = 1e-9


@dataclass(frozen=True)
class Sizes:
    rounds: int
    compiled_calls: int  # per round; tens of µs each
    sklearn_calls: int  # per round; milliseconds each
    batch_repeats: int  # per round


FULL = Sizes(rounds=3, compiled_calls=10_000, sklearn_calls=300, batch_repeats=3)
QUICK = Sizes(rounds=2, compiled_calls=1_000, sklearn_calls=30, batch_repeats=1)


def time_rows(call: Callable[[np.ndarray], object], rows: np.ndarray, n: int) -> list[int]:
    samples = [0] * n
    clock = time.perf_counter_ns
    for i in range(n):
        row = rows[i % len(rows)]
        start = clock()
        call(row)
        samples[i] = clock() - start
    return samples


def time_batch(call: Callable[[np.ndarray], object], rows: np.ndarray, repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        call(rows)
        seconds.append(time.perf_counter() - start)
    return seconds


def run(sizes: Sizes) -> dict[str, object]:
    rng = np.random.default_rng(0)
    forest = IsolationForest(n_estimators=100, max_samples=256, random_state=0).fit(
        rng.normal(size=(20_000, N_FEATURES))
    )
    compiled = CompiledForest.from_sklearn(forest)
    # Mostly ordinary rows, one in ten far out, so traversals end at shallow and deep leaves alike.
    queries = rng.normal(size=(BATCH_ROWS, N_FEATURES))
    queries[::10] *= 4.0

    expected = forest.score_samples(queries)
    many_error = float(np.abs(compiled.score_many(queries) - expected).max())
    one_error = float(max(abs(compiled.score_one(row) - e) for row, e in zip(queries, expected, strict=True)))
    if max(many_error, one_error) > TOLERANCE:
        raise SystemExit(f"scores differ from sklearn: score_one by {one_error}, score_many by {many_error}")

    compiled_ns: list[int] = []
    sklearn_ns: list[int] = []
    floor_ns: list[int] = []
    compiled_s: list[float] = []
    sklearn_s: list[float] = []
    for _ in range(sizes.rounds):
        floor_ns += time_rows(lambda row: None, queries, sizes.compiled_calls)
        compiled_ns += time_rows(compiled.score_one, queries, sizes.compiled_calls)
        sklearn_ns += time_rows(lambda row: forest.score_samples(row[None]), queries, sizes.sklearn_calls)
        compiled_s += time_batch(compiled.score_many, queries, sizes.batch_repeats)
        sklearn_s += time_batch(forest.score_samples, queries, sizes.batch_repeats)

    one = {"compiled": summarize(compiled_ns), "sklearn": summarize(sklearn_ns), "timer_floor": summarize(floor_ns)}
    batch = {
        "compiled_rows_per_s": BATCH_ROWS / statistics.median(compiled_s),
        "sklearn_rows_per_s": BATCH_ROWS / statistics.median(sklearn_s),
    }
    return {
        "forest": {
            "n_estimators": compiled.n_estimators,
            "max_samples": 256,
            "n_features": N_FEATURES,
            "nodes": len(compiled.first_child_),
            "max_depth": compiled.max_depth_,
        },
        "max_abs_error": {"score_one": one_error, "score_many": many_error},
        "score_one": one,
        "score_many": batch,
        "ratios": {
            "score_one_p50": one["sklearn"]["p50_us"] / one["compiled"]["p50_us"],
            "score_one_p99": one["sklearn"]["p99_us"] / one["compiled"]["p99_us"],
            "score_many": batch["compiled_rows_per_s"] / batch["sklearn_rows_per_s"],
        },
        "platform": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "scikit-learn": sklearn.__version__,
            "machine": platform.machine(),
        },
    }


def print_table(data: dict[str, object]) -> None:
    forest, errors = data["forest"], data["max_abs_error"]
    one, batch, ratios = data["score_one"], data["score_many"], data["ratios"]
    assert isinstance(forest, dict) and isinstance(errors, dict)
    assert isinstance(one, dict) and isinstance(batch, dict) and isinstance(ratios, dict)
    print(
        f"forest: {forest['n_estimators']} trees, max_samples {forest['max_samples']}, {forest['n_features']} "
        f"features, {forest['nodes']} nodes, depth <= {forest['max_depth']}"
    )
    print(f"max |compiled - sklearn|: score_one {errors['score_one']:.2e}, score_many {errors['score_many']:.2e}")
    print()
    print(f"{'one row':<34}{'p50 µs':>10}{'p99 µs':>10}{'mean µs':>10}{'calls':>8}")
    for key, label in [
        ("compiled", "CompiledForest.score_one"),
        ("sklearn", "IsolationForest.score_samples"),
        ("timer_floor", "timer floor (empty call)"),
    ]:
        s = one[key]
        print(f"{label:<34}{s['p50_us']:>10.1f}{s['p99_us']:>10.1f}{s['mean_us']:>10.1f}{int(s['n']):>8}")
    print(f"sklearn / compiled: p50 {ratios['score_one_p50']:.0f}x, p99 {ratios['score_one_p99']:.0f}x")
    print()
    print(f"batch of {BATCH_ROWS:,} rows (median)")
    print(f"{'CompiledForest.score_many':<34}{batch['compiled_rows_per_s']:>12,.0f} rows/s")
    print(f"{'IsolationForest.score_samples':<34}{batch['sklearn_rows_per_s']:>12,.0f} rows/s")
    print(f"compiled / sklearn: {ratios['score_many']:.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smoke test: few samples, a few seconds")
    parser.add_argument("--json", action="store_true", help="print one JSON object with every number")
    args = parser.parse_args(argv)
    data = run(QUICK if args.quick else FULL)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print_table(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
