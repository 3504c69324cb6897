"""Remote mode: `Guard(endpoint=..., api_key=...)` against the real service on a loopback port.

The behavior tests run twice, embedded and remote, through one `deployment` fixture: a policy goes in, an
agent's guard and a reviewer's guard come out, and the same assertions must hold. Then what only remote mode
has: failing closed when the service is down, and `on_error="allow"` with its spool, sent once the service
answers again, with nothing lost and nothing stored twice.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_server import Running, serve
from services import free_port

from api.settings import Settings
from risk import ActionDenied, ActionType, AgentStatus, Guard, KillSwitchMode, Outcome
from risk.audit.record import AuditRecord
from risk.audit.store import AuditQuery, verify_store
from risk.keys import Role
from risk.remote import RemoteGuard, ServiceError

BRIEF = {
    "allowed_action_types": [ActionType.DATABASE_QUERY, ActionType.FILE_READ],
    "allowed_resources": ["data.deidentified.*", "/reports/readonly/*"],
    "blocked_resources": ["data.phi.*", "*.pii", "prod.*"],
    "max_risk_score": 0.5,
    "max_actions_per_minute": 10,
    "mode": KillSwitchMode.PAUSE,
}


@dataclass
class Pair:
    agent: Guard  # what the agent acts through
    reviewer: Guard  # what a human approves, resumes and terminates through (remote: a reviewer key)
    records: Callable[[str], list[AuditRecord]]  # the audit records of one kind, wherever they are kept


Deploy = Callable[..., Pair]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with serve(Settings(home=tmp_path_factory.mktemp("service"), model=None)) as running:
        yield running


def _policy_json(policy: dict[str, Any]) -> dict[str, Any]:
    return {k: [str(v) for v in vs] if k == "allowed_action_types" else str(vs) if k == "mode" else vs
            for k, vs in policy.items()}  # fmt: skip


@pytest.fixture(params=["embedded", "remote"])
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deploy]:
    made: list[Guard] = []

    def embedded(**policy: Any) -> Pair:
        guard = Guard(**policy, agent_id="bot", audit=f"sqlite:///{tmp_path}/audit.db", home=tmp_path, model=None)
        made.append(guard)
        return Pair(guard, guard, lambda kind: guard.audit.query(AuditQuery(kind=kind, limit=1000)))

    def remote(**policy: Any) -> Pair:
        running: Running = request.getfixturevalue("service")
        tenant = f"t-{uuid.uuid4().hex[:10]}"
        with running.client(tenant, Role.ADMIN) as admin:
            assert admin.put("/v1/policies", json=_policy_json(policy)).status_code == 200
        keys = running.app.state.service.keys
        agent = Guard(endpoint=running.url, api_key=keys.create(tenant, Role.AGENT)[1], agent_id="bot", home=tmp_path)
        reviewer = Guard(endpoint=running.url, api_key=keys.create(tenant, Role.REVIEWER)[1], agent_id="bot")
        made.extend((agent, reviewer))
        audit = running.app.state.service.audit
        return Pair(agent, reviewer, lambda kind: audit.query(AuditQuery(kind=kind, agent_prefix=f"{tenant}/")))

    yield embedded if request.param == "embedded" else remote
    for guard in made:
        guard.close()


# ---- the same behavior, embedded and remote ---------------------------------------------------------------------


def test_the_brief_configuration_pauses_and_a_reviewer_approves_once(deployment: Deploy) -> None:
    pair = deployment(**BRIEF)
    assert isinstance(pair.agent, RemoteGuard) == (pair.agent is not pair.reviewer)
    ok = pair.agent.check(ActionType.DATABASE_QUERY, "data.deidentified.claims", {"sql": "SELECT count(*) FROM c"})
    assert (ok.allowed, ok.outcome) == (True, Outcome.ALLOWED)

    paused = pair.agent.check(ActionType.DATABASE_QUERY, "data.phi.patients")
    assert (paused.allowed, paused.outcome, paused.reasons[0].code) == (False, Outcome.PAUSED, "resource_blocked")
    after = pair.agent.check(ActionType.DATABASE_QUERY, "data.deidentified.claims")
    assert (after.allowed, after.reasons[0].code) == (False, "agent_paused")
    assert pair.reviewer.status("bot").status is AgentStatus.PAUSED

    assert pair.reviewer.approve("bot") == paused.action_id
    assert pair.agent.check(ActionType.DATABASE_QUERY, "data.phi.patients").allowed  # once
    assert pair.agent.check(ActionType.DATABASE_QUERY, "data.phi.patients").outcome is Outcome.PAUSED
    pair.reviewer.resume("bot")
    assert pair.agent.check(ActionType.FILE_READ, "/reports/readonly/q3.csv").allowed


def test_block_mode_denies_and_the_agent_goes_on(deployment: Deploy) -> None:
    pair = deployment(blocked_resources=["prod.*"], mode=KillSwitchMode.BLOCK)
    denied = pair.agent.check(ActionType.DATABASE_WRITE, "prod.users")
    assert (denied.allowed, denied.outcome) == (False, Outcome.BLOCKED)
    assert pair.agent.check(ActionType.DATABASE_WRITE, "staging.users").allowed
    assert pair.reviewer.status("bot").status is AgentStatus.RUNNING


def test_the_rate_limit_holds(deployment: Deploy) -> None:
    pair = deployment(max_actions_per_minute=3, mode=KillSwitchMode.BLOCK)
    decisions = [pair.agent.check(ActionType.API_CALL, "svc.ping") for _ in range(5)]
    assert [d.allowed for d in decisions] == [True, True, True, False, False]
    assert decisions[-1].reasons[0].code == "rate_limited"


def test_a_payload_with_values_json_lacks_is_checked_and_recorded_as_their_text(deployment: Deploy) -> None:
    pair = deployment(mode=KillSwitchMode.BLOCK)
    payload = {"path": Path("/reports/q3.csv"), "amount": Decimal("12.50"), "when": date(2026, 3, 1)}
    decision = pair.agent.check(ActionType.API_CALL, "svc.export", payload)
    assert decision.allowed
    [record] = [r for r in pair.records("decision") if r.action_id == decision.action_id]
    text = {"amount": "12.50", "path": "/reports/q3.csv", "when": "2026-03-01"}
    assert (
        record.payload_digest
        == hashlib.sha256(json.dumps(text, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    )


def _nested(depth: int) -> list[Any]:
    outer = inner = []
    for _ in range(depth - 1):
        inner.append([])
        inner = inner[0]
    return outer


def _containing_itself() -> dict[str, Any]:
    loop: dict[str, Any] = {"note": "a tool result that refers to itself"}
    loop["self"] = loop
    return loop


@pytest.mark.parametrize(
    ("payload", "says"),
    [(_nested(65), "nested more than 64"), (_nested(5000), "nested more than 64"), (_containing_itself(), "payload")],
)
def test_a_payload_too_deep_or_containing_itself_is_refused_before_anything_is_recorded(
    deployment: Deploy, payload: Any, says: str
) -> None:
    pair = deployment(mode=KillSwitchMode.BLOCK)
    assert pair.agent.check(ActionType.API_CALL, "svc.ok", _nested(64)).allowed  # the deepest the service takes
    with pytest.raises(ValueError, match=says):
        pair.agent.check(ActionType.API_CALL, "svc.deep", payload)
    assert [r.resource for r in pair.records("decision")] == ["svc.ok"]


@pytest.mark.parametrize("bad", [-1_000_000, 2**53 + 1, 1.5, float("nan"), "10", True])
def test_an_outcome_with_a_bad_row_count_is_refused_and_the_volume_limit_still_holds(
    deployment: Deploy, bad: Any
) -> None:
    """A negative count would take rows out of the window, NaN would stop it from adding up: both lift the limit."""
    pair = deployment(max_rows_per_window=100, mode=KillSwitchMode.BLOCK)
    first = pair.agent.check(ActionType.DATABASE_QUERY, "data.claims")
    pair.agent.record_outcome(first.action_id, rows=100)
    second = pair.agent.check(ActionType.DATABASE_QUERY, "data.claims")
    assert "data_volume_exceeded" in [r.code for r in second.reasons]
    with pytest.raises(ValueError, match="rows must be a whole number"):
        pair.agent.record_outcome(first.action_id, rows=bad)
    after = pair.agent.check(ActionType.DATABASE_QUERY, "data.claims")
    assert not after.allowed and "data_volume_exceeded" in [r.code for r in after.reasons]
    assert len(pair.records("outcome")) == 1  # the refused outcome recorded nothing


def test_a_guarded_tool_never_runs_when_denied_and_reports_its_outcome(deployment: Deploy, tmp_path: Path) -> None:
    pair = deployment(allowed_resources=[f"{tmp_path}/ok/*"], mode=KillSwitchMode.BLOCK)
    (tmp_path / "ok").mkdir()
    ran: list[str] = []

    @pair.agent.tool(ActionType.FILE_WRITE, resource="path")
    def write(path: str, text: str) -> int:
        ran.append(path)
        return Path(path).write_text(text)

    assert write(f"{tmp_path}/ok/a.txt", "hello") == 5
    with pytest.raises(ActionDenied):
        write(f"{tmp_path}/elsewhere.txt", "no")
    assert ran == [f"{tmp_path}/ok/a.txt"] and not (tmp_path / "elsewhere.txt").exists()


def test_rollback_restores_a_file_the_agent_overwrote(deployment: Deploy, tmp_path: Path) -> None:
    pair = deployment(mode=KillSwitchMode.BLOCK)
    target = tmp_path / "report.txt"
    target.write_text("original")
    write = pair.agent.tool(ActionType.FILE_WRITE, resource="path")(lambda path, text: Path(path).write_text(text))
    write(str(target), "overwritten")
    report = pair.agent.rollback("bot")  # the undo steps live where the tool ran
    assert report.complete and [s.status.value for s in report.steps] == ["undone"]
    assert target.read_text() == "original"
    assert [(r.action_id, r.outcome) for r in pair.records("rollback")] == [(report.steps[0].action_id, "undone")]


ENDED_WRITER = """
import sys, time
from risk.rollback import UndoStep, keep, snapshot_file
from pathlib import Path
home, path = Path(sys.argv[1]), sys.argv[2]
undo, described = snapshot_file(path, home / "snapshots")  # as a guarded write of the agent "bot" begins
keep(UndoStep("e0d" * 8, "bot", time.time(), described, undo))
Path(path).write_text("written by a process that then crashed")
"""


def test_rollback_takes_over_the_file_steps_a_process_that_ended_left(deployment: Deploy, tmp_path: Path) -> None:
    """After a crash, what the agent's process had written could not be rolled back, by either guard."""
    pair = deployment(mode=KillSwitchMode.BLOCK)
    target = tmp_path / "report.txt"
    target.write_text("original")
    (tmp_path / "writer.py").write_text(ENDED_WRITER)
    ended = subprocess.run([sys.executable, str(tmp_path / "writer.py"), str(tmp_path), str(target)],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert ended.returncode == 0, ended.stderr
    report = pair.agent.rollback("bot")
    assert report.complete and [(s.action_id, s.status.value) for s in report.steps] == [("e0d" * 8, "undone")]
    assert target.read_text() == "original"
    assert [(r.action_id, r.outcome) for r in pair.records("rollback")] == [("e0d" * 8, "undone")]


def test_rollback_mode_undoes_the_agents_work_and_pauses_it(deployment: Deploy, tmp_path: Path) -> None:
    pair = deployment(blocked_resources=["prod.*"], mode=KillSwitchMode.ROLLBACK)
    target = tmp_path / "notes.txt"
    target.write_text("before")
    write = pair.agent.tool(ActionType.FILE_WRITE, resource="path")(lambda path, text: Path(path).write_text(text))
    write(str(target), "after")
    stopped = pair.agent.check(ActionType.DATABASE_WRITE, "prod.users")
    assert (stopped.allowed, stopped.outcome) == (False, Outcome.ROLLED_BACK)
    assert target.read_text() == "before"
    assert pair.reviewer.status("bot").status is AgentStatus.PAUSED


def test_a_watched_connection_through_a_name_to_a_blocked_address_is_denied(deployment: Deploy) -> None:
    """The watch asks whether the address a name leads to is blocked; a remote guard, which holds no policy to
    tell, has the service check the address."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        pair = deployment(blocked_resources=[f"127.0.0.1:{port}"], mode=KillSwitchMode.BLOCK)
        with pair.agent.watch(), pytest.raises(ActionDenied) as denied:
            socket.create_connection(("localhost", port), timeout=5)
    assert (denied.value.decision.resource, denied.value.decision.reasons[0].code) == (
        f"127.0.0.1:{port}",
        "resource_blocked",
    )


def test_bad_input_raises_value_error_before_anything_is_sent(deployment: Deploy) -> None:
    pair = deployment()
    with pytest.raises(ValueError, match="action type"):
        pair.agent.check("teleport", "x")
    with pytest.raises(ValueError):
        pair.agent.check(ActionType.FILE_READ, "")
    with pytest.raises(ValueError, match="task must be a string"):
        pair.agent.check(ActionType.FILE_READ, "/x", task=b"pay")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="the limit is 32768"):
        pair.agent.check(ActionType.FILE_READ, "/x", task="x" * 32_769)


@contextmanager
def _answering(status: int, body: bytes, headers: dict[str, str] | None = None) -> Iterator[str]:
    """A stand-in HTTP server that answers every request with `status`, `headers` and `body`; yields its URL."""
    with _serving(lambda path, sent: (status, body), headers) as url:
        yield url


@contextmanager
def _serving(answer: Callable[[str, bytes], tuple[int, bytes]], headers: dict[str, str] | None = None) -> Iterator[str]:
    """A stand-in HTTP server that answers each POST with the status and body `answer(path, body sent)` gives,
    and `headers`; yields its URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # the name http.server calls
            status, body = answer(self.path, self.rfile.read(int(self.headers.get("Content-Length", 0))))
            self.send_response(status)
            for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# ---- only remote --------------------------------------------------------------------------------------------------


def test_an_unreachable_service_denies_by_default_and_the_tool_never_runs(tmp_path: Path) -> None:
    guard = Guard(endpoint=f"http://127.0.0.1:{free_port()}", api_key="k", agent_id="bot", home=tmp_path)
    decision = guard.check(ActionType.FILE_READ, "/reports/readonly/q3.csv")
    assert (decision.allowed, decision.outcome, decision.reasons[0].code) == (False, "blocked", "service_unavailable")
    ran = []
    tool = guard.tool(ActionType.FILE_READ, resource="path")(lambda path: ran.append(path))
    with pytest.raises(ActionDenied):
        tool("/reports/readonly/q3.csv")
    assert ran == [] and guard.fail_open_count == 0
    spooled = guard.spool.read()  # the denials wait for the service's audit trail
    assert [(r["allowed"], r["reasons"][0]["code"]) for r in spooled] == [(False, "service_unavailable")] * 2
    guard.close()


@pytest.mark.parametrize("on_error", ["allow", "deny"])
def test_an_action_whose_record_the_spool_cannot_keep_is_denied_not_raised(tmp_path: Path, on_error: str) -> None:
    """Fail-open lets an action through only once its record is spooled; an unwritable spool denies it."""
    (tmp_path / "not-a-folder").write_text("a file where the spool's folder should be")
    guard = Guard(endpoint=f"http://127.0.0.1:{free_port()}", api_key="k", agent_id="bot", on_error=on_error,
                  spool=tmp_path / "not-a-folder" / "spool.jsonl", home=tmp_path)  # fmt: skip
    decision = guard.check(ActionType.FILE_READ, "/reports/readonly/q3.csv")
    assert (decision.allowed, decision.reasons[0].code) == (False, "service_unavailable")
    assert "cannot be written" in decision.reasons[0].message
    assert guard.fail_open_count == 0
    guard.close()


@pytest.mark.parametrize("status", [400, 401, 403, 404, 429])
def test_a_refusal_whose_body_is_not_json_raises_and_never_fails_open(tmp_path: Path, status: int) -> None:
    """A proxy's or an ingress's 401 or 404 page is HTML: taken for an outage, it let the action through."""
    with _answering(status, b"<html><body>Unauthorized</body></html>", {"Content-Type": "text/html"}) as url:
        guard = Guard(endpoint=url, api_key="k", agent_id="bot", on_error="allow", home=tmp_path)
        with pytest.raises(ServiceError, match=f"HTTP {status}"):
            guard.check(ActionType.FILE_READ, "/reports/readonly/q3.csv")
    assert guard.fail_open_count == 0 and guard.spool.pending() == 0
    guard.close()


def test_answers_that_do_not_account_for_what_was_sent_keep_it_spooled(tmp_path: Path) -> None:
    """A 200 of another shape (a proxy's, a wrong endpoint's) on /v1/reports or /v1/outcome stores nothing:
    the records stay in the spool, where they were deleted as if stored."""
    with _answering(200, b'{"ok": true}') as url:
        guard = Guard(endpoint=url, api_key="k", agent_id="bot", on_error="allow", home=tmp_path)
        ran = guard.check(ActionType.API_CALL, "svc.call")  # not a decision: let through, and spooled
        assert ran.allowed and guard.flush() == 1
        guard.record_outcome(ran.action_id, success=True)
        assert guard.flush() == 2 and [r["kind"] for r in guard.spool.read()] == ["decision", "outcome"]
    guard.close()


def test_an_outcome_the_spool_cannot_keep_is_counted_lost_not_raised_into_the_tool(tmp_path: Path) -> None:
    (tmp_path / "not-a-folder").write_text("a file where the spool's folder should be")
    guard = Guard(endpoint=f"http://127.0.0.1:{free_port()}", api_key="k", agent_id="bot",
                  spool=tmp_path / "not-a-folder" / "spool.jsonl", home=tmp_path)  # fmt: skip
    guard.record_outcome("ab" * 16, success=True)  # the tool ran already: its result must still reach the caller
    assert guard.audit_failures == 1
    guard.close()


def test_remote_mode_refuses_policy_arguments_and_a_missing_key() -> None:
    with pytest.raises(ValueError, match="policy lives in the service"):
        Guard(endpoint="http://127.0.0.1:1", api_key="k", blocked_resources=["x"])
    with pytest.raises(ValueError, match="api_key"):
        Guard(endpoint="http://127.0.0.1:1")
    with pytest.raises(ValueError, match="on_error"):
        Guard(endpoint="http://127.0.0.1:1", api_key="k", on_error="maybe")
    for timeout in (0, -1.0, float("nan"), None, "5"):
        with pytest.raises(ValueError, match="timeout must be a positive number"):
            Guard(endpoint="http://127.0.0.1:1", api_key="k", timeout=timeout)


def test_a_wrong_key_is_denied_not_failed_open(service: Running, tmp_path: Path) -> None:
    guard = Guard(endpoint=service.url, api_key="not-a-key", agent_id="bot", on_error="allow", home=tmp_path)
    with pytest.raises(ServiceError, match="401"):
        guard.check(ActionType.FILE_READ, "/reports/readonly/q3.csv")
    assert guard.fail_open_count == 0
    guard.close()


def test_fail_open_spools_every_action_and_the_service_stores_each_once(tmp_path: Path) -> None:
    port = free_port()
    home = tmp_path / "agent"
    with serve(Settings(home=tmp_path / "first", model=None)) as first:  # a service to make the keys with
        keys = first.app.state.service.keys
        tenant = f"t-{uuid.uuid4().hex[:10]}"
        agent_key = keys.create(tenant, Role.AGENT)[1]
        auditor_key = keys.create(tenant, Role.AUDITOR)[1]
    guard = Guard(endpoint=f"http://127.0.0.1:{port}", api_key=agent_key, agent_id="bot", on_error="allow", home=home)
    let_through = [guard.check(ActionType.API_CALL, f"svc.call/{i}", {"i": i}) for i in range(3)]
    assert all(d.allowed and d.reasons[0].code == "fail_open" for d in let_through)
    guard.record_outcome(let_through[0].action_id, success=True)
    assert guard.fail_open_count == 3 and guard.spool.pending() == 4
    saved = home / "spool-copy.jsonl"
    shutil.copy(guard.spool.path, saved)

    with serve(Settings(home=tmp_path / "first", model=None), port=port) as again:  # the service is back
        assert guard.check(ActionType.API_CALL, "svc.after").allowed  # answered by the service; the spool is sent
        assert guard.spool.pending() == 0
        shutil.copy(saved, guard.spool.path)  # as if the process died after sending, before forgetting
        assert guard.flush() == 0
        with again.client() as auditor:
            auditor.headers["Authorization"] = f"Bearer {auditor_key}"
            records = auditor.get("/v1/audit", params={"limit": 1000}).json()["records"]
        fail_open = [r for r in records if r.get("kind") == "decision" and r.get("reasons", [{}])[0].get("code")
                     == "fail_open"]  # fmt: skip
        assert sorted(r["action_id"] for r in fail_open) == sorted(d.action_id for d in let_through)
        outcomes = [r for r in records if r.get("kind") == "outcome" and r.get("action_id") == let_through[0].action_id]
        assert len(outcomes) == 1
        assert verify_store(again.app.state.service.audit).ok
        assert again.app.state.service.audit.query(AuditQuery(kind="decision", limit=10_000))
    guard.close()


def test_an_action_let_through_unchecked_keeps_the_digest_of_its_task(tmp_path: Path) -> None:
    """A fail-open record reaches the trail with its task's digest, as a decided one does; one with no task, none."""
    port = free_port()
    with serve(Settings(home=tmp_path / "service", model=None)) as first:
        agent_key = first.app.state.service.keys.create(f"t-{uuid.uuid4().hex[:10]}", Role.AGENT)[1]
    guard = Guard(endpoint=f"http://127.0.0.1:{port}", api_key=agent_key, agent_id="bot", on_error="allow",
                  home=tmp_path / "agent")  # fmt: skip
    task = "Send the Q3 report to carol@partner.example"
    with guard.working_on(task):
        with_task = guard.check(ActionType.NETWORK_REQUEST, "mail.send/carol@partner.example")
    without = guard.check(ActionType.API_CALL, "svc.call/1")
    assert with_task.reasons[0].code == without.reasons[0].code == "fail_open"
    with serve(Settings(home=tmp_path / "service", model=None), port=port) as again:
        assert guard.flush() == 0
        stored = {r.action_id: r for r in again.app.state.service.audit.query(AuditQuery(kind="decision", limit=100))}
    assert stored[with_task.action_id].task_digest == hashlib.sha256(task.encode()).hexdigest()
    assert stored[without.action_id].task_digest is None
    guard.close()


def test_a_spooled_record_the_service_refuses_is_set_aside_not_lost(tmp_path: Path) -> None:
    port = free_port()
    with serve(Settings(home=tmp_path / "service", model=None)) as first:
        agent_key = first.app.state.service.keys.create(f"t-{uuid.uuid4().hex[:10]}", Role.AGENT)[1]
    guard = Guard(endpoint=f"http://127.0.0.1:{port}", api_key=agent_key, on_error="allow", home=tmp_path / "agent")
    guard.record_outcome("0" * 32, success=True)  # an action the service never heard of
    allowed = guard.check(ActionType.API_CALL, "svc.call")
    assert guard.spool.pending() == 2
    with serve(Settings(home=tmp_path / "service", model=None), port=port):
        assert guard.flush() == 0
    refused = [json.loads(line) for line in guard.spool.rejected.read_text().splitlines()]
    assert [(r["kind"], r["action_id"]) for r in refused] == [("outcome", "0" * 32)]
    assert "no action" in refused[0]["refused"]
    assert allowed.allowed and guard.fail_open_count == 1  # its fail-open decision was taken: not pending, not refused
    guard.close()


def test_denials_made_while_the_service_was_down_reach_its_audit_trail(tmp_path: Path) -> None:
    port = free_port()
    tenant = f"t-{uuid.uuid4().hex[:10]}"
    with serve(Settings(home=tmp_path / "service", model=None)) as first:
        keys = first.app.state.service.keys
        agent_key, auditor_key = keys.create(tenant, Role.AGENT)[1], keys.create(tenant, Role.AUDITOR)[1]
    guard = Guard(endpoint=f"http://127.0.0.1:{port}", api_key=agent_key, agent_id="bot", home=tmp_path / "agent")
    denied = guard.check(ActionType.FILE_WRITE, "/reports/q3.csv")
    assert not denied.allowed
    with serve(Settings(home=tmp_path / "service", model=None), port=port) as again:
        assert guard.flush() == 0
        with again.client() as auditor:
            auditor.headers["Authorization"] = f"Bearer {auditor_key}"
            records = auditor.get("/v1/audit", params={"kind": "decision"}).json()["records"]
    (record,) = [r for r in records if r["action_id"] == denied.action_id]
    assert (record["decision"], record["outcome"], record["reasons"][0]["code"]) == (
        "deny",
        "blocked",
        "service_unavailable",
    )
    assert record["actor"].startswith("client:") and record["detail"]["fail_open"] is False
    guard.close()


@pytest.mark.parametrize(
    ("key", "endpoint", "says"),
    [
        ("KEY\n", "URL", "api_key"),  # a key read from a file with its newline: httpx refuses to send it
        ("rk_0123456789abcdef_s\tcret", "URL", "api_key"),
        ("KEY", "127.0.0.1:PORT", "endpoint"),  # no scheme: httpx refuses to send it
        ("KEY", "ftp://127.0.0.1:PORT", "endpoint"),
        ("KEY", "http://", "endpoint"),
    ],
)
def test_a_key_or_endpoint_that_cannot_be_sent_is_refused_up_front_not_failed_open(
    service: Running, tmp_path: Path, key: str, endpoint: str, says: str
) -> None:
    real_key = service.app.state.service.keys.create(f"t-{uuid.uuid4().hex[:10]}", Role.AGENT)[1]
    port = service.url.rsplit(":", 1)[1]
    with pytest.raises(ValueError, match=says):
        Guard(endpoint=endpoint.replace("URL", service.url).replace("PORT", port),
              api_key=key.replace("KEY", real_key), agent_id="bot", on_error="allow", home=tmp_path)  # fmt: skip


def test_a_request_that_cannot_be_made_here_raises_and_never_fails_open(tmp_path: Path) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.LocalProtocolError(f"Illegal header value {request.headers['Authorization']!r}")

    key = "rk_0123456789abcdef_" + "s" * 43
    guard = Guard(endpoint="http://127.0.0.1:1", api_key=key, agent_id="bot", on_error="allow", home=tmp_path,
                  transport=httpx.MockTransport(refuse))  # fmt: skip
    with pytest.raises(ServiceError, match="could not be sent") as raised:
        guard.check(ActionType.DATABASE_WRITE, "prod.users")
    assert "s" * 43 not in str(raised.value) and "rk_0123456789abcdef_<redacted>" in str(raised.value)
    assert guard.fail_open_count == 0 and guard.spool.pending() == 0
    guard.close()


def test_an_endpoint_that_redirects_raises_and_never_fails_open(tmp_path: Path) -> None:
    with _answering(308, b"", {"Location": "https://127.0.0.1/v1/check"}) as url:
        guard = Guard(endpoint=url, api_key="k", agent_id="bot", on_error="allow", home=tmp_path)
        with pytest.raises(ServiceError, match="redirects to https://"):
            guard.check(ActionType.DATABASE_WRITE, "prod.users")
        guard.close()
    assert guard.fail_open_count == 0


def test_the_secret_of_the_key_is_in_no_reason_log_or_spool_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def cut_off(request: httpx.Request) -> httpx.Response:  # a failure whose message quotes the request's headers
        raise httpx.ReadError(f"connection reset sending {dict(request.headers)}")

    secret = "S" * 43
    guard = Guard(endpoint="http://127.0.0.1:1", api_key=f"rk_0123456789abcdef_{secret}", agent_id="bot",
                  on_error="allow", home=tmp_path, transport=httpx.MockTransport(cut_off))  # fmt: skip
    decision = guard.check(ActionType.API_CALL, "svc.call")
    guard.record_outcome(decision.action_id, success=True)
    guard.close()
    assert decision.allowed and "rk_0123456789abcdef_<redacted>" in decision.reasons[0].message
    assert secret not in decision.reasons[0].message
    assert secret not in guard.spool.path.read_text() and secret not in caplog.text


def test_guards_of_different_keys_or_services_never_share_a_spool(tmp_path: Path) -> None:
    port, a, b = free_port(), f"t-{uuid.uuid4().hex[:10]}", f"t-{uuid.uuid4().hex[:10]}"
    settings = Settings(home=tmp_path / "service", model=None)
    with serve(settings) as first:
        keys = first.app.state.service.keys
        key_a, key_b = keys.create(a, Role.AGENT)[1], keys.create(b, Role.AGENT)[1]
    home = tmp_path / "agents"  # one machine, one RISK_HOME, two tenants' agents
    endpoint = f"http://127.0.0.1:{port}"
    guard_a = Guard(endpoint=endpoint, api_key=key_a, agent_id="bot", on_error="allow", home=home)
    guard_b = Guard(endpoint=endpoint, api_key=key_b, agent_id="bot", on_error="allow", home=home)
    elsewhere = Guard(endpoint=f"http://127.0.0.1:{free_port()}", api_key=key_a, on_error="allow", home=home)
    given = Guard(endpoint=endpoint, api_key=key_a, on_error="allow", home=home, spool=tmp_path / "mine.jsonl")
    assert len({guard_a.spool.path, guard_b.spool.path, elsewhere.spool.path}) == 3
    assert all(g.spool.path.parent == home for g in (guard_a, guard_b, elsewhere))
    assert given.spool.path == tmp_path / "mine.jsonl"
    assert key_a.rsplit("_", 1)[1] not in guard_a.spool.path.name  # named by the key's id, never its secret
    ran = guard_a.check(ActionType.DATABASE_QUERY, "data.a.secret_table")
    assert ran.allowed and guard_b.spool.pending() == 0
    with serve(settings, port=port) as running:
        assert guard_b.check(ActionType.API_CALL, "svc.ping").allowed  # sends B's spool only
        audit = running.app.state.service.audit
        assert ran.action_id not in [r.action_id for r in audit.query(AuditQuery(agent_prefix=f"{b}/"))]
        assert guard_a.spool.pending() == 1
        assert guard_a.flush() == 0  # A's record goes under A's key
        assert ran.action_id in [r.action_id for r in audit.query(AuditQuery(kind="decision", agent_prefix=f"{a}/"))]
    for guard in (guard_a, guard_b, elsewhere, given):
        guard.close()


@pytest.mark.parametrize(
    ("allowed", "outcome"),
    [("false", "blocked"), ([0], "blocked"), (1, "allowed"), (None, "allowed"), (True, "paused")],
)
@pytest.mark.parametrize("on_error", ["deny", "allow"])
def test_an_answer_whose_allowed_is_not_a_boolean_agreeing_with_its_outcome_is_no_decision(
    tmp_path: Path, allowed: Any, outcome: str, on_error: str
) -> None:
    """A proxy or a broken service answering "allowed": "false" must not be read as an allow."""
    answer = {"action_id": "a" * 32, "agent_id": "bot", "allowed": allowed, "outcome": outcome, "risk_score": 1.0,
              "reasons": [{"code": "resource_blocked", "message": "no", "weight": 1.0, "violation": True}]}  # fmt: skip
    with _answering(200, json.dumps(answer).encode()) as url:
        guard = Guard(endpoint=url, api_key="k", agent_id="bot", on_error=on_error, home=tmp_path)
        decision = guard.check(ActionType.DATABASE_WRITE, "prod.users")
        guard.close()
    code = "fail_open" if on_error == "allow" else "service_unavailable"  # as any answer that is not a decision
    assert (decision.allowed, decision.reasons[0].code) == (on_error == "allow", code)
    assert "not a decision" in decision.reasons[0].message and decision.action_id != "a" * 32


def guard_of_a_service_down(tmp_path: Path, *, on_error: str, **settings: Any) -> tuple[Guard, Settings, int, str]:
    """A remote guard of a fresh tenant's agent key, pointed at a port where the service is not running yet;
    with the settings and port to start it on, and the tenant."""
    port, tenant = free_port(), f"t-{uuid.uuid4().hex[:10]}"
    service = Settings(home=tmp_path / "service", model=None, **settings)
    with serve(service) as first:
        key = first.app.state.service.keys.create(tenant, Role.AGENT)[1]
    guard = Guard(endpoint=f"http://127.0.0.1:{port}", api_key=key, agent_id="bot", on_error=on_error,
                  home=tmp_path / "agent")  # fmt: skip
    return guard, service, port, tenant


def test_the_outcome_of_a_fail_open_action_reported_once_the_service_is_back_follows_its_decision(
    tmp_path: Path,
) -> None:
    guard, settings, port, tenant = guard_of_a_service_down(tmp_path, on_error="allow")
    back = ExitStack()
    started: list[Running] = []

    @guard.tool(ActionType.API_CALL, resource="name")
    def call(name: str) -> str:
        started.append(back.enter_context(serve(settings, port=port)))  # the service comes back while it runs
        return f"called {name}"

    with back:
        assert call("svc.call") == "called svc.call"  # checked fail-open; its outcome posted to the running service
        assert guard.fail_open_count == 1 and guard.flush() == 0
        audit = started[0].app.state.service.audit
        trail = [(r.kind, r.action_id) for r in audit.query(AuditQuery(agent_prefix=f"{tenant}/"))
                 if r.kind in ("decision", "outcome")]  # fmt: skip
        [decided] = [action_id for kind, action_id in trail if kind == "decision"]
        assert trail == [("decision", decided), ("outcome", decided)]  # in order, once
        with pytest.raises(ServiceError, match="404"):  # an action it never let through is still not found
            guard.record_outcome("0" * 32, success=True)
    assert not guard.spool.rejected.exists()
    guard.close()


def test_an_action_spooled_while_the_spool_is_being_sent_waits_for_no_request_and_is_kept(tmp_path: Path) -> None:
    """The spool stayed locked while its records were sent: an action let through meanwhile (or an outcome)
    waited until the service had answered every request of the send, however slow it was."""
    answer_reports = threading.Event()

    def slow_reports(path: str, sent: bytes) -> tuple[int, bytes]:  # fails every check; holds /v1/reports until told
        if path != "/v1/reports":
            return 503, b'{"detail": "down"}'
        answer_reports.wait(30)
        return 200, json.dumps({"accepted": len(json.loads(sent)["records"]), "duplicates": 0, "rejected": []}).encode()

    with _serving(slow_reports) as url:
        guard = Guard(endpoint=url, api_key="rk_0123456789abcdef_s", agent_id="bot", on_error="allow", home=tmp_path,
                      timeout=30)  # fmt: skip
        try:
            first = guard.check(ActionType.API_CALL, "svc.first")
            assert first.allowed and guard.spool.pending() == 1
            sending = threading.Thread(target=guard.flush)
            sending.start()
            time.sleep(0.3)  # the send is under way, held by the service
            meanwhile: list[Any] = []
            checking = threading.Thread(target=lambda: meanwhile.append(guard.check(ActionType.API_CALL, "svc.second")))
            checking.start()
            checking.join(10)
            assert not checking.is_alive(), "the action waited for the send"
            assert meanwhile[0].allowed and meanwhile[0].reasons[0].code == "fail_open"
            answer_reports.set()
            sending.join(30)
            assert [r["resource"] for r in guard.spool.read()] == ["svc.second"]  # sent: the first; kept: the second
        finally:
            answer_reports.set()
            guard.close()


def test_a_spool_larger_than_a_request_may_be_is_sent_in_parts(tmp_path: Path) -> None:
    guard, settings, port, tenant = guard_of_a_service_down(tmp_path, on_error="allow", max_body_bytes=64 * 1024)
    ran = [guard.check(ActionType.API_CALL, f"svc.{i}." + "r" * 4000) for i in range(20)]  # ~80 KB in all: 413
    assert all(d.allowed for d in ran)
    with serve(settings, port=port) as running:
        assert guard.flush() == 0
        stored = running.app.state.service.audit.query(AuditQuery(kind="decision", agent_prefix=f"{tenant}/"))
    guard.close()
    assert not guard.spool.rejected.exists()
    assert [r.action_id for r in stored] == [d.action_id for d in ran]  # every one, in order


def test_only_the_spooled_records_the_service_refuses_on_their_own_are_set_aside(tmp_path: Path) -> None:
    guard, settings, port, tenant = guard_of_a_service_down(tmp_path, on_error="allow", max_body_bytes=2048)
    good = [guard.check(ActionType.API_CALL, f"svc.{i}") for i in range(5)]
    too_long = guard.check(ActionType.API_CALL, "svc." + "r" * 3000)  # larger alone than the service takes: 413
    good += [guard.check(ActionType.API_CALL, f"svc.{i}") for i in range(5, 9)]
    with serve(settings, port=port) as running:
        assert guard.flush() == 0
        stored = running.app.state.service.audit.query(AuditQuery(kind="decision", agent_prefix=f"{tenant}/"))
    guard.close()
    assert [r.action_id for r in stored] == [d.action_id for d in good]
    refused = [json.loads(line) for line in guard.spool.rejected.read_text().splitlines()]
    assert [r["action_id"] for r in refused] == [too_long.action_id]
    assert "413" in refused[0]["refused"]


def test_a_record_spooled_after_a_torn_line_is_sent_and_the_torn_line_kept_once(tmp_path: Path) -> None:
    guard, settings, port, tenant = guard_of_a_service_down(tmp_path, on_error="allow")
    guard.spool.path.parent.mkdir(parents=True)
    guard.spool.path.write_bytes(b'{"idempotency_key": "dead", "kind": "deci')  # the process died mid-append
    ran = guard.check(ActionType.API_CALL, "svc.call")
    assert ran.allowed and guard.spool.pending() == 1
    with serve(settings, port=port) as running:
        assert guard.flush() == 0
        stored = running.app.state.service.audit.query(AuditQuery(kind="decision", agent_prefix=f"{tenant}/"))
    guard.close()
    assert [r.action_id for r in stored] == [ran.action_id]
    assert guard.spool.bad.read_bytes() == b'{"idempotency_key": "dead", "kind": "deci\n'


def test_a_spool_line_that_is_json_but_not_a_record_is_set_aside_and_the_rest_sent(tmp_path: Path) -> None:
    guard, settings, port, tenant = guard_of_a_service_down(tmp_path, on_error="allow")
    guard.spool.path.parent.mkdir(parents=True)
    guard.spool.path.write_bytes(b"123\nnull\n")
    ran = guard.check(ActionType.API_CALL, "svc.call")
    with serve(settings, port=port) as running:
        assert guard.flush() == 0
        assert guard.check(ActionType.API_CALL, "svc.call").allowed  # and checks go on
        stored = running.app.state.service.audit.query(AuditQuery(kind="decision", agent_prefix=f"{tenant}/"))
    guard.close()
    assert stored[0].action_id == ran.action_id
    assert guard.spool.bad.read_bytes() == b"123\nnull\n"


def test_a_resource_the_service_would_refuse_is_refused_here_and_never_let_through(tmp_path: Path) -> None:
    guard = Guard(endpoint=f"http://127.0.0.1:{free_port()}", api_key="k", agent_id="bot", on_error="allow",
                  home=tmp_path)  # fmt: skip
    with pytest.raises(ValueError, match="the limit is 4096"):
        guard.check(ActionType.API_CALL, "svc." + "r" * 5000)
    assert guard.fail_open_count == 0 and guard.spool.pending() == 0
    guard.close()


@pytest.mark.parametrize("on_error", ["deny", "allow"])
@pytest.mark.parametrize("up", [True, False])
def test_a_resource_with_an_unpaired_surrogate_is_denied_not_raised(tmp_path: Path, on_error: str, up: bool) -> None:
    """No request can carry it (it is not UTF-8), so the guard denies it as the embedded policy does, and the
    service's audit trail gets the denial with the character escaped."""
    guard, settings, port, tenant = guard_of_a_service_down(tmp_path, on_error=on_error)
    with ExitStack() as stack:
        if up:
            stack.enter_context(serve(settings, port=port))
        decision = guard.check(ActionType.FILE_READ, "/reports/\ud800.csv", session_id="run-\udc00")
        assert (decision.allowed, decision.reasons[0].code) == (False, "resource_control_characters")
        assert guard.fail_open_count == 0
    with serve(settings, port=port) as running:
        assert guard.flush() == 0
        [stored] = running.app.state.service.audit.query(AuditQuery(kind="decision", agent_prefix=f"{tenant}/"))
    guard.close()
    assert (stored.action_id, stored.resource, stored.decision) == (decision.action_id, "/reports/\\ud800.csv", "deny")


def test_an_outcome_stored_after_the_client_gave_up_waiting_is_not_stored_again_from_the_spool(
    tmp_path: Path,
) -> None:
    tenant = f"t-{uuid.uuid4().hex[:10]}"
    with serve(Settings(home=tmp_path / "service", model=None)) as running:
        key = running.app.state.service.keys.create(tenant, Role.AGENT)[1]
        guard = Guard(endpoint=running.url, api_key=key, agent_id="bot", timeout=0.5, home=tmp_path / "agent")
        ran = guard.check(ActionType.DATABASE_QUERY, "data.claims")
        holder = sqlite3.connect(tmp_path / "service" / "audit.db", isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN IMMEDIATE")  # another writer holds the trail for a moment: the service is slow
        released = threading.Timer(1.5, holder.execute, ("COMMIT",))
        released.start()
        guard.record_outcome(ran.action_id, success=True, rows=10)  # the client gives up at 0.5 s: spooled
        released.join()
        holder.close()
        assert guard.spool.pending() == 1
        audit = running.app.state.service.audit
        mine = AuditQuery(kind="outcome", agent_prefix=f"{tenant}/")
        deadline = time.monotonic() + 30
        while not audit.query(mine) and time.monotonic() < deadline:
            time.sleep(0.05)  # the service stores the outcome once the trail is free: nothing to wait on
        assert guard.flush() == 0
        outcomes = audit.query(mine)
        guard.close()
    assert [r.action_id for r in outcomes] == [ran.action_id]


def _fail_writing(audit_db: Path, action_id: str | None = None) -> None:
    """A store fault in the service's audit trail: no record of `action_id` (of any action, without one) can be
    written; the service answers a report holding one with a 503."""
    only = f"WHEN NEW.action_id = '{action_id}'" if action_id is not None else ""
    with sqlite3.connect(audit_db) as db:
        db.execute(f"CREATE TRIGGER store_fault BEFORE INSERT ON audit {only} BEGIN SELECT json('injected'); END")


def _trail(running: Running, tenant: str) -> list[tuple[str, str]]:
    return [(r.kind, r.action_id) for r in running.app.state.service.audit.query(AuditQuery(agent_prefix=f"{tenant}/"))
            if r.kind in ("decision", "outcome")]  # fmt: skip


def test_a_spooled_record_the_service_fails_on_holds_up_only_its_own_action_then_is_set_aside(tmp_path: Path) -> None:
    """A record the service answers with a server error on its own (a store fault its content triggers) stays
    spooled with its action's outcome, and the records after it are stored; once it has failed so in three
    flushes that stored later records, it is set aside with its outcome, with the error, and nothing is lost."""
    guard, settings, port, tenant = guard_of_a_service_down(tmp_path, on_error="allow")
    first = guard.check(ActionType.API_CALL, "svc.first")
    failing = guard.check(ActionType.API_CALL, "svc.failing")
    guard.record_outcome(failing.action_id, success=True)  # spooled after its decision
    after = [guard.check(ActionType.API_CALL, f"svc.after.{i}") for i in range(3)]
    guard.record_outcome(after[0].action_id, success=True)
    waiting = [("decision", failing.action_id), ("outcome", failing.action_id)]
    with serve(settings, port=port) as running:
        _fail_writing(tmp_path / "service" / "audit.db", failing.action_id)
        assert guard.flush() == 2
        assert [(r["kind"], r["action_id"]) for r in guard.spool.read()] == waiting
        stored = [("decision", first.action_id), *[("decision", d.action_id) for d in after]]
        assert _trail(running, tenant) == [*stored, ("outcome", after[0].action_id)]
        for attempt in (2, 3):  # a denial decided here (no request can carry the resource) comes after it
            denied = guard.check(ActionType.FILE_READ, f"/reports/\ud800/{attempt}")
            decided = guard.check(ActionType.API_CALL, "svc.up")  # answered by the service
            assert decided.allowed and guard.spool.pending() == 3  # a check's send waits after one that left records
            assert guard.flush() == (2 if attempt == 2 else 0)
            stored += [("decision", decided.action_id), ("decision", denied.action_id)]
        assert _trail(running, tenant) == [*stored[:4], ("outcome", after[0].action_id), *stored[4:]]
        assert guard.check(ActionType.API_CALL, "svc.up").allowed and guard.spool.pending() == 0
    guard.close()
    set_aside = [json.loads(line) for line in guard.spool.rejected.read_text().splitlines()]
    assert [(r["kind"], r["action_id"]) for r in set_aside] == waiting
    assert "HTTP 503" in set_aside[0]["refused"] and "3 flushes" in set_aside[0]["refused"]
    assert failing.action_id in set_aside[1]["refused"]  # held behind its decision, set aside with it


def test_a_service_failing_on_every_spooled_record_sets_none_aside(tmp_path: Path) -> None:
    """A store that fails on every record is an outage, not a record the service fails on: however often the
    spool is sent meanwhile, every record stays in it, in order, and all are stored once the store is mended."""
    guard, settings, port, tenant = guard_of_a_service_down(tmp_path, on_error="allow")
    ran = [guard.check(ActionType.API_CALL, f"svc.{i}") for i in range(12)]
    db = tmp_path / "service" / "audit.db"
    with serve(settings, port=port) as running:
        _fail_writing(db)
        for _ in range(5):
            assert guard.flush() == len(ran)
        assert [r["action_id"] for r in guard.spool.read()] == [d.action_id for d in ran]
        with sqlite3.connect(db) as mend:
            mend.execute("DROP TRIGGER store_fault")
        assert guard.flush() == 0
        assert _trail(running, tenant) == [("decision", d.action_id) for d in ran]
    guard.close()
    assert not guard.spool.rejected.exists()


@contextmanager
def _trickling(where: str) -> Iterator[str]:
    """A server on 127.0.0.1 that answers every request with an allowing decision, a byte at a time, for as long
    as the client reads: from its status line on (`where="headers"`), or after its headers (`"body"`)."""
    answer = {"action_id": "a" * 32, "agent_id": "bot", "allowed": True, "outcome": "allowed", "risk_score": 0.0,
              "reasons": []}  # fmt: skip
    body = json.dumps(answer).encode() + b" " * 1_000_000
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    stop = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))

    def answer_slowly(conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)  # the request (small, in one piece on loopback)
            if where == "body":
                conn.sendall(head)
            for byte in head + body if where == "headers" else body:
                if stop.wait(0.05):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:  # the client gave up and closed the connection
                    return

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=answer_slowly, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.close()


