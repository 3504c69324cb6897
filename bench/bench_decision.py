"""The full decision (policy, features, forest, online model, calibration, audit) on a realistic stream, against
sklearn's single-row IsolationForest and vaultak, plus offline batch scoring throughput; one run, so the ratios
survive a noisy machine.

Systems:

* guard.check on a replayed stream: every round builds a fresh Guard (mode ALERT, max_risk_score 0.5, SQLite
  audit in a temporary directory, a hand-moved clock), warms its profiles on data/synthetic/train.jsonl (check and
  record_outcome for each action), then times guard.check on each action of data/synthetic/test.jsonl at its own
  timestamp. Three configurations: the shipped default model plus the online model, the default model alone, and
  policy only (rules, no behavioral model).
* sklearn `IsolationForest.score_samples` on one row, with the default model card's n_estimators and max_samples,
  fitted on the training rows of data/synthetic/train.jsonl; `CompiledForest.score_one` on the same row of the
  same forest compiled, and of the shipped default model.
* vaultak 0.7.0 `VaultakMonitor._intercept` allow path, set up and measured exactly as in bench_guard.py.
* batch scoring of data/synthetic/test.jsonl offline: features (risk.train.replay), the forest
  (`CompiledForest.score_many`), and the full risk score (`risk.train.score_trace`: features, rules, forest,
  calibration).

Usage: python bench/bench_decision.py [--quick] [--json] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import platform
import pstats
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
from common import (
    ALLOW_RESOURCE,
    BLOCKED,
    PAYLOAD,
    VAULTAK_HISTORY,
    VAULTAK_VERSION,
    closed_port,
    describe,
    ensure_vaultak,
    fill_vaultak_history,
    foreign_threads,
    keep_loopback_off_proxies,
    measure,
    new_vaultak_monitor,
    percentile,
    summarize,
    wait_for_threads,
)
from sklearn.ensemble import IsolationForest

import risk
from risk import Guard
from risk.actions import Decision, KillSwitchMode
from risk.features import model_input
from risk.resources import _lexical_readings  # the private cache, to clear it
from risk.scoring.forest import CompiledForest
from risk.scoring.model import DEFAULT_MODEL, BehaviorModel, load_model, resolve_model
from risk.scoring.rules import _text_signals, resource_signals  # private caches, to clear them
from risk.traces import TraceAction, read_trace
from risk.train import replay, score_trace, training_rows

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "data" / "synthetic" / "train.jsonl"
TEST = ROOT / "data" / "synthetic" / "test.jsonl"
MAX_RISK_SCORE = 0.5
MODE = KillSwitchMode.ALERT  # nothing is ever paused or blocked: every action of the stream runs

TARGET_P50_US = 100.0
TARGET_P99_US = 300.0
TARGET_VS_SKLEARN = 40.0
TARGET_VS_VAULTAK = 5.0
TARGET_BATCH_RATE = 20_000.0
SCORE_TOLERANCE = 1e-9
BEHAVIOR_REASONS = ("behavior_model", "behavior_online")


@dataclass(frozen=True)
class Sizes:
    rounds: int
    warm_actions: int | None  # train actions each guard is warmed with (None: all of them, the last ones otherwise)
    stream_actions: int | None  # test actions timed per round (None: all of them)
    sklearn: int  # single-row score_samples calls per round (milliseconds each)
    forest: int  # score_one calls per round (tens of µs each)
    vaultak: int
    warmup_sklearn: int
    warmup_forest: int
    warmup_vaultak: int
    batch_passes: int  # whole-trace passes per round for the feature and full batch rates; 4x that for the forest


FULL = Sizes(
    rounds=5,
    warm_actions=None,
    stream_actions=None,
    sklearn=200,
    forest=5000,
    vaultak=3000,
    warmup_sklearn=20,
    warmup_forest=500,
    warmup_vaultak=300,
    batch_passes=5,
)
QUICK = Sizes(
    rounds=2,
    warm_actions=300,
    stream_actions=200,
    sklearn=20,
    forest=500,
    vaultak=300,
    warmup_sklearn=3,
    warmup_forest=50,
    warmup_vaultak=50,
    batch_passes=1,
)


@dataclass(frozen=True)
class GuardConfig:
    key: str
    label: str
    model: str | None
    online: bool


CONFIGS = (
    GuardConfig("check_full", "guard.check policy+model+online", DEFAULT_MODEL, True),
    GuardConfig("check_model", "guard.check policy+model", DEFAULT_MODEL, False),
    GuardConfig("check_policy", "guard.check policy only", None, False),
)
LATENCY_LABELS = {
    **{c.key: c.label for c in CONFIGS},
    "sklearn_row": "sklearn score_samples, 1 row",
    "compiled_row": "CompiledForest.score_one, same forest",
    "default_row": "CompiledForest.score_one, default model",
    "vaultak_allow": "vaultak _intercept allow",
    "timer_floor": "timer floor (empty call)",
}
BATCH_LABELS = {
    "batch_features": "features only (risk.train.replay)",
    "batch_forest": "forest only (CompiledForest.score_many)",
    "batch_full": "full (risk.train.score_trace)",
}

Ready = Callable[[], None]  # called by a phase just before it starts timing


@dataclass(frozen=True)
class Phase:
    key: str
    run: Callable[[Ready], dict[str, Any]]


class ManualClock:
    """The guard's clock, moved by hand to each action's timestamp."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# ---- the decision stream ----------------------------------------------------------------------------------------


