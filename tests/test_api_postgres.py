"""The HTTP service on PostgreSQL (audit trail, keys, policies, idempotency) and Redis (state): two services on the
same stores, as two workers would be, on the main paths. Skips when the servers are not reachable, unless
RISK_REQUIRE_SERVICES=1. Each test module run works in a fresh PostgreSQL schema and Redis key prefix
(the `database` and `redis_url` fixtures of conftest.py)."""

from __future__ import annotations

import functools
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from api_server import Running, catalog_before_bound_keys, check_idempotency_keys_expire, serve
from together import run_together

from api.settings import Settings
from risk.audit.store import AuditQuery, verify_store
from risk.catalog import Catalog
from risk.keys import KeyStore, Role

ALLOWED = {"agent_id": "bot", "action_type": "database_query", "resource": "data.deidentified.claims"}
BLOCKED = {"agent_id": "bot", "action_type": "database_query", "resource": "data.phi.patients"}


@pytest.fixture(scope="module")
def pair(database: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Running, Running]]:
    """Two services on the same PostgreSQL schema and Redis prefix; policy changes are seen at once."""
    settings = Settings(home=tmp_path_factory.mktemp("pg"), database_url=database, redis_url=redis_url, model=None)
    with serve(settings) as one, serve(settings) as two:
        for running in (one, two):
            running.app.state.service.tenants.refresh_seconds = 0.0
        yield one, two


@pytest.fixture
def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def client(running: Running, tenant: str, role: Role) -> httpx.Client:
    return running.client(tenant, role)


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def test_both_stores_ready(pair: tuple[Running, Running]) -> None:
    for running in pair:
        with running.client() as anonymous:
            assert ok(anonymous.get("/readyz"))["stores"] == {"audit": "ok", "state": "ok", "catalog": "ok"}


def test_a_pause_made_through_one_service_holds_on_the_other_until_approved_there(
    pair: tuple[Running, Running], tenant: str
) -> None:
    one, two = pair
    with client(one, tenant, Role.ADMIN) as admin:
        ok(admin.put("/v1/policies", json={"blocked_resources": ["data.phi.*"], "mode": "pause"}))
    with client(one, tenant, Role.AGENT) as agent_one, client(two, tenant, Role.AGENT) as agent_two:
        assert ok(agent_two.post("/v1/check", json=ALLOWED))["allowed"] is True  # policy seen by the other
        paused = ok(agent_one.post("/v1/check", json=BLOCKED))
        assert paused["outcome"] == "paused"
        assert ok(agent_two.post("/v1/check", json=ALLOWED))["reasons"][0]["code"] == "agent_paused"
        with client(two, tenant, Role.REVIEWER) as reviewer:
            approvals = ok(reviewer.get("/v1/approvals"))["approvals"]
            assert [a["pending_action_id"] for a in approvals] == [paused["action_id"]]
            assert ok(reviewer.post("/v1/agents/bot/approve"))["approved_action_id"] == paused["action_id"]
        assert ok(agent_one.post("/v1/check", json=BLOCKED))["reasons"][0]["code"] == "approved"
        assert ok(agent_two.post("/v1/check", json=BLOCKED))["outcome"] == "paused"


def test_pending_approvals_are_listed_whatever_the_databases_collation(
    pair: tuple[Running, Running], tenant: str, database: str
) -> None:
    """A collation that ignores punctuation (glibc's en_US, the default of many databases; here an ICU one set
    up the same way) sorts "tenant/bot" after "tenant0": a tenant's paused agents must be listed all the same."""
    import psycopg

    one, _ = pair
    with client(one, tenant, Role.ADMIN) as admin:
        ok(admin.put("/v1/policies", json={"blocked_resources": ["data.phi.*"], "mode": "pause"}))
    with psycopg.connect(database, autocommit=True) as raw:
        raw.execute(
            "CREATE COLLATION IF NOT EXISTS punctuation_ignored (provider = icu, locale = 'en-US-u-ka-shifted')"
        )
        raw.execute("ALTER TABLE risk_pending ALTER COLUMN agent_id TYPE TEXT COLLATE punctuation_ignored")
        try:
            assert raw.execute(
                "SELECT %s::text < %s::text COLLATE punctuation_ignored", (f"{tenant}/bot", f"{tenant}0")
            ).fetchone() == (False,)
            with client(one, tenant, Role.AGENT) as agent, client(one, tenant, Role.REVIEWER) as reviewer:
                paused = ok(agent.post("/v1/check", json=BLOCKED))
                assert paused["outcome"] == "paused"
                approvals = ok(reviewer.get("/v1/approvals"))["approvals"]
                assert [a["pending_action_id"] for a in approvals] == [paused["action_id"]]
                ok(reviewer.post("/v1/agents/bot/resume"))
        finally:
            raw.execute('ALTER TABLE risk_pending ALTER COLUMN agent_id TYPE TEXT COLLATE "default"')


