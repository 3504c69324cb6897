"""The HTTP service on the embedded default (SQLite audit and catalog, in-process state), run under uvicorn on a
loopback port and driven with httpx: every endpoint, roles, tenants, bad input and the OpenAPI document."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_server import Running, catalog_before_bound_keys, check_idempotency_keys_expire, serve
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from services import free_port
from typer.testing import CliRunner

from api.settings import Settings
from risk.actions import ActionType
from risk.audit.record import canonical_json
from risk.audit.store import AuditQuery, open_audit, verify_store
from risk.catalog import Catalog
from risk.cli import app as cli
from risk.guard import Guard
from risk.idempotency import STALE, IdempotencyKeys
from risk.keys import CACHE_SECONDS, KeyStore, Role
from risk.state import MemoryState
from risk.tenants import CHECK_REPLAY_SECONDS, ActionRequest, Tenants

BLOCKING = {
    "allowed_resources": ["data.deidentified.*", "/reports/*"],
    "blocked_resources": ["data.phi.*"],
    "mode": "pause",
}
ALLOWED = {"agent_id": "bot", "action_type": "database_query", "resource": "data.deidentified.claims"}
BLOCKED = {"agent_id": "bot", "action_type": "database_query", "resource": "data.phi.patients"}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    home = tmp_path_factory.mktemp("service")
    with serve(Settings(home=home, max_body_bytes=64 * 1024)) as running:
        yield running


@pytest.fixture
def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def clients(service: Running, tenant: str) -> Iterator[Callable[..., httpx.Client]]:
    """Clients of `tenant` (or another) by role, closed after the test."""
    made: list[httpx.Client] = []

    def make(role: Role | str | None, of: str | None = None) -> httpx.Client:
        made.append(service.client(of or tenant, role) if role else service.client())
        return made[-1]

    yield make
    for client in made:
        client.close()


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def put_policy(admin: httpx.Client, policy: dict[str, Any], agent: str | None = None) -> dict[str, Any]:
    path = f"/v1/policies/agents/{agent}" if agent else "/v1/policies"
    return ok(admin.put(path, json=policy))  # type: ignore[no-any-return]


# ---- decisions -------------------------------------------------------------------------------------------------


def test_check_returns_the_decision_contract(clients: Callable[..., httpx.Client]) -> None:
    decision = ok(clients(Role.AGENT).post("/v1/check", json={**ALLOWED, "payload": {"sql": "SELECT 1"}}))
    assert set(decision) == {"action_id", "agent_id", "allowed", "outcome", "risk_score", "reasons", "action_type",
                             "resource", "normalized_resource"}  # fmt: skip
    assert decision["allowed"] is True and decision["outcome"] == "allowed" and decision["agent_id"] == "bot"
    assert set(decision["reasons"][0]) == {"code", "message", "weight", "violation"}


def test_check_denies_what_the_tenant_policy_blocks(clients: Callable[..., httpx.Client]) -> None:
    put_policy(clients(Role.ADMIN), {**BLOCKING, "mode": "block"})
    agent = clients(Role.AGENT)
    denied = ok(agent.post("/v1/check", json=BLOCKED))
    assert (denied["allowed"], denied["outcome"], denied["reasons"][0]["code"]) == (
        False,
        "blocked",
        "resource_blocked",
    )
    assert ok(agent.post("/v1/check", json=ALLOWED))["allowed"] is True


def test_batch_decides_in_order(clients: Callable[..., httpx.Client]) -> None:
    put_policy(clients(Role.ADMIN), {**BLOCKING, "mode": "block"})
    actions = [ALLOWED, BLOCKED, {**ALLOWED, "resource": "/reports/q3.csv", "action_type": "file_read"}]
    decisions = ok(clients(Role.AGENT).post("/v1/check/batch", json={"actions": actions}))["decisions"]
    assert [d["allowed"] for d in decisions] == [True, False, True]
    assert [d["resource"] for d in decisions] == [a["resource"] for a in actions]


def test_batch_decides_as_checks_one_by_one_would_and_commits_its_records_at_once(
    clients: Callable[..., httpx.Client], service: Running, tenant: str
) -> None:
    put_policy(clients(Role.ADMIN), BLOCKING)  # mode pause
    agent = clients(Role.AGENT)
    ok(
        agent.post("/v1/check", json={**ALLOWED, "agent_id": "other"})
    )  # the tenant's guard starts, recording its policy
    appender = service.app.state.service.audit._appender
    commits: list[int] = []
    insert = appender._insert
    appender._insert = lambda records: commits.append(len(records)) or insert(records)
    try:
        batch = ok(agent.post("/v1/check/batch", json={"actions": [ALLOWED, BLOCKED, ALLOWED]}))
    finally:
        appender._insert = insert
    decisions = batch["decisions"]
    assert [(d["outcome"], d["reasons"][0]["code"]) for d in decisions] == [
        ("allowed", "action_type"), ("paused", "resource_blocked"), ("paused", "agent_paused"),
    ]  # fmt: skip
    assert commits == [4]  # three decisions and the pause between them, in order, in one transaction
    trail = ok(clients(Role.AUDITOR).get("/v1/audit", params={"agent_id": "bot", "limit": 100}))["records"]
    assert [(r["kind"], r.get("action_id")) for r in trail[-4:]] == [
        ("decision", decisions[0]["action_id"]), ("decision", decisions[1]["action_id"]),
        ("killswitch", decisions[1]["action_id"]), ("decision", decisions[2]["action_id"]),
    ]  # fmt: skip
    assert ok(clients(Role.REVIEWER).get("/v1/agents/bot"))["pending_action_id"] == decisions[1]["action_id"]


def test_batch_answers_idempotency_keys_once_committed(clients: Callable[..., httpx.Client]) -> None:
    agent, auditor = clients(Role.AGENT), clients(Role.AUDITOR)
    first = ok(agent.post("/v1/check", json={**ALLOWED, "idempotency_key": "k0"}))
    actions = [{**ALLOWED, "idempotency_key": "k0"}, {**ALLOWED, "idempotency_key": "k1"},
               {**ALLOWED, "idempotency_key": "k1"}, ALLOWED]  # fmt: skip
    decisions = ok(agent.post("/v1/check/batch", json={"actions": actions}))["decisions"]
    assert decisions[0] == first and decisions[2] == decisions[1] != first
    assert len({d["action_id"] for d in decisions}) == 3
    assert ok(agent.post("/v1/check", json={**ALLOWED, "idempotency_key": "k1"})) == decisions[1]
    recorded = [r["action_id"] for r in _decision_records(auditor)]
    assert recorded == [first["action_id"], decisions[1]["action_id"], decisions[3]["action_id"]]
    # A key reused for another action in the batch refuses the batch, decides nothing and keeps no claim.
    conflict = [{**ALLOWED, "idempotency_key": "k2"}, {**BLOCKED, "idempotency_key": "k2"}]
    refused = agent.post("/v1/check/batch", json={"actions": conflict})
    assert refused.status_code == 409 and "different action" in refused.json()["detail"]
    assert len(_decision_records(auditor)) == 3
    assert ok(agent.post("/v1/check", json={**BLOCKED, "idempotency_key": "k2"}))["resource"] == BLOCKED["resource"]


def test_outcome_is_recorded_for_the_tenants_own_action_only(
    clients: Callable[..., httpx.Client], service: Running, tenant: str
) -> None:
    agent = clients(Role.AGENT)
    action_id = ok(agent.post("/v1/check", json=ALLOWED))["action_id"]
    body = {"action_id": action_id, "success": True, "rows": 12}
    assert ok(agent.post("/v1/outcome", json=body)) == {"action_id": action_id, "agent_id": "bot", "recorded": True}
    outcomes = ok(clients(Role.AUDITOR).get("/v1/audit", params={"kind": "outcome"}))["records"]
    assert [(r["action_id"], r["agent_id"], r["detail"]["rows"]) for r in outcomes] == [
        (action_id, f"{tenant}/bot", 12)
    ]
    other = clients(Role.AGENT, of=f"{tenant}-b")
    assert other.post("/v1/outcome", json=body).status_code == 404
    unknown = agent.post("/v1/outcome", json={**body, "action_id": "0" * 32})
    assert unknown.status_code == 404


def test_outcome_of_an_action_decided_before_a_restart_is_found_in_the_audit_trail(
    clients: Callable[..., httpx.Client], service: Running
) -> None:
    agent = clients(Role.AGENT)
    action_id = ok(agent.post("/v1/check", json=ALLOWED))["action_id"]
    service.app.state.service.tenants._recent.clear()  # as a fresh worker would have it
    assert ok(agent.post("/v1/outcome", json={"action_id": action_id, "success": False, "error": "boom"}))["recorded"]


@pytest.mark.parametrize("restarted", [False, True])
def test_another_tenants_report_never_takes_an_action_id_away(
    clients: Callable[..., httpx.Client], service: Running, tenant: str, restarted: bool
) -> None:
    agent = clients(Role.AGENT)
    action_id = ok(agent.post("/v1/check", json=ALLOWED))["action_id"]
    intruder = {**reported_decision("k1", agent="intruder"), "action_id": action_id}
    assert ok(clients(Role.AGENT, of=f"{tenant}-a").post("/v1/reports", json={"records": [intruder]}))["accepted"] == 1
    if restarted:
        service.app.state.service.tenants._recent.clear()  # as a fresh worker: found in the audit trail
    answer = ok(agent.post("/v1/outcome", json={"action_id": action_id, "success": True}))
    assert (answer["agent_id"], answer["recorded"]) == ("bot", True)


@pytest.mark.parametrize("restarted", [False, True])
def test_a_report_never_moves_an_action_to_another_agent(
    clients: Callable[..., httpx.Client], service: Running, tenant: str, restarted: bool
) -> None:
    """A key bound to one agent may not take over another agent's action by reporting a decision with its id,
    which would file the action's outcomes, and the right to report them, under the reporting agent."""
    decided = ok(clients(Role.AGENT).post("/v1/check", json=ALLOWED))  # for agent bot
    made = ok(clients(Role.ADMIN).post("/v1/keys", json={"role": "agent", "agents": ["intruder"]}), 201)
    with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {made['key']}"}) as bound:
        if restarted:
            service.app.state.service.tenants._recent.clear()  # as a fresh worker: found in the audit trail
        takeover = {**reported_decision("k1", agent="intruder"), "action_id": decided["action_id"]}
        rollback = {**takeover, "idempotency_key": "k2", "kind": "rollback", "outcome": "undone"}
        report = ok(bound.post("/v1/reports", json={"records": [takeover, rollback]}))
        assert report["accepted"] == 0 and [r["idempotency_key"] for r in report["rejected"]] == ["k1", "k2"]
        assert all("decided for another agent" in r["reason"] for r in report["rejected"])
        refused = bound.post("/v1/outcome", json={"action_id": decided["action_id"], "success": False})
        assert refused.status_code == 403, refused.text
    again = {**reported_decision("k3"), "action_id": decided["action_id"]}  # bot's own decision, reported again
    assert ok(clients(Role.AGENT).post("/v1/reports", json={"records": [again]}))["duplicates"] == 1
    records = ok(clients(Role.AUDITOR).get("/v1/audit", params={"limit": 1000}))["records"]
    kept = [(r["kind"], r["agent_id"]) for r in records if r["action_id"] == decided["action_id"]]
    assert kept == [("decision", f"{tenant}/bot")]
    answer = ok(clients(Role.AGENT).post("/v1/outcome", json={"action_id": decided["action_id"], "success": True}))
    assert answer["agent_id"] == "bot"


