"""`risk evaluate`: replay a labelled trace through a fresh guard and measure what it caught.

The guard is trained on the train trace's benign actions (its forest is fitted on them, and the same
actions are replayed through it first so each agent's profile and the online model know them). Then the
test trace is replayed action by action on the trace's own clock: every action is checked, allowed
actions report success, and a session boundary revives a paused or terminated agent, so one session's
stop does not leak into the next.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from risk.actions import AgentStatus, Decision
from risk.audit.store import open_audit
from risk.features import MODEL_FEATURES
from risk.guard import Guard
from risk.scoring.model import BehaviorModel, fit_model
from risk.state import open_state
from risk.traces import TraceAction
from risk.train import training_rows

# Without a policy file the guard watches behavior and rules only, pausing at the documented threshold.
DEFAULT_EVALUATION_POLICY: dict[str, Any] = {"max_risk_score": 0.5, "mode": "pause"}


class _ReplayClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True, slots=True)
class Replayed:
    action: TraceAction
    risk_score: float
    allowed: bool


def evaluate(
    test: Sequence[TraceAction],
    train: Sequence[TraceAction] = (),
    *,
    policy: dict[str, Any] | None = None,
    model: BehaviorModel | str | None = None,
    online: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Replay `test` through a guard trained on `train`; the metrics of the README's evaluation table.

    Per-action metrics (AUROC, true-positive rates) come from a replay in ALERT mode, so that a pause never
    hides how an action would have scored; session metrics and denial rates come from a replay under the
    policy as given.
    """
    fields = {**DEFAULT_EVALUATION_POLICY, **(policy or {})}
    alert = {**fields, "mode": "alert"}
    model = _model_for(train, model, seed)  # fitted once, for both replays
    scored, model_version = replay(test, train, policy=alert, model=model, online=online, seed=seed)
    enforced = scored if fields["mode"] == "alert" else replay(test, train, policy=fields, model=model,
                                                                online=online, seed=seed)[0]  # fmt: skip
    return metrics(scored, enforced) | {"model_version": model_version}


def replay(
    test: Sequence[TraceAction],
    train: Sequence[TraceAction] = (),
    *,
    policy: dict[str, Any] | None = None,
    model: BehaviorModel | str | None = None,
    online: bool = False,
    seed: int = 0,
    audit: str | None = None,
) -> tuple[list[Replayed], str]:
    """Every test action with its risk score and whether it was allowed, and the guard's model version.

    `model` overrides the forest fitted on `train` (a BehaviorModel, a model name or path); without
    `train` and `model` the shipped default model is used. `audit` (a store URL) keeps the replay's audit
    trail; by default it goes to a temporary store that is discarded.
    """
    model = _model_for(train, model, seed)
    fields = {**DEFAULT_EVALUATION_POLICY, **(policy or {})}
    clock = _ReplayClock()
    # Guards over one state store share the agents' profiles and the streaming model: the history is learned by a
    # guard that flags nothing, since the policy's guard would not learn the benign actions it flags.
    state = open_state("memory://")
    with tempfile.TemporaryDirectory() as home:
        trail = open_audit(audit or f"sqlite:///{home}/audit.db")

        def guard_of(policy: dict[str, Any]) -> Guard:
            # As a policy file is read (unknown fields refused); the evaluation's own model, online model and
            # stores take the place of the file's.
            return Guard.from_fields(policy, source="the evaluation's policy", audit=trail, home=home, model=model,
                                     online=online, clock=clock, state=state)  # fmt: skip

        try:
            _warm_up(guard_of({"mode": "alert"}), [a for a in train if a.label != 1], clock)
            guard = guard_of(fields)
            replayed = _replay(guard, test, clock)
        finally:
            trail.close()
    return replayed, guard.model_version


def _model_for(
    train: Sequence[TraceAction], model: BehaviorModel | str | None, seed: int
) -> BehaviorModel | str | None:
    """`model` if given; else a forest fitted on `train` (None if it is too short); else the shipped default."""
    if model is not None:
        return model
    if not train:
        return "default"
    rows = training_rows(train)
    return fit_model(rows.X, MODEL_FEATURES, name="evaluation", seed=seed) if len(rows.X) >= 2 else None


def _warm_up(guard: Guard, actions: Sequence[TraceAction], clock: _ReplayClock) -> None:
    """Let profiles and the online model learn the benign history through `guard`, which flags nothing."""
    for a in sorted(actions, key=lambda a: a.ts):
        clock.now = a.ts
        _check_and_report(guard, a)