def test_idempotency_key_holds_across_services(pair: tuple[Running, Running], tenant: str) -> None:
    one, two = pair
    body = {**ALLOWED, "idempotency_key": "spooled-7"}
    with client(one, tenant, Role.AGENT) as agent_one, client(two, tenant, Role.AGENT) as agent_two:
        first = ok(agent_one.post("/v1/check", json=body))
        assert ok(agent_two.post("/v1/check", json=body)) == first
        assert ok(agent_two.post("/v1/outcome", json={"action_id": first["action_id"], "success": True}))["recorded"]
    with client(two, tenant, Role.AUDITOR) as auditor:
        records = ok(auditor.get("/v1/audit", params={"kind": "decision"}))["records"]
        assert [r["action_id"] for r in records] == [first["action_id"]]
        assert ok(auditor.get("/v1/audit", params={"kind": "outcome"}))["records"][0]["action_id"] == first["action_id"]


def test_idempotency_keys_are_forgotten_after_their_retention(database: str) -> None:
    catalog = Catalog(database)
    try:
        check_idempotency_keys_expire(catalog)
    finally:
        catalog.close()


def test_concurrent_repeats_of_one_idempotency_key_decide_once(pair: tuple[Running, Running], tenant: str) -> None:
    one, two = pair
    body = {**ALLOWED, "idempotency_key": "burst"}
    clients = [client(running, tenant, Role.AGENT) for running in (one, two) for _ in range(4)]

    def send(c: httpx.Client) -> dict[str, Any]:
        return ok(c.post("/v1/check", json=body))

    answers = run_together([functools.partial(send, c) for c in clients])
    for c in clients:
        c.close()
    assert len(answers) == len(clients) and len({a["action_id"] for a in answers}) == 1
    decisions = one.app.state.service.audit.query(AuditQuery(agent_id=f"{tenant}/bot", kind="decision"))
    assert [d.action_id for d in decisions] == [answers[0]["action_id"]]


def test_keys_and_tenants_on_postgres(pair: tuple[Running, Running], tenant: str) -> None:
    one, two = pair
    with client(one, tenant, Role.ADMIN) as admin:
        made = ok(admin.post("/v1/keys", json={"role": "auditor"}), 201)
    with httpx.Client(base_url=two.url, headers={"Authorization": f"Bearer {made['key']}"}) as auditor:
        assert ok(auditor.get("/v1/audit/head"))["count"] > 0
        records = ok(auditor.get("/v1/audit", params={"limit": 1000}))["records"]
        assert records and all(r["agent_id"].startswith(f"{tenant}/") for r in records)
        assert auditor.post("/v1/check", json=ALLOWED).status_code == 403
    assert verify_store(two.app.state.service.audit).ok


def test_catalogs_opened_at_once_migrate_once(database: str) -> None:
    catalogs: list[Catalog] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def open_one() -> None:
        barrier.wait()
        try:
            catalogs.append(Catalog(database))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(catalogs) == 4
    assert catalogs[0].run("SELECT count(*) FROM risk_catalog_version").rows == [(3,)]
    for catalog in catalogs:
        catalog.close()


def test_service_settings_name_postgres_and_redis(pair: tuple[Running, Running]) -> None:
    settings = pair[0].app.state.service.settings
    assert settings.audit_url.startswith("postgresql://") and settings.catalog_url == settings.audit_url
    assert settings.state_url.startswith("redis://")
    assert type(pair[0].app.state.service.audit).__name__ == "PostgresAuditStore"


def test_reviewers_approving_at_once_on_both_services_approve_once(pair: tuple[Running, Running], tenant: str) -> None:
    one, two = pair
    with client(one, tenant, Role.ADMIN) as admin:
        ok(admin.put("/v1/policies", json={"blocked_resources": ["data.phi.*"], "mode": "pause"}))
    with client(one, tenant, Role.AGENT) as agent:
        paused = ok(agent.post("/v1/check", json=BLOCKED))
    reviewers = [client(running, tenant, Role.REVIEWER) for running in (one, two) for _ in range(3)]

    def approve(c: httpx.Client) -> int:
        return c.post("/v1/agents/bot/approve").status_code

    statuses = run_together([functools.partial(approve, c) for c in reviewers])
    for c in reviewers:
        c.close()
    assert sorted(statuses) == [200] + [409] * (len(reviewers) - 1)
    with client(two, tenant, Role.AGENT) as agent:
        assert ok(agent.post("/v1/check", json=BLOCKED))["reasons"][0]["code"] == "approved"
        assert ok(agent.post("/v1/check", json=BLOCKED))["outcome"] == "paused"
    assert paused["outcome"] == "paused"