def _decision_records(auditor: httpx.Client) -> list[dict[str, Any]]:
    return ok(auditor.get("/v1/audit", params={"kind": "decision", "limit": 1000}))["records"]  # type: ignore[no-any-return]


def test_repeated_idempotency_key_returns_the_first_decision_and_records_nothing(
    clients: Callable[..., httpx.Client],
) -> None:
    agent, auditor = clients(Role.AGENT), clients(Role.AUDITOR)
    body = {**ALLOWED, "idempotency_key": "spool-1"}
    first = ok(agent.post("/v1/check", json=body))
    again = ok(agent.post("/v1/check", json=body))
    assert again == first
    assert [r["action_id"] for r in _decision_records(auditor)] == [first["action_id"]]
    # The same key in another tenant is another key.
    other = ok(clients(Role.AGENT, of="x" + uuid.uuid4().hex[:8]).post("/v1/check", json=body))
    assert other["action_id"] != first["action_id"]


@pytest.mark.parametrize("stop", ["terminate", "pause"])
def test_a_repeated_key_never_lets_a_stopped_agent_run_what_it_was_allowed(
    clients: Callable[..., httpx.Client], stop: str
) -> None:
    """A replayed allow is the first decision only while the agent runs: after a terminate (or a pause), the
    same key is decided afresh, denied by the kill switch and recorded, alone or in a batch."""
    agent, reviewer, auditor = clients(Role.AGENT), clients(Role.REVIEWER), clients(Role.AUDITOR)
    body = {**ALLOWED, "idempotency_key": "del-1"}
    first = ok(agent.post("/v1/check", json=body))
    assert first["allowed"]
    if stop == "terminate":
        ok(reviewer.post("/v1/agents/bot/terminate", json={"reason": "compromised"}))
    else:
        put_policy(clients(Role.ADMIN), BLOCKING)  # which pauses the agent on a blocked resource
        paused = ok(agent.post("/v1/check", json=BLOCKED))
        assert paused["outcome"] == "paused"
    again = ok(agent.post("/v1/check", json=body))
    batch = ok(agent.post("/v1/check/batch", json={"actions": [body]}))["decisions"]
    for denied in (again, batch[0]):
        assert not denied["allowed"] and denied["action_id"] != first["action_id"], denied
        assert denied["reasons"][0]["code"] == ("agent_terminated" if stop == "terminate" else "agent_paused")
    recorded = [r["action_id"] for r in _decision_records(auditor)]
    assert {again["action_id"], batch[0]["action_id"]} <= set(recorded)


def test_a_checks_idempotency_key_answers_its_retries_not_a_repeat_long_after(tmp_path: Path) -> None:
    """A first allow kept for the keys' 7 days let a running agent run the same action again for days, past
    any policy change or rate limit, with no record: after CHECK_REPLAY_SECONDS a repeat is decided afresh."""
    now = [1_800_000_000.0]
    audit = open_audit(f"sqlite:///{tmp_path}/audit.db")
    tenants = Tenants(Catalog(f"sqlite:///{tmp_path}/catalog.db"), audit, MemoryState(), model=None,
                      clock=lambda: now[0])  # fmt: skip
    action = ActionRequest(agent_id="bot", action_type=ActionType.DATABASE_QUERY, resource="data.claims")
    first = tenants.check("acme", action, "k1")
    now[0] += 60
    assert tenants.check("acme", action, "k1").action_id == first.action_id  # a retry: the first decision
    now[0] += CHECK_REPLAY_SECONDS
    late = tenants.check("acme", action, "k1")
    assert late.allowed and late.action_id != first.action_id
    assert tenants.check("acme", action, "k1").action_id == late.action_id  # its own retries get it
    decided = [r.action_id for r in audit.query(AuditQuery(kind="decision", limit=100))]
    assert decided == [first.action_id, late.action_id]
    audit.close()


def test_idempotency_keys_are_per_agent_and_apart_from_the_services_own(clients: Callable[..., httpx.Client]) -> None:
    """One agent's key neither answers nor blocks (409) another agent's check; and a check key shaped like the
    keys the service makes for outcomes and reports blocks neither."""
    agent = clients(Role.AGENT)
    mine = ok(agent.post("/v1/check", json={**ALLOWED, "idempotency_key": "tool-call-1"}))
    theirs = ok(agent.post("/v1/check", json={**ALLOWED, "agent_id": "other", "idempotency_key": "tool-call-1"}))
    assert theirs["allowed"] and theirs["agent_id"] == "other" and theirs["action_id"] != mine["action_id"]
    outcome = {"action_id": mine["action_id"], "success": True, "error": None, "rows": None, "bytes": None}
    digest = hashlib.sha256(canonical_json(outcome)).hexdigest()
    for key in (f"outcome:{mine['action_id']}:{digest[:32]}", f"report:outcome:{mine['action_id']}"):
        ok(agent.post("/v1/check", json={**ALLOWED, "agent_id": "other", "idempotency_key": key}))
    assert ok(agent.post("/v1/outcome", json={"action_id": mine["action_id"], "success": True}))["recorded"]
    spooled = {"idempotency_key": f"outcome:{mine['action_id']}", "kind": "outcome",
               "action_id": mine["action_id"], "success": False}  # fmt: skip
    assert ok(agent.post("/v1/reports", json={"records": [spooled]}))["accepted"] == 1


def test_a_key_whose_first_request_died_unsettled_is_taken_over_once_stale(tmp_path: Path) -> None:
    now = [1_800_000_000.0]
    keys = IdempotencyKeys(Catalog(f"sqlite:///{tmp_path}/catalog.db"), clock=lambda: now[0])
    assert keys.claim("acme", "k1", "digest") is None  # its request dies before it settles
    now[0] += STALE + 1
    assert keys.claim("acme", "k1", "digest") is None  # the retry may answer under the key
    keys.settle("acme", "k1", {"action_id": "a2"})
    assert keys.claim("acme", "k1", "digest") == {"action_id": "a2"}


def test_idempotency_keys_are_forgotten_after_their_retention(tmp_path: Path) -> None:
    check_idempotency_keys_expire(Catalog(f"sqlite:///{tmp_path}/catalog.db"))


def test_idempotency_key_reused_for_another_action_is_a_conflict(clients: Callable[..., httpx.Client]) -> None:
    agent = clients(Role.AGENT)
    ok(agent.post("/v1/check", json={**ALLOWED, "idempotency_key": "k"}))
    reused = agent.post("/v1/check", json={**BLOCKED, "idempotency_key": "k"})
    assert reused.status_code == 409 and "different action" in reused.json()["detail"]