def clear_resource_caches() -> None:
    """Forget the caches of risk.resources and risk.rules (readings and rule codes of resources and payloads),
    so that every guard meets the test stream's resources and payloads for the first time, as a new process
    would, whichever configuration ran before it."""
    _lexical_readings.cache_clear()
    resource_signals.cache_clear()
    _text_signals.cache_clear()


def new_guard(config: GuardConfig, directory: str, clock: ManualClock, model: str | BehaviorModel | None) -> Guard:
    return Guard(
        agent_id="bench",
        blocked_resources=BLOCKED,
        max_risk_score=MAX_RISK_SCORE,
        mode=MODE,
        audit=f"sqlite:///{directory}/audit.db",
        home=directory,
        model=model,
        online=config.online,
        clock=clock,
    )


def report_outcome(guard: Guard, decision: Decision, action: TraceAction) -> None:
    """What the agent's tool reports after an allowed action ran (untimed)."""
    if decision.allowed:
        success, rows, size = action.outcome()
        guard.record_outcome(
            decision.action_id,
            success=success,
            error=None if success else "tool failed",
            rows=rows,
            bytes=size,
            agent_id=action.agent_id,
        )


def check(guard: Guard, clock: ManualClock, action: TraceAction) -> Decision:
    clock.now = action.ts
    return guard.check(
        action.action_type, action.resource, action.payload, agent_id=action.agent_id, session_id=action.session_id,
        task=action.task,
    )  # fmt: skip


def warm(guard: Guard, clock: ManualClock, actions: Sequence[TraceAction]) -> None:
    for action in actions:
        report_outcome(guard, check(guard, clock, action), action)


def replay_stream(
    guard: Guard, clock: ManualClock, actions: Sequence[TraceAction], profiler: cProfile.Profile | None = None
) -> tuple[list[int], list[Decision]]:
    """Time guard.check on each action at its own timestamp; report each outcome untimed."""
    timer, samples, decisions = time.perf_counter_ns, [0] * len(actions), []
    for i, action in enumerate(actions):
        clock.now = action.ts
        if profiler is not None:
            profiler.enable()
        start = timer()
        decision = guard.check(
            action.action_type, action.resource, action.payload, agent_id=action.agent_id,
            session_id=action.session_id, task=action.task,
        )  # fmt: skip
        samples[i] = timer() - start
        if profiler is not None:
            profiler.disable()
        decisions.append(decision)
        report_outcome(guard, decision, action)
    return samples, decisions


def stream_phase(
    config: GuardConfig, workdir: str, warm_actions: Sequence[TraceAction], stream: Sequence[TraceAction]
) -> Callable[[Ready], dict[str, Any]]:
    def run(ready: Ready) -> dict[str, Any]:
        directory = tempfile.mkdtemp(prefix=f"{config.key}-", dir=workdir)
        clock = ManualClock()
        clear_resource_caches()
        guard = new_guard(config, directory, clock, config.model)
        try:
            warm(guard, clock, warm_actions)
            ready()
            samples, decisions = replay_stream(guard, clock, stream)
            problems = stream_problems(guard, config, decisions)
            audit_records = guard.audit.head().count
        finally:
            guard.close()
            shutil.rmtree(directory, ignore_errors=True)
        outcomes = Counter(d.outcome.value for d in decisions)
        # How often each behavioral signal was strong enough to be named, to show the models take part.
        named = Counter(r.code for d in decisions for r in d.reasons if r.code in BEHAVIOR_REASONS)
        return {
            **summarize(samples),
            "outcomes": dict(outcomes),
            "behavior_reasons": {code: named[code] for code in BEHAVIOR_REASONS},
            "audit_records": audit_records,
            "problems": problems,
        }

    return run


