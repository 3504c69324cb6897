"""Remote mode: the same Guard API, decided by the agent-risk service over HTTP.

`Guard(endpoint="https://risk.example", api_key=...)` returns a `RemoteGuard`. The policy, the risk score,
the kill switch and the audit trail live in the service; tools, file snapshots and other local undo steps stay
in this process, as they must.

Fail closed: when the service cannot be reached or answers with a server error, the action is denied with reason
`service_unavailable`. `on_error="allow"` lets such actions run instead; each one is counted
(`fail_open_count`) and logged. Either way the decision made here is kept with its full record in a local
spool file that is sent to the service's audit trail once it answers again. Every spooled record carries an
idempotency key, so a record sent twice (the process died between sending and forgetting it) is stored once.
"""

from __future__ import annotations

import contextvars
import fcntl
import hashlib
import logging
import math
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

from risk.actions import (
    ActionType,
    AgentStatus,
    Decision,
    Outcome,
    Reason,
    checked_id,
    encoded_payload,
    outcome_amount,
    task_digest,
)
from risk.audit.record import canonical_json
from risk.audit.store import default_home
from risk.errors import PolicyError, RiskError, StateError
from risk.guard import Guard, current_task
from risk.policy import Policy
from risk.resources import readings
from risk.rollback import RollbackReport, UndoStep
from risk.state import AgentState

log = logging.getLogger("risk")

SPOOL_BATCH = 500  # records per request when the spool is sent
SPOOL_FAILURES_SET_ASIDE = 3  # flushes a record fails alone in, while later ones are stored, before it is set aside
FAILING_IN_A_ROW = 10  # records failing alone in a row, none stored between them: the service is failing, not they
SPOOL_RETRY_SECONDS = 30.0  # after a send that left records for the service, the next one is not before this
KEEPALIVE_SECONDS = 2.0  # below the service's keep-alive timeout (uvicorn's default 5 s)
LET_THROUGH_KEPT = 100_000  # fail-open action ids remembered, to spool an outcome the service cannot place yet