def test_agents_past_the_tenants_limit_are_refused_and_given_no_state(tmp_path: Path) -> None:
    with serve(Settings(home=tmp_path, max_agents=2)) as running:
        agent = running.client("acme", Role.AGENT)
        with agent, running.client("acme", Role.AUDITOR) as auditor, running.client("beta", Role.AGENT) as beta:
            assert [ok(agent.post("/v1/check", json={**ALLOWED, "agent_id": a}))["allowed"] for a in "ab"] == [True] * 2
            refused = ok(
                agent.post(
                    "/v1/check/batch", json={"actions": [{**ALLOWED, "agent_id": "c"}, {**ALLOWED, "agent_id": "a"}]}
                )
            )
            assert [(d["allowed"], d["outcome"]) for d in refused["decisions"]] == [
                (False, "blocked"),
                (True, "allowed"),
            ]
            reason = refused["decisions"][0]["reasons"][0]
            assert reason["code"] == "agent_limit" and "RISK_MAX_AGENTS" in reason["message"]
            assert ok(beta.post("/v1/check", json={**ALLOWED, "agent_id": "c"}))["allowed"] is True  # its own places
            records = ok(auditor.get("/v1/audit", params={"agent_id": "c", "kind": "decision"}))["records"]
            assert [(r["outcome"], r["reasons"][0]["code"]) for r in records] == [("blocked", "agent_limit")]
        service = running.app.state.service
        profiles = service.tenants.guard("acme", "c")._behavior.profiles._profiles
        assert {"acme/a", "acme/b"} <= set(profiles) and "acme/c" not in profiles  # the refused agent has none
        assert not [key for key in service.state._windows if "acme/c" in key]  # nor a rate window


def test_a_batch_stops_asking_a_failing_state_store_after_its_first_failure(tmp_path: Path) -> None:
    """Every action of a batch is denied while Redis is down, and only the first waits on it: each would wait out
    the store's timeout (2 s against a Redis that hangs, half an hour for 1,000 actions)."""
    settings = Settings(home=tmp_path, model=None, redis_url=f"redis://127.0.0.1:{free_port()}/0", max_agents=None)
    with serve(settings) as running, running.client("acme", Role.AGENT) as agent:
        batch = ok(
            agent.post("/v1/check/batch", json={"actions": [{**ALLOWED, "agent_id": f"b{i}"} for i in range(5)]})
        )
        reasons = [d["reasons"][0] for d in batch["decisions"]]
        assert [(d["allowed"], r["code"]) for d, r in zip(batch["decisions"], reasons, strict=True)] == [
            (False, "state_unavailable")
        ] * 5
        assert "not asked" not in reasons[0]["message"]
        assert all("not asked: it failed for an earlier action of this batch" in r["message"] for r in reasons[1:])


def test_each_tenant_has_its_own_streaming_model(tmp_path: Path) -> None:
    """With the streaming model on, what one tenant's agents do is learned for that tenant alone: a shared model
    would let one tenant's traffic raise another's scores, or make another's anomalies look normal."""
    with serve(Settings(home=tmp_path, model=None, online=True)) as running:
        with running.client("acme", Role.AGENT) as acme, running.client("beta", Role.AGENT) as beta:
            for i in range(30):
                action_id = ok(acme.post("/v1/check", json={**ALLOWED, "agent_id": f"bot-{i % 3}"}))["action_id"]
                assert ok(acme.post("/v1/outcome", json={"action_id": action_id, "success": True}))["recorded"]
            ok(beta.post("/v1/check", json=ALLOWED))
            with running.client("acme", Role.ADMIN) as admin:  # a policy change rebuilds the tenant's guards
                put_policy(admin, {"max_risk_score": 0.9})
                put_policy(admin, {"max_risk_score": 0.8}, agent="bot-0")
        tenants = running.app.state.service.tenants
        learned = {t: tenants.guard(t, "bot")._behavior.online for t in ("acme", "beta")}
        assert (learned["acme"].learned, learned["beta"].learned) == (30, 0)
        assert tenants.guard("acme", "bot-0")._behavior.online is learned["acme"]  # its own policy, the same model


def test_outcomes_reports_and_reviewers_give_no_state_to_agents_past_the_limit(tmp_path: Path) -> None:
    """An agent the tenant has not admitted is admitted by its outcome (counting toward the limit) or refused:
    past the limit, an outcome is 409, a reported outcome is rejected, and terminate or reset is 409."""
    with serve(Settings(home=tmp_path, max_agents=2)) as running:
        with (
            running.client("acme", Role.ADMIN) as admin,
            running.client("acme", Role.AGENT) as agent,
            running.client("acme", Role.REVIEWER) as reviewer,
        ):
            put_policy(admin, {"max_rows_per_window": 1000})  # outcomes keep volume windows
            assert ok(agent.post("/v1/check", json=ALLOWED))["allowed"] is True  # "bot" takes the first place
            # A reported decision of a new agent, and its outcome: the outcome admits it (the second place).
            fresh = reported_decision("d1", agent="fresh")
            spool = [fresh, {"idempotency_key": "o1", "kind": "outcome", "action_id": fresh["action_id"],
                             "success": True, "rows": 5}]  # fmt: skip
            assert ok(agent.post("/v1/reports", json={"records": spool}))["accepted"] == 2
            refused = ok(agent.post("/v1/check", json={**ALLOWED, "agent_id": "intruder"}))
            assert refused["reasons"][0]["code"] == "agent_limit"
            sent = agent.post("/v1/outcome", json={"action_id": refused["action_id"], "success": True, "rows": 5})
            assert sent.status_code == 409 and "RISK_MAX_AGENTS" in sent.json()["detail"], sent.text
            invented = reported_decision("d2", agent="invented")
            spool = [invented, {"idempotency_key": "o2", "kind": "outcome", "action_id": invented["action_id"],
                                "success": True, "rows": 5}]  # fmt: skip
            report = ok(agent.post("/v1/reports", json={"records": spool}))
            assert (report["accepted"], [r["idempotency_key"] for r in report["rejected"]]) == (1, ["o2"])
            assert "RISK_MAX_AGENTS" in report["rejected"][0]["reason"]
            for verb in ("terminate", "reset", "approve", "resume"):
                assert reviewer.post(f"/v1/agents/stranger/{verb}").status_code == 409, verb
            assert ok(reviewer.post("/v1/agents/stranger/rollback"))["steps"] == []
            assert ok(reviewer.post("/v1/agents/fresh/terminate"))["status"] == "terminated"  # an admitted agent
            assert ok(reviewer.get("/v1/agents/stranger"))["status"] == "running"
        service = running.app.state.service
        profiles = service.tenants.guard("acme", "bot")._behavior.profiles._profiles
        assert set(profiles) == {"acme/bot", "acme/fresh"}
        state = service.state
        kept = {*state._states, *state._windows}
        assert not [key for key in kept if any(a in key for a in ("intruder", "invented", "stranger"))], kept
        assert [key for key in state._windows if "acme/fresh" in key]  # its outcome was counted


# ---- the kill switch -------------------------------------------------------------------------------------------


def test_pause_shows_in_approvals_and_approve_lets_the_action_run_once(clients: Callable[..., httpx.Client]) -> None:
    put_policy(clients(Role.ADMIN), BLOCKING)
    agent, reviewer = clients(Role.AGENT), clients(Role.REVIEWER)
    paused = ok(agent.post("/v1/check", json=BLOCKED))
    assert paused["outcome"] == "paused"
    assert ok(agent.post("/v1/check", json=ALLOWED))["reasons"][0]["code"] == "agent_paused"
    status = ok(reviewer.get("/v1/agents/bot"))
    assert (status["status"], status["pending_action_id"]) == ("paused", paused["action_id"])
    approvals = ok(reviewer.get("/v1/approvals"))["approvals"]
    assert [(a["agent_id"], a["decision"]["action_id"], a["decision"]["resource"]) for a in approvals] == [
        ("bot", paused["action_id"], "data.phi.patients")
    ]
    assert ok(reviewer.post("/v1/agents/bot/approve")) == {"agent_id": "bot", "approved_action_id": paused["action_id"]}
    assert ok(reviewer.get("/v1/approvals"))["approvals"] == []
    once = ok(agent.post("/v1/check", json=BLOCKED))
    assert (once["allowed"], once["reasons"][0]["code"]) == (True, "approved")
    assert ok(agent.post("/v1/check", json=BLOCKED))["outcome"] == "paused"  # only once