@pytest.mark.parametrize("where", ["headers", "body"])
@pytest.mark.parametrize("on_error", ["deny", "allow"])
def test_a_service_that_trickles_its_answer_is_unreachable_once_the_timeout_has_passed(
    tmp_path: Path, where: str, on_error: str
) -> None:
    """httpx's timeout bounds each read, and every trickled byte starts a new one; `timeout` bounds the whole
    request, after which the service is taken as unreachable: denied, or let through and spooled."""
    with _trickling(where) as url:
        guard = Guard(endpoint=url, api_key="k", agent_id="bot", on_error=on_error, timeout=1.0, home=tmp_path)
        decided: list[Any] = []
        checking = threading.Thread(target=lambda: decided.append(guard.check(ActionType.API_CALL, "svc.call")))
        checking.start()
        checking.join(30)  # a safety bound: the trickle alone would last 14 hours
        assert decided, "check() still waits on the trickling service"
        guard.close()
    [decision] = decided
    code = "fail_open" if on_error == "allow" else "service_unavailable"
    assert (decision.allowed, decision.reasons[0].code) == (on_error == "allow", code)
    assert "no complete answer within 1.0 s" in decision.reasons[0].message and decision.action_id != "a" * 32
    assert [r["action_id"] for r in guard.spool.read()] == [decision.action_id]
