"""Guard.check latency against two baselines, measured in one run so the ratios survive a noisy machine.

Systems, all with the same allow/block patterns:

* guard.check: a Guard scoring by the rules alone (model=None, online=False; bench_decision.py times the full
  decision with the behavioral models) with the SQLite audit trail ON, in a fresh
  temporary directory; allow path and deny path (mode BLOCK, so the agent is never paused).
* policy match: `readings` + `CompiledPolicy.violations`, the pattern-matching part of guard.check alone.
* naive fnmatch: one `fnmatch.fnmatch` per pattern, what a naive SDK does.
* vaultak 0.7.0 `VaultakMonitor._intercept`, installed at run time into bench/.venv-vaultak/ (git-ignored),
  its backend pointed at a closed local port so its per-call POST thread fails fast.

Usage: python bench/bench_guard.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import fnmatch
import gc
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from common import (
    ALLOW_RESOURCE,
    ALLOWED,
    BLOCKED,
    DENY_RESOURCE,
    DRAIN_TIMEOUT_S,
    PAYLOAD,
    RATE_LIMIT,
    VAULTAK_HISTORY,
    VAULTAK_VERSION,
    VENDOR_DIR,
    closed_port,
    describe,
    ensure_vaultak,
    fill_vaultak_history,
    foreign_threads,
    keep_loopback_off_proxies,
    measure,
    new_vaultak_monitor,
    speedup,
    summarize,
    wait_for_threads,
)

from risk import Guard
from risk.actions import ActionType, KillSwitchMode
from risk.policy import CompiledPolicy
from risk.resources import readings

ALLOWED_TYPES = [ActionType.DATABASE_QUERY, ActionType.FILE_READ]
TARGET_SPEEDUP = 5.0


@dataclass(frozen=True)
class Sizes:
    rounds: int
    slow: int  # samples per phase for guard.check and vaultak (hundreds of µs per call)
    fast: int  # samples per phase for the matchers (a few µs per call)
    warmup_slow: int
    warmup_fast: int


FULL = Sizes(rounds=3, slow=3000, fast=20000, warmup_slow=300, warmup_fast=2000)
QUICK = Sizes(rounds=2, slow=300, fast=2000, warmup_slow=50, warmup_fast=200)


@dataclass(frozen=True)
class Phase:
    key: str
    label: str
    call: Callable[[], object]
    slow: bool


def naive_allowed(resource: str) -> bool:
    for pattern in BLOCKED:
        if fnmatch.fnmatch(resource, pattern):
            return False
    return any(fnmatch.fnmatch(resource, pattern) for pattern in ALLOWED)


def check_behaviour(guard: Guard, monitor: Any, policy: CompiledPolicy) -> None:
    """Fail before timing anything if a system does not decide what the benchmark claims it decides."""
    allow = guard.check(ActionType.DATABASE_QUERY, ALLOW_RESOURCE, PAYLOAD)
    deny = guard.check(ActionType.DATABASE_QUERY, DENY_RESOURCE, PAYLOAD)
    problems = []
    if not allow.allowed:
        problems.append(f"guard denied the allow path: {[r.code for r in allow.reasons]}")
    if deny.allowed or "resource_blocked" not in {r.code for r in deny.reasons}:
        problems.append(f"guard did not block the deny path: {deny.outcome} {[r.code for r in deny.reasons]}")
    if guard.status().status.value != "running":
        problems.append("the deny path paused the agent; the benchmark needs mode=BLOCK")
    if policy.violations(ActionType.DATABASE_QUERY, readings(ALLOW_RESOURCE)):
        problems.append("policy match flags the allow resource")
    if "resource_blocked" not in {
        r.code for r in policy.violations(ActionType.DATABASE_QUERY, readings(DENY_RESOURCE))
    }:
        problems.append("policy match does not block the deny resource")
    if not naive_allowed(ALLOW_RESOURCE) or naive_allowed(DENY_RESOURCE):
        problems.append("naive fnmatch decides differently")
    if monitor._intercept("file_read", ALLOW_RESOURCE, PAYLOAD) != "ALLOW":
        problems.append("vaultak does not allow the allow path")
    if monitor._intercept("file_read", DENY_RESOURCE, PAYLOAD) != "BLOCK":
        problems.append("vaultak does not block the deny path")
    if problems:
        raise SystemExit("benchmark setup is wrong:\n  " + "\n  ".join(problems))


def run(sizes: Sizes, workdir: str) -> dict[str, Any]:
    started = time.perf_counter()
    monitor_class = ensure_vaultak()
    keep_loopback_off_proxies()
    baseline_threads = foreign_threads()
    port = closed_port()

    guard = Guard(
        agent_id="bench",
        allowed_action_types=list(ALLOWED_TYPES),
        allowed_resources=ALLOWED,
        blocked_resources=BLOCKED,
        max_risk_score=0.5,
        max_actions_per_minute=RATE_LIMIT,
        mode=KillSwitchMode.BLOCK,
        audit=f"sqlite:///{workdir}/audit.db",
        home=workdir,
        model=None,
        online=False,
    )
    # The same validated policy the Guard compiled, so the matcher comparison uses exactly its patterns.
    policy = CompiledPolicy(guard.policy)
    monitor = new_vaultak_monitor(monitor_class, port)
    check_behaviour(guard, monitor, policy)
    fill_vaultak_history(monitor)
    wait_for_threads(baseline_threads)

    query, check, intercept = ActionType.DATABASE_QUERY, guard.check, monitor._intercept
    phases = [
        Phase("guard_allow", "guard.check allow (audit on)", lambda: check(query, ALLOW_RESOURCE, PAYLOAD), True),
        Phase(
            "vaultak_allow", "vaultak _intercept allow", lambda: intercept("file_read", ALLOW_RESOURCE, PAYLOAD), True
        ),
        Phase("guard_deny", "guard.check deny (audit on)", lambda: check(query, DENY_RESOURCE, PAYLOAD), True),
        Phase(
            "vaultak_block", "vaultak _intercept block", lambda: intercept("file_read", DENY_RESOURCE, PAYLOAD), True
        ),
        Phase("match_allow", "policy match allow", lambda: policy.violations(query, readings(ALLOW_RESOURCE)), False),
        Phase("naive_allow", "naive fnmatch allow", lambda: naive_allowed(ALLOW_RESOURCE), False),
        Phase("match_deny", "policy match deny", lambda: policy.violations(query, readings(DENY_RESOURCE)), False),
        Phase("naive_deny", "naive fnmatch deny", lambda: naive_allowed(DENY_RESOURCE), False),
        Phase("timer_floor", "timer floor (empty call)", lambda: None, False),
    ]

    rounds: list[dict[str, dict[str, float]]] = []
    drain_timeouts = 0
    for index in range(sizes.rounds):
        # Alternate the order so drift on the machine (thermal, neighbours) does not always favour one side.
        order = phases if index % 2 == 0 else phases[::-1]
        stats: dict[str, dict[str, float]] = {}
        for phase in order:
            n, warmup = (sizes.slow, sizes.warmup_slow) if phase.slow else (sizes.fast, sizes.warmup_fast)
            for _ in range(warmup):
                phase.call()
            # vaultak's POST threads from the previous phase or the warm-up would compete for the GIL.
            if wait_for_threads(baseline_threads) < 0:
                drain_timeouts += 1
            gc.collect()
            stats[phase.key] = summarize(measure(phase.call, n))
        rounds.append(stats)
    if wait_for_threads(baseline_threads) < 0:
        drain_timeouts += 1

    # The median over rounds of each statistic: one disturbed round cannot move it.
    results = {
        phase.key: {
            "label": phase.label,
            **{
                stat: statistics.median(r[phase.key][stat] for r in rounds)
                for stat in ("p50_us", "p99_us", "mean_us", "n")
            },
        }
        for phase in phases
    }
    audit_records = guard.audit.head().count
    guard.close()
    return {
        "results": results,
        "rounds": rounds,
        "audit_records_written": audit_records,
        "drain_timeouts": drain_timeouts,
        "runtime_s": time.perf_counter() - started,
    }


def analyse(run_data: dict[str, Any], sizes: Sizes) -> dict[str, Any]:
    results = run_data["results"]
    pairs = {
        "guard_allow_vs_vaultak_allow": ("guard_allow", "vaultak_allow"),
        "guard_deny_vs_vaultak_block": ("guard_deny", "vaultak_block"),
        "match_allow_vs_naive_allow": ("match_allow", "naive_allow"),
        "match_deny_vs_naive_deny": ("match_deny", "naive_deny"),
    }
    ratios = {
        name: {stat: speedup(results, ours, theirs, stat) for stat in ("p50_us", "p99_us", "mean_us")}
        for name, (ours, theirs) in pairs.items()
    }
    per_round = [r["vaultak_allow"]["p50_us"] / r["guard_allow"]["p50_us"] for r in run_data["rounds"]]
    achieved = ratios["guard_allow_vs_vaultak_allow"]["p50_us"]
    return {
        "ratios": ratios,
        "target": {
            "statement": "guard.check allow p50 (policy-only, audit on) at least "
            f"{TARGET_SPEEDUP:g}x faster than vaultak allow p50",
            "required_speedup": TARGET_SPEEDUP,
            "achieved_p50_speedup": achieved,
            "achieved_p99_speedup": ratios["guard_allow_vs_vaultak_allow"]["p99_us"],
            "per_round_p50_speedup": per_round,
            "met": achieved >= TARGET_SPEEDUP,
        },
        "config": {
            "rounds": sizes.rounds,
            "samples_slow": sizes.slow,
            "samples_fast": sizes.fast,
            "warmup_slow": sizes.warmup_slow,
            "warmup_fast": sizes.warmup_fast,
            "allowed_action_types": [t.value for t in ALLOWED_TYPES],
            "allowed_resources": ALLOWED,
            "blocked_resources": BLOCKED,
            "allow_resource": ALLOW_RESOURCE,
            "deny_resource": DENY_RESOURCE,
            "payload": PAYLOAD,
            "vaultak_version": VAULTAK_VERSION,
            "vaultak_dir": str(VENDOR_DIR),
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "cpus": os.cpu_count(),
        },
        "notes": [
            "vaultak's numbers include the thread it starts on every call to POST the action to its backend "
            "(here a closed port); that is what its SDK does on every action",
            f"vaultak was measured in steady state: its {VAULTAK_HISTORY}-entry action history, which its rate "
            "check scans on every call, was filled before the first round",
            "guard.check writes and commits one hash-chained SQLite audit record per call (WAL, synchronous=NORMAL)",
            "the policy match includes resource normalization (several readings per resource); naive fnmatch does none",
            "every number includes the per-call timer overhead shown as 'timer floor'",
        ],
    }


def print_report(data: dict[str, Any]) -> None:
    results, ratios, target = data["results"], data["ratios"], data["target"]
    config = data["config"]
    print(
        f"Guard.check benchmark: {config['rounds']} rounds, median of rounds; python {config['python']}, "
        f"sqlite {config['sqlite']}, {config['cpus']} cpus"
    )
    print(f"{'system':34s} {'p50 µs':>10s} {'p99 µs':>10s} {'mean µs':>10s} {'n/round':>9s}")
    for row in results.values():
        print(
            f"{row['label']:34s} {row['p50_us']:10.1f} {row['p99_us']:10.1f} {row['mean_us']:10.1f} {int(row['n']):9d}"
        )
    print()
    lines = [
        ("guard.check allow", "vaultak allow", "guard_allow_vs_vaultak_allow"),
        ("guard.check deny", "vaultak block", "guard_deny_vs_vaultak_block"),
        ("policy match allow", "naive fnmatch allow", "match_allow_vs_naive_allow"),
        ("policy match deny", "naive fnmatch deny", "match_deny_vs_naive_deny"),
    ]
    for ours, theirs, key in lines:
        for stat in ("p50", "p99"):
            print(f"{ours} {stat} vs {theirs} {stat}: {describe(ratios[key][f'{stat}_us'])}")
    print()
    verdict = "MET" if target["met"] else "NOT MET"
    spread = ", ".join(f"{x:.2f}x" for x in target["per_round_p50_speedup"])
    print(f"target: {target['statement']}: {verdict} ({target['achieved_p50_speedup']:.2f}x; per round: {spread})")
    print(f"        at p99: {describe(target['achieved_p99_speedup'])}")
    print()
    for note in data["notes"]:
        print(f"note: {note}")
    print(f"audit records written: {data['audit_records_written']}; runtime {data['runtime_s']:.1f} s")
    if data["drain_timeouts"]:
        print(f"warning: vaultak's POST threads outlived the {DRAIN_TIMEOUT_S:g} s wait {data['drain_timeouts']} times")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--quick", action="store_true", help="few samples and 2 rounds: a smoke test, not a measurement"
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object with every number instead of a table"
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory(prefix="risk-bench-") as workdir:
        run_data = run(sizes, workdir)
    data = {**run_data, **analyse(run_data, sizes), "quick": args.quick}
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print_report(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