def test_resume_terminate_reset_and_rollback(clients: Callable[..., httpx.Client]) -> None:
    put_policy(clients(Role.ADMIN), BLOCKING)
    agent, reviewer = clients(Role.AGENT), clients(Role.REVIEWER)
    ok(agent.post("/v1/check", json=BLOCKED))
    assert ok(reviewer.post("/v1/agents/bot/resume"))["status"] == "running"
    assert reviewer.post("/v1/agents/bot/resume").status_code == 409  # not paused any more
    assert reviewer.post("/v1/agents/bot/approve").status_code == 409
    terminated = ok(reviewer.post("/v1/agents/bot/terminate", json={"reason": "exfiltration suspected"}))
    assert (terminated["status"], terminated["reason"]) == ("terminated", "exfiltration suspected")
    assert ok(agent.post("/v1/check", json=ALLOWED))["outcome"] == "terminated"
    assert ok(reviewer.post("/v1/agents/bot/reset"))["status"] == "running"
    assert ok(agent.post("/v1/check", json=ALLOWED))["allowed"] is True
    report = ok(reviewer.post("/v1/agents/bot/rollback"))
    assert report["agent_id"] == "bot" and isinstance(report["steps"], list)
    assert ok(reviewer.post("/v1/agents/never-seen/terminate"))["status"] == "terminated"


# ---- audit ------------------------------------------------------------------------------------------------------


