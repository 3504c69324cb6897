"""`risk train`: fit the behavioral model on benign history (a trace file or an audit store).

History is replayed in time order through fresh agent profiles, exactly as the guard would have seen it,
so each training row describes an action against the profile its agent had at that moment.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from risk.actions import ActionType
from risk.audit.postgres import _redacted
from risk.audit.record import AuditRecord, canonical_json
from risk.audit.store import AuditStore, open_audit, records
from risk.features import BASELINE_ACTIONS, MODEL_FEATURES, model_input
from risk.resources import readings
from risk.scoring.behavior import Assessment, BehaviorScorer, combined, habituated
from risk.scoring.model import CALIBRATION_HOLDOUT_ROWS, DEFAULT_MODEL, BehaviorModel, fit_model, save_model
from risk.scoring.rules import RuleScorer
from risk.traces import TraceAction, read_trace

log = logging.getLogger("risk")


@dataclass(frozen=True, slots=True)
class TrainingRows:
    X: np.ndarray
    actions: int  # benign actions replayed
    agents: int
    first_ts: float | None
    last_ts: float | None


def replay(
    actions: Iterable[TraceAction], scorer: BehaviorScorer | None = None
) -> Iterator[tuple[TraceAction, float, Assessment]]:
    """Replay `actions` (sorted by time) through the scorer's profiles, each learned as allowed and run;
    yield each with its rule score (its priors discounted for a habit, as the guard counts them) and its
    assessment against the profile before it."""
    scorer = scorer or BehaviorScorer(None, None)
    rules = RuleScorer()
    for number, action in enumerate(sorted(actions, key=lambda a: a.ts)):
        read = readings(action.resource)
        resource = read.canonical
        rule_score, reasons = rules.score(action.action_type, resource, action.payload)
        payload_bytes = len(canonical_json(action.payload))
        assessment = scorer.assess(
            action.agent_id, ts=action.ts, action_type=action.action_type, resource=read,
            payload=action.payload, payload_bytes=payload_bytes, rule_reasons=reasons, task=action.task,
        )  # fmt: skip
        yield action, habituated(rule_score, reasons, assessment.prior_discount), assessment
        action_id = f"replay-{number}"
        scorer.observe(action.agent_id, action_id, action.ts, action.action_type, resource, assessment, True)
        success, rows, size = action.outcome()
        scorer.outcome(action.agent_id, action_id, action.ts, success=success, volume=(rows or 0) + (size or 0) / 1000)


def training_rows(actions: Iterable[TraceAction]) -> TrainingRows:
    """Feature rows of the benign actions (label 0 or absent) of agents past their first BASELINE_ACTIONS:
    the guard discounts immature agents' behavior, so the model learns what mature agents do."""
    benign = [a for a in actions if a.label != 1]
    scorer = BehaviorScorer(None, None)
    rows: list[list[float]] = []
    seen: dict[str, int] = {}
    for action, _, assessment in replay(benign, scorer):
        seen[action.agent_id] = seen.get(action.agent_id, 0) + 1
        if seen[action.agent_id] > BASELINE_ACTIONS:
            rows.append(model_input(assessment.features))
    if len(rows) < 2:  # too little history to skip anyone: train on all of it
        rows = [model_input(assessment.features) for _, _, assessment in replay(benign)]
    ts = [a.ts for a in benign]
    X = np.asarray(rows, dtype=np.float64).reshape(-1, len(MODEL_FEATURES))
    return TrainingRows(X, len(benign), len(seen), min(ts, default=None), max(ts, default=None))


def score_trace(actions: Iterable[TraceAction], model: BehaviorModel) -> list[float]:
    """Offline, the risk score of each action (in time order) as a guard with `model` and no online model
    would give it if it flagged nothing: rules, novelty and the forest, calibrated and scaled by maturity.

    The forest scores the whole trace at once, which is most of what makes this faster than checking the
    actions one by one; a guard that flags an action does not learn it, so its later scores can differ.
    """
    rows, parts = [], []
    for _, rule_score, assessment in replay(actions):
        rows.append(model_input(assessment.features))
        parts.append((rule_score, assessment.severities, assessment.maturity))  # severities: novelty only
    if not rows:
        return []
    anomaly = (-model.forest.score_many(np.asarray(rows, dtype=np.float64))).tolist()
    severity = model.calibrator.severity
    return [
        combined(rule_score, (*novelty, severity(raw) * weight))
        for (rule_score, novelty, weight), raw in zip(parts, anomaly, strict=True)
    ]