def stream_problems(guard: Guard, config: GuardConfig, decisions: Sequence[Decision]) -> list[str]:
    """What would make this configuration measure something other than what it claims."""
    problems = []
    expected = ["rules-1"]
    if config.model:
        expected.append(f"{config.model}-")
    if config.online:
        expected.append("online-")
    if not all(part in guard.model_version for part in expected):
        problems.append(f"{config.key}: model version {guard.model_version} lacks {expected}")
    if not all(d.allowed for d in decisions):
        problems.append(f"{config.key}: some actions were denied; mode {MODE.value} should allow every action")
    failed = {r.code for d in decisions for r in d.reasons} & {"model_unavailable", "audit_unavailable"}
    if failed:
        problems.append(f"{config.key}: decisions carry {sorted(failed)}")
    if any(guard.status(agent).status.value != "running" for agent in {d.agent_id for d in decisions}):
        problems.append(f"{config.key}: an agent was paused or terminated")
    return problems


# ---- batch scoring ----------------------------------------------------------------------------------------------


def batch_features(actions: Sequence[TraceAction]) -> np.ndarray:
    """The model's feature matrix of a whole trace, each action against its agent's profile at that moment."""
    return np.asarray([model_input(assessment.features) for _, _, assessment in replay(actions)], dtype=np.float64)


def batch_phase(work: Callable[[], object], n_actions: int, passes: int) -> Callable[[Ready], dict[str, Any]]:
    def run(ready: Ready) -> dict[str, Any]:
        ready()
        seconds = []
        for _ in range(passes):
            clear_resource_caches()  # each pass meets the trace as a new process would
            start = time.perf_counter()
            work()
            seconds.append(time.perf_counter() - start)
        pass_s = statistics.median(seconds)
        return {"actions_per_s": n_actions / pass_s, "pass_ms": pass_s * 1000, "passes": float(passes)}

    return run


def guard_scores(actions: Sequence[TraceAction], model: BehaviorModel, workdir: str) -> list[float]:
    """guard.check's risk scores of the trace, replayed through a fresh guard with the model (no online model,
    as in the batch pipeline) and no warm-up.

    This guard flags nothing (no blocked patterns, threshold 1), so like the batch replay it learns every
    action: a guard learns only actions it did not flag.
    """
    directory = tempfile.mkdtemp(prefix="batch-check-", dir=workdir)
    clock = ManualClock()
    guard = Guard(agent_id="bench", mode=MODE, audit=f"sqlite:///{directory}/audit.db", home=directory, model=model,
                  online=False, clock=clock)  # fmt: skip
    try:
        scores = []
        for action in sorted(actions, key=lambda a: a.ts):
            decision = check(guard, clock, action)
            scores.append(decision.risk_score)
            report_outcome(guard, decision, action)
        return scores
    finally:
        guard.close()
        shutil.rmtree(directory, ignore_errors=True)


# ---- the run ----------------------------------------------------------------------------------------------------


def latency_phase(call: Callable[[], object], n: int, warmup: int) -> Callable[[Ready], dict[str, Any]]:
    def run(ready: Ready) -> dict[str, Any]:
        for _ in range(warmup):
            call()
        ready()
        return summarize(measure(call, n))

    return run


def subset(actions: list[TraceAction], n: int | None, *, last: bool) -> list[TraceAction]:
    if n is None or n >= len(actions):
        return actions
    return actions[-n:] if last else actions[:n]