def test_audit_query_filters_and_pages_with_a_cursor(clients: Callable[..., httpx.Client], tenant: str) -> None:
    agent, auditor = clients(Role.AGENT), clients(Role.AUDITOR)
    ids = [ok(agent.post("/v1/check", json={**ALLOWED, "agent_id": f"bot{i % 2}"}))["action_id"] for i in range(5)]
    seen, cursor = [], None
    while True:
        page = ok(
            auditor.get("/v1/audit", params={"kind": "decision", "limit": 2, **({"cursor": cursor} if cursor else {})})
        )
        seen += [r["action_id"] for r in page["records"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids
    only = ok(auditor.get("/v1/audit", params={"kind": "decision", "agent_id": "bot1"}))["records"]
    assert [r["action_id"] for r in only] == ids[1::2] and {r["agent_id"] for r in only} == {f"{tenant}/bot1"}
    assert ok(auditor.get("/v1/audit", params={"since": "2999-01-01"}))["records"] == []
    assert ok(auditor.get("/v1/audit", params={"outcome": "allowed"}))["records"]
    for since in ("yesterday", "0001-01-01T00:00:00+05:00"):
        bad = auditor.get("/v1/audit", params={"since": since})
        assert bad.status_code == 422 and "since" in bad.text


def test_audit_verify_and_head_describe_the_chain(clients: Callable[..., httpx.Client], service: Running) -> None:
    auditor = clients(Role.AUDITOR)
    ok(clients(Role.AGENT).post("/v1/check", json=ALLOWED))
    head = ok(auditor.get("/v1/audit/head"))
    verified = ok(auditor.get("/v1/audit/verify", params={"head": head["head"]}))
    assert verified["ok"] is True and verified["count"] >= head["count"]
    expected = verify_store(service.app.state.service.audit)
    assert expected.ok and expected.count >= head["count"]
    missing = ok(auditor.get("/v1/audit/verify", params={"head": "ab" * 32}))
    assert missing["ok"] is False and "not found" in missing["problem"]


# ---- policies ---------------------------------------------------------------------------------------------------


def test_policy_changes_are_audited_with_old_and_new_hash(clients: Callable[..., httpx.Client], tenant: str) -> None:
    admin, auditor = clients(Role.ADMIN), clients(Role.AUDITOR)
    before = ok(admin.get("/v1/policies"))
    assert before["source"] in ("embedded", "default")
    first = put_policy(admin, BLOCKING)
    assert first["old_hash"] is None
    current = ok(auditor.get("/v1/policies"))
    assert (current["source"], current["policy_hash"]) == ("tenant", first["new_hash"])
    assert current["policy"]["blocked_resources"] == ["data.phi.*"]
    second = put_policy(admin, {**BLOCKING, "max_risk_score": 0.5})
    assert second["old_hash"] == first["new_hash"] and second["new_hash"] != first["new_hash"]
    assert put_policy(admin, {**BLOCKING, "max_risk_score": 0.5}) == {"old_hash": second["new_hash"],
                                                                       "new_hash": second["new_hash"]}  # fmt: skip
    changes = ok(auditor.get("/v1/audit", params={"kind": "policy_change"}))["records"]
    assert [(c["detail"]["old_hash"], c["detail"]["new_hash"], c["agent_id"]) for c in changes] == [
        (None, first["new_hash"], f"{tenant}/*"),
        (first["new_hash"], second["new_hash"], f"{tenant}/*"),
    ]


def test_agent_override_governs_that_agent_only(clients: Callable[..., httpx.Client]) -> None:
    admin, agent = clients(Role.ADMIN), clients(Role.AGENT)
    put_policy(admin, {"mode": "block"})
    override = put_policy(admin, {"blocked_resources": ["data.deidentified.*"], "mode": "block"}, agent="strict")
    assert ok(admin.get("/v1/policies/agents/strict"))["source"] == "agent"
    assert ok(admin.get("/v1/policies/agents/bot"))["source"] == "tenant"
    assert ok(admin.get("/v1/policies"))["agents"] == ["strict"]
    assert ok(agent.post("/v1/check", json={**ALLOWED, "agent_id": "strict"}))["allowed"] is False
    assert ok(agent.post("/v1/check", json=ALLOWED))["allowed"] is True
    removed = ok(admin.delete("/v1/policies/agents/strict"))
    assert removed == {"old_hash": override["new_hash"], "new_hash": None}
    assert ok(agent.post("/v1/check", json={**ALLOWED, "agent_id": "strict"}))["allowed"] is True


def test_invalid_policy_is_422_naming_the_field(clients: Callable[..., httpx.Client]) -> None:
    admin = clients(Role.ADMIN)
    for policy, field in (
        ({"max_risk_score": 2}, "max_risk_score"),
        ({"mode": "explode"}, "mode"),
        ({"allowed_action_types": ["teleport"]}, "allowed_action_types"),
        ({"blocked_resources": [""]}, "blocked_resources"),
        ({"surprise": 1}, "surprise"),
        ({"max_risk_score": "0.5"}, "max_risk_score"),  # refused, not read as the number it spells
        ({"max_actions_per_minute": 5.0}, "max_actions_per_minute"),
        ({"max_rows_per_window": True}, "max_rows_per_window"),
        ({"max_bytes_per_window": "10"}, "max_bytes_per_window"),
    ):
        response = admin.put("/v1/policies", json=policy)
        assert response.status_code == 422 and field in response.text, (policy, response.text)
    assert ok(admin.get("/v1/policies"))["source"] != "tenant"


def test_policy_file_applied_at_start_becomes_the_service_default(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("blocked_resources: ['data.phi.*']\nmode: block\n")
    agent_policy = tmp_path / "agent.toml"
    agent_policy.write_text('agent_id = "strict"\nblocked_resources = ["data.*"]\n')
    settings = Settings(home=tmp_path / "home", model=None, policy_files=(str(policy), f"acme={agent_policy}"))
    with serve(settings) as running, running.client("acme", Role.AGENT) as agent:
        assert ok(agent.post("/v1/check", json=BLOCKED))["outcome"] == "blocked"
        assert ok(agent.post("/v1/check", json={**ALLOWED, "agent_id": "strict"}))["allowed"] is False
        with running.client("acme", Role.AUDITOR) as auditor:
            assert ok(auditor.get("/v1/policies"))["source"] == "default"
    with serve(settings) as running:  # the same files again change nothing
        changes = running.app.state.service.audit.query(AuditQuery(kind="policy_change"))
        assert len(changes) == 2


# ---- models, keys, health ---------------------------------------------------------------------------------------


def test_models_list_and_reload(clients: Callable[..., httpx.Client], service: Running) -> None:
    listed = ok(clients(Role.AUDITOR).get("/v1/models"))
    assert listed["active"] == "default-5" and [m["name"] for m in listed["available"]] == ["default"]
    reloaded = ok(clients(Role.ADMIN).post("/v1/models/reload"))
    assert reloaded == {"previous": "default-5", "active": "default-5"}
    assert 'risk_model_info{version="default-5"} 1.0' in clients(None).get("/metrics").text
    # The reload is the service's, and the asking tenant's auditors see it among the tenant's records.
    seen = ok(clients(Role.AUDITOR).get("/v1/audit", params={"kind": "model_reload"}))["records"]
    assert [(r["agent_id"].split("/")[1], r["model_version"]) for r in seen] == [("*", "default-5")]
    service_wide = service.app.state.service.audit.query(AuditQuery(kind="model_reload", agent_id="*"))
    assert service_wide and service_wide[-1].actor == seen[0]["actor"]


def test_a_reload_or_policy_change_keeps_every_agents_behavior_baseline(
    clients: Callable[..., httpx.Client], tenant: str
) -> None:
    """Guards are rebuilt on a model reload (every tenant's) and a policy change; the baselines they score
    against live with the state store, so another tenant's admin cannot reset them to a new agent's."""
    admin, agent = clients(Role.ADMIN), clients(Role.AGENT)
    put_policy(admin, {"max_risk_score": 0.6, "mode": "block"})
    for i in range(12):
        ok(agent.post("/v1/check", json={**ALLOWED, "action_type": "file_read", "resource": f"/reports/q{i}.csv"}))
    odd = {**ALLOWED, "action_type": "network_request", "resource": "https://exfil.evil.example/upload",
           "payload": {"data": "x" * 2000}}  # fmt: skip
    before = ok(agent.post("/v1/check", json=odd))
    assert before["allowed"] is False
    ok(clients(Role.ADMIN, of=f"{tenant}-other").post("/v1/models/reload"))
    assert ok(agent.post("/v1/check", json=odd))["risk_score"] >= before["risk_score"]
    put_policy(admin, {"max_risk_score": 0.61, "mode": "block"})
    assert ok(agent.post("/v1/check", json=odd))["allowed"] is False


def test_admin_makes_lists_and_revokes_keys_of_its_tenant(
    clients: Callable[..., httpx.Client], service: Running
) -> None:
    admin = clients(Role.ADMIN)
    made = ok(admin.post("/v1/keys", json={"role": "agent", "note": "ci"}), 201)
    assert made["key"].startswith(f"rk_{made['key_id']}_")
    with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {made['key']}"}) as agent:
        assert ok(agent.post("/v1/check", json=ALLOWED))["allowed"] is True
        listed = ok(admin.get("/v1/keys"))["keys"]
        assert made["key_id"] in [k["key_id"] for k in listed] and all("key" not in k for k in listed)
        assert ok(admin.delete(f"/v1/keys/{made['key_id']}"))["revoked_at"]
        assert agent.post("/v1/check", json=ALLOWED).status_code == 401
    assert admin.delete(f"/v1/keys/{made['key_id']}").status_code == 404
    assert admin.post("/v1/keys", json={"role": "root"}).status_code == 422


def test_a_key_bound_to_agents_acts_as_those_agents_only(
    clients: Callable[..., httpx.Client], service: Running, tenant: str
) -> None:
    """A paused or terminated agent whose key is bound to it cannot go on under another agent id: that id's checks
    are denied and audited, and give it no state; its outcomes are 403, its reported records rejected."""
    admin, auditor, unbound = clients(Role.ADMIN), clients(Role.AUDITOR), clients(Role.AGENT)
    made = ok(admin.post("/v1/keys", json={"role": "agent", "agents": ["bot", "billing-*"]}), 201)
    listed = {k["key_id"]: k["agents"] for k in ok(admin.get("/v1/keys"))["keys"]}
    assert made["agents"] == listed[made["key_id"]] == ["bot", "billing-*"] and None in listed.values()
    others = {**ALLOWED, "agent_id": "other", "idempotency_key": "k1"}
    other = ok(unbound.post("/v1/check", json=others))  # an unbound key: any agent
    assert other["allowed"] is True
    with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {made['key']}"}) as bound:
        own = ok(bound.post("/v1/check", json=ALLOWED))
        assert own["allowed"] is True
        denied = ok(bound.post("/v1/check", json={**ALLOWED, "agent_id": "bot2"}))
        assert (denied["allowed"], denied["outcome"]) == (False, "blocked")
        reason = denied["reasons"][0]
        assert reason["code"] == "agent_not_bound"
        assert made["key_id"] in reason["message"] and "billing-*" in reason["message"]
        replayed = ok(bound.post("/v1/check", json=others))  # not the decision another key got under this key
        assert replayed["reasons"][0]["code"] == "agent_not_bound"
        names = ["billing-eu", "Billing-eu", "bot"]  # patterns match case-sensitively
        batch = ok(bound.post("/v1/check/batch", json={"actions": [{**ALLOWED, "agent_id": a} for a in names]}))
        assert [d["allowed"] for d in batch["decisions"]] == [True, False, True]
        assert batch["decisions"][1]["reasons"][0]["code"] == "agent_not_bound"
        for agent in ("bot2", "Billing-eu"):
            records = ok(auditor.get("/v1/audit", params={"agent_id": agent, "kind": "decision"}))["records"]
            assert [(r["outcome"], r["reasons"][0]["code"]) for r in records] == [("blocked", "agent_not_bound")]

        assert ok(bound.post("/v1/outcome", json={"action_id": own["action_id"], "success": True}))["recorded"]
        sent = bound.post("/v1/outcome", json={"action_id": other["action_id"], "success": True})
        assert sent.status_code == 403 and "bound to agents bot, billing-*" in sent.json()["detail"], sent.text
        refused = ok(auditor.get("/v1/audit", params={"kind": "access_denied"}))["records"]
        assert [r["detail"]["path"] for r in refused] == ["/v1/outcome"]
        outcome = {"idempotency_key": "o1", "kind": "outcome", "action_id": other["action_id"], "success": True}
        spool = [reported_decision("d1"), reported_decision("d2", agent="bot2"), outcome]
        report = ok(bound.post("/v1/reports", json={"records": spool}))
        assert (report["accepted"], [r["idempotency_key"] for r in report["rejected"]]) == (1, ["d2", "o1"])
        assert all("not to 'bot2'" in r["reason"] or "not to 'other'" in r["reason"] for r in report["rejected"])
    stores = service.app.state.service
    kept = {*stores.state._states, *stores.state._windows, *stores.tenants._admitted}
    assert not [k for k in kept if any(f"{tenant}/{a}" in str(k) or (tenant, a) == k for a in ("bot2", "Billing-eu"))]
    profiles = stores.tenants.guard(tenant, "bot")._behavior.profiles._profiles
    assert f"{tenant}/bot" in profiles and not {f"{tenant}/bot2", f"{tenant}/Billing-eu"} & set(profiles)


def test_a_revoked_key_with_power_over_others_stops_at_once_on_every_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers, each with its own KeyStore on one catalog: a key revoked through one is refused by the other at
    its next request if it may approve, read or administer (an admin key could otherwise mint a new admin key in
    the cache's window); an agent key, which makes the checks, within CACHE_SECONDS."""
    url = f"sqlite:///{tmp_path}/catalog.db"
    first, second = KeyStore(Catalog(url)), KeyStore(Catalog(url))
    tokens = {role: first.create("acme", role)[1] for role in Role}
    assert all(second.authenticate(token) is not None for token in tokens.values())  # now cached by the second
    for token in tokens.values():
        assert first.revoke("acme", token.split("_")[1])
    refused = {role for role, token in tokens.items() if second.authenticate(token) is None}
    assert refused == {Role.REVIEWER, Role.AUDITOR, Role.ADMIN}
    now = time.monotonic()
    monkeypatch.setattr("risk.keys.time.monotonic", lambda: now + CACHE_SECONDS + 0.1)
    assert second.authenticate(tokens[Role.AGENT]) is None


@pytest.mark.parametrize(
    "body",
    [{"role": "reviewer", "agents": ["bot"]}, {"role": "admin", "agents": ["*"]}, {"role": "agent", "agents": []}],
)
def test_only_agent_keys_are_bound_and_to_at_least_one_agent(
    clients: Callable[..., httpx.Client], body: dict[str, Any]
) -> None:
    refused = clients(Role.ADMIN).post("/v1/keys", json=body)
    assert refused.status_code == 422, refused.text


def test_a_catalog_of_the_previous_version_upgrades_and_its_keys_act_for_any_agent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/catalog.db"
    token = catalog_before_bound_keys(url)
    upgraded = Catalog(url)
    assert upgraded.run("SELECT version FROM risk_catalog_version ORDER BY version").rows == [(1,), (2,), (3,)]
    keys = KeyStore(upgraded)
    old = keys.authenticate(token)
    assert old is not None and old.agents is None and old.may_act_as("anyone")
    bound, _ = keys.create("acme", Role.AGENT, agents=["bot"])
    assert [k.agents for k in keys.list("acme")] == [None, ("bot",)] and bound.agents == ("bot",)


def test_keys_made_and_revoked_on_the_command_line_are_in_the_services_audit_trail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RISK_HOME", str(tmp_path))
    monkeypatch.delenv("RISK_DATABASE_URL", raising=False)
    runner = CliRunner()
    made = runner.invoke(cli, ["keys", "create", "--tenant", "acme", "--role", "admin"])
    assert made.exit_code == 0, made.output
    key_id = made.stdout.strip().splitlines()[-1].split("_")[1]
    other = runner.invoke(cli, ["keys", "create", "--tenant", "acme", "--role", "agent",
                                "--database", f"sqlite:///{tmp_path}/catalog.db"])  # fmt: skip
    other_id = other.stdout.strip().splitlines()[-1].split("_")[1]
    assert runner.invoke(cli, ["keys", "revoke", other_id, "--tenant", "acme"]).exit_code == 0
    unaudited = runner.invoke(cli, ["keys", "create", "--tenant", "acme", "--role", "admin", "--audit", "mysql://x"])
    assert unaudited.exit_code == 1 and "rk_" not in unaudited.stdout  # a key with no trace is not made
    live = [k for k in KeyStore(Catalog(f"sqlite:///{tmp_path}/catalog.db")).list("acme") if k.revoked_at is None]
    assert [k.key_id for k in live] == [key_id]
    with serve(Settings(home=tmp_path, model=None)) as running, running.client("acme", Role.AUDITOR) as auditor:
        records = ok(auditor.get("/v1/audit", params={"limit": 1000}))["records"]
        assert verify_store(running.app.state.service.audit).ok
    assert [(r["kind"], r["agent_id"], r["actor"], r["detail"]) for r in records] == [
        ("key_created", "acme/*", "cli", {"key_id": key_id, "role": "admin"}),
        ("key_created", "acme/*", "cli", {"key_id": other_id, "role": "agent"}),
        ("key_revoked", "acme/*", "cli", {"key_id": other_id}),
    ]


def test_health_ready_and_metrics(clients: Callable[..., httpx.Client], service: Running) -> None:
    anonymous = clients(None)
    assert ok(anonymous.get("/healthz")) == {"status": "ok", "stores": {}}
    assert ok(anonymous.get("/readyz")) == {
        "status": "ready",
        "stores": {"audit": "ok", "state": "ok", "catalog": "ok"},
    }
    put_policy(clients(Role.ADMIN), {**BLOCKING, "mode": "alert"})
    agent = clients(Role.AGENT)
    ok(agent.post("/v1/check", json=BLOCKED))

    def fail_open() -> float:
        text = anonymous.get("/metrics").text
        for line in ('risk_decisions_total{outcome="alerted"}', "risk_decision_seconds_bucket", "risk_model_info"):
            assert line in text
        return float(next(x for x in text.splitlines() if x.startswith("risk_fail_open_total")).split()[-1])

    before = fail_open()
    ok(agent.post("/v1/reports", json={"records": [reported_decision("h1"), reported_decision("h2")]}))
    assert fail_open() == before + 2


def reported_decision(key: str, agent: str = "bot") -> dict[str, Any]:
    return {"idempotency_key": key, "kind": "decision", "ts": "2026-03-02T09:00:00+00:00", "agent_id": agent,
            "action_id": uuid.uuid4().hex, "action_type": "api_call", "resource": "svc.call/1",
            "reasons": [{"code": "fail_open", "message": "the service did not answer", "weight": 0.0,
                         "violation": False}], "error": "ConnectError"}  # fmt: skip


def test_reported_fail_open_records_are_stored_once_and_marked_as_reported(
    clients: Callable[..., httpx.Client], tenant: str
) -> None:
    agent, auditor = clients(Role.AGENT), clients(Role.AUDITOR)
    decision = reported_decision("d1")
    outcome = {"idempotency_key": "o1", "kind": "outcome", "action_id": decision["action_id"], "success": True,
               "rows": 3}  # fmt: skip
    first = ok(agent.post("/v1/reports", json={"records": [decision, outcome]}))
    assert first == {"accepted": 2, "duplicates": 0, "rejected": []}
    again = ok(agent.post("/v1/reports", json={"records": [decision, outcome]}))
    assert again == {"accepted": 0, "duplicates": 2, "rejected": []}
    records = ok(auditor.get("/v1/audit"))["records"]
    stored = [r for r in records if r["action_id"] == decision["action_id"]]
    assert [(r["kind"], r["agent_id"]) for r in stored] == [("decision", f"{tenant}/bot"), ("outcome", f"{tenant}/bot")]
    assert stored[0]["ts"] == "2026-03-02T09:00:00.000000+00:00" and stored[0]["detail"]["fail_open"] is True
    assert stored[0]["actor"].startswith("client:") and stored[0]["reasons"][0]["code"] == "fail_open"
    orphan = {**outcome, "idempotency_key": "o2", "action_id": "ab" * 16}
    changed = {**decision, "resource": "svc.other"}  # a resent key must name the same record
    mixed = ok(agent.post("/v1/reports", json={"records": [orphan, changed]}))
    assert mixed["accepted"] == 0 and [r["idempotency_key"] for r in mixed["rejected"]] == ["o2", "d1"]
    other = clients(Role.AGENT, of=f"{tenant}-b")  # another tenant's outcome for this action is not found
    assert ok(other.post("/v1/reports", json={"records": [{**outcome, "idempotency_key": "x"}]}))["rejected"]
    bad = agent.post("/v1/reports", json={"records": [{**decision, "resource": None}]})
    assert bad.status_code == 422


def test_the_same_outcome_of_an_action_is_recorded_once_however_often_it_is_sent(
    clients: Callable[..., httpx.Client], tenant: str, service: Running
) -> None:
    """A client that gave up waiting for /v1/outcome spools the outcome and sends it again with /v1/reports; the
    service stored the first one meanwhile, and must not store (or count toward the volume limit) the copy."""
    agent = clients(Role.AGENT)
    action_id = ok(agent.post("/v1/check", json=ALLOWED))["action_id"]
    body = {"action_id": action_id, "success": True, "rows": 7}
    ok(agent.post("/v1/outcome", json=body))
    ok(agent.post("/v1/outcome", json=body))  # a retry
    spooled = {"idempotency_key": f"outcome:{action_id}", "kind": "outcome", **body}
    assert ok(agent.post("/v1/reports", json={"records": [spooled]})) == {"accepted": 0, "duplicates": 1,
                                                                          "rejected": []}  # fmt: skip
    ok(agent.post("/v1/outcome", json={**body, "rows": 8}))  # another outcome is another record
    audit = service.app.state.service.audit
    outcomes = audit.query(AuditQuery(kind="outcome", agent_prefix=f"{tenant}/"))
    assert [(r.action_id, r.detail["rows"]) for r in outcomes] == [(action_id, 7), (action_id, 8)]


# ---- keys, roles and tenants ------------------------------------------------------------------------------------

# Every route with a body that passes its schema, and the roles allowed to call it.
ROUTES: list[tuple[str, str, Any, set[Role]]] = [
    ("POST", "/v1/check", ALLOWED, {Role.AGENT}),
    ("POST", "/v1/check/batch", {"actions": [ALLOWED]}, {Role.AGENT}),
    ("POST", "/v1/outcome", {"action_id": "0" * 32, "success": True}, {Role.AGENT}),
    ("POST", "/v1/reports", {"records": [reported_decision("roles")]}, {Role.AGENT}),
    ("GET", "/v1/agents/bot", None, {Role.REVIEWER, Role.AUDITOR}),
    ("POST", "/v1/agents/bot/approve", None, {Role.REVIEWER}),
    ("POST", "/v1/agents/bot/resume", None, {Role.REVIEWER}),
    ("POST", "/v1/agents/bot/terminate", {"reason": "test"}, {Role.REVIEWER}),
    ("POST", "/v1/agents/bot/reset", None, {Role.REVIEWER}),
    ("POST", "/v1/agents/bot/rollback", None, {Role.REVIEWER}),
    ("GET", "/v1/approvals", None, {Role.REVIEWER}),
    ("GET", "/v1/audit", None, {Role.AUDITOR}),
    ("GET", "/v1/audit/verify", None, {Role.AUDITOR}),
    ("GET", "/v1/audit/head", None, {Role.AUDITOR}),
    ("GET", "/v1/policies", None, {Role.ADMIN, Role.AUDITOR}),
    ("PUT", "/v1/policies", {"mode": "block"}, {Role.ADMIN}),
    ("GET", "/v1/policies/agents/bot", None, {Role.ADMIN, Role.AUDITOR}),
    ("PUT", "/v1/policies/agents/bot", {"mode": "block"}, {Role.ADMIN}),
    ("DELETE", "/v1/policies/agents/bot", None, {Role.ADMIN}),
    ("GET", "/v1/keys", None, {Role.ADMIN}),
    ("POST", "/v1/keys", {"role": "agent"}, {Role.ADMIN}),
    ("DELETE", "/v1/keys/0123456789abcdef", None, {Role.ADMIN}),
    ("GET", "/v1/models", None, {Role.ADMIN, Role.AUDITOR}),
    ("POST", "/v1/models/reload", None, {Role.ADMIN}),
]


def test_every_route_admits_its_roles_only_and_audits_each_refusal(
    clients: Callable[..., httpx.Client], service: Running, tenant: str
) -> None:
    by_role = {role: clients(role) for role in Role}
    anonymous = clients(None)
    with httpx.Client(
        base_url=service.url, headers={"Authorization": "Bearer rk_0123456789abcdef_" + "x" * 43}
    ) as forged:
        for method, path, body, roles in ROUTES:
            for client in (anonymous, forged):
                response = client.request(method, path, json=body)
                assert response.status_code == 401, (method, path, response.text)
                assert response.headers["www-authenticate"] == "Bearer"
            for role, client in by_role.items():
                status = client.request(method, path, json=body).status_code
                if role in roles:
                    assert status not in (401, 403), (method, path, role)
                else:
                    assert status == 403, (method, path, role, status)
    refused = [r for r in service.app.state.service.audit.query(AuditQuery(kind="access_denied", limit=100_000))]
    mine = [r for r in refused if r.agent_id == f"{tenant}/*"]
    forbidden = sum(len(set(Role) - roles) for _, _, _, roles in ROUTES)
    assert len(mine) == forbidden and {r.detail["status"] for r in mine} == {403}
    anonymous_paths = [r.detail["path"] for r in refused if r.agent_id == "*" and r.detail["status"] == 401]
    assert {path for _, path, _, _ in ROUTES} <= set(anonymous_paths)


def test_a_body_that_is_not_json_is_refused_after_the_key_is_checked(
    clients: Callable[..., httpx.Client], service: Running, tenant: str
) -> None:
    """401 without a key and 403 with a key of another role, both audited, whatever the body; 422 (naming the
    broken JSON) only for a key that may call the route."""

    def anonymous_refusals() -> list[str]:
        denied = service.app.state.service.audit.query(AuditQuery(kind="access_denied", agent_id="*", limit=100_000))
        return [r.detail["path"] for r in denied if r.detail["status"] == 401]

    before = anonymous_refusals()
    by_role = {role: clients(role) for role in Role}
    anonymous = clients(None)
    raw = {"content": b"{", "headers": {"content-type": "application/json"}}
    with_body = [(method, path, roles) for method, path, body, roles in ROUTES if body is not None and method != "GET"]
    assert len(with_body) == 8
    for method, path, roles in with_body:
        refused = anonymous.request(method, path, **raw)
        assert (refused.status_code, refused.headers.get("www-authenticate")) == (401, "Bearer"), (path, refused.text)
        for role, client in by_role.items():
            response = client.request(method, path, **raw)
            if role in roles:
                assert response.status_code == 422, (method, path, response.text)
                assert response.json()["detail"][0]["type"] == "json_invalid"
            else:
                assert response.status_code == 403, (method, path, role, response.text)
    denied = service.app.state.service.audit.query(AuditQuery(kind="access_denied", limit=100_000))
    mine = [r for r in denied if r.agent_id == f"{tenant}/*"]
    assert len(mine) == sum(len(set(Role) - roles) for _, _, roles in with_body)
    assert {r.detail["status"] for r in mine} == {403}
    assert sorted(anonymous_refusals()[len(before) :]) == sorted(path for _, path, _ in with_body)


def test_a_tenant_never_sees_or_changes_another_tenants_things(
    clients: Callable[..., httpx.Client], tenant: str
) -> None:
    other = f"{tenant}-other"
    a = {role: clients(role) for role in Role}
    b = {role: clients(role, of=other) for role in Role}
    put_policy(a[Role.ADMIN], BLOCKING)
    paused = ok(a[Role.AGENT].post("/v1/check", json=BLOCKED))
    assert paused["outcome"] == "paused"
    # Tenant B's agent "bot" is another agent: running, not paused, and its policy is not A's.
    assert ok(b[Role.REVIEWER].get("/v1/agents/bot"))["status"] == "running"
    assert ok(b[Role.AGENT].post("/v1/check", json=BLOCKED))["allowed"] is True
    assert ok(b[Role.REVIEWER].get("/v1/approvals"))["approvals"] == []
    assert b[Role.REVIEWER].post("/v1/agents/bot/approve").status_code == 409
    assert b[Role.REVIEWER].post("/v1/agents/bot/resume").status_code == 409
    ok(b[Role.REVIEWER].post("/v1/agents/bot/terminate"))
    ok(b[Role.REVIEWER].post("/v1/agents/bot/reset"))
    ok(b[Role.REVIEWER].post("/v1/agents/bot/rollback"))
    assert ok(a[Role.REVIEWER].get("/v1/agents/bot"))["status"] == "paused"
    assert (
        b[Role.AGENT].post("/v1/outcome", json={"action_id": paused["action_id"], "success": True}).status_code == 404
    )
    # Audit: B sees only B's records, whatever it asks for.
    for params in ({}, {"agent_id": "bot"}, {"kind": "decision"}, {"outcome": "paused"}, {"kind": "policy_change"}):
        records = ok(b[Role.AUDITOR].get("/v1/audit", params={**params, "limit": 1000}))["records"]
        assert all(r["agent_id"].startswith(f"{other}/") for r in records), params
        assert paused["action_id"] not in {r["action_id"] for r in records}
    # Policies and keys: B's admin changes B's only.
    policy_a = ok(a[Role.ADMIN].get("/v1/policies"))
    put_policy(b[Role.ADMIN], {"mode": "terminate"})
    put_policy(b[Role.ADMIN], {"mode": "terminate"}, agent="bot")
    assert ok(a[Role.ADMIN].get("/v1/policies")) == policy_a
    assert ok(a[Role.ADMIN].get("/v1/policies/agents/bot"))["source"] == "tenant"
    strict = put_policy(a[Role.ADMIN], {"mode": "block"}, agent="strict")
    assert ok(b[Role.ADMIN].delete("/v1/policies/agents/strict")) == {"old_hash": None, "new_hash": None}
    assert ok(a[Role.AUDITOR].get("/v1/policies/agents/strict"))["policy_hash"] == strict["new_hash"]
    batch = ok(b[Role.AGENT].post("/v1/check/batch", json={"actions": [BLOCKED]}))["decisions"]
    assert batch[0]["allowed"] is True  # B's bot, under B's agent override (mode terminate, nothing blocked)
    a_keys = {k["key_id"] for k in ok(a[Role.ADMIN].get("/v1/keys"))["keys"]}
    assert a_keys.isdisjoint(k["key_id"] for k in ok(b[Role.ADMIN].get("/v1/keys"))["keys"])
    assert all(b[Role.ADMIN].delete(f"/v1/keys/{key_id}").status_code == 404 for key_id in a_keys)
    assert (
        ok(a[Role.AGENT].post("/v1/check", json=BLOCKED))["outcome"] == "paused"
    )  # A's key still works, A still paused


# ---- bad input ---------------------------------------------------------------------------------------------------


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"action_type": "file_read", "resource": "/x"}, "agent_id"),
        ({**ALLOWED, "agent_id": 7}, "agent_id"),
        ({**ALLOWED, "agent_id": "a/b"}, "agent_id"),
        ({**ALLOWED, "agent_id": "a\x00b"}, "agent_id"),
        ({**ALLOWED, "agent_id": "*"}, "agent_id"),
        ({**ALLOWED, "action_type": "teleport"}, "action_type"),
        ({**ALLOWED, "resource": ""}, "resource"),
        ({**ALLOWED, "resource": "r" * 5000}, "resource"),
        ({**ALLOWED, "resource": None}, "resource"),
        ({**ALLOWED, "session_id": "s" * 300}, "session_id"),
        ({**ALLOWED, "idempotency_key": "k" * 129}, "idempotency_key"),
        ({**ALLOWED, "idempotency_key": "k\x00"}, "idempotency_key"),
        ({**ALLOWED, "session_id": "s\x00"}, "session_id"),
        ({**ALLOWED, "payload": nested(65)}, "payload"),
        ({**ALLOWED, "task": "t" * 32_769}, "task"),
        ({**ALLOWED, "task": ["pay"]}, "task"),
        ({**ALLOWED, "extra": 1}, "extra"),
    ],
)
def test_schema_violations_are_422_naming_the_field(
    clients: Callable[..., httpx.Client], body: dict[str, Any], field: str
) -> None:
    response = clients(Role.AGENT).post("/v1/check", json=body)
    assert response.status_code == 422, response.text
    assert field in json.dumps(response.json()["detail"])


