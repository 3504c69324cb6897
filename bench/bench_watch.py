"""What zero-code interception costs: an intercepted event inside `guard.watch()`, and the audit hook while no
watch is active. Every ratio compares numbers measured in this run.

* Intercepted: `open()` + `read()` of a small allowed file inside a watch against the same call outside it
  (same process, hook installed), and `open(..., "w")` of an allowed file (a snapshot for rollback each
  time) against the same write outside. `guard.check` of the same action is timed too, so the watch's own
  share (hook dispatch, frame walk, resource building) is the difference. The guard is pure policy
  (`model=None, online=False`), mode BLOCK, SQLite audit in a temporary folder: every intercepted event
  appends and commits one audit record.
* Inactive hook: two fresh child processes import the same modules; one adds the audit hook, the other does
  not. Each times `sys.audit` of an event nobody handles (the bare per-event cost) and `open()` + `read()`.
  Children alternate over rounds; the table shows the median of their p50s.

Usage: python bench/bench_watch.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import measure, summarize

from risk import ActionType, Guard
from risk.integrations.watch import install


@dataclass(frozen=True)
class Sizes:
    rounds: int
    intercepted_calls: int  # per round and row; tens of µs each (an audit commit)
    child_rounds: int
    child_calls: int  # per child; around a microsecond each


FULL = Sizes(rounds=5, intercepted_calls=2_000, child_rounds=5, child_calls=200_000)
QUICK = Sizes(rounds=2, intercepted_calls=200, child_rounds=2, child_calls=20_000)


def read(path: Path) -> None:
    with open(path, "rb") as f:
        f.read()


def write(path: Path) -> None:
    with open(path, "wb") as f:
        f.write(b"x" * 64)


def intercepted(sizes: Sizes) -> dict[str, Any]:
    install()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data, out = folder / "data.txt", folder / "out.txt"
        data.write_bytes(b"x" * 64)
        write(out)
        guard = Guard(
            allowed_action_types=[ActionType.FILE_READ, ActionType.FILE_WRITE],
            allowed_resources=[f"{folder}/*"],
            model=None,
            online=False,
            audit=f"sqlite:///{folder}/audit.db",
            home=folder / "home",
        )
        rows: dict[str, list[int]] = {name: [] for name in ROWS}
        n = sizes.intercepted_calls
        for round_ in range(sizes.rounds):
            order = ROWS if round_ % 2 == 0 else ROWS[::-1]
            for name in order:
                if name == "read, no watch":
                    rows[name] += measure(lambda: read(data), n)
                elif name == "read, inside watch":
                    with guard.watch():
                        rows[name] += measure(lambda: read(data), n)
                elif name == "guard.check FILE_READ":
                    rows[name] += measure(lambda: guard.check(ActionType.FILE_READ, str(data)), n)
                elif name == "write, no watch":
                    rows[name] += measure(lambda: write(out), n)
                elif name == "write, inside watch":
                    with guard.watch():
                        rows[name] += measure(lambda: write(out), n)
        records = guard.audit.head().count
        guard.close()
    # One policy record, then one decision per watched read, per guard.check and per watched write.
    expected = 1 + 3 * sizes.rounds * n
    if records != expected:
        raise SystemExit(f"expected {expected} audit records, found {records}: the watch did not see every event")
    stats = {name: summarize(samples) for name, samples in rows.items()}
    p50 = {name: s["p50_us"] for name, s in stats.items()}
    return {
        "rows": stats,
        "audit_records": records,
        "ratios": {
            "read_inside_vs_outside_p50": p50["read, inside watch"] / p50["read, no watch"],
            "write_inside_vs_outside_p50": p50["write, inside watch"] / p50["write, no watch"],
        },
        "per_event_us": {
            "read_added_p50": p50["read, inside watch"] - p50["read, no watch"],
            "read_added_beyond_check_p50": p50["read, inside watch"]
            - p50["read, no watch"]
            - p50["guard.check FILE_READ"],
            "write_added_p50": p50["write, inside watch"] - p50["write, no watch"],
        },
    }


ROWS = ("read, no watch", "read, inside watch", "guard.check FILE_READ", "write, no watch", "write, inside watch")


def child(hooked: bool, calls: int) -> None:
    """Run in a fresh process: time events with the hook added (or not) and print the p50s as JSON."""
    if hooked:
        install()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.txt"
        data.write_bytes(b"x" * 64)
        event = summarize(measure(lambda: sys.audit("bench.unhandled", 1), calls))
        opened = summarize(measure(lambda: read(data), calls // 10))
    print(json.dumps({"audit_event": event["p50_us"], "open_read": opened["p50_us"]}))


def inactive(sizes: Sizes) -> dict[str, Any]:
    found: dict[str, dict[str, list[float]]] = {
        kind: {"audit_event": [], "open_read": []} for kind in ("hooked", "plain")
    }
    for round_ in range(sizes.child_rounds):
        kinds = ("hooked", "plain") if round_ % 2 == 0 else ("plain", "hooked")
        for kind in kinds:
            command = [sys.executable, __file__, "--child", kind, "--calls", str(sizes.child_calls)]
            result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
            for key, value in result.items():
                found[kind][key].append(value)
    median = {kind: {key: statistics.median(v) for key, v in rows.items()} for kind, rows in found.items()}
    return {
        "p50_us": median,
        "ratios": {key: median["hooked"][key] / median["plain"][key] for key in median["plain"]},
        "added_ns": {key: (median["hooked"][key] - median["plain"][key]) * 1000 for key in median["plain"]},
    }


def run(sizes: Sizes) -> dict[str, Any]:
    return {
        "intercepted": intercepted(sizes),
        "inactive_hook": inactive(sizes),
        "platform": {"python": platform.python_version(), "machine": platform.machine()},
    }


def print_table(data: dict[str, Any]) -> None:
    hot = data["intercepted"]
    print(f"{'intercepted (same process)':<34}{'p50 µs':>10}{'p99 µs':>10}{'mean µs':>10}{'calls':>8}")
    for name in ROWS:
        s = hot["rows"][name]
        print(f"{name:<34}{s['p50_us']:>10.1f}{s['p99_us']:>10.1f}{s['mean_us']:>10.1f}{int(s['n']):>8}")
    ratios, added = hot["ratios"], hot["per_event_us"]
    print(
        f"read inside / outside watch: {ratios['read_inside_vs_outside_p50']:.1f}x "
        f"(+{added['read_added_p50']:.1f} µs per event, of which "
        f"{added['read_added_beyond_check_p50']:.1f} µs beyond guard.check)"
    )
    print(
        f"write inside / outside watch: {ratios['write_inside_vs_outside_p50']:.1f}x "
        f"(+{added['write_added_p50']:.1f} µs per event, snapshot included)"
    )
    print()
    cold = data["inactive_hook"]
    print(f"{'no watch active (fresh processes)':<34}{'hooked µs':>12}{'no hook µs':>12}{'ratio':>8}{'added ns':>10}")
    for key, label in (("audit_event", "sys.audit, unhandled event"), ("open_read", "open() + read()")):
        hooked, plain = cold["p50_us"]["hooked"][key], cold["p50_us"]["plain"][key]
        print(f"{label:<34}{hooked:>12.3f}{plain:>12.3f}{cold['ratios'][key]:>8.2f}{cold['added_ns'][key]:>10.0f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smoke test: few samples, a few seconds")
    parser.add_argument("--json", action="store_true", help="print one JSON object with every number")
    parser.add_argument("--child", choices=("hooked", "plain"), help=argparse.SUPPRESS)
    parser.add_argument("--calls", type=int, default=FULL.child_calls, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child == "hooked", args.calls)
        return 0
    data = run(QUICK if args.quick else FULL)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print_table(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