def working_tree_changes() -> list[str]:
    """Uncommitted changes under risk/ and models/ of the checkout `risk` was imported from, so that a run on
    modified code says so."""
    root = Path(risk.__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "risk", "models"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []  # not a git checkout; the report names where risk came from
    return [line[3:] for line in out.splitlines() if line.strip()]


def run(sizes: Sizes, workdir: str) -> dict[str, Any]:
    started = time.perf_counter()
    train, test = list(read_trace(TRAIN)), list(read_trace(TEST))
    warm_actions = subset(train, sizes.warm_actions, last=True)
    stream = subset(test, sizes.stream_actions, last=False)

    # vaultak, exactly as bench_guard.py sets it up.
    monitor_class = ensure_vaultak()
    keep_loopback_off_proxies()
    baseline_threads = foreign_threads()
    monitor = new_vaultak_monitor(monitor_class, closed_port())
    if monitor._intercept("file_read", ALLOW_RESOURCE, PAYLOAD) != "ALLOW":
        raise SystemExit("benchmark setup is wrong: vaultak does not allow the allow path")
    fill_vaultak_history(monitor)

    # The same forest shape as the shipped default model, fitted by sklearn on the training rows.
    artifact = resolve_model(DEFAULT_MODEL)
    params = json.loads(artifact.with_suffix(".json").read_text())["params"]
    model = load_model(DEFAULT_MODEL)
    X_train = training_rows(train).X
    forest = IsolationForest(
        n_estimators=int(params["n_estimators"]),
        max_samples=min(int(params["max_samples"]), len(X_train)),
        random_state=0,
    ).fit(X_train)
    compiled = CompiledForest.from_sklearn(forest)
    row = X_train[len(X_train) // 2]
    one_row = row.reshape(1, -1)
    problems = []
    try:
        forest_error = float(np.abs(compiled.score_many(X_train) - forest.score_samples(X_train)).max())
        forest_error = max(forest_error, abs(compiled.score_one(row) - float(forest.score_samples(one_row)[0])))
    except Exception as exc:  # a broken CompiledForest must not be timed
        forest_error = float("inf")
        problems.append(f"CompiledForest cannot score sklearn's forest: {exc!r}")
    if SCORE_TOLERANCE < forest_error < float("inf"):
        problems.append(f"CompiledForest disagrees with sklearn's score_samples by up to {forest_error:.3g}")
    if (compiled.n_estimators, compiled.max_depth_) != (model.forest.n_estimators, model.forest.max_depth_):
        problems.append(
            f"the sklearn forest ({compiled.n_estimators} trees, depth {compiled.max_depth_}) is not the default "
            f"model's shape ({model.forest.n_estimators} trees, depth {model.forest.max_depth_})"
        )

    # The batch pipeline must compute what guard.check computes.
    X_test = batch_features(test)
    batch_error = max(
        abs(a - b) for a, b in zip(score_trace(test, model), guard_scores(test, model, workdir), strict=True)
    )
    if batch_error > SCORE_TOLERANCE:
        problems.append(f"batch risk scores differ from guard.check's by up to {batch_error:.3g}")
    if problems:
        raise SystemExit("benchmark setup is wrong:\n  " + "\n  ".join(problems))
    wait_for_threads(baseline_threads)

    intercept, sklearn_score, score_one, default_score_one = (
        monitor._intercept,
        forest.score_samples,
        compiled.score_one,
        model.forest.score_one,
    )
    score_many = model.forest.score_many
    phases = [
        *(Phase(c.key, stream_phase(c, workdir, warm_actions, stream)) for c in CONFIGS),
        Phase("sklearn_row", latency_phase(lambda: sklearn_score(one_row), sizes.sklearn, sizes.warmup_sklearn)),
        Phase("compiled_row", latency_phase(lambda: score_one(row), sizes.forest, sizes.warmup_forest)),
        Phase("default_row", latency_phase(lambda: default_score_one(row), sizes.forest, sizes.warmup_forest)),
        Phase(
            "vaultak_allow",
            latency_phase(lambda: intercept("file_read", ALLOW_RESOURCE, PAYLOAD), sizes.vaultak, sizes.warmup_vaultak),
        ),
        Phase("batch_features", batch_phase(lambda: batch_features(test), len(test), sizes.batch_passes)),
        Phase("batch_forest", batch_phase(lambda: score_many(X_test), len(test), 4 * sizes.batch_passes)),
        Phase("batch_full", batch_phase(lambda: score_trace(test, model), len(test), sizes.batch_passes)),
        Phase("timer_floor", latency_phase(lambda: None, sizes.forest, sizes.warmup_forest)),
    ]

    drain_timeouts = 0

    def ready() -> None:
        nonlocal drain_timeouts
        # vaultak's POST threads from its warm-up (or an earlier phase) would compete for the GIL.
        if wait_for_threads(baseline_threads) < 0:
            drain_timeouts += 1
        gc.collect()

    rounds: list[dict[str, dict[str, Any]]] = []
    for index in range(sizes.rounds):
        # Alternate the order so drift on the machine (thermal, neighbours) does not always favour one side.
        order = phases if index % 2 == 0 else phases[::-1]
        rounds.append({phase.key: phase.run(ready) for phase in order})
    if wait_for_threads(baseline_threads) < 0:
        drain_timeouts += 1

    # The median over rounds of each statistic: one disturbed round cannot move it.
    latency = {
        key: {
            "label": label,
            **{stat: statistics.median(r[key][stat] for r in rounds) for stat in ("p50_us", "p99_us", "mean_us", "n")},
        }
        for key, label in LATENCY_LABELS.items()
    }
    batch = {
        key: {
            "label": label,
            **{stat: statistics.median(r[key][stat] for r in rounds) for stat in ("actions_per_s", "pass_ms")},
            "passes": rounds[0][key]["passes"],
        }
        for key, label in BATCH_LABELS.items()
    }
    stream_problems_seen = sorted({p for r in rounds for c in CONFIGS for p in r[c.key]["problems"]})
    if stream_problems_seen:
        raise SystemExit("benchmark setup is wrong:\n  " + "\n  ".join(stream_problems_seen))
    return {
        "latency": latency,
        "batch": batch,
        "rounds": rounds,
        "stream": {
            "warm_actions": len(warm_actions),
            "stream_actions": len(stream),
            "stream_agents": len({a.agent_id for a in stream}),
            "stream_harmful": sum(a.label == 1 for a in stream),
            "outcomes_full": rounds[0]["check_full"]["outcomes"],
            "behavior_reasons_full": rounds[0]["check_full"]["behavior_reasons"],
        },
        "checks": {
            "compiled_vs_sklearn_max_abs_diff": forest_error,
            "batch_vs_guard_max_abs_diff": batch_error,
        },
        "model": {
            "artifact": str(artifact.relative_to(ROOT)) if artifact.is_relative_to(ROOT) else str(artifact),
            "version": model.model_version,
            "n_estimators": model.forest.n_estimators,
            "max_depth": model.forest.max_depth_,
            "max_samples": int(params["max_samples"]),
            "sklearn_fit_rows": len(X_train),
        },
        "batch_actions": len(test),
        "drain_timeouts": drain_timeouts,
        "runtime_s": time.perf_counter() - started,
    }


def target(
    statement: str, achieved: float, required: float, *, at_most: bool, unit: str, per_round: list[float] | None = None
) -> dict[str, Any]:
    met = achieved <= required if at_most else achieved >= required
    found = {"statement": statement, "achieved": achieved, "required": required, "unit": unit, "met": met}
    return found if per_round is None else {**found, "per_round": per_round}


def analyse(run_data: dict[str, Any], sizes: Sizes) -> dict[str, Any]:
    latency, batch, rounds = run_data["latency"], run_data["batch"], run_data["rounds"]
    full = latency["check_full"]

    def faster(ours: str, theirs: str, stat: str = "p50_us") -> float:
        return float(latency[theirs][stat] / latency[ours][stat])

    def per_round(ours: str, theirs: str) -> list[float]:
        return [r[theirs]["p50_us"] / r[ours]["p50_us"] for r in rounds]

    ratios: dict[str, dict[str, Any]] = {
        "compiled_vs_sklearn_row": {"p50": faster("compiled_row", "sklearn_row")},
        "check_full_vs_sklearn_row": {
            "p50": faster("check_full", "sklearn_row"),
            "per_round_p50": per_round("check_full", "sklearn_row"),
        },
        "check_full_vs_vaultak_allow": {
            "p50": faster("check_full", "vaultak_allow"),
            "p99": faster("check_full", "vaultak_allow", "p99_us"),
            "per_round_p50": per_round("check_full", "vaultak_allow"),
        },
    }
    components = {
        "online_model_us": full["p50_us"] - latency["check_model"]["p50_us"],
        "batch_model_us": latency["check_model"]["p50_us"] - latency["check_policy"]["p50_us"],
        "policy_rules_audit_us": latency["check_policy"]["p50_us"],
    }
    targets = [
        target("full decision p50 <= 100 µs", full["p50_us"], TARGET_P50_US, at_most=True, unit="µs"),
        target("full decision p99 <= 300 µs", full["p99_us"], TARGET_P99_US, at_most=True, unit="µs"),
        target(
            f"full guard.check p50 at least {TARGET_VS_SKLEARN:g}x faster than sklearn score_samples on one row",
            ratios["check_full_vs_sklearn_row"]["p50"],
            TARGET_VS_SKLEARN,
            at_most=False,
            unit="x",
            per_round=ratios["check_full_vs_sklearn_row"]["per_round_p50"],
        ),
        target(
            f"full guard.check p50 at least {TARGET_VS_VAULTAK:g}x faster than vaultak _intercept allow p50",
            ratios["check_full_vs_vaultak_allow"]["p50"],
            TARGET_VS_VAULTAK,
            at_most=False,
            unit="x",
            per_round=ratios["check_full_vs_vaultak_allow"]["per_round_p50"],
        ),
        target(
            f"batch scoring at least {TARGET_BATCH_RATE:,.0f} actions/s (full pipeline)",
            batch["batch_full"]["actions_per_s"],
            TARGET_BATCH_RATE,
            at_most=False,
            unit="actions/s",
        ),
    ]
    model = run_data["model"]
    return {
        "ratios": ratios,
        "components_p50": components,
        "targets": targets,
        "config": {
            "rounds": sizes.rounds,
            "sizes": sizes.__dict__,
            "train_trace": str(TRAIN.relative_to(ROOT)),
            "test_trace": str(TEST.relative_to(ROOT)),
            "mode": MODE.value,
            "max_risk_score": MAX_RISK_SCORE,
            "blocked_resources": BLOCKED,
            "vaultak_version": VAULTAK_VERSION,
            "python": platform.python_version(),
            "numpy": np.__version__,
            "scikit-learn": sklearn.__version__,
            "river": version("river"),
            "sqlite": sqlite3.sqlite_version,
            "cpus": os.cpu_count(),
            "risk_package": str(Path(risk.__file__).resolve().parent),
            "uncommitted_changes": working_tree_changes(),
        },
        "notes": [
            "each round builds every guard afresh and warms it on the train trace (check + record_outcome per "
            "action); only guard.check on the test actions is timed, their outcomes are reported untimed",
            "the caches of resource readings and of resource and payload rule codes are cleared before each guard "
            "and each batch pass, so nothing inherits another's warm caches; every check appends and commits one "
            "SQLite audit record",
            f"sklearn's forest: n_estimators {model['n_estimators']}, max_samples {model['max_samples']} (the "
            f"default model card), fitted on {model['sklearn_fit_rows']} training rows of {TRAIN.name}; "
            "its compiled copy gives the same scores (checked)",
            "component costs are differences of p50s between configurations, not separate measurements",
            f"vaultak: as in bench_guard.py, its {VAULTAK_HISTORY}-entry history filled first, its POST thread "
            "hitting a closed port",
            "batch rates exclude reading the trace file; the full batch scores equal guard.check's risk scores "
            "(model, no online model) on the same trace (checked)",
            "every latency includes the per-call timer overhead shown as 'timer floor'",
        ],
    }


# ---- output -----------------------------------------------------------------------------------------------------


def print_report(data: dict[str, Any]) -> None:
    latency, batch, ratios, config, stream = (
        data["latency"],
        data["batch"],
        data["ratios"],
        data["config"],
        data["stream"],
    )
    print(
        f"Decision benchmark: {config['rounds']} rounds, median of rounds; python {config['python']}, "
        f"numpy {config['numpy']}, scikit-learn {config['scikit-learn']}, river {config['river']}, "
        f"sqlite {config['sqlite']}, {config['cpus']} cpus"
    )
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(stream["outcomes_full"].items()))
    print(
        f"stream: {stream['stream_actions']} actions of {config['test_trace']} ({stream['stream_agents']} agents, "
        f"{stream['stream_harmful']} labelled harmful) after {stream['warm_actions']} warm-up actions of "
        f"{config['train_trace']}; mode {config['mode']}, max_risk_score {config['max_risk_score']}; "
        f"model {data['model']['version']} ({data['model']['n_estimators']} trees, depth {data['model']['max_depth']})"
    )
    named = ", ".join(f"{code} in {n}" for code, n in stream["behavior_reasons_full"].items())
    print(f"full configuration, per round: decisions {outcomes}; reasons named {named}")
    print()
    print(f"{'system':42s} {'p50 µs':>10s} {'p99 µs':>10s} {'mean µs':>10s} {'n/round':>9s}")
    for row in latency.values():
        print(
            f"{row['label']:42s} {row['p50_us']:10.1f} {row['p99_us']:10.1f} {row['mean_us']:10.1f} {int(row['n']):9d}"
        )
    parts = data["components_p50"]
    print(
        f"p50 cost by component: online model {parts['online_model_us']:.1f} µs, batch model (features, forest, "
        f"calibration) {parts['batch_model_us']:.1f} µs, policy + rules + audit {parts['policy_rules_audit_us']:.1f} µs"
    )
    print()
    sklearn_row = "sklearn score_samples (1 row) p50"
    print(f"CompiledForest.score_one p50 vs {sklearn_row}: {describe(ratios['compiled_vs_sklearn_row']['p50'])}")
    print(f"full guard.check p50 vs {sklearn_row}: {describe(ratios['check_full_vs_sklearn_row']['p50'])}")
    vs_vaultak = ratios["check_full_vs_vaultak_allow"]
    print(f"full guard.check p50 vs vaultak allow p50: {describe(vs_vaultak['p50'])}")
    print(f"full guard.check p99 vs vaultak allow p99: {describe(vs_vaultak['p99'])}")
    print()
    print(f"batch scoring of {config['test_trace']} ({data['batch_actions']} actions)")
    print(f"{'pipeline':42s} {'actions/s':>10s} {'ms/pass':>10s} {'passes':>9s}")
    for row in batch.values():
        print(f"{row['label']:42s} {row['actions_per_s']:10,.0f} {row['pass_ms']:10.2f} {int(row['passes']):9d}")
    print()
    for t in data["targets"]:
        if t["unit"] == "x":
            achieved = f"{t['achieved']:.2f}x"
        elif t["unit"] == "actions/s":
            achieved = f"{t['achieved']:,.0f} actions/s"
        else:
            achieved = f"{t['achieved']:.1f} {t['unit']}"
        if "per_round" in t:
            achieved += "; per round: " + ", ".join(f"{x:.2f}x" for x in t["per_round"])
        print(f"target: {t['statement']}: {'MET' if t['met'] else 'NOT MET'} ({achieved})")
    print()
    for note in data["notes"]:
        print(f"note: {note}")
    checks = data["checks"]
    print(
        f"checks: compiled vs sklearn max |diff| {checks['compiled_vs_sklearn_max_abs_diff']:.2g}; batch vs "
        f"guard.check risk scores max |diff| {checks['batch_vs_guard_max_abs_diff']:.2g}"
    )
    if Path(config["risk_package"]) != ROOT / "risk":
        print(f"warning: risk was imported from {config['risk_package']}, not from {ROOT / 'risk'}")
    if config["uncommitted_changes"]:
        print(f"warning: measured with uncommitted changes in: {', '.join(config['uncommitted_changes'])}")
    if data["drain_timeouts"]:
        print(f"warning: vaultak's POST threads outlived the wait {data['drain_timeouts']} times")
    print(f"runtime {data['runtime_s']:.1f} s")


def profile(sizes: Sizes, workdir: str, top: int) -> None:
    """cProfile of guard.check alone (full configuration) over the test stream, top functions by own time."""
    train, test = list(read_trace(TRAIN)), list(read_trace(TEST))
    clock = ManualClock()
    clear_resource_caches()
    guard = new_guard(CONFIGS[0], workdir, clock, DEFAULT_MODEL)
    warm(guard, clock, subset(train, sizes.warm_actions, last=True))
    profiler = cProfile.Profile()
    samples, _ = replay_stream(guard, clock, subset(test, sizes.stream_actions, last=False), profiler)
    guard.close()
    ordered = sorted(samples)
    print(
        f"cProfile of {len(samples)} guard.check calls ({CONFIGS[0].label}); "
        f"profiled p50 {percentile(ordered, 0.5) / 1000:.1f} µs, p99 {percentile(ordered, 0.99) / 1000:.1f} µs"
    )
    pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(top)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--quick", action="store_true", help="few samples and 2 rounds: a smoke test, not a measurement"
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object with every number instead of a table"
    )
    parser.add_argument(
        "--profile", action="store_true", help="print a cProfile of guard.check (full configuration) instead"
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory(prefix="risk-bench-decision-") as workdir:
        if args.profile:
            profile(sizes, workdir, top=15)
            return 0
        run_data = run(sizes, workdir)
    data = {**run_data, **analyse(run_data, sizes), "quick": args.quick}
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print_report(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