@pytest.mark.parametrize(("field", "value"), [("success", "yes"), ("success", 1), ("rows", "5"), ("rows", 5.0),
                                            ("rows", True), ("bytes", "12")])  # fmt: skip
def test_outcome_values_of_another_type_are_422_not_coerced(
    clients: Callable[..., httpx.Client], field: str, value: Any
) -> None:
    """ "yes" is not read as true, nor "5" or 5.0 as 5 rows: the trail records what the client said, or nothing."""
    agent, auditor = clients(Role.AGENT), clients(Role.AUDITOR)
    action_id = ok(agent.post("/v1/check", json=ALLOWED))["action_id"]
    sent = agent.post("/v1/outcome", json={"action_id": action_id, "success": True, field: value})
    assert sent.status_code == 422 and field in json.dumps(sent.json()["detail"]), sent.text
    spooled = {"idempotency_key": "o1", "kind": "outcome", "action_id": action_id, "success": True, field: value}
    reported = agent.post("/v1/reports", json={"records": [spooled]})
    assert reported.status_code == 422 and field in json.dumps(reported.json()["detail"]), reported.text
    assert ok(auditor.get("/v1/audit", params={"kind": "outcome"}))["records"] == []


def test_the_remote_guard_sends_the_task_and_a_payee_it_names_is_not_new(
    service: Running, tenant: str, tmp_path: Path
) -> None:
    key = service.app.state.service.keys.create(tenant, Role.AGENT)[1]
    guard = Guard(endpoint=service.url, api_key=key, agent_id="payer", home=tmp_path)
    try:
        for i in range(12):  # past the cold start, with one known payee
            guard.check("api_call", "bank.transfer", {"args": {"iban": "GB29NWBK60161331926819", "amount": 10 + i}})
        landlord, stranger = "CA133012400231215421872", "US133000000121212121212"
        task = f"I moved: my new landlord's account is {landlord} and rent is 2200."
        with guard.working_on(task):
            asked = guard.check("api_call", "bank.transfer", {"args": {"iban": landlord, "amount": 2200}})
        unasked = guard.check("api_call", "bank.transfer", {"args": {"iban": stranger, "amount": 2200}}, task=task)
        odd = guard.check("file_read", "/reports/q3.csv", task="read \ud800 q3")  # not UTF-8: sent escaped
    finally:
        guard.close()
    assert "named_by_task" in asked.reason_codes and "new_destination" not in asked.reason_codes
    assert "new_destination" in unasked.reason_codes
    assert odd.allowed
    (record,) = service.app.state.service.audit.query(AuditQuery(action_id=odd.action_id, limit=1))
    assert record.task_digest == hashlib.sha256(b"read \\ud800 q3").hexdigest()