def history(source: str) -> list[TraceAction]:
    """Benign history from a trace file, or the allowed decisions of an audit store (`sqlite:///...`)."""
    if "://" not in source:
        return list(read_trace(source))
    store = open_audit(source, create=False)
    try:
        return _allowed_decisions(store)
    finally:
        store.close()


def _allowed_decisions(store: AuditStore) -> list[TraceAction]:
    """The allowed decisions, each with the outcome its tool reported (how it went, rows and bytes), as a trace
    holds them: replayed as successes that touched nothing, the error rate and the data volume were constant,
    and the model could not see either. One pass over the trail, in sequence order."""
    decisions: list[AuditRecord] = []
    outcomes: dict[str, dict[str, Any]] = {}
    for r in records(store):
        if r.kind == "decision" and r.outcome == "allowed":
            decisions.append(r)
        elif r.kind == "outcome" and r.action_id is not None and isinstance(r.detail, dict):
            outcomes[r.action_id] = {k: r.detail.get(k) for k in ("status", "rows", "bytes")}
    return [
        TraceAction(
            ts=datetime.fromisoformat(r.ts).timestamp(),
            agent_id=r.agent_id,
            session_id=r.session_id,
            action_type=ActionType.parse(r.action_type or "custom"),
            resource=r.resource or "",
            payload=r.payload,
            label=0,
            extra={"outcome": outcomes[r.action_id]} if r.action_id in outcomes else {},
        )
        for r in decisions
    ]


def train(
    source: str,
    out_dir: str | Path,
    *,
    name: str = DEFAULT_MODEL,
    version: str = "1",
    seed: int = 0,
    n_estimators: int = 100,
    max_samples: int = 256,
    evaluate_on: str | Path | None = None,
    replace: bool = False,
) -> tuple[BehaviorModel, Path]:
    """Fit, calibrate and save a model from `source`; returns it and the artifact's path. With `evaluate_on`, a
    labelled trace, the card holds the model's metrics on it (`risk.evaluate`, after `source` as history).
    `replace` writes over a model of the same name and version (see `save_model`)."""
    actions = history(source)
    rows = training_rows(actions)
    if rows.actions < 2:
        raise ValueError(
            f"{source} holds {rows.actions} benign action(s) to learn from; training needs at least 2 "
            "(actions labelled 1 are left out)"
        )
    model = fit_model(
        rows.X,
        MODEL_FEATURES,
        name=name,
        version=version,
        n_estimators=n_estimators,
        max_samples=max_samples,
        seed=seed,
    )
    without_payloads = sum(a.payload is None for a in actions)
    if "://" in source and without_payloads == len(actions):
        log.warning("%s keeps no payloads (its guards ran without keep_payloads=True): the model learns nothing "
                    "of payload sizes and signals", _redacted(source))  # fmt: skip
    card = {
        "training": {
            "source": _redacted(source),  # cards are shipped and committed: never with a password
            "actions_without_payload": without_payloads,
            "benign_actions": rows.actions,
            "rows": int(rows.X.shape[0]),
            "agents": rows.agents,
            "window": [_iso(rows.first_ts), _iso(rows.last_ts)],
            "seed": seed,
            "skipped_first_actions_per_agent": BASELINE_ACTIONS,
        },
        "params": {
            "n_estimators": n_estimators,
            "max_samples": max_samples,
            "calibration": "held-out quarter" if len(rows.X) >= CALIBRATION_HOLDOUT_ROWS else "fitted rows",
        },
        "metrics": _metrics(model, actions, evaluate_on) if evaluate_on is not None else {},
    }
    return model, save_model(model, out_dir, card, replace=replace)


def _metrics(model: BehaviorModel, history: list[TraceAction], test: str | Path) -> dict[str, Any]:
    from risk.evaluate import DEFAULT_EVALUATION_POLICY, evaluate  # risk.evaluate imports this module

    found = evaluate(list(read_trace(test)), history, model=model)
    return {"evaluated_on": str(test), "policy": DEFAULT_EVALUATION_POLICY, **found}


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat() if ts is not None else None