class ServiceError(RiskError):
    """The service refused a request (a wrong key, a role that may not do this, a bad request), or the request
    could not be made on this side (`status` 0); never a reason to fail open."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class RemoteGuard(Guard):
    """A Guard whose decisions are made by the service at `endpoint`. Construct it as `Guard(endpoint=...)`."""

    def __init__(
        self,
        api_key: str | None = None,
        agent_id: str = "default",
        *policy_args: Any,
        endpoint: str | None = None,
        on_error: str = "deny",
        timeout: float = 5.0,
        spool: str | Path | None = None,
        home: str | Path | None = None,
        clock: Callable[[], float] = time.time,
        transport: httpx.BaseTransport | None = None,
        **policy_kwargs: Any,
    ) -> None:
        if endpoint is None:
            raise PolicyError("RemoteGuard needs endpoint='http(s)://host:port' of an agent-risk service")
        if policy_args or policy_kwargs:
            given = sorted(policy_kwargs) or ["positional policy arguments"]
            raise PolicyError(
                f"in remote mode the policy lives in the service; remove {', '.join(given)} "
                "(an admin key sets policies with PUT /v1/policies)"
            )
        if not api_key:
            raise PolicyError("remote mode needs api_key= (create one with `risk keys create`)")
        # A key or endpoint httpx cannot send is refused here: from _call it would look like an outage, and
        # on_error="allow" would let every action through while the service is up.
        if not isinstance(api_key, str) or not api_key.isascii() or not api_key.isprintable() or " " in api_key:
            raise PolicyError(
                "api_key must be printable ASCII without spaces, tabs or line breaks (check for a trailing newline)"
            )
        _check_endpoint(endpoint)
        if on_error not in ("deny", "allow"):
            raise PolicyError(f"on_error must be 'deny' (the default) or 'allow', got {on_error!r}")
        if not isinstance(agent_id, str) or not agent_id:
            raise PolicyError("agent_id must be a non-empty string")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout < math.inf:
            raise PolicyError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.api_key = api_key
        self.agent_id = agent_id
        self.endpoint = endpoint.rstrip("/")
        self.on_error = on_error
        self.timeout = float(timeout)
        self.home = Path(home) if home is not None else default_home()
        self.spool = Spool(Path(spool) if spool is not None else self.home / default_spool_name(self.endpoint, api_key))
        shared = self.home / "spool.jsonl"  # where every guard spooled before: whose records it holds is unknown
        if spool is None and shared.exists() and shared.stat().st_size:
            log.warning("%s holds records spooled by an older version; send them with Guard(spool=...) and "
                        "the key that spooled them", shared)  # fmt: skip
        self.fail_open_count = 0
        self._failing_alone: dict[Any, int] = {}  # idempotency key -> flushes it failed alone in, later ones stored
        self._spool_retry_at = 0.0  # time.monotonic() before which sending the spool waits, unless flush() asks
        self._let_through: OrderedDict[str, None] = OrderedDict()  # action ids let through fail-open, newest last
        self._lock = threading.Lock()
        self.audit_failures = 0
        self._clock = clock
        self._undo = self._undo_log()
        self._client = httpx.Client(
            base_url=self.endpoint,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout,
            transport=transport,
            # Idle connections are dropped before the server drops them (uvicorn after 5 s): a request sent on a
            # connection the server is closing fails, and would be taken for an outage and denied.
            limits=httpx.Limits(keepalive_expiry=KEEPALIVE_SECONDS),
        )

    # ---- deciding -------------------------------------------------------------------------------

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
        atype = ActionType.parse(action_type)
        # What the embedded guard refuses, and the service would (a resource too long, as given or normalized):
        # refused here, so it can never be let through with on_error="allow" while the service is down.
        readings(resource)
        task = current_task(task)
        payload_json = encoded_payload(payload)  # refused here as the embedded guard refuses it, before sending
        agent = checked_id("agent_id", agent_id) or self.agent_id
        checked_id("session_id", session_id)
        if _SURROGATE.search(resource):  # not UTF-8, so no request carries it: denied here, as any policy denies it
            why = Reason("resource_control_characters", "resource has an unpaired surrogate character", 1.0, True)
            return self._decide_locally(
                atype, resource, payload_json, agent, session_id, task, why.message, refusal=why
            )
        body = {"agent_id": agent, "action_type": atype.value, "resource": resource, "payload": payload,
                "session_id": session_id, "task": _as_utf8(task) if task is not None else None}  # fmt: skip
        try:
            answer = self._call("POST", "/v1/check", json=body)
        except _Unreachable as exc:
            return self._decide_locally(atype, resource, payload_json, agent, session_id, task, str(exc))
        try:
            decision = Decision.from_dict(answer)
        except (KeyError, TypeError, ValueError) as exc:  # an answer that is not a decision is no answer
            problem = f"not a decision: {exc!r}"
            return self._decide_locally(atype, resource, payload_json, agent, session_id, task, problem)
        self._send_spool()
        if decision.outcome is Outcome.ROLLED_BACK:  # the service paused the agent; the undo steps live here
            self._rollback(agent, actor="guard")
        return decision

    def _decide_locally(
        self,
        atype: ActionType,
        resource: str,
        payload_json: bytes,
        agent: str,
        session_id: str | None,
        task: str | None,
        error: str,
        *,
        refusal: Reason | None = None,
    ) -> Decision:
        """The service did not answer: deny, or with on_error="allow" let the action run and spool its record.
        With `refusal` the action is denied for that reason whatever on_error says.

        An action is let through only once its record is in the spool: if the spool cannot be written, it is
        denied."""
        action_id = os.urandom(16).hex()
        allowed = self.on_error == "allow" and refusal is None
        if refusal is not None:
            why = refusal
        elif allowed:
            why = Reason("fail_open", f"allowed by on_error='allow': the risk service did not answer: {error}", 0.0)
        else:
            why = Reason("service_unavailable", f"the risk service did not answer: {error}", 1.0, True)
        record: dict[str, Any] = {
            "idempotency_key": action_id,
            "kind": "decision",
            "allowed": allowed,
            "ts": self._now(),
            "agent_id": _as_utf8(agent),
            "session_id": _as_utf8(session_id) if session_id is not None else None,
            "action_id": action_id,
            "action_type": atype.value,
            "resource": _as_utf8(resource),
            "payload_digest": hashlib.sha256(payload_json).hexdigest(),
            "reasons": [why.to_dict()],
            "error": error,
        }
        if task is not None:  # as a decided record carries it
            record["task_digest"] = task_digest(task)
        try:  # either way the service's audit trail gets the record once it answers again
            self.spool.add(record)
        except OSError as exc:
            unkept = (
                f"the risk service did not answer ({error}) and the spool {self.spool.path} cannot be written: {exc}"
            )
            allowed, why = False, Reason("service_unavailable", unkept, 1.0, True)
        if allowed:
            self.fail_open_count += 1
            with self._lock:
                self._let_through[action_id] = None
                if len(self._let_through) > LET_THROUGH_KEPT:
                    self._let_through.popitem(last=False)
            log.warning("FAIL-OPEN: allowing %s on %r: the service did not answer: %s", atype.value, resource, error)
        else:
            log.error("denying %s on %r: %s", atype.value, resource, why.message)
        outcome, score = (Outcome.ALLOWED, 0.0) if allowed else (Outcome.BLOCKED, 1.0)
        return Decision(action_id, agent, allowed, outcome, score, (why,), atype, resource, resource)

    def blocks(self, resource: str) -> bool:
        """Unknown here, where no policy is: the service holds it. True, so that the watch asks the service about
        the address too (a check, which its allow-list applies to as well)."""
        return True

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
        rows, bytes = outcome_amount("rows", rows), outcome_amount("bytes", bytes)  # noqa: A001 - as Guard refuses them
        checked_id("action_id", action_id, optional=False)
        body = {"action_id": action_id, "success": success, "error": error, "rows": rows, "bytes": bytes}
        spooled = {"idempotency_key": f"outcome:{action_id}", "kind": "outcome", "ts": self._now(), **body}
        try:
            answer = self._call("POST", "/v1/outcome", json=body)
            if not isinstance(answer.get("recorded"), bool):  # not the outcome endpoint's answer: not stored
                raise _Unreachable(f"/v1/outcome answered {answer!r:.200}")
        except _Unreachable as exc:  # the action ran already: keep its outcome for later
            self._spool_outcome(spooled, f"the service did not answer: {exc}")
        except ServiceError as exc:
            # An action let through while the service was down is unknown to it until the spool holding its
            # decision is sent: the outcome goes after that decision, and the spool is sent now.
            if exc.status != 404 or not (action_id in self._let_through or self.spool.holds(action_id)):
                raise
            if self._spool_outcome(spooled, "after its fail-open decision"):
                self._send_spool()

    def _spool_outcome(self, record: dict[str, Any], why: str) -> bool:
        """Keep an outcome for later; the tool ran already, so a spool that cannot be written is logged and
        counted (`audit_failures`), never raised into the caller, who would lose the tool's result."""
        try:
            self.spool.add(record)
        except OSError as exc:
            self.audit_failures += 1
            log.error("outcome of %s lost: not sent (%s) and not spooled: %s", record["action_id"], why, exc)
            return False
        log.warning("outcome of %s spooled %s", record["action_id"], why)
        return True

    # ---- the human side of the kill switch -------------------------------------------------------

    def status(self, agent_id: str | None = None) -> AgentState:
        found = self._reviewer("GET", agent_id, "")
        return AgentState(
            status=AgentStatus(found["status"]),
            reason=found.get("reason") or "",
            actor=found.get("actor") or "",
            pending_action_id=found.get("pending_action_id"),
        )

    # The service records the key that made each move as its actor; `actor` is kept for the embedded signature.

    def approve(self, agent_id: str | None = None, *, actor: str = "reviewer") -> str | None:
        answer = self._reviewer("POST", agent_id, "/approve")
        approved = answer.get("approved_action_id")
        return str(approved) if approved is not None else None

    def resume(self, agent_id: str | None = None, *, actor: str = "reviewer") -> None:
        self._reviewer("POST", agent_id, "/resume")

    def terminate(
        self, agent_id: str | None = None, *, actor: str = "reviewer", reason: str = "terminated by a reviewer"
    ) -> None:
        self._reviewer("POST", agent_id, "/terminate", {"reason": reason})

    def reset(self, agent_id: str | None = None, *, actor: str = "reviewer") -> None:
        self._reviewer("POST", agent_id, "/reset")

    def _rollback_window(self) -> float:
        return ROLLBACK_WINDOW

    def _rollback(self, agent: str, *, actor: str, only: UndoStep | None = None) -> RollbackReport:
        """Undo what this process did for the agent (files, savepoints, compensations), newest first; each step
        is reported to the service's audit trail through the spool. Any key may do this: it undoes only the
        caller's own work."""

        def record(step: UndoStep) -> None:
            self.spool.add(
                {
                    "idempotency_key": os.urandom(16).hex(),  # a step retried later is another record
                    "kind": "rollback",
                    "ts": self._now(),
                    "agent_id": agent,
                    "action_id": step.action_id,
                    "outcome": step.status.value,
                    "detail": {"step": step.description, "error": step.error, "actor": actor},
                }
            )

        report = self._undo_steps(agent, record, only)
        self._send_spool()
        return report

    def _reviewer(self, method: str, agent_id: str | None, action: str, body: Any = None) -> dict[str, Any]:
        try:
            return self._call(method, f"/v1/agents/{agent_id or self.agent_id}{action}", json=body)
        except _Unreachable as exc:
            raise StateError(f"the risk service did not answer: {exc}") from None

    def _now(self) -> str:
        return datetime.fromtimestamp(self._clock(), UTC).isoformat(timespec="microseconds")

    # ---- transport -------------------------------------------------------------------------------

    def _call(self, method: str, path: str, *, json: Any = None) -> dict[str, Any]:
        """The JSON answer; _Unreachable when the service is down or failing, ServiceError when it refuses or
        the request could not be made here (only a failure on the way to the service may fail open)."""
        # canonical_json, as the embedded guard records a payload: values JSON lacks go as their text.
        content = None if json is None else canonical_json(json)
        try:
            response, body = self._send(method, path, content)
        except _TRANSPORT_FAILURES as exc:
            raise _Unreachable(self._redacted(f"{type(exc).__name__}: {exc}")) from None
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            why = self._redacted(f"{type(exc).__name__}: {exc}")
            raise ServiceError(f"{method} {path}: the request could not be sent: {why}", 0) from None
        if response.status_code >= 500:
            raise _ServerError(f"HTTP {response.status_code} from {path}")
        if response.is_redirect:  # an endpoint that moved (http to https, say) is wrong until it is changed
            where = self._redacted(response.headers.get("Location", "?"))
            raise ServiceError(f"{method} {path}: HTTP {response.status_code}: the endpoint redirects to {where}",
                               response.status_code)  # fmt: skip
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            answer = None
        # A refusal is a refusal whatever its body: a proxy's or an ingress's 401, 403 or 404 page is HTML, and
        # taken for an outage it let the action through with on_error="allow".
        if response.status_code >= 400:
            text = body[:200].decode("utf-8", "replace")
            detail = answer.get("detail", answer) if isinstance(answer, dict) else answer or text
            why = self._redacted(f"{method} {path}: HTTP {response.status_code}: {detail}")
            raise ServiceError(why, response.status_code)
        if answer is None:
            raise _Unreachable(f"HTTP {response.status_code} from {path} with a body that is not JSON")
        if not isinstance(answer, dict):
            raise _Unreachable(f"HTTP {response.status_code} from {path} with an unexpected body")
        return answer

    def _send(self, method: str, path: str, content: bytes | None) -> tuple[httpx.Response, bytes]:
        """The response and its whole body, within `timeout` seconds in all, or _Unreachable.

        httpx's timeout bounds each read, and a service that trickles its answer a byte at a time starts a new
        read with every byte: it would hold the caller for as long as it trickles. So the request runs in a
        thread of its own, which the caller waits for until the deadline; a thread left behind stops reading
        (and drops the connection) at the next part of the answer that comes, or at httpx's timeout."""
        deadline = time.monotonic() + self.timeout
        result: list[tuple[httpx.Response, bytes] | Exception] = []

        def send() -> None:
            try:
                with self._client.stream(method, path, content=content,
                                         headers={"Content-Type": "application/json"}) as response:  # fmt: skip
                    parts = []
                    for part in response.iter_bytes():
                        if time.monotonic() > deadline:
                            return  # the caller went on without it
                        parts.append(part)
                result.append((response, b"".join(parts)))
            except Exception as exc:  # raised in the caller's thread
                result.append(exc)

        # In the caller's context, so what instruments httpx (a trace's span) sees the request as the caller's.
        worker = threading.Thread(target=contextvars.copy_context().run, args=(send,), daemon=True,
                                  name="risk-remote-request")  # fmt: skip
        worker.start()
        worker.join(self.timeout)
        if not result:
            raise _Unreachable(f"no complete answer within {self.timeout} s")
        if isinstance(result[0], Exception):
            raise result[0]
        return result[0]

    def _redacted(self, text: str) -> str:
        """`text` without the key's secret (an httpx error may quote the Authorization header)."""
        key = self.api_key or ""
        key_id, _, secret = key.removeprefix("rk_").partition("_")
        if key.startswith("rk_") and secret:
            return text.replace(key, f"rk_{key_id}_<redacted>").replace(secret, "<redacted>")
        return text.replace(key, "<redacted key>")

    def _send_spool(self, *, now: bool = False) -> None:
        """Send what the spool holds, now that the service answers; keep what it could not take yet, and set
        aside (in `<spool>.rejected.jsonl`, for a person to look at) what it refused to store, and what it failed
        on alone (a server error on that record, while it stores the records after it) in
        SPOOL_FAILURES_SET_ASIDE flushes.

        Records go in order, and a record the service fails on keeps every later record of its action behind it:
        an outcome reaches the service after its decision, or the service cannot place it. After a send that
        left records for the service, the next waits SPOOL_RETRY_SECONDS, unless `now` (`flush()`)."""
        if not now and time.monotonic() < self._spool_retry_at:
            return
        if not self.spool.pending():
            return
        flush = _Flush()
        with self.spool.batches(SPOOL_BATCH, wait=now) as batches:
            if batches is None:  # another thread or process is sending it
                return
            for batch in batches:
                if not self._report(batch, flush):
                    break
            set_aside = list(flush.refused)
            for record, error, stored_before in flush.failing:
                key = record.get("idempotency_key")
                if flush.stored > stored_before:  # records after it were stored: it is this one the service fails on
                    self._failing_alone[key] = self._failing_alone.get(key, 0) + 1
                if self._failing_alone.get(key, 0) < SPOOL_FAILURES_SET_ASIDE:
                    continue
                why = f"{error} on this record alone, in {SPOOL_FAILURES_SET_ASIDE} flushes that stored later records"
                behind = flush.held.get(record.get("action_id"), [])
                set_aside += [{**record, "refused": why}] + [
                    {**r, "refused": f"kept behind {record['kind']} {key!r} of its action, set aside: {why}"}
                    for r in behind
                ]
                flush.done += [record, *behind]
            if set_aside:
                log.error("%d spooled records set aside in %s", len(set_aside), self.spool.rejected)
                self.spool.set_aside(set_aside)
            for record in flush.done:
                self._failing_alone.pop(record.get("idempotency_key"), None)
            batches.sent(flush.done)
            left_waiting = bool(batches.unsent())
        self._spool_retry_at = time.monotonic() + SPOOL_RETRY_SECONDS if left_waiting else 0.0

    def _report(self, batch: list[dict[str, Any]], flush: _Flush) -> bool:
        """Send `batch` to /v1/reports, noting in `flush` what became of each record; False when the service
        cannot take records now (unreachable, a key or role problem, or failing on every record it is sent):
        those not noted stay in the spool."""
        for record in batch:  # after a record of their action the service failed on: kept behind it, not sent
            if record.get("action_id") in flush.held:
                flush.held[record["action_id"]].append(record)
        batch = [r for r in batch if r.get("action_id") not in flush.held]
        if not batch:
            return True
        try:
            answer = self._call("POST", "/v1/reports", json={"records": batch})
        except ServiceError as exc:
            if exc.status not in (413, 422):
                log.error("spooled records not sent: %s", exc)
                return False
            if len(batch) == 1:
                flush.refused.append({**batch[0], "refused": str(exc)})
                flush.done.append(batch[0])
                return True
            # The request as a whole was refused (too large, or one record invalid): send it in halves, so only
            # a record refused on its own is set aside.
            return self._in_halves(batch, flush)
        except _ServerError as exc:
            if len(batch) > 1:  # the service failed on one record (those before it are stored), or on every one
                return self._in_halves(batch, flush)
            log.warning("spooled record %s not sent yet: %s", batch[0].get("idempotency_key"), exc)
            flush.failing.append((batch[0], str(exc), flush.stored))
            if batch[0].get("action_id") is not None:
                flush.held.setdefault(batch[0]["action_id"], [])
            flush.failing_in_a_row += 1
            return flush.failing_in_a_row < FAILING_IN_A_ROW
        except _Unreachable as exc:
            log.warning("spooled records not sent yet: %s", exc)
            return False
        accepted, duplicates, rejected = answer.get("accepted"), answer.get("duplicates"), answer.get("rejected")
        if not (
            type(accepted) is int
            and type(duplicates) is int
            and isinstance(rejected, list)
            and all(isinstance(r, dict) for r in rejected)
            and accepted + duplicates + len(rejected) == len(batch)
        ):  # an answer that does not account for every record: none of them is known to be stored
            log.warning("spooled records not sent yet: /v1/reports answered %.200r", answer)
            return False
        refused = {r.get("idempotency_key"): r.get("reason") for r in rejected}
        flush.refused += [{**r, "refused": refused[r.get("idempotency_key")]} for r in batch
                          if r.get("idempotency_key") in refused]  # fmt: skip
        flush.done += batch
        flush.stored += accepted + duplicates
        flush.failing_in_a_row = 0
        return True

    def _in_halves(self, batch: list[dict[str, Any]], flush: _Flush) -> bool:
        """`_report` of the first half of `batch`, then, if the service took it, of the second."""
        half = len(batch) // 2
        return self._report(batch[:half], flush) and self._report(batch[half:], flush)

    def flush(self) -> int:
        """Send the spool now, without the wait after a send that left records; returns how many still wait."""
        self._send_spool(now=True)
        return self.spool.pending()

    def close(self) -> None:
        self._client.close()