def test_a_batch_carries_each_actions_task(clients: Callable[..., httpx.Client], service: Running, tenant: str) -> None:
    iban = "CA133012400231215421872"
    pay = {"agent_id": "payer", "action_type": "api_call", "resource": "bank.transfer", "payload": {"iban": iban}}
    decisions = ok(clients(Role.AGENT).post("/v1/check/batch", json={"actions": [{**pay, "task": f"Pay {iban}"}, pay]}))
    named, unnamed = ([r["code"] for r in d["reasons"]] for d in decisions["decisions"])
    assert "named_by_task" in named and "named_by_task" not in unnamed
    records = service.app.state.service.audit.query(AuditQuery(agent_prefix=f"{tenant}/", kind="decision"))
    assert [r.task_digest for r in records] == [hashlib.sha256(f"Pay {iban}".encode()).hexdigest(), None]


def test_payload_nested_64_levels_is_accepted(clients: Callable[..., httpx.Client]) -> None:
    assert ok(clients(Role.AGENT).post("/v1/check", json={**ALLOWED, "payload": nested(63)}))["allowed"] is True


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b"[]",
        b"null",
        b'"a string"',
        b"{" + b'"a":' * 0 + b"}",
        b'{"agent_id": "bot", "action_type": "file_read", "resource": "/x", "payload": '
        + b"[" * 5000
        + b"]" * 5000
        + b"}",
        b'{"agent_id": "bot", "action_type": "file_read", "resource": "\\ud800"}',
        b'{"agent_id": "bot", "action_type": "file_read", "resource": "/x", "payload": 1e999}',
        b"\xff\xfe\x00",
        b'{"agent_id": "bot", "action_type": "file_read", "resource": "/x", "session_id": 12}',
    ],
)
def test_malformed_bodies_are_refused_cleanly(clients: Callable[..., httpx.Client], raw: bytes) -> None:
    response = clients(Role.AGENT).post("/v1/check", content=raw, headers={"content-type": "application/json"})
    assert response.status_code in (413, 422), (raw[:60], response.status_code, response.text[:200])
    assert "allowed" not in response.json()


