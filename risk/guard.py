"""The Guard: the one decision point every agent action passes, in process, with no server.

    action -> normalize -> policy -> risk score -> kill switch -> audit append -> Decision

The audit record is written before `check` returns, and if it cannot be written the action is denied.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

from risk.actions import (
    ActionType,
    AgentStatus,
    Decision,
    KillSwitchMode,
    Outcome,
    Reason,
    checked_id,
    checked_task,
    encoded_payload,
    heaviest_first,
    outcome_amount,
    task_digest,
)
from risk.audit.record import canonical_json
from risk.audit.store import AuditQuery, AuditStore, default_home, open_audit
from risk.errors import AuditError, GuardDenied, PolicyError, StateError
from risk.features import MODEL_FEATURES
from risk.killswitch import MODE_OUTCOME, KillSwitch
from risk.policy import CompiledPolicy, Policy, load_policy_file
from risk.profiles import MemoryProfiles, ProfileStore
from risk.redaction import mask, mask_text
from risk.resources import Readings, readings
from risk.rollback import (
    RollbackReport,
    UndoLog,
    UndoStep,
    adopt_snapshots,
    keep,
    savepoint,
    settle,
    snapshot_file,
    sweep_snapshots,
)
from risk.scoring.behavior import Assessment, BehaviorScorer, combined, habituated
from risk.scoring.model import DEFAULT_MODEL, BehaviorModel, load_installed
from risk.scoring.online import OnlineScorer
from risk.scoring.rules import RuleScorer
from risk.state import AgentState, StateStore, open_state
from risk.state_redis import RedisProfiles, RedisState

log = logging.getLogger("risk")

F = TypeVar("F", bound=Callable[..., Any])

RULES_VERSION = "rules-1"
_NOT_THE_ACTIONS_FAULT = frozenset(
    {"rate_limited", "audit_unavailable", "model_unavailable", "state_unavailable", "data_volume_exceeded"}
)
# The audit records of checks made inside `decided_together`, held back to be committed at once.
_HELD: ContextVar[list[tuple[Guard, dict[str, Any]]] | None] = ContextVar("risk_held_audit_records", default=None)
# The task of the run under way, for the checks that pass none (see Guard.working_on).
_TASK: ContextVar[str | None] = ContextVar("risk_task", default=None)
# Keys a policy file may hold besides the policy fields themselves.
_GUARD_FILE_FIELDS = ("agent_id", "audit", "keep_payloads", "state", "model", "online")


class Guard:
    """Governs an agent's actions: policy, risk score, kill switch, audit trail and rollback.

    >>> import tempfile
    >>> guard = Guard(allowed_resources=["data.deidentified.*"], blocked_resources=["data.phi.*"],
    ...               mode=KillSwitchMode.PAUSE, audit=f"sqlite:///{tempfile.mkdtemp()}/audit.db")
    >>> guard.check(ActionType.DATABASE_QUERY, "data.deidentified.claims").allowed
    True
    >>> d = guard.check(ActionType.DATABASE_QUERY, "data.phi.patients")
    >>> d.allowed, d.outcome.value, guard.status().status.value
    (False, 'paused', 'paused')
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Guard:
        if cls is Guard and kwargs.get("endpoint") is not None:
            from risk.remote import RemoteGuard  # embedded mode never needs the HTTP client

            return super().__new__(RemoteGuard)
        return super().__new__(cls)

    def __init__(
        self,
        api_key: str | None = None,
        agent_id: str = "default",
        allowed_action_types: list[ActionType | str] | None = None,
        allowed_resources: list[str] | None = None,
        blocked_resources: list[str] | tuple[str, ...] = (),
        max_risk_score: float = 1.0,
        max_actions_per_minute: int | None = None,
        mode: KillSwitchMode | str = KillSwitchMode.BLOCK,
        audit: str | AuditStore | None = None,
        rollback_window: float = 900.0,
        *,
        max_rows_per_window: int | None = None,
        max_bytes_per_window: int | None = None,
        volume_window_seconds: float = 3600.0,
        keep_payloads: bool = False,
        state: str | StateStore | None = None,
        home: str | Path | None = None,
        model: str | Path | BehaviorModel | None = DEFAULT_MODEL,
        online: bool | OnlineScorer = True,
        endpoint: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if endpoint is not None:  # Guard(endpoint=...) constructs a RemoteGuard instead (see __new__)
            raise PolicyError("endpoint= is for Guard(...) itself, which then returns a risk.remote.RemoteGuard")
        if not isinstance(agent_id, str) or not agent_id:
            raise PolicyError("agent_id must be a non-empty string")
        self.api_key = api_key  # embedded mode keeps it only for the remote mode to come
        self.agent_id = agent_id
        self.policy = Policy.build(
            allowed_action_types=allowed_action_types,
            allowed_resources=allowed_resources,
            blocked_resources=blocked_resources,
            max_risk_score=max_risk_score,
            max_actions_per_minute=max_actions_per_minute,
            max_rows_per_window=max_rows_per_window,
            max_bytes_per_window=max_bytes_per_window,
            volume_window_seconds=volume_window_seconds,
            mode=mode,
            rollback_window=rollback_window,
        )
        self._compiled = CompiledPolicy(self.policy)
        _check_settings(audit=audit, state=state, keep_payloads=keep_payloads, model=model, online=online, home=home)
        self.keep_payloads = keep_payloads
        self.home = Path(home) if home is not None else default_home()
        self.audit: AuditStore = open_audit(audit) if audit is None or isinstance(audit, str) else audit
        self._owns_audit = audit is None or isinstance(audit, str)
        self._owns_state = state is None or isinstance(state, str)  # opened here, so closed with the guard
        try:
            self._state: StateStore = open_state(state) if state is None or isinstance(state, str) else state
            self._clock = clock
            self._rules = RuleScorer()
            beside = _beside(self._state)
            self._behavior = _behavior_scorer(model, online, beside)
            versions = (RULES_VERSION, self._behavior.version if self._behavior else "")
            self.model_version = "+".join(v for v in versions if v)
            self._undo = self._undo_log()
            self.killswitch = KillSwitch(self._state, self._record_event)
            self.audit_failures = 0
            self._unsaved_stops = beside.unsaved_stops  # agent -> a stop the state store refused (see _trip)
            self._record_event(
                agent_id,
                {
                    "kind": "policy",
                    "actor": "guard",
                    "policy_hash": self.policy.policy_hash,
                    "detail": {"policy": self.policy.model_dump(mode="json")},
                },
                strict=True,
            )
        except BaseException:  # a model that does not load, an audit trail that refuses the policy record, ...
            # What it opened itself, or its audit store's thread and connections, and its Redis client, stay open
            # for good; never what the caller passed in (the service's one trail for every tenant's guard).
            if self._owns_audit:
                self.audit.close()
            self._close_state()
            raise

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> Guard:
        """A Guard configured by a YAML or TOML policy file; keyword arguments override the file."""
        return cls.from_fields(load_policy_file(path), source=str(path), **overrides)

    @classmethod
    def from_fields(cls, fields: dict[str, Any], *, source: str = "policy", **overrides: Any) -> Guard:
        """A Guard from the fields of a policy file already read (one whose other sections the caller took out)."""
        accepted = (*Policy.model_fields, *_GUARD_FILE_FIELDS)
        unknown = sorted(set(fields) - set(accepted))
        if unknown:
            names, known = ", ".join(unknown), ", ".join(accepted)
            raise PolicyError(f"{source}: unknown field(s) {names}; accepted fields: {known}")
        try:
            return cls(**{**fields, **overrides})
        except PolicyError as exc:
            raise PolicyError(f"{source}: {exc}") from None

    # ---- the decision point ------------------------------------------------------------------

    def check(
        self,
        action_type: ActionType | str,
        resource: str,
        payload: Any = None,
        *,
        agent_id: str | None = None,
        session_id: str | None = None,
        task: str | None = None,
    ) -> Decision:
        """Decide whether one action may run, record the decision, and apply the kill switch.

        `task` is the instruction the agent is carrying out, as its principal (the user, the calling system) gave
        it, never text the agent read from a tool: a destination it names (an address, host, IBAN or recipient)
        does not count as new for the agent. Pass it to keep a user's own request for a new payee or recipient
        from being flagged as going somewhere new; text an attacker can write must not be passed.

        Without `task`, the check carries the one of the `working_on` block it runs in, if any.

        Never raises for a denial. Raises ValueError for an unknown action type, a resource that is not
        a non-empty string, a task that is not a string of at most 32,768 characters, an agent or session id
        that is not a non-empty string, a payload nested more than 64 levels deep or containing itself, or
        one no JSON can hold.
        """
        return self._decide(action_type, resource, payload, agent_id, session_id, task)

    def blocks(self, resource: str) -> bool:
        """Whether a blocked pattern of the policy matches a reading of `resource`; nothing is recorded. The watch
        asks it of the address a connection reaches, when it checks the connection under the name looked up for
        that address (the allow-list speaks of the name; a block of either denies)."""
        return self._compiled.blocked_reading(readings(resource)) is not None

    @contextlib.contextmanager
    def working_on(self, task: str) -> Iterator[None]:
        """Inside the block, every check that passes no `task` carries this one: those of guarded tools and of
        the framework integrations too, made by any guard, in this thread or the asyncio tasks it starts.

        >>> guard = Guard(audit="sqlite:///:memory:")
        >>> with guard.working_on("Mail the Q3 report to carol@partner.example"):
        ...     guard.check("network_request", "mail.send/carol@partner.example").allowed
        True
        """
        token = _TASK.set(checked_task(task))
        try:
            yield
        finally:
            _TASK.reset(token)

    def refuse(
        self,
        action_type: ActionType | str,
        resource: str,
        payload: Any = None,
        *,
        reason: Reason,
        agent_id: str | None = None,
        session_id: str | None = None,
    ) -> Decision:
        """Deny one action for `reason` and record the decision, without assessing it: the agent's status,
        profile and windows are neither read nor changed. The service refuses agents past its limit so."""
        return self._decide(action_type, resource, payload, agent_id, session_id, None, refusal=reason)

    def _decide(
        self,
        action_type: ActionType | str,
        resource: str,
        payload: Any,
        agent_id: str | None,
        session_id: str | None,
        task: str | None,
        refusal: Reason | None = None,
    ) -> Decision:
        atype = ActionType.parse(action_type)
        task = current_task(task)
        read = readings(resource, resolve_symlinks=atype.is_file)
        agent = checked_id("agent_id", agent_id) or self.agent_id
        checked_id("session_id", session_id)
        now = self._clock()
        action_id = os.urandom(16).hex()
        payload_json = encoded_payload(payload)
        policy = self.policy

        score, reasons = self._rules.score(atype, read.canonical, payload, real_resource=read.real)
        assessment, stopped, fingerprint, approved = None, None, "", False
        try:
            if refusal is not None:
                state, stopped = AgentState(), (Outcome.BLOCKED, refusal)
            else:
                state = self.killswitch.status(agent)
                stopped = self.killswitch.gate(state) or self._held_stop(agent)
            if stopped is not None:
                outcome, why = stopped
                reasons.insert(0, why)
            else:
                assessment, score, reasons, model_failure = self._assess(
                    agent, now, atype, read, payload, payload_json, task, score, reasons
                )
                violations = self._violations(agent, now, atype, read, payload, score, model_failure)
                if state.approved_fingerprint is not None:
                    fingerprint = _fingerprint(agent, atype, read, payload_json)
                if fingerprint == state.approved_fingerprint and self.killswitch.use_approval(agent, state):
                    # The approved action runs once, past its violations and the rate limit that may have paused it.
                    reasons.insert(0, Reason("approved", "a reviewer approved this action once after it paused"))
                    violations, approved = [], True
                elif (not violations or policy.mode is KillSwitchMode.ALERT) and not self._within_rate(agent, now):
                    limit = policy.max_actions_per_minute
                    violations.append(Reason("rate_limited", f"more than {limit} actions in the last minute", 1, True))
                reasons[:0] = violations
                outcome = MODE_OUTCOME[policy.mode] if violations else Outcome.ALLOWED
        except StateError as exc:  # the shared state cannot be read or written: deny, and say why
            log.error("denying %s on %r: %s", atype.value, resource, exc)
            reasons.insert(0, Reason("state_unavailable", f"the guard's state store failed: {exc}", 1.0, True))
            outcome, assessment, stopped = Outcome.BLOCKED, None, None

        body = {
            "record_id": action_id,
            "ts": datetime.fromtimestamp(now, UTC).isoformat(timespec="microseconds"),
            "kind": "decision",
            "agent_id": agent,
            "session_id": session_id,
            "action_id": action_id,
            "action_type": atype.value,
            "resource": resource,
            "resource_normalized": read.canonical,
            "payload_digest": hashlib.sha256(payload_json).hexdigest(),
            "payload": _kept_payload(payload) if self.keep_payloads else None,
            "risk_score": score,
            "reasons": [r.to_dict() for r in reasons],
            "decision": "allow" if outcome.allows else "deny",
            "outcome": outcome.value,
            "mode": policy.mode.value,
            "policy_hash": self._compiled.policy_hash,
            "model_version": self.model_version,
        }
        if task is not None:  # which instruction the destinations it named came from, without its text
            body["task_digest"] = task_digest(task)
        try:
            self._append(body)
        except AuditError as exc:
            self.audit_failures += 1
            log.error("denying %s on %r: %s", atype.value, resource, exc)
            reasons.insert(0, _unaudited(exc))
            if outcome.allows:
                outcome = Outcome.BLOCKED

        if outcome in (Outcome.PAUSED, Outcome.ROLLED_BACK, Outcome.TERMINATED) and stopped is None:
            fingerprint = fingerprint or _fingerprint(agent, atype, read, payload_json)
            self._trip(agent, outcome, action_id, fingerprint, reasons[0].message)
        if assessment is not None and self._behavior is not None:
            # An alerted action runs, so it shapes the baseline, but not where it sent nor how much: learning those
            # would let an attacker make a destination normal with one unreviewed alert (the synthetic slow-drip
            # exfiltration was alerted once, then scored benign). Learning nothing from it (tried) keeps every
            # benign alert alerting: bench_decision.py's stream alerted 366 of 790 actions at 152daa1, 158 as here
            # at 22481da (the model default-1).
            flagged = outcome is not Outcome.ALLOWED  # denied, or alerted and run
            # Flagging what the action is (not a pause, a rate limit or a broken audit) blames its destinations.
            blame = stopped is None and flagged and reasons[0].code not in _NOT_THE_ACTIONS_FAULT
            try:
                self._behavior.observe(agent, action_id, now, atype, read.canonical, assessment, outcome.allows,
                                       flagged=flagged, blame=blame, approved=approved)  # fmt: skip
            except StateError as exc:  # the decision stands as recorded; only the baseline misses this action
                log.error("profile of %s not updated after %s: %s", agent, action_id, exc)
        return Decision(
            action_id=action_id,
            agent_id=agent,
            allowed=outcome.allows,
            outcome=outcome,
            risk_score=score,
            reasons=tuple(reasons),
            action_type=atype,
            resource=resource,
            normalized_resource=read.canonical,
        )

    def _assess(
        self, agent: str, now: float, atype: ActionType, read: Readings, payload: Any, payload_json: bytes,
        task: str | None, score: float, reasons: list[Reason],
    ) -> tuple[Assessment | None, float, list[Reason], Reason | None]:  # fmt: skip
        """The behavioral scorer's view of the action, folded into the rule score and reasons."""
        if self._behavior is None:
            return None, score, reasons, None
        try:
            assessment = self._behavior.assess(
                agent, ts=now, action_type=atype, resource=read, payload=payload, payload_bytes=len(payload_json),
                rule_reasons=reasons, task=task,
            )  # fmt: skip
        except Exception as exc:  # a model that cannot score fails closed, and says why
            log.exception("behavioral scoring failed")
            return None, score, reasons, Reason("model_unavailable", f"the model could not score: {exc}", 1.0, True)
        score = combined(habituated(score, reasons, assessment.prior_discount), assessment.severities)
        if assessment.reasons:  # a waiver (named_by_task) is a reason without a severity
            reasons = sorted([*reasons, *assessment.reasons], key=heaviest_first)
        return assessment, score, reasons, None

    def _violations(
        self,
        agent: str,
        now: float,
        atype: ActionType,
        read: Readings,
        payload: Any,
        score: float,
        model_failure: Reason | None,
    ) -> list[Reason]:
        """The policy rules, the risk threshold and the data-volume limits this action breaks."""
        violations = self._compiled.violations(atype, read, payload)
        if model_failure is not None:
            violations.append(model_failure)
        limit = self.policy.max_risk_score
        if not score <= limit:  # a score that is not a number (NaN) counts as above: it denies
            violations.append(
                Reason("risk_above_threshold", f"risk {score:.2f} exceeds max_risk_score {limit}", 1, True)
            )
        return violations + self._volume_violations(agent, now)

    def _within_rate(self, agent: str, now: float) -> bool:
        limit = self.policy.max_actions_per_minute
        return limit is None or self._state.try_acquire(f"rate:{agent}", now, 60.0, limit)

    def _volume_limits(self) -> list[tuple[str, int]]:
        """The configured data-volume limits, by unit."""
        limits = (("rows", self.policy.max_rows_per_window), ("bytes", self.policy.max_bytes_per_window))
        return [(unit, limit) for unit, limit in limits if limit is not None]

    def _volume_violations(self, agent: str, now: float) -> list[Reason]:
        found = []
        window = self.policy.volume_window_seconds
        for unit, limit in self._volume_limits():
            if self._state.total(f"{unit}:{agent}", now, window) >= limit:
                found.append(
                    Reason(
                        "data_volume_exceeded",
                        f"{unit} touched in the last {window:g}s reached the limit of {limit}",
                        1.0,
                        True,
                    )
                )
        return found

    def _trip(self, agent: str, outcome: Outcome, action_id: str, fingerprint: str, why: str) -> None:
        """Stop the agent as `outcome` says. If the state store refuses the stop, this guard holds it and
        denies the agent's actions itself, saving it again on each of them, and the trail says so."""
        if outcome is Outcome.ROLLED_BACK:
            self._rollback(agent, actor="guard")
        stop = _Stop(AgentStatus.TERMINATED if outcome is Outcome.TERMINATED else AgentStatus.PAUSED,
                     why, action_id, fingerprint)  # fmt: skip
        try:
            self._save_stop(agent, stop)
        except StateError as exc:
            log.error("kill switch for %s not saved, held by this guard: %s", agent, exc)
            self._unsaved_stops[agent] = stop
            detail = {"to": stop.status.value, "reason": why, "error": str(exc)}
            self._record_event(agent, {"kind": "killswitch", "actor": "guard", "outcome": "unsaved",
                                       "action_id": action_id, "detail": detail})  # fmt: skip

    def _save_stop(self, agent: str, stop: _Stop) -> None:
        if stop.status is AgentStatus.TERMINATED:
            self.killswitch.terminate(agent, actor="guard", reason=stop.why)
        else:
            self.killswitch.pause(agent, actor="guard", reason=stop.why, action_id=stop.action_id,
                                  fingerprint=stop.fingerprint)  # fmt: skip

    def _held_stop(self, agent: str) -> tuple[Outcome, Reason] | None:
        """The stop this guard holds for `agent` because the state store refused it, saved again if it can be."""
        stop = self._unsaved_stops.get(agent)
        if stop is None:
            return None
        try:
            self._save_stop(agent, stop)
            self._unsaved_stops.pop(agent, None)
        except StateError as exc:
            log.error("kill switch for %s still not saved: %s", agent, exc)
        return self.killswitch.gate(AgentState(stop.status, f"{stop.why} (held by this guard)"))

    # ---- outcomes -----------------------------------------------------------------------------

    def record_outcome(
        self,
        action_id: str,
        *,
        success: bool = True,
        error: str | None = None,
        rows: int | None = None,
        bytes: int | None = None,  # noqa: A002 - the natural name for the unit
        agent_id: str | None = None,
    ) -> None:
        """Record what an allowed action did; rows and bytes count toward the data-volume limits of its agent.

        Without `agent_id`, the agent is the one the trail's decision `action_id` is of (not this guard's default
        agent, which another agent's rows would have pushed to its limit while the other's stayed free). Raises
        ValueError, and records nothing, when rows or bytes is not a whole number from 0 to 2**53, or when no
        decision in the trail has that id.
        """
        rows, bytes = outcome_amount("rows", rows), outcome_amount("bytes", bytes)  # noqa: A001
        checked_id("action_id", action_id, optional=False)
        agent = checked_id("agent_id", agent_id) or self._agent_of(action_id)
        now = self._clock()
        # A tool's error message is kept with identifiers masked, payloads kept or not: it often quotes the data
        # the tool was working on ("no claim for 123-45-6789").
        kept_error = mask_text(error) if isinstance(error, str) else error
        detail: dict[str, Any] = {"status": "success" if success else "error", "error": kept_error, "rows": rows,
                                  "bytes": bytes}  # fmt: skip
        # The action already ran: a state store that fails keeps neither its volume nor its profile update, and
        # the outcome record says so.
        try:
            # Only a configured limit keeps a window: one nobody reads would only grow.
            reported = {"rows": rows, "bytes": bytes}
            for unit, _ in self._volume_limits():
                if amount := reported[unit]:
                    self._state.add(f"{unit}:{agent}", now, float(amount))
        except StateError as exc:
            log.error("volume of %s not counted: %s", action_id, exc)
            detail["state_error"] = str(exc)
        if self._behavior is not None:
            volume = (rows or 0) + (bytes or 0) / 1000.0
            try:
                self._behavior.outcome(agent, action_id, now, success=success, volume=volume)
            except StateError as exc:
                log.error("profile of %s not updated with the outcome of %s: %s", agent, action_id, exc)
                detail["state_error"] = "; ".join(filter(None, (detail.get("state_error"), str(exc))))
        self._record_event(
            agent, {"kind": "outcome", "action_id": action_id, "outcome": detail["status"], "detail": detail}
        )

    def _agent_of(self, action_id: str) -> str:
        try:
            found = self.audit.query(AuditQuery(action_id=action_id, kind="decision", limit=1))
        except AuditError as exc:  # the action ran: its outcome is recorded all the same, if the trail takes it
            log.error("the agent of %s is not known (%s): its outcome goes to %s", action_id, exc, self.agent_id)
            return self.agent_id
        if not found:
            raise ValueError(f"no decision in the audit trail has action id {action_id!r}: pass the action_id "
                             "of a decision this guard's trail holds, or its agent_id")  # fmt: skip
        return found[0].agent_id

    # ---- the human side of the kill switch ---------------------------------------------------

    def status(self, agent_id: str | None = None) -> AgentState:
        return self.killswitch.status(agent_id or self.agent_id)

    def approve(self, agent_id: str | None = None, *, actor: str = "reviewer") -> str | None:
        """Resume a paused agent and allow, once, the action that paused it. Returns that action's id."""
        return self.killswitch.approve(agent_id or self.agent_id, actor=actor)

    def resume(self, agent_id: str | None = None, *, actor: str = "reviewer") -> None:
        """Resume a paused agent; the action that paused it stays denied."""
        self.killswitch.resume(agent_id or self.agent_id, actor=actor)

    def terminate(
        self, agent_id: str | None = None, *, actor: str = "reviewer", reason: str = "terminated by a reviewer"
    ) -> None:
        self.killswitch.terminate(agent_id or self.agent_id, actor=actor, reason=reason)

    def reset(self, agent_id: str | None = None, *, actor: str = "reviewer") -> None:
        """Revive a terminated agent (or one this guard holds stopped because the state store refused the stop)."""
        agent = agent_id or self.agent_id
        self.killswitch.reset(agent, actor=actor)
        self._unsaved_stops.pop(agent, None)

    def rollback(self, agent_id: str | None = None, *, actor: str = "reviewer") -> RollbackReport:
        """Undo the agent's actions inside the rollback window, newest first; the report says what was not undone."""
        return self._rollback(agent_id or self.agent_id, actor=actor)

    def _rollback(self, agent: str, *, actor: str, only: UndoStep | None = None) -> RollbackReport:
        def record(step: UndoStep) -> None:
            self._record_event(
                agent,
                {
                    "kind": "rollback",
                    "action_id": step.action_id,
                    "actor": actor,
                    "outcome": step.status.value,
                    "detail": {"step": step.description, "error": step.error},
                },
            )

        return self._undo_steps(agent, record, only)

    def _undo_steps(self, agent: str, record: Callable[[UndoStep], None], only: UndoStep | None) -> RollbackReport:
        """Run the agent's undo steps inside the window (or just `only`), `record` seeing each result."""
        since = self._clock() - self._rollback_window()
        if only is None:  # what a process that ended (a crash, a restart) did for the agent is undone too
            sweep_snapshots(self.home / "snapshots", since)  # and what no rollback reaches any more goes
            for adopted in adopt_snapshots(self.home / "snapshots", agent, since):
                self._undo.register(adopted)
        return self._undo.rollback(agent, since, record, only=only)

    def _undo_log(self) -> UndoLog:
        """A new undo log, once the snapshots that ended processes left past the window, which no rollback
        reaches any more, are deleted."""
        sweep_snapshots(self.home / "snapshots", self._clock() - self._rollback_window())
        return UndoLog()

    def _rollback_window(self) -> float:
        """Seconds of history a rollback undoes (the remote guard's is the policy default: its policy is the
        service's)."""
        return self.policy.rollback_window

    def register_undo(
        self, action_id: str, undo: Callable[[], None] | None, description: str, *, agent_id: str | None = None
    ) -> None:
        """Attach an undo (a compensation) to an allowed action; `None` marks it irreversible."""
        step = UndoStep(action_id, agent_id or self.agent_id, self._clock(), description, undo)
        keep(step)
        self._undo.register(step, keep_since=self._clock() - self._rollback_window())

    def undo_step(self, decision: Decision, undo: Callable[[], None] | None, description: str) -> UndoStep:
        """How to undo an allowed action (`None`: irreversible), made before its tool runs, so that a rollback of
        the agent that begins while the tool runs is known to have missed it; `keep_undo` once the tool returns."""
        return UndoStep(decision.action_id, decision.agent_id, self._clock(), description, undo)

    def keep_undo(self, step: UndoStep, record_outcome: Callable[[], None], *, over: bool = True) -> None:
        """Keep `step` for rollback now that its tool has returned, then `record_outcome`. If a rollback of the
        agent began while the tool ran, the step is undone after its outcome is recorded, as that rollback would
        have undone it. `over=False`: the work may still be going on elsewhere (a call the client gave up on),
        so the file is not noted as the action left it, and a rollback restores whatever it is by then."""
        if over:
            settle(step.undo)  # the file as the tool left it: a later change by another is not undone over
        # Its record, if not kept since the tool began: a call checked ahead (a person approves it first, then
        # perhaps never) leaves none that a rollback after this process would take for work that ran.
        keep(step)
        missed = self._undo.register(step, keep_since=self._clock() - self._rollback_window())
        try:
            record_outcome()
        finally:
            if missed:
                self._rollback(step.agent_id, actor="guard", only=step)

    # ---- wrapping tools ------------------------------------------------------------------------

    def tool(
        self,
        action_type: ActionType | str,
        resource: str | Callable[..., str] = "path",
        *,
        agent_id: str | None = None,
        connection: Any = None,
        compensate: Callable[..., Any] | None = None,
        rows: Callable[[Any], int] | None = None,
        bytes: Callable[[Any], int] | None = None,  # noqa: A002
    ) -> Callable[[F], F]:
        """Wrap a tool so every call is checked first and its outcome recorded.

        `resource` names the argument holding the resource, or is a callable taking the tool's arguments.
        File writes and deletes are snapshotted for rollback; with `connection` (DB-API) each call runs
        inside a savepoint; `compensate` is called with the tool's arguments to undo it. `rows` and `bytes`
        compute the volume a result touched. A denied call raises ActionDenied, AgentPaused or
        AgentTerminated, and the tool body does not run.
        """
        atype = ActionType.parse(action_type)

        def decorate(fn: F) -> F:
            signature = inspect.signature(fn)
            if isinstance(resource, str) and resource not in signature.parameters:
                raise ValueError(
                    f"tool {fn.__name__} has no argument {resource!r}: pass resource='<argument name>' "
                    "or a callable that computes the resource"
                )

            def before(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Decision, UndoStep]:
                bound = signature.bind(*args, **kwargs)
                bound.apply_defaults()
                target = resource(*args, **kwargs) if callable(resource) else bound.arguments[resource]
                payload = {"tool": fn.__name__, "args": dict(bound.arguments)}
                decision = self.check(
                    atype, os.fspath(target) if isinstance(target, os.PathLike) else target, payload, agent_id=agent_id
                )
                if not decision.allowed:
                    raise GuardDenied.for_decision(decision)
                try:
                    undo, description = self.prepare_undo(atype, decision, connection, compensate, args, kwargs)
                except BaseException as exc:  # no way back (a snapshot the disk had no room for): the tool may not run
                    why = f"not run: its undo could not be prepared: {type(exc).__name__}: {exc}"
                    self.record_outcome(decision.action_id, success=False, error=why, agent_id=decision.agent_id)
                    raise
                step = self.undo_step(decision, undo, description)
                keep(step)  # the tool runs next: a crash in it leaves the step's record behind
                return decision, step

            def after(decision: Decision, step: UndoStep, result: Any, error: BaseException | None) -> None:
                def record() -> None:
                    if error is not None:
                        self.record_outcome(
                            decision.action_id,
                            success=False,
                            error=f"{type(error).__name__}: {error}",
                            agent_id=decision.agent_id,
                        )
                        return
                    counts, refused = _volume_of(result, rows=rows, bytes=bytes)
                    if refused:  # the tool ran: keep its outcome and say which count was not counted, not raise
                        log.error("outcome of %s: %s", decision.action_id, refused)
                    self.record_outcome(
                        decision.action_id, rows=counts["rows"], bytes=counts["bytes"], error=refused,
                        agent_id=decision.agent_id,
                    )  # fmt: skip

                self.keep_undo(step, record)

            if inspect.iscoroutinefunction(fn):

                @functools.wraps(fn)
                async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                    decision, step = before(args, kwargs)
                    try:
                        result = await fn(*args, **kwargs)
                    except BaseException as exc:
                        after(decision, step, None, exc)
                        raise
                    after(decision, step, result, None)
                    return result

                return cast(F, async_wrapper)

            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                decision, step = before(args, kwargs)
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:
                    after(decision, step, None, exc)
                    raise
                after(decision, step, result, None)
                return result

            return cast(F, wrapper)

        return decorate

    def prepare_undo(
        self,
        atype: ActionType,
        decision: Decision,
        connection: Any = None,
        compensate: Callable[..., Any] | None = None,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> tuple[Callable[[], None] | None, str]:
        """How to undo an allowed action before it runs, and what that does: `compensate(*args, **kwargs)`, a
        savepoint on `connection`, a snapshot of the file a write or delete touches, or None (irreversible).
        Raises OSError when the snapshot cannot be made."""
        if compensate is not None:
            return (lambda: compensate(*args, **(kwargs or {}))), f"compensate with {compensate.__name__}"
        if connection is not None:
            return savepoint(
                connection, f"risk_{decision.action_id}"
            ), f"roll back to savepoint before {decision.action_id}"
        if atype in (ActionType.FILE_WRITE, ActionType.FILE_DELETE):
            return snapshot_file(decision.resource, self.home / "snapshots")  # the path the tool opens
        return None, f"{atype.value} on {decision.resource} has no undo"

    # ---- audit ---------------------------------------------------------------------------------

    def _record_event(self, agent_id: str, fields: dict[str, Any], *, strict: bool = False) -> None:
        body = {
            "record_id": os.urandom(16).hex(),
            "ts": datetime.fromtimestamp(self._clock(), UTC).isoformat(timespec="microseconds"),
            "agent_id": agent_id,
            "mode": self.policy.mode.value,
            "policy_hash": self._compiled.policy_hash,
            **fields,
        }
        try:
            if strict:
                self.audit.append(body)
            else:
                self._append(body)
        except AuditError:
            self.audit_failures += 1
            if strict:
                raise
            log.exception("audit record for a %s event was not written", fields.get("kind"))

    def _append(self, body: dict[str, Any]) -> None:
        """Append `body` to the trail now, or, inside `decided_together`, hold it for the common commit."""
        held = _HELD.get()
        if held is None:
            self.audit.append(body)
        else:
            held.append((self, body))

    def close(self) -> None:
        """Close the audit store, and the state store if the guard opened it (from a URL, or the default), though
        the audit store's close fails (a store busy behind a stalled statement): then raise its error."""
        try:
            self.audit.close()
        finally:
            self._close_state()

    def _close_state(self) -> None:
        close_state = getattr(self._state, "close", None) if self._owns_state and hasattr(self, "_state") else None
        if close_state is not None:  # the in-process store holds nothing to close
            close_state()

    def watch(self, agent_id: str | None = None, *, session_id: str | None = None) -> Any:
        """A context manager inside which file, process, socket and SQLite work is checked as this agent's
        actions, through Python's audit hooks (see risk.integrations.watch); a denied one raises GuardDenied."""
        from risk.integrations.watch import watch  # the audit hook is added on first use only

        return watch(self, agent_id, session_id=session_id)


def current_task(task: str | None) -> str | None:
    """`task` if given (ValueError unless it is a string of at most 32,768 characters), else the one of the
    `Guard.working_on` block under way."""
    return checked_task(task) if task is not None else _TASK.get()


@dataclass(frozen=True, slots=True)
class _Stop:
    status: AgentStatus  # PAUSED or TERMINATED
    why: str
    action_id: str
    fingerprint: str


def decided_together(decide: Callable[[], list[Decision]]) -> list[Decision]:
    """Run `decide`, which checks several actions through guards, committing their audit records together.

    Each check sees the state the checks before it left (rate windows, profiles, a pause), as one by one;
    only the records wait, to be appended in order in one transaction per store (one commit instead of one
    per action). The decisions are returned once every record is committed; a decision whose record could
    not be written is a denial (`audit_unavailable`), though the checks after it were made as if it stood,
    and its agent's profile may have learned it. If `decide` raises, what was decided is still committed.
    """
    held: list[tuple[Guard, dict[str, Any]]] = []
    token = _HELD.set(held)
    try:
        decisions = decide()
    finally:
        _HELD.reset(token)
        failed = _commit(held)
    return [_denied_unaudited(d, failed[d.action_id]) if d.action_id in failed else d for d in decisions]


def _commit(held: list[tuple[Guard, dict[str, Any]]]) -> dict[str, AuditError]:
    """Append the held records, each store's in one go; the errors of those not written, by record id."""
    by_store: dict[int, list[tuple[Guard, dict[str, Any]]]] = {}
    for guard, body in held:
        by_store.setdefault(id(guard.audit), []).append((guard, body))
    failed: dict[str, AuditError] = {}
    for records in by_store.values():
        results = records[0][0].audit.append_many([body for _, body in records])
        for (guard, body), result in zip(records, results, strict=True):
            if isinstance(result, AuditError):
                guard.audit_failures += 1
                log.error("audit record %s (%s) not written: %s", body["record_id"], body.get("kind"), result)
                failed[body["record_id"]] = result
    return failed


def _unaudited(exc: AuditError) -> Reason:
    return Reason("audit_unavailable", f"the audit record could not be written: {exc}", 1.0, True)


def _denied_unaudited(decision: Decision, exc: AuditError) -> Decision:
    outcome = Outcome.BLOCKED if decision.outcome.allows else decision.outcome
    return replace(decision, allowed=False, outcome=outcome, reasons=(_unaudited(exc), *decision.reasons))


def _check_settings(**given: Any) -> None:
    """PolicyError unless each of the Guard's settings beside the policy has a type it can use: a policy file's
    `audit: [url]` made a Python list the audit trail (its `append` took every record, nothing was stored, and
    actions were allowed), and `keep_payloads: "false"` kept payloads, being a non-empty string."""
    for name, value in given.items():
        what, types = _SETTING_TYPES[name]
        if not isinstance(value, types):
            raise PolicyError(f"{name} must be {what}, not {type(value).__name__} {value!r:.80}")


_SETTING_TYPES: dict[str, tuple[str, tuple[type, ...]]] = {
    "audit": ("a store URL (a string), an audit store or None", (str, AuditStore, type(None))),
    "state": ("a state URL (a string), a state store or None", (str, StateStore, type(None))),
    "keep_payloads": ("true or false", (bool,)),
    "model": ("a model name, a path, a BehaviorModel or None", (str, Path, BehaviorModel, type(None))),
    "online": ("true, false or an OnlineScorer", (bool, OnlineScorer)),
    "home": ("a folder (a string or a path) or None", (str, Path, type(None))),
}


@dataclass(slots=True)
class _Beside:
    """What guards keep per state store, not per guard: guards rebuilt over one store (the service's, after a
    policy change or a model reload) keep each agent's baseline, the streaming model and the stops the store
    refused."""

    profiles: ProfileStore  # in Redis when workers share the state, else in this process
    unsaved_stops: dict[str, _Stop]
    online: OnlineScorer | None = None  # made by the first guard over the store that scores with one

    def streaming_model(self) -> OnlineScorer:
        with _BESIDE_LOCK:
            if self.online is None:
                self.online = OnlineScorer(MODEL_FEATURES)
            return self.online


_BESIDE_STATE: weakref.WeakKeyDictionary[StateStore, _Beside] = weakref.WeakKeyDictionary()
_BESIDE_LOCK = threading.Lock()


def _beside(state: StateStore) -> _Beside:
    with _BESIDE_LOCK:
        beside = _BESIDE_STATE.get(state)
        if beside is None:
            profiles = RedisProfiles(state) if isinstance(state, RedisState) else MemoryProfiles()
            beside = _BESIDE_STATE[state] = _Beside(profiles, {})
        return beside


def _behavior_scorer(
    model: str | Path | BehaviorModel | None, online: bool | OnlineScorer, beside: _Beside
) -> BehaviorScorer | None:
    """The behavioral scorer a Guard was configured with; the shipped default model is optional. `online` is
    True for the streaming model of the guards over this state store, or the streaming model to use."""
    loaded = model if isinstance(model, BehaviorModel) or model is None else load_installed(model)
    streaming = online if isinstance(online, OnlineScorer) else beside.streaming_model() if online else None
    if loaded is None and streaming is None:
        return None
    return BehaviorScorer(loaded, streaming, beside.profiles)


def _volume_of(result: Any, **measures: Callable[[Any], int] | None) -> tuple[dict[str, int | None], str | None]:
    """The rows and bytes a tool's measures give for `result`, and a note naming those that are not a valid
    count (such as a DB-API rowcount of -1, "unknown") or that raised: those are left out rather than recorded,
    since the tool ran and its outcome must be recorded all the same."""
    counts: dict[str, int | None] = {}
    refused = []
    for unit, measure in measures.items():
        try:
            counts[unit] = outcome_amount(unit, measure(result)) if measure else None
        except ValueError as exc:
            counts[unit] = None
            refused.append(f"{exc} (not counted)")
        except Exception as exc:  # the measure itself failed on this result
            counts[unit] = None
            refused.append(f"measuring {unit} raised {type(exc).__name__}: {exc} (not counted)")
    return counts, "; ".join(refused) or None


def _fingerprint(agent: str, atype: ActionType, read: Readings, payload_json: bytes) -> str:
    """What identifies 'the same action' for a one-time approval. The resource counts by all its readings,
    symlinks resolved: `/r/x.csv` and `/r/link/../x.csv` have one canonical form but open different files."""
    resource = read.identity.encode()
    return hashlib.sha256(b"\x1f".join((agent.encode(), atype.value.encode(), resource, payload_json))).hexdigest()


def _kept_payload(payload: Any) -> Any:
    return mask(json.loads(canonical_json(payload)))  # json, not orjson: it keeps integers beyond 64 bits