def _replay(guard: Guard, actions: Sequence[TraceAction], clock: _ReplayClock) -> list[Replayed]:
    """Each session is a run of its agent that a person let start: a stopped agent is revived when the next
    session begins. A session stopped earlier stays stopped when its agent's sessions interleave: its later
    actions are denied without a check (risk score NaN), though the agent was revived for another session."""
    out: list[Replayed] = []
    sessions: dict[str, str | None] = {}
    stopped: set[tuple[str, str | None]] = set()
    for a in sorted(actions, key=lambda a: a.ts):
        clock.now = a.ts
        session = (a.agent_id, a.session_id)
        if session in stopped and guard.status(a.agent_id).status is AgentStatus.RUNNING:
            out.append(Replayed(a, math.nan, False))
            continue
        if sessions.get(a.agent_id) != a.session_id:
            sessions[a.agent_id] = a.session_id
            _revive(guard, a.agent_id)
        decision = _check_and_report(guard, a)
        if decision.outcome.stops:
            stopped.add(session)
        out.append(Replayed(a, decision.risk_score, decision.allowed))
    return out


def _check_and_report(guard: Guard, a: TraceAction) -> Decision:
    """Check one action and, if it is allowed to run, report the outcome the trace says it had."""
    decision = guard.check(
        a.action_type, a.resource, a.payload, agent_id=a.agent_id, session_id=a.session_id, task=a.task
    )
    if decision.allowed:
        success, rows, size = a.outcome()
        error = None if success else "failed in the trace"
        guard.record_outcome(
            decision.action_id, success=success, error=error, rows=rows, bytes=size, agent_id=a.agent_id
        )
    return decision


def _revive(guard: Guard, agent_id: str) -> None:
    if guard.status(agent_id).status is not AgentStatus.RUNNING:
        guard.reset(agent_id, actor="evaluation")


def metrics(replayed: Sequence[Replayed], enforced: Sequence[Replayed] | None = None) -> dict[str, Any]:
    """AUROC and true-positive rates per action from `replayed`, and what was denied, per action and per
    session, from `enforced` (the same replay under the policy that counts; by default `replayed` itself)."""
    enforced = replayed if enforced is None else enforced
    # A NaN score is an action denied without a check (its session was stopped earlier): it has no score to rank.
    labelled = [r for r in replayed if r.action.label is not None and not math.isnan(r.risk_score)]
    y = np.array([r.action.label for r in labelled])
    scores = np.array([r.risk_score for r in labelled])
    out: dict[str, Any] = {"actions": len(replayed), "labelled": len(labelled), "harmful": int(y.sum())}
    if 0 < y.sum() < len(y):
        fpr, tpr, _ = roc_curve(y, scores)
        out["auroc"] = round(float(roc_auc_score(y, scores)), 4)
        out["tpr_at_fpr_1pct"] = round(_tpr_at(fpr, tpr, 0.01), 4)
        out["tpr_at_fpr_3pct"] = round(_tpr_at(fpr, tpr, 0.03), 4)
    else:
        out.update(auroc=None, tpr_at_fpr_1pct=None, tpr_at_fpr_3pct=None)
    benign = [r for r in enforced if r.action.label == 0]
    out["benign_actions_denied"] = round(sum(not r.allowed for r in benign) / len(benign), 4) if benign else None
    out.update(_sessions(enforced))
    out["by_attack"] = _by_attack(enforced)
    return out


def _tpr_at(fpr: np.ndarray, tpr: np.ndarray, limit: float) -> float:
    return float(tpr[fpr <= limit].max(initial=0.0))


def _sessions(replayed: Sequence[Replayed]) -> dict[str, Any]:
    sessions: dict[tuple[str, str | None], list[Replayed]] = {}
    for r in replayed:
        sessions.setdefault((r.action.agent_id, r.action.session_id), []).append(r)
    attacked = stopped = benign = interrupted = 0
    for actions in sessions.values():
        first_harm = next((i for i, r in enumerate(actions) if r.action.label == 1), None)
        if first_harm is None:
            benign += 1
            interrupted += any(not r.allowed for r in actions)
        else:
            attacked += 1
            stopped += not actions[first_harm].allowed  # a stop earlier in the session denies it too
    return {
        "attack_sessions": attacked,
        "attack_sessions_stopped": round(stopped / attacked, 4) if attacked else None,
        "benign_sessions": benign,
        "benign_sessions_interrupted": round(interrupted / benign, 4) if benign else None,
    }


def _by_attack(replayed: Sequence[Replayed]) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[Replayed]] = {}
    for r in replayed:
        if r.action.label == 1:
            groups.setdefault(str(r.action.extra.get("attack") or "unlabelled"), []).append(r)
    return {
        name: {"actions": len(rs), "denied": round(sum(not r.allowed for r in rs) / len(rs), 4)}
        for name, rs in sorted(groups.items())
    }