def test_strange_but_valid_resources_get_a_decision_not_an_error(clients: Callable[..., httpx.Client]) -> None:
    agent = clients(Role.AGENT)
    for resource in ("/a/\x00/b", "%2e%2e/%2e%2e/etc/passwd", "ｄａｔａ.phi.x", "\u200bdata", "x" * 4096, "🙂"):
        decision = ok(agent.post("/v1/check", json={**ALLOWED, "resource": resource}))
        assert decision["resource"] == resource


def test_body_over_the_limit_is_413_by_header_and_by_stream(clients: Callable[..., httpx.Client]) -> None:
    agent = clients(Role.AGENT)
    big = {**ALLOWED, "payload": "x" * (64 * 1024)}
    response = agent.post("/v1/check", json=big)
    assert response.status_code == 413 and "limit" in response.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the size is only known as it streams in
        yield b'{"agent_id": "bot", "action_type": "file_read", "resource": "/x", "payload": "'
        for _ in range(100):
            yield b"y" * 1024
        yield b'"}'

    streamed = agent.post("/v1/check", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    assert agent.post("/v1/check", json=ALLOWED).status_code == 200  # the connection pool survives


def test_bad_query_and_path_parameters_are_422(clients: Callable[..., httpx.Client]) -> None:
    auditor, reviewer = clients(Role.AUDITOR), clients(Role.REVIEWER)
    assert auditor.get("/v1/audit", params={"limit": 0}).status_code == 422
    assert auditor.get("/v1/audit", params={"limit": "many"}).status_code == 422
    assert auditor.get("/v1/audit", params={"cursor": "-1"}).status_code == 422
    assert auditor.get("/v1/audit/verify", params={"head": "not-a-hash"}).status_code == 422
    assert reviewer.get("/v1/agents/" + "a" * 200).status_code == 422
    assert reviewer.post("/v1/agents/bot/terminate", json={"reason": ""}).status_code == 422


# ---- the OpenAPI document ---------------------------------------------------------------------------------------


def test_openapi_document_describes_every_route(clients: Callable[..., httpx.Client], service: Running) -> None:
    document = ok(clients(None).get("/openapi.json"))
    expected = {(method.lower(), path) for method, path, _, _ in ROUTES} | {
        ("get", "/healthz"), ("get", "/readyz"), ("get", "/metrics"),
    }  # fmt: skip
    documented = {
        (method, path.replace("{agent_id}", "bot").replace("{key_id}", "0123456789abcdef"))
        for path, operations in document["paths"].items()
        for method in operations
    }
    assert documented == expected
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            success = next(code for code in operation["responses"] if code.startswith("2"))
            content = operation["responses"][success]["content"]
            assert all("schema" in media for media in content.values()), (method, path)
            assert operation.get("summary"), (method, path)
    check = document["paths"]["/v1/check"]["post"]
    assert check["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/DecisionOut")
    assert {"401", "403", "413", "422", "503"} <= set(check["responses"])


# ---- stores that are down ---------------------------------------------------------------------------------------


def test_state_store_down_means_not_ready_and_every_check_denied(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, redis_url=f"redis://127.0.0.1:{free_port()}/0", model=None)
    with serve(settings) as running, running.client("acme", Role.AGENT) as agent:
        assert not running.app.state.service.local  # decisions run in a thread: this store is across a network
        with running.client() as anonymous:
            ready = anonymous.get("/readyz")
        assert ready.status_code == 503 and ready.json()["stores"]["state"] != "ok"
        assert ready.json()["stores"]["audit"] == "ok"
        decision = ok(agent.post("/v1/check", json=ALLOWED))
        assert (decision["allowed"], decision["reasons"][0]["code"]) == (False, "state_unavailable")
        batch = ok(agent.post("/v1/check/batch", json={"actions": [ALLOWED, ALLOWED]}))["decisions"]
        assert [d["allowed"] for d in batch] == [False, False]
        with running.client("acme", Role.REVIEWER) as reviewer:
            assert reviewer.get("/v1/agents/bot").status_code == 503
            assert reviewer.post("/v1/agents/bot/approve").status_code == 503
        with running.client() as anonymous:
            assert 'risk_store_errors_total{store="state"}' in anonymous.get("/metrics").text


def test_audit_store_that_cannot_be_written_denies(tmp_path: Path) -> None:
    with serve(Settings(home=tmp_path, model=None)) as running, running.client("acme", Role.AGENT) as agent:
        assert running.app.state.service.local  # decisions run on the event loop: every store is on this machine
        assert ok(agent.post("/v1/check", json=ALLOWED))["allowed"] is True
        running.app.state.service.audit.close()  # as a store the service lost
        decision = ok(agent.post("/v1/check", json=ALLOWED))
        assert (decision["allowed"], decision["reasons"][0]["code"]) == (False, "audit_unavailable")
        batch = ok(agent.post("/v1/check/batch", json={"actions": [ALLOWED, ALLOWED]}))["decisions"]
        assert [(d["allowed"], d["outcome"], d["reasons"][0]["code"]) for d in batch] == [
            (False, "blocked", "audit_unavailable")
        ] * 2
        with running.client("fresh", Role.AGENT) as newcomer:  # a tenant whose guard cannot record its policy
            assert newcomer.post("/v1/check", json=ALLOWED).status_code == 503
        with running.client() as anonymous:
            assert anonymous.get("/readyz").status_code == 503


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=50),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from([*ALLOWED, "payload", "session_id", "idempotency_key", "other"]), value=json_values)
def test_no_body_gets_a_server_error_or_an_unearned_allow(
    clients: Callable[..., httpx.Client], field: str, value: Any
) -> None:
    put_policy(clients(Role.ADMIN), {**BLOCKING, "mode": "block"})  # the same policy every time: no change
    response = clients(Role.AGENT).post("/v1/check", json={**BLOCKED, field: value})
    assert response.status_code in (200, 409, 422), response.text
    if response.status_code == 200 and field not in ("resource", "action_type"):
        assert response.json()["allowed"] is False
