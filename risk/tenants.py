"""Many tenants, one decision point: a Guard per (tenant, policy), all over one audit store and one state store.

Agent ids are namespaced per tenant inside the guards, the state store and the audit trail (`team-a/bot-1`),
so rate windows, pauses, approvals and audit records of one tenant never meet another's; a tenant's own
events (policy changes, refused requests) are recorded under `team-a/*`, the service's under `*`.

Policies live in the catalog: a service default (tenant `*`), one per tenant, and per-agent overrides, each
change an audited `policy_change` record with the old and new policy hash. Every process re-reads the
catalog's generation counters at most once per `refresh_seconds`, so a change made through one worker
reaches the others within that time. Idempotency keys map to the first decision made under them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from risk.actions import AgentStatus, Decision, Outcome, Reason
from risk.audit.record import canonical_json
from risk.audit.store import AuditQuery, AuditStore, utc_time
from risk.catalog import Catalog
from risk.errors import RiskError, StateError
from risk.features import MODEL_FEATURES
from risk.guard import Guard, decided_together
from risk.idempotency import IdempotencyConflict, IdempotencyKeys
from risk.keys import ApiKey, check_tenant
from risk.policy import Policy
from risk.rollback import RollbackReport
from risk.scoring.model import DEFAULT_MODEL, BehaviorModel, ModelError, load_installed, load_model, models_folder
from risk.scoring.online import OnlineScorer
from risk.state import AgentState, StateStore
from risk.tenant_policies import SERVICE_DEFAULT, PolicyView, TenantPolicies, policy_file

log = logging.getLogger("risk")

AGENT_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+=-]{0,127}")
# A check's idempotency key is for its retries: a repeat within this many seconds gets the first decision, a later
# one is decided afresh (and recorded). Kept for the keys' whole retention, a first allow let a running agent run
# the same action again for days, past any policy change or rate limit, with no record of it.
CHECK_REPLAY_SECONDS = 600.0
RECENT_ACTIONS = 100_000  # action id -> agent, for outcomes, before falling back to the audit trail
# Agent ids a tenant may use: each one costs state (a profile, windows) for as long as the state store lives,
# so an agent key inventing ids could otherwise exhaust the service's memory or its Redis.
DEFAULT_MAX_AGENTS = 10_000
_STOPPED = (Outcome.PAUSED, Outcome.ROLLED_BACK)


class ConflictError(RiskError):
    """The request contradicts the current state: approving a running agent, reusing an idempotency key."""


class NotFoundError(RiskError):
    """No such thing in this tenant (another tenant's things are not found either)."""


class NotBoundError(RiskError):
    """The caller's key is bound to other agents than the one this names (see `ApiKey.agents`)."""


class AgentLimitError(ConflictError):
    """The tenant has its `max_agents` agents already and this is not one of them: nothing of it is kept."""


def check_agent(agent_id: str) -> str:
    """`agent_id` if it is a valid agent id: 1-128 of letters, digits and . _ : @ + = -, starting alphanumeric.

    >>> check_agent("claims-analyst")
    'claims-analyst'
    """
    if not isinstance(agent_id, str) or not AGENT_PATTERN.fullmatch(agent_id):
        raise ValueError(
            f"agent_id {agent_id!r} must be 1-128 letters, digits or . _ : @ + = -, starting with a letter or digit"
        )
    return agent_id


def namespaced(tenant: str, agent_id: str) -> str:
    return f"{tenant}/{agent_id}"


@dataclass(frozen=True, slots=True)
class ActionRequest:
    """One action as a caller of the service describes it (agent id local to the tenant)."""

    agent_id: str
    action_type: str
    resource: str
    payload: Any = None
    session_id: str | None = None
    task: str | None = None  # the instruction the agent carries out (Guard.check's `task`)


@dataclass(frozen=True, slots=True)
class Approval:
    agent_id: str
    state: AgentState
    decision: dict[str, Any]


@dataclass
class Report:
    """What became of a batch of reported records."""

    accepted: int = 0
    duplicates: int = 0
    fail_open: int = 0  # accepted decisions: actions a client let run unchecked
    rejected: list[dict[str, str]] = field(default_factory=list)


@dataclass
class _Cached:
    guard: Guard
    policy_hash: str


class Tenants:
    """The service's decision point: routes each action to its tenant's guard and keeps tenants apart.

    >>> import tempfile
    >>> from risk.audit.store import open_audit
    >>> from risk.state import MemoryState
    >>> home = tempfile.mkdtemp()
    >>> tenants = Tenants(Catalog(f"sqlite:///{home}/catalog.db"), open_audit(f"sqlite:///{home}/audit.db"),
    ...                   MemoryState(), model=None)
    >>> d = tenants.check("team-a", ActionRequest("bot", "file_read", "/reports/q3.csv"))
    >>> d.allowed, d.agent_id
    (True, 'bot')
    """

    def __init__(
        self,
        catalog: Catalog,
        audit: AuditStore,
        state: StateStore,
        *,
        model: str | None = DEFAULT_MODEL,
        online: bool = False,
        home: str | Path | None = None,
        refresh_seconds: float = 1.0,
        clock: Callable[[], float] = time.time,
        max_agents: int | None = DEFAULT_MAX_AGENTS,
    ) -> None:
        self.catalog = catalog
        self.idempotency = IdempotencyKeys(catalog, clock=clock)
        self.audit = audit
        self.state = state
        self.model_spec = model
        self.online = online
        self.home = home
        self.refresh_seconds = refresh_seconds
        self._clock = clock
        self._lock = threading.RLock()
        self._guards: dict[tuple[str, str], _Cached] = {}
        # (tenant, action id) -> agent: per tenant, so another tenant reporting an action id cannot take it away
        self._recent: OrderedDict[tuple[str, str], str] = OrderedDict()
        self.max_agents = max_agents
        self._admitted: set[tuple[str, str]] = set()  # agents the state store has admitted, not asked again
        # Each tenant's own streaming model (with `online`): one learned from every tenant's outcomes would let one
        # tenant's traffic raise another's scores, or teach it that another's anomalies are normal.
        self._streaming: dict[str, OnlineScorer] = {}
        self._model = self._load_model()
        self.policies = TenantPolicies(catalog, self.record)
        self._generations: dict[str, int] = {}
        self._checked_at = -float("inf")
        self._refresh(force=True)

    # ---- decisions ---------------------------------------------------------------------------

    def check(
        self, tenant: str, action: ActionRequest, idempotency_key: str | None = None, caller: ApiKey | None = None
    ) -> Decision:
        """Decide `action` for `tenant`; a repeated `idempotency_key` (of the same agent) gets the first decision
        and records nothing, unless that allowed the action and the agent has been paused or terminated since.
        An action of an agent the `caller` key is not bound to is denied (`agent_not_bound`)."""
        check_agent(action.agent_id)
        # Not bound: denied afresh, never given the decision another key got under the same idempotency key.
        if idempotency_key is None or _binding(caller, action.agent_id) is not None:
            return self._decide(tenant, action, caller)
        key = _check_key(action.agent_id, idempotency_key)
        fingerprint = hashlib.sha256(canonical_json(asdict(action))).hexdigest()
        first = self._claim_check(tenant, key, fingerprint)
        if first is not None:
            replayed = Decision.from_dict(first)
            if self._replay_holds(tenant, action.agent_id, replayed):
                return replayed
            return self._decide(tenant, action, caller)
        try:
            decision = self._decide(tenant, action, caller)
        except BaseException:
            self.idempotency.release(tenant, key)
            raise
        self.idempotency.settle(tenant, key, decision.to_dict())
        return decision

    def check_many(
        self, tenant: str, actions: list[tuple[ActionRequest, str | None]], caller: ApiKey | None = None
    ) -> list[Decision]:
        """Decide (action, idempotency key) pairs in order, as `check` would one by one, with their audit records
        committed together: one commit for the batch. A key repeated in the batch gets its first decision."""
        for action, _ in actions:
            check_agent(action.agent_id)
        given: dict[int, Decision] = {}  # answered under a key by an earlier request
        repeats: dict[int, int] = {}  # index -> the index whose decision its key names
        claimed: dict[str, tuple[int, str]] = {}  # key -> (index it answers, the action's fingerprint)
        try:
            for index, (action, client_key) in enumerate(actions):
                if client_key is None or _binding(caller, action.agent_id) is not None:  # afresh, as in `check`
                    continue
                key = _check_key(action.agent_id, client_key)
                fingerprint = hashlib.sha256(canonical_json(asdict(action))).hexdigest()
                if key in claimed:
                    first, first_fingerprint = claimed[key]
                    if fingerprint != first_fingerprint:
                        raise IdempotencyConflict(
                            f"idempotency key {client_key!r} was used for a different action; use a new key"
                        )
                    repeats[index] = first
                elif (first_answer := self._claim_check(tenant, key, fingerprint)) is not None:
                    given[index] = Decision.from_dict(first_answer)
                else:
                    claimed[key] = (index, fingerprint)
            for index, replayed in list(given.items()):  # one that does not hold is decided afresh below
                if not self._replay_holds(tenant, actions[index][0].agent_id, replayed):
                    del given[index]
            to_decide = [i for i in range(len(actions)) if i not in given and i not in repeats]
            decided = dict(
                zip(
                    to_decide,
                    decided_together(lambda: self._decide_in_turn(tenant, [actions[i][0] for i in to_decide], caller)),
                    strict=True,
                )
            )
        except BaseException:
            for key in claimed:
                self.idempotency.release(tenant, key)
            raise
        for key, (index, _) in claimed.items():
            self.idempotency.settle(tenant, key, decided[index].to_dict())
        answers = decided | given
        return [answers[repeats.get(i, i)] for i in range(len(actions))]

    def _claim_check(self, tenant: str, key: str, fingerprint: str) -> dict[str, Any] | None:
        """The first decision under a check's idempotency key, if the repeat is a retry (see CHECK_REPLAY_SECONDS)."""
        return self.idempotency.claim(tenant, key, fingerprint, fresh_for=CHECK_REPLAY_SECONDS)

    def _replay_holds(self, tenant: str, agent_id: str, first: Decision) -> bool:
        """Whether a repeated idempotency key gets its first decision: not an allow once the agent is paused or
        terminated (or the state store cannot say), which is decided afresh, denied by the kill switch and
        recorded: a key used again must not let a stopped agent run what it was once allowed."""
        if not first.allowed:
            return True
        try:
            return self.status(tenant, agent_id).status is AgentStatus.RUNNING
        except StateError:
            return False

    def _decide_in_turn(self, tenant: str, requests: list[ActionRequest], caller: ApiKey | None) -> list[Decision]:
        """Decide `requests` one after the other. Once the state store fails for one, the rest are denied without
        asking it: each would wait out the store's timeout (2 s a check against a Redis that hangs, half an
        hour for a batch of 1,000) to be denied all the same."""
        decisions: list[Decision] = []
        failed: Reason | None = None
        for action in requests:
            decision = self._decide(tenant, action, caller, refusal=failed)
            if failed is None and decision.reasons and decision.reasons[0].code == "state_unavailable":
                why = f"not asked: it failed for an earlier action of this batch ({decision.reasons[0].message})"
                failed = Reason("state_unavailable", why, 1.0, True)
            decisions.append(decision)
        return decisions

    def _decide(
        self, tenant: str, action: ActionRequest, caller: ApiKey | None = None, *, refusal: Reason | None = None
    ) -> Decision:
        """Decide one action; with `refusal`, deny it for that reason without asking the state store."""
        agent = namespaced(tenant, action.agent_id)
        guard = self.guard(tenant, action.agent_id)
        # Not bound: refused before admission, so an agent id the key may not use gets no state and no place.
        refusal = refusal or _binding(caller, action.agent_id) or self._admission(tenant, action.agent_id)
        if refusal is None:
            decision = guard.check(
                action.action_type, action.resource, action.payload, agent_id=agent, session_id=action.session_id,
                task=action.task,
            )  # fmt: skip
        else:
            decision = guard.refuse(
                action.action_type, action.resource, action.payload,
                reason=refusal, agent_id=agent, session_id=action.session_id,
            )  # fmt: skip
        self._remember(tenant, decision.action_id, agent)
        decision = replace(decision, agent_id=action.agent_id)
        if decision.outcome in _STOPPED and decision.reasons[0].code != "agent_paused":
            try:  # the index of pending approvals; the pause itself is in the state store already
                self.catalog.run(
                    "INSERT INTO risk_pending (agent_id, action_id, decision) VALUES (?, ?, ?) "
                    "ON CONFLICT (agent_id) DO UPDATE SET action_id = excluded.action_id, decision = excluded.decision",
                    (agent, decision.action_id, json.dumps(decision.to_dict())),
                )
            except RiskError:
                log.exception("pending approval of %s not indexed", agent)
        return decision

    def _admission(self, tenant: str, agent_id: str) -> Reason | None:
        """Why the tenant may not have this agent (past its `max_agents`, or the state store failed), or None."""
        try:
            if self._admit(tenant, agent_id):
                return None
        except StateError as exc:
            return Reason("state_unavailable", f"the guard's state store failed: {exc}", 1.0, True)
        return Reason("agent_limit", self._limit_message(tenant), 1.0, True)

    def _admit(self, tenant: str, agent_id: str) -> bool:
        """Whether `agent_id` is one of the tenant's agents, made one if the tenant has room (StateError if the
        state store fails)."""
        if self.max_agents is None or (tenant, agent_id) in self._admitted:
            return True
        if not self.state.admit(f"agents:{tenant}", agent_id, self.max_agents):
            return False
        with self._lock:
            self._admitted.add((tenant, agent_id))
        return True

    def _admitted_for(self, tenant: str, agent_id: str, doing: str) -> None:
        """Admit the agent as a check would before `doing` something that keeps state of it (an outcome feeds
        its profile and volume windows, a terminate or reset sets its kill-switch state); AgentLimitError past
        the tenant's limit, so an agent refused with `agent_limit` gets no state by another way."""
        if not self._admit(tenant, agent_id):
            raise AgentLimitError(f"cannot {doing} agent {agent_id!r}: {self._limit_message(tenant)}")

    def _limit_message(self, tenant: str) -> str:
        return (
            f"tenant {tenant} has its {self.max_agents} agents already (the service's RISK_MAX_AGENTS); "
            "an agent id names an agent, a session_id each of its runs"
        )

    def report(self, tenant: str, records: list[dict[str, Any]], actor: str, caller: ApiKey | None = None) -> Report:
        """Store what a client let run while the service was unreachable (its fail-open spool), each record once.

        A `decision` record (one the client let run with on_error="allow", or denied because the service was
        unreachable) becomes an audit record marked as reported (actor, `detail.reported_at`), never as decided
        here, and so does a `rollback` step the client ran; an `outcome` record is recorded as
        `record_outcome` would. Each record's
        `idempotency_key` makes a resent record a duplicate; a record that cannot be stored, or one of an agent
        the `caller` key is not bound to, is rejected.
        """
        result = Report()
        for record in records:
            key = f"report:{record['idempotency_key']}"
            try:
                if self.idempotency.claim(tenant, key, hashlib.sha256(canonical_json(record)).hexdigest()):
                    result.duplicates += 1
                    continue
            except IdempotencyConflict as exc:
                result.rejected.append({"idempotency_key": record["idempotency_key"], "reason": str(exc)})
                continue
            try:
                if record["kind"] in ("decision", "rollback"):
                    first = self._reported(tenant, record, actor, caller)
                else:
                    first = self.record_outcome(
                        tenant, record["action_id"], success=bool(record.get("success", True)),
                        error=record.get("error"), rows=record.get("rows"), bytes=record.get("bytes"), caller=caller,
                    )[1]  # fmt: skip
            except (NotFoundError, ConflictError, NotBoundError, ValueError) as exc:
                self.idempotency.release(tenant, key)
                result.rejected.append({"idempotency_key": record["idempotency_key"], "reason": str(exc)})
                continue
            except BaseException:
                self.idempotency.release(tenant, key)
                raise
            self.idempotency.settle(tenant, key, {"stored": True})
            if not first:  # an outcome the client also sent directly before it gave up waiting, or a known decision
                result.duplicates += 1
                continue
            result.accepted += 1
            result.fail_open += record["kind"] == "decision" and record.get("allowed", True)
        return result

    def _reported(self, tenant: str, record: dict[str, Any], actor: str, caller: ApiKey | None) -> bool:
        """Store a reported decision or rollback step; False for a decision already in the trail.

        A record never moves an action to another agent: the agent of a decided action is the one its outcomes
        are filed under and whose key may report them, so a key bound to one agent could otherwise take over
        another's actions by reporting their ids (ConflictError)."""
        agent = namespaced(tenant, check_agent(record["agent_id"]))
        _bound(caller, record["agent_id"], "report a record of")
        owner = self._owner(tenant, record["action_id"])
        if owner is not None and owner != agent:
            raise ConflictError(
                f"action {record['action_id']!r} was decided for another agent; a report cannot take it over"
            )
        if owner is not None and record["kind"] == "decision":
            return False
        now = _now(self._clock())
        try:
            ts = utc_time(record["ts"]) if record.get("ts") else now
        except ValueError:
            ts = now
        allowed = bool(record.get("allowed", True))
        if record["kind"] == "rollback":
            fields = {"outcome": record["outcome"], "detail": {**(record.get("detail") or {}), "reported_at": now}}
        else:
            fields = {
                "session_id": record.get("session_id"),
                "action_type": record["action_type"],
                "resource": record["resource"],
                "payload_digest": record.get("payload_digest"),
                "reasons": record.get("reasons") or [],
                "decision": "allow" if allowed else "deny",
                "outcome": "allowed" if allowed else "blocked",
                "detail": {"reported_at": now, "fail_open": allowed, "error": record.get("error")},
            }
            if record.get("task_digest"):
                fields["task_digest"] = record["task_digest"]
        self.record(agent, {"ts": ts, "kind": record["kind"], "action_id": record["action_id"], "actor": actor,
                            **fields})  # fmt: skip
        if record["kind"] == "decision":
            self._remember(tenant, record["action_id"], agent)
        return True

    def record_outcome(
        self,
        tenant: str,
        action_id: str,
        *,
        success: bool,
        error: str | None,
        rows: int | None,
        bytes: int | None,  # noqa: A002 - the unit's name
        caller: ApiKey | None = None,
    ) -> tuple[str, bool]:
        """Record what an action of `tenant` did: (its agent id, local; whether this call recorded it).
        NotFoundError for another tenant's action, NotBoundError for an agent the `caller` key is not bound to.

        The same outcome of one action is recorded once (False for a repeat): a client that gave up waiting for
        the answer spools the outcome and sends it again later, and its rows must not count twice toward the
        volume limit."""
        agent = self._agent_of(tenant, action_id)
        local = agent.split("/", 1)[1]
        _bound(caller, local, "record an outcome of")
        self._admitted_for(tenant, local, "record an outcome of")
        outcome = {"action_id": action_id, "success": success, "error": error, "rows": rows, "bytes": bytes}
        digest = hashlib.sha256(canonical_json(outcome)).hexdigest()
        key = f"outcome:{action_id}:{digest[:32]}"  # another outcome of the action is another record
        if self.idempotency.claim(tenant, key, digest) is not None:
            return local, False
        try:
            self.guard(tenant, local).record_outcome(
                action_id, success=success, error=error, rows=rows, bytes=bytes, agent_id=agent
            )
        except BaseException:
            self.idempotency.release(tenant, key)
            raise
        self.idempotency.settle(tenant, key, {"agent_id": local})
        return local, True

    def _remember(self, tenant: str, action_id: str, agent: str) -> None:
        with self._lock:
            self._recent[(tenant, action_id)] = agent
            if len(self._recent) > RECENT_ACTIONS:
                self._recent.popitem(last=False)

    def _agent_of(self, tenant: str, action_id: str) -> str:
        """The agent of `tenant` whose action this is (NotFoundError if none)."""
        agent = self._owner(tenant, action_id)
        if agent is None:
            raise NotFoundError(f"no action {action_id!r} was decided for this tenant")
        return agent

    def _owner(self, tenant: str, action_id: str) -> str | None:
        """The agent of `tenant` that `action_id` was decided for, or None; only the tenant's own decisions
        are looked at, its first one for the id if there are several (a trail written before reports were
        refused an action id already decided)."""
        agent = self._recent.get((tenant, action_id))  # kept by tenant: always one of the tenant's
        if agent is None:
            found = (r.agent_id for r in self.audit.query(decisions_of(action_id)))
            agent = next((a for a in found if a.startswith(f"{tenant}/")), None)
        return agent

    # ---- the human side of the kill switch ---------------------------------------------------

    def status(self, tenant: str, agent_id: str) -> AgentState:
        return self.state.get_state(namespaced(tenant, check_agent(agent_id)))

    def approve(self, tenant: str, agent_id: str, actor: str) -> str | None:
        """Resume a paused agent and let the action that paused it run once; returns that action's id."""
        agent, guard = self._paused(tenant, agent_id, "approve")
        with self._still_paused(agent, agent_id, "approve"):
            approved = guard.approve(agent, actor=actor)
        self._settled(agent)
        return approved

    def resume(self, tenant: str, agent_id: str, actor: str) -> None:
        agent, guard = self._paused(tenant, agent_id, "resume")
        with self._still_paused(agent, agent_id, "resume"):
            guard.resume(agent, actor=actor)
        self._settled(agent)

    def terminate(self, tenant: str, agent_id: str, actor: str, reason: str) -> None:
        agent = namespaced(tenant, check_agent(agent_id))
        self._admitted_for(tenant, agent_id, "terminate")
        self.guard(tenant, agent_id).terminate(agent, actor=actor, reason=reason)
        self._settled(agent)

    def reset(self, tenant: str, agent_id: str, actor: str) -> None:
        agent = namespaced(tenant, check_agent(agent_id))
        self._admitted_for(tenant, agent_id, "reset")
        self.guard(tenant, agent_id).reset(agent, actor=actor)
        self._settled(agent)

    def rollback(self, tenant: str, agent_id: str, actor: str) -> RollbackReport:
        """Undo what the agent's undo steps can undo: this process's, and those ended processes left in its home
        (see the README's Rollback)."""
        agent = namespaced(tenant, check_agent(agent_id))
        return self.guard(tenant, agent_id).rollback(agent, actor=actor)

    def _paused(self, tenant: str, agent_id: str, verb: str) -> tuple[str, Guard]:
        agent = namespaced(tenant, check_agent(agent_id))
        status = self.state.get_state(agent).status
        if status is not AgentStatus.PAUSED:
            raise ConflictError(f"cannot {verb} agent {agent_id!r}: it is {status.value}, not paused")
        return agent, self.guard(tenant, agent_id)

    @contextmanager
    def _still_paused(self, agent: str, agent_id: str, verb: str) -> Iterator[None]:
        """A move refused because another reviewer moved the agent first is a conflict, not a store failure."""
        try:
            yield
        except StateError:
            status = self.state.get_state(agent).status
            if status is not AgentStatus.PAUSED:
                raise ConflictError(f"cannot {verb} agent {agent_id!r}: it is {status.value} now, not paused") from None
            raise

    def _settled(self, agent: str) -> None:
        """Drop the agent from the index of pending approvals (its state store entry is the truth)."""
        self.catalog.run("DELETE FROM risk_pending WHERE agent_id = ?", (agent,))

    def approvals(self, tenant: str) -> list[Approval]:
        """Paused agents of `tenant` with the action that paused them."""
        prefix = f"{tenant}/"
        # By the prefix itself, not a range of agent ids: PostgreSQL compares ranges by the database's collation,
        # and one that ignores punctuation (glibc's en_US) sorts "acme/bot" after "acme0", out of acme's range.
        rows = self.catalog.run(
            "SELECT agent_id, action_id, decision FROM risk_pending WHERE substr(agent_id, 1, ?) = ? ORDER BY agent_id",
            (len(prefix), prefix),
        ).rows
        found = []
        for agent, action_id, decision in rows:
            state = self.state.get_state(agent)
            if state.status is AgentStatus.PAUSED and state.pending_action_id == action_id:
                found.append(Approval(agent.removeprefix(prefix), state, json.loads(decision)))
            elif state.status is not AgentStatus.PAUSED:  # resumed elsewhere (another process, the SDK): drop it
                self.catalog.run("DELETE FROM risk_pending WHERE agent_id = ? AND action_id = ?", (agent, action_id))
        return found

    # ---- policies ----------------------------------------------------------------------------

    def policy(self, tenant: str, agent_id: str | None = None) -> PolicyView:
        """The policy governing `tenant` (or one of its agents), and where it comes from."""
        self._refresh()
        return self.policies.view(tenant, agent_id)

    def agent_overrides(self, tenant: str) -> dict[str, Policy]:
        self._refresh()
        return self.policies.overrides(tenant)

    def set_policy(self, tenant: str, agent_id: str | None, policy: Policy | None, actor: str) -> tuple[str, str]:
        """Set (or with None remove) the policy of `tenant` or one agent; returns (old hash, new hash), "" for none."""
        if tenant != SERVICE_DEFAULT:
            check_tenant(tenant)
        agent = check_agent(agent_id) if agent_id is not None else ""
        subject = "*" if tenant == SERVICE_DEFAULT else namespaced(tenant, agent or "*")
        return self.policies.set(tenant, agent, policy, actor=actor, subject=subject)

    def apply_policy_file(self, spec: str, actor: str = "policy-file") -> tuple[str, str]:
        """Apply `[TENANT=]FILE` (see `risk.tenant_policies.policy_file`); the same file again changes nothing."""
        tenant, agent, policy, name = policy_file(spec)
        return self.set_policy(tenant, agent, policy, actor=f"{actor}:{name}")

    # ---- models ------------------------------------------------------------------------------

    @property
    def model_version(self) -> str | None:
        return self._model.model_version if self._model is not None else None

    def models(self) -> list[dict[str, Any]]:
        """The model cards in $RISK_MODELS (or the shipped models folder)."""
        folder = models_folder()
        cards = []
        for path in sorted(folder.glob("*.json")):
            try:
                card = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(card, dict) and {"name", "version", "sha256"} <= card.keys():
                cards.append({k: card[k] for k in ("name", "version", "sha256", "features", "training") if k in card})
        return cards

    def reload_model(self, actor: str, tenant: str | None = None) -> tuple[str | None, str | None]:
        """Load the configured model again (a newer version, a replaced artifact) in every process.

        Returns (old version, new version); ModelError (a model that is gone, altered or half written) leaves the
        current model in place. The reload is recorded for the service (agent `*`) and, when a tenant's admin
        asked for it, for that tenant too, whose auditors see only the tenant's own records.
        """
        old = self.model_version
        model = self._load_model(reload=True)
        new = model.model_version if model is not None else None
        event = {"kind": "model_reload", "actor": actor, "model_version": new, "detail": {"old": old}}
        self.record("*", event)
        if tenant is not None:
            self.record(namespaced(tenant, "*"), event)
        with self._lock:
            self.catalog.run("UPDATE risk_generations SET value = value + 1 WHERE name = 'model'")
            self._generations = dict(self.catalog.run("SELECT name, value FROM risk_generations").rows)
            self._model = model
            self._guards.clear()
        return old, new

    def _load_model(self, *, reload: bool = False) -> BehaviorModel | None:
        """The configured model. At start the default model may be missing (`load_installed`); a reload never
        trades the running model for none."""
        if self.model_spec is None:
            return None
        return load_model(self.model_spec) if reload else load_installed(self.model_spec)

    # ---- guards, refresh, records ------------------------------------------------------------

    def guard(self, tenant: str, agent_id: str) -> Guard:
        """The guard for this agent of `tenant`: its override's, else the tenant's."""
        self._refresh()
        override = self.policies.has_own(tenant, agent_id)
        view = self.policy(tenant, agent_id if override else None)
        key = (tenant, agent_id if override else "")
        cached = self._guards.get(key)
        if cached is not None and cached.policy_hash == view.policy.policy_hash:
            return cached.guard
        with self._lock:
            cached = self._guards.get(key)
            if cached is None or cached.policy_hash != view.policy.policy_hash:
                if self.online and tenant not in self._streaming:
                    self._streaming[tenant] = OnlineScorer(MODEL_FEATURES)
                guard = Guard(
                    agent_id=namespaced(check_tenant(tenant), agent_id if override else "*"),
                    audit=self.audit,
                    state=self.state,
                    model=self._model,
                    online=self._streaming[tenant] if self.online else False,
                    home=self.home,
                    clock=self._clock,
                    **view.policy.model_dump(),
                )
                cached = self._guards[key] = _Cached(guard, view.policy.policy_hash)
            return cached.guard

    def _refresh(self, *, force: bool = False) -> None:
        """Re-read policies (and the model) when another process changed them; at most once per refresh period."""
        now = time.monotonic()
        if not force and now - self._checked_at < self.refresh_seconds:
            return
        with self._lock:
            if not force and now - self._checked_at < self.refresh_seconds:
                return
            generations = dict(self.catalog.run("SELECT name, value FROM risk_generations").rows)
            if generations.get("policies") != self._generations.get("policies"):
                self.policies.load()
            if "model" in self._generations and generations.get("model") != self._generations["model"]:
                try:
                    self._model = self._load_model(reload=True)
                    self._guards.clear()
                except ModelError:
                    log.exception("model reload failed; scoring with %s", self.model_version)
            self._generations = generations
            self._checked_at = now

    def record(self, agent_id: str, fields: dict[str, Any]) -> None:
        """Append one event to the audit trail; raises AuditError if it cannot be written."""
        record_event(self.audit, agent_id, fields, self._clock())

    def ready(self) -> dict[str, str]:
        """Each store's answer to a cheap read: "ok" or the error."""
        probes: dict[str, Callable[[], object]] = {
            "audit": lambda: self.audit.query(AuditQuery(limit=1)),
            "state": lambda: self.state.get_state("*"),
            "catalog": lambda: self.catalog.run("SELECT 1"),
        }
        answers = {}
        for name, probe in probes.items():
            try:
                probe()
                answers[name] = "ok"
            except Exception as exc:  # any failure means not ready; the message says which store and why
                answers[name] = f"{type(exc).__name__}: {exc}"
        return answers


def _check_key(agent_id: str, key: str) -> str:
    """Where a check's idempotency key is kept: per agent, so that one agent's key never blocks (409) or
    answers another's check, and apart from the keys the service makes for outcomes and reports."""
    return f"check:{agent_id}:{key}"


def decisions_of(action_id: str) -> AuditQuery:
    """The decision records of `action_id`, oldest first, in every tenant: an action has one, and a report adds at
    most one per tenant (for an id a tenant's client made itself). No agent prefix, although only one tenant's
    are wanted: PostgreSQL planned a prefix on a trail not yet analyzed as a scan of the tenant's every record
    (1.4 ms at 30,000), and kept that plan in the prepared statement; by the action id alone it is one index
    lookup at any size."""
    return AuditQuery(action_id=action_id, kind="decision", limit=100)


def record_event(audit: AuditStore, agent_id: str, fields: dict[str, Any], ts: float | None = None) -> None:
    """Append one event of the service (a refusal, a policy change, a key made) to `audit`, as the service
    records it; raises AuditError if it cannot be written."""
    audit.append({"record_id": os.urandom(16).hex(), "ts": _now(time.time() if ts is None else ts),
                  "agent_id": agent_id, **fields})  # fmt: skip


def _binding(caller: ApiKey | None, agent_id: str) -> Reason | None:
    """Why `caller` may not send actions of `agent_id` (its key is bound to other agents), or None."""
    if caller is None or caller.may_act_as(agent_id):
        return None
    return Reason("agent_not_bound", _not_bound(caller, agent_id), 1.0, True)


def _bound(caller: ApiKey | None, agent_id: str, doing: str) -> None:
    """NotBoundError unless `caller` may act as `agent_id`."""
    if caller is not None and not caller.may_act_as(agent_id):
        raise NotBoundError(f"cannot {doing} agent {agent_id!r}: {_not_bound(caller, agent_id)}")


def _not_bound(caller: ApiKey, agent_id: str) -> str:
    return f"key {caller.key_id} is bound to agents {', '.join(caller.agents or ())}, not to {agent_id!r}"


def _now(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds")