def default_spool_name(endpoint: str, api_key: str) -> str:
    """The spool file of one (endpoint, key): a spool is sent with the key of the guard that sends it, so guards
    of other keys or services on this machine must never share one. Named by a short hash of the endpoint and
    the key's public id (`rk_<key id>_<secret>`), never its secret.

    >>> default_spool_name("http://risk:8000", "rk_0123456789abcdef_secret")
    'spool-c59e5af416682cb5.jsonl'
    """
    key_id = api_key.split("_")[1] if api_key.startswith("rk_") and api_key.count("_") >= 2 else ""
    digest = hashlib.sha256(f"{endpoint} {key_id}".encode()).hexdigest()
    return f"spool-{digest[:16]}.jsonl"


# Seconds of local undo steps a remote rollback runs: the policy's default (the service's policy holds its own).
ROLLBACK_WINDOW: float = Policy.model_fields["rollback_window"].default


class _Unreachable(Exception):
    """The service did not answer, or answered with a server error."""


class _ServerError(_Unreachable):
    """The service answered with a server error (5xx)."""


@dataclass
class _Flush:
    """What one sending of the spool made of its records."""

    done: list[dict[str, Any]] = field(default_factory=list)  # stored, duplicates or refused: they leave the spool
    refused: list[dict[str, Any]] = field(default_factory=list)  # each with the service's reason, to set aside
    failing: list[tuple[dict[str, Any], str, int]] = field(default_factory=list)  # a server error on it alone,
    # with how many records were stored before it: more stored after it show the service failing on this one
    held: dict[Any, list[dict[str, Any]]] = field(default_factory=dict)  # a failing record's action -> its later ones
    stored: int = 0
    failing_in_a_row: int = 0