def _report(**fields: Any) -> dict[str, Any]:
    record = {"idempotency_key": uuid.uuid4().hex, "kind": "decision", "action_id": "ab12", "agent_id": "bot",
              "action_type": "file_read", "resource": "/x"}  # fmt: skip
    return {"records": [{**record, **fields}]}


NUL = "k\x00"


def test_a_nul_byte_in_a_request_field_is_422_naming_it_not_a_store_outage(
    pair: tuple[Running, Running], tenant: str
) -> None:
    """PostgreSQL cannot hold NUL in a text column: a key, id, filter or note with one is the client's mistake."""
    one, _ = pair
    refused = {
        ("agent", "post", "/v1/check", "idempotency_key"): {"json": {**ALLOWED, "idempotency_key": NUL}},
        ("agent", "post", "/v1/check", "session_id"): {"json": {**ALLOWED, "session_id": NUL}},
        ("agent", "post", "/v1/check/batch", "idempotency_key"): {
            "json": {"actions": [ALLOWED, {**ALLOWED, "idempotency_key": NUL}]}
        },
        ("agent", "post", "/v1/outcome", "action_id"): {"json": {"action_id": NUL, "success": True}},
        ("agent", "post", "/v1/reports", "idempotency_key"): {"json": _report(idempotency_key=NUL)},
        ("agent", "post", "/v1/reports", "session_id"): {"json": _report(session_id=NUL)},
        ("agent", "post", "/v1/reports", "ts"): {"json": _report(ts=NUL)},
        ("admin", "post", "/v1/keys", "note"): {"json": {"role": "agent", "note": NUL}},
        ("reviewer", "post", "/v1/agents/bot/terminate", "reason"): {"json": {"reason": NUL}},
        ("auditor", "get", "/v1/audit", "kind"): {"params": {"kind": NUL}},
        ("auditor", "get", "/v1/audit", "outcome"): {"params": {"outcome": NUL}},
        ("auditor", "get", "/v1/audit", "agent_id"): {"params": {"agent_id": NUL}},
    }
    clients = {role: client(one, tenant, Role(role)) for role in ("agent", "admin", "reviewer", "auditor")}
    errors_before = _store_errors(one)
    try:
        for (role, method, path, field), request in refused.items():
            response = getattr(clients[role], method)(path, **request)
            assert response.status_code == 422, (path, field, response.text)
            assert any(error["loc"][-1] == field for error in response.json()["detail"]), (path, field, response.text)
        assert ok(clients["agent"].post("/v1/check", json={**ALLOWED, "idempotency_key": "k"}))["allowed"] is True
        assert ok(clients["auditor"].get("/v1/audit", params={"kind": "decision"}))["records"]
    finally:
        for c in clients.values():
            c.close()
    assert _store_errors(one) == errors_before


def _store_errors(running: Running) -> float:
    with running.client() as anonymous:
        lines = anonymous.get("/metrics").text.splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith("risk_store_errors_total{"))


def test_a_catalog_of_the_previous_version_upgrades_on_postgres(database: str) -> None:
    """As on SQLite (tests/test_api.py), in a schema of its own: this module's is at the newest version."""
    admin = Catalog(database)
    schema = f"risk_old_{uuid.uuid4().hex[:12]}"
    admin.run(f"CREATE SCHEMA {schema}")
    try:
        url = database.replace(admin.run("SELECT current_schema()").rows[0][0], schema)
        token = catalog_before_bound_keys(url)
        upgraded = Catalog(url)
        assert upgraded.run("SELECT version FROM risk_catalog_version ORDER BY version").rows == [(1,), (2,), (3,)]
        keys = KeyStore(upgraded)
        old = keys.authenticate(token)
        assert old is not None and old.agents is None
        keys.create("acme", Role.AGENT, agents=["bot", "billing-*"])
        assert [k.agents for k in keys.list("acme")] == [None, ("bot", "billing-*")]
        upgraded.close()
    finally:
        admin.run(f"DROP SCHEMA {schema} CASCADE")
        admin.close()
