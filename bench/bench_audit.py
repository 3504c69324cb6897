"""The SQLite audit trail under a steady stream of appends: how long its write-ahead log grows and what each
append costs, with the background checkpoint restarting the log past its limit and, as the baseline in the
same run, with passive checkpoints only (what the store did before).

Each configuration opens a fresh store in a temporary folder and appends decision-sized records (about 1 KB
of JSON) at a stream's pace: a 0.5 ms pause after every 10 appends, so checkpoint rounds fall between them.
The order of the configurations reverses every round; the table shows the median over the rounds.

Usage: python bench/bench_audit.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from common import percentile

import risk.audit.sqlite as sqlite_store
from risk.audit.sqlite import SQLiteAuditStore

CONFIGS = {"restart": sqlite_store.WAL_LIMIT_BYTES, "passive only": float("inf")}
REASON = {"code": "behavior_model", "message": "unusual for this agent (0.12): rate_1m=1.20 (benign: 2.0% at or above)",
          "weight": 0.12, "violation": False}  # fmt: skip


def body(i: int) -> dict[str, Any]:
    return {
        "record_id": os.urandom(16).hex(), "ts": "2026-11-26T09:00:00.000000+00:00", "kind": "decision",
        "agent_id": f"agent-{i % 7}", "session_id": f"s-{i // 50}", "action_id": os.urandom(16).hex(),
        "action_type": "database_query", "resource": "data.deidentified.claims",
        "resource_normalized": "data.deidentified.claims", "payload_digest": "a" * 64, "risk_score": 0.12,
        "reasons": [REASON] * 3, "decision": "allow", "outcome": "allowed", "mode": "alert",
        "policy_hash": "b" * 64, "model_version": "rules-1+default-5+online-hst10x6",
    }  # fmt: skip


def stream(limit: float, appends: int) -> dict[str, float]:
    """Append `appends` records at a stream's pace with the WAL limit `limit`; latencies and the log's size."""
    sqlite_store.WAL_LIMIT_BYTES = limit  # type: ignore[assignment]
    with tempfile.TemporaryDirectory(prefix="risk-bench-audit-") as home:
        store = SQLiteAuditStore(f"sqlite:///{home}/audit.db")
        wal = Path(f"{home}/audit.db-wal")
        samples, largest = [], 0
        try:
            for i in range(appends):
                record = body(i)
                start = time.perf_counter_ns()
                store.append(record)
                samples.append(time.perf_counter_ns() - start)
                if i % 10 == 9:
                    largest = max(largest, wal.stat().st_size)
                    time.sleep(0.0005)
            if store.head().count != appends:
                raise SystemExit("benchmark setup is wrong: the store does not hold every record appended")
        finally:
            store.close()
    samples.sort()
    return {
        "p50_us": percentile(samples, 0.50) / 1000,
        "p99_us": percentile(samples, 0.99) / 1000,
        "p999_us": percentile(samples, 0.999) / 1000,
        "max_ms": samples[-1] / 1e6,
        "wal_max_mb": largest / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="8,000 appends, 1 round: a smoke test")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    appends, rounds = (8_000, 1) if args.quick else (20_000, 2)
    default_limit = sqlite_store.WAL_LIMIT_BYTES
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in CONFIGS}
    for r in range(rounds):
        order = list(CONFIGS) if r % 2 == 0 else list(reversed(CONFIGS))
        for name in order:
            runs[name].append(stream(CONFIGS[name], appends))
    sqlite_store.WAL_LIMIT_BYTES = default_limit
    table = {name: {stat: statistics.median(run[stat] for run in rs) for stat in rs[0]} for name, rs in runs.items()}
    ratio = table["passive only"]["wal_max_mb"] / max(table["restart"]["wal_max_mb"], 1e-9)
    if args.json:
        print(json.dumps({"appends": appends, "rounds": rounds, "results": table, "wal_ratio": ratio}))
        return
    print(f"SQLite audit, {appends:,} appends a round at a stream's pace, {rounds} round(s); WAL limit "
          f"{default_limit / 2**20:g} MiB")  # fmt: skip
    print(f"{'configuration':16s} {'p50 µs':>8s} {'p99 µs':>8s} {'p99.9 µs':>9s} {'max ms':>8s} {'WAL max MB':>11s}")
    for name, row in table.items():
        print(f"{name:16s} {row['p50_us']:8.1f} {row['p99_us']:8.1f} {row['p999_us']:9.1f} {row['max_ms']:8.1f} "
              f"{row['wal_max_mb']:11.1f}")  # fmt: skip
    print(f"the log grows {ratio:.1f}x larger with passive checkpoints only")


if __name__ == "__main__":
    main()