# Failures on the way to the service, which may be an outage. Every other httpx error (a header it cannot send,
# a URL it cannot use) is a mistake on this side that no retry fixes.
_TRANSPORT_FAILURES = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _as_utf8(text: str) -> str:
    """`text` with any unpaired surrogate as its backslash escape: a spool line and a request must be UTF-8."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _check_endpoint(endpoint: str) -> None:
    """ValueError unless `endpoint` is an http(s) URL with a host."""
    try:
        url = httpx.URL(endpoint)
    except (httpx.InvalidURL, TypeError) as exc:
        raise PolicyError(f"endpoint {endpoint!r} is not a URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise PolicyError(f"endpoint must look like 'http(s)://host:port', got {endpoint!r}")


class Spool:
    """A JSON Lines file of records waiting for the service; safe across threads and processes.

    >>> import tempfile; spool = Spool(Path(tempfile.mkdtemp()) / "s.jsonl")
    >>> spool.add({"idempotency_key": "k1"}); spool.add({"idempotency_key": "k2"})
    >>> with spool.batches(1) as batches:
    ...     for batch in batches or ():
    ...         batches.sent(batch)
    ...         break
    >>> spool.pending(), spool.read()
    (1, [{'idempotency_key': 'k2'}])
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rejected = path.with_suffix(".rejected.jsonl")
        self.bad = path.with_suffix(".bad")
        self._lock = threading.Lock()
        self._sending = threading.Lock()

    def add(self, record: dict[str, Any]) -> None:
        """Append one record and fsync it: a fail-open action is not lost if the process dies next."""
        line = orjson.dumps(record) + b"\n"
        with self._locked(), self.path.open("a+b") as handle:
            end = handle.seek(0, os.SEEK_END)
            if end and (handle.seek(end - 1), handle.read(1))[1] != b"\n":
                line = b"\n" + line  # after a torn last line (a crash mid-append), not glued to it
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def set_aside(self, records: list[dict[str, Any]]) -> None:
        """Keep records the service refused beside the spool, so nothing is lost and the rest can go on."""
        with self.rejected.open("ab") as handle:
            handle.write(b"".join(orjson.dumps(r) + b"\n" for r in records))
            handle.flush()
            os.fsync(handle.fileno())

    def read(self) -> list[dict[str, Any]]:
        return self._parsed()[0]

    def _parsed(self) -> tuple[list[dict[str, Any]], list[bytes]]:
        """The records, and the lines that are not one (a torn line from a crash mid-write, or not an object)."""
        if not self.path.exists():
            return [], []
        records: list[dict[str, Any]] = []
        torn: list[bytes] = []
        for line in self.path.read_bytes().splitlines():
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                record = None
            # A line that is JSON but not a record (123, null, a list) is set aside like a torn one: kept, it made
            # every check that sends the spool fail.
            if isinstance(record, dict):
                records.append(record)
            else:
                torn.append(line)
        return records, torn

    def holds(self, action_id: str) -> bool:
        """Whether a record of the action waits here."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return False
        with self._locked():
            return any(r.get("action_id") == action_id for r in self.read())

    def pending(self) -> int:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return 0
        with self._locked():
            return len(self.read())

    @contextmanager
    def batches(self, size: int, *, wait: bool = True) -> Iterator[_Batches | None]:
        """Batches of the spooled records, for one sender at a time (threads and processes); those marked `sent`
        are removed when the block ends. None, without `wait`, while another is sending.

        The spool is not locked while the batches are sent, only while it is read and rewritten: records added
        meanwhile (a fail-open action, an outcome) wait for no request, and stay, after those read."""
        with self._exclusive(self._sending, ".sending", wait=wait) as sending:
            if not sending:
                yield None
                return
            with self._locked():
                records, torn = self._parsed()
                self._keep_torn(torn)
            batches = _Batches(records, size)
            try:
                yield batches
            finally:
                with self._locked():
                    now, torn_now = self._parsed()  # what was read, then what was added since (only a sender removes)
                    self._keep_torn(torn_now[len(torn) :])
                    rest = batches.unsent() + now[len(records) :]
                    tmp = self.path.with_suffix(".tmp")
                    tmp.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rest))
                    os.replace(tmp, self.path)

    def _keep_torn(self, torn: list[bytes]) -> None:
        """Move lines that are not records to `bad`, for a human, once: the spool is rewritten without them."""
        if torn:
            log.error("spool %s has %d lines that are not records; moved to %s", self.path, len(torn), self.bad)
            with self.bad.open("ab") as bad:
                bad.write(b"".join(line + b"\n" for line in torn))

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._exclusive(self._lock, ".lock", wait=True):
            yield

    @contextmanager
    def _exclusive(self, among_threads: threading.Lock, suffix: str, *, wait: bool) -> Iterator[bool]:
        """Hold `among_threads` and the lock file beside the spool named by `suffix` (among processes); whether
        they were got: without `wait`, False at once where another holds either."""
        if not among_threads.acquire(blocking=wait):
            yield False
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path.with_suffix(suffix), "a") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    yield False
                    return
                try:
                    yield True
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)
        finally:
            among_threads.release()


class _Batches:
    def __init__(self, records: list[dict[str, Any]], size: int) -> None:
        self._records = records
        self._size = size
        self._sent: set[int] = set()

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        """Batches in order; who sends them stops where the service cannot take more."""
        for start in range(0, len(self._records), self._size):
            yield self._records[start : start + self._size]

    def sent(self, records: list[dict[str, Any]]) -> None:
        """Mark records of the batches as done with: they leave the spool."""
        self._sent.update(id(r) for r in records)

    def unsent(self) -> list[dict[str, Any]]:
        return [r for r in self._records if id(r) not in self._sent]
