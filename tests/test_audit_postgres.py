"""The PostgreSQL audit store against a real server: round trip, tamper detection, concurrency, purge, failures.

PostgreSQL is found at $RISK_TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/test). When it is
not reachable (or psycopg is not installed) the tests skip, unless RISK_REQUIRE_SERVICES=1, when they fail. Each
test works in a PostgreSQL schema of its own, named in the store URL through `search_path`, and drops it after.
Tampering goes through a second connection, as an attacker with database access would.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import pytest
from services import StallingProxy, unavailable
from together import run_together

import risk.audit.postgres
from api.service import Service
from api.settings import Settings
from risk import ActionType, AuditError, Guard
from risk.audit.postgres import _SELECT, PostgresAuditStore
from risk.audit.record import COLUMNS, GENESIS_HASH, StoredRecord
from risk.audit.store import AuditQuery, open_audit, purge, verify_store, where_clause
from risk.catalog import Catalog, CatalogError
from risk.tenants import decisions_of
from risk.train import train

try:
    import psycopg
except ImportError:
    HAVE_PSYCOPG = False
else:
    HAVE_PSYCOPG = True

POSTGRES_URL = os.environ.get("RISK_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


# ---- fixtures and helpers --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def driver() -> None:
    """Skips (or fails) when psycopg, which the store needs, is not installed."""
    if not HAVE_PSYCOPG:
        unavailable("psycopg is not installed: pip install 'psycopg[binary]'")


@pytest.fixture(scope="module")
def server(driver: None) -> Iterator[Any]:
    """An autocommit admin connection; skips (or fails) the module when PostgreSQL is not there."""
    try:
        conn = psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        unavailable(f"PostgreSQL is not reachable at {POSTGRES_URL}: {exc}")
    yield conn
    conn.close()


@pytest.fixture
def schema(server: Any) -> Iterator[str]:
    """A fresh, empty schema, dropped after the test with everything in it."""
    name = f"risk_test_{uuid.uuid4().hex[:16]}"
    server.execute(f"CREATE SCHEMA {name}")
    yield name
    # A connection a failed test left open (a child process, say) must not keep the schema alive.
    server.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = %s AND pid <> pg_backend_pid()",
        (name,),
    )
    server.execute(f"DROP SCHEMA {name} CASCADE")


def in_schema(base: str, schema: str, *options: str) -> str:
    """`base` with its tables in `schema` (search_path), its connections named after it, and more `-c` options."""
    parts = urlsplit(base)
    query = dict(parse_qsl(parts.query))
    settings = [query.get("options", ""), f"-csearch_path={schema}", *(f"-c{o}" for o in options)]
    query["options"] = " ".join(s for s in settings if s)
    query["application_name"] = schema
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


@pytest.fixture
def url(schema: str) -> str:
    return in_schema(POSTGRES_URL, schema)


@pytest.fixture
def open_store(url: str) -> Iterator[Callable[..., PostgresAuditStore]]:
    """Opens stores on the test's schema (or another URL) and closes them after the test."""
    opened: list[PostgresAuditStore] = []

    def make(store_url: str | None = None) -> PostgresAuditStore:
        store = PostgresAuditStore(store_url or url)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: Callable[..., PostgresAuditStore]) -> PostgresAuditStore:
    return open_store()


@pytest.fixture
def raw(url: str) -> Iterator[Any]:
    """A second, independent autocommit connection to the test's schema."""
    conn = psycopg.connect(url, autocommit=True)
    yield conn
    conn.close()


@pytest.fixture
def make_guard(guards: Callable[..., Guard], url: str, tmp_path: Path) -> Callable[..., Guard]:
    def make(**kwargs: Any) -> Guard:
        defaults = {"agent_id": "agent-1", "blocked_resources": ["data.phi.*"], "audit": url}
        return guards(**{**defaults, "home": tmp_path / "home", **kwargs})

    return make


def body(
    n: int, *, agent: str = "agent-1", ts: str | None = None, outcome: str = "allowed", **extra: Any
) -> dict[str, Any]:
    """A decision record's fields, as the guard would append them."""
    return {
        "record_id": uuid.uuid4().hex,
        "ts": ts or datetime.now(UTC).isoformat(timespec="microseconds"),
        "kind": "decision",
        "agent_id": agent,
        "action_id": f"act-{agent}-{n}",
        "resource": f"data.t{n}",
        "decision": "allow" if outcome == "allowed" else "deny",
        "outcome": outcome,
        **extra,
    }


def rows(raw: Any) -> list[dict[str, Any]]:
    cursor = raw.execute("SELECT * FROM risk_audit ORDER BY seq")
    names = [d.name for d in cursor.description]
    return [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]


def spec_canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def assert_one_chain(raw: Any, store: PostgresAuditStore, count: int) -> list[dict[str, Any]]:
    """`count` records numbered 1..count, no two claiming the same predecessor, and the chain verifies."""
    stored = rows(raw)
    assert [r["seq"] for r in stored] == list(range(1, count + 1))
    assert len({json.loads(r["body"])["prev_hash"] for r in stored}) == count
    result = verify_store(store)
    assert (result.ok, result.count, result.head_hash) == (True, count, stored[-1]["hash"]), result
    return stored


@pytest.fixture
def six(store: PostgresAuditStore) -> list[StoredRecord]:
    """Six records; seq 3 is a blocked decision."""
    for n in range(1, 7):
        store.append(body(n, outcome="blocked" if n == 3 else "allowed"))
    return list(store.stored())


# ---- the store and its schema ----------------------------------------------------------------------------


def test_open_audit_dispatches_both_postgres_url_schemes(url: str) -> None:
    for store_url in (url, "postgres://" + url.split("://", 1)[1]):
        store = open_audit(store_url)
        try:
            assert isinstance(store, PostgresAuditStore)
            assert store.url == store_url
        finally:
            store.close()


def test_records_round_trip_exactly_and_verify(
    store: PostgresAuditStore, raw: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(risk.audit.postgres, "_PAGE", 7)  # so reading the chain crosses several pages
    payloads: list[Any] = [
        {"note": "naïve café ☕ 😀", "nested": [1, 2.5, None, True, {"k": "v"}]},
        {"nul": "a\x00b", "big": 2**70, "neg": -(2**63)},
        "unpaired \ud800 surrogate",
        None,
    ]
    sealed = [
        store.append(
            body(
                n,
                agent="a" if n % 2 else "b",
                ts=f"2026-03-02T09:00:{n:02d}.000000+00:00",
                outcome="blocked" if n % 5 == 0 else "allowed",
                payload=payloads[n % len(payloads)],
            )
        )
        for n in range(1, 21)
    ]
    assert [s.seq for s in sealed] == list(range(1, 21))
    assert sealed[0].text.find(GENESIS_HASH) > 0

    stored = list(store.stored())
    assert [(s.seq, s.text, s.hash) for s in stored] == [(s.seq, s.text, s.hash) for s in sealed]
    assert [s.seq for s in store.stored(after_seq=13)] == list(range(14, 21))
    assert stored[1].record().payload == "unpaired \ud800 surrogate"
    # What the database holds is the very text that was hashed, byte for byte.
    assert [r["body"] for r in rows(raw)] == [s.text for s in sealed]
    assert stored[0].record().payload == {"nul": "a\x00b", "big": 2**70, "neg": -(2**63)}

    head = store.head()
    assert (head.count, head.seq, head.hash) == (20, 20, sealed[-1].hash)
    result = verify_store(store)
    assert (result.ok, result.count, result.head_hash) == (True, 20, sealed[-1].hash)
    assert verify_store(store, expected_head=sealed[9].hash).ok

    by_agent = store.query(AuditQuery(agent_id="a", limit=1000))
    assert [r.seq for r in by_agent] == list(range(1, 21, 2))
    blocked = store.query(AuditQuery(outcome="blocked"))
    assert [(r.seq, r.decision) for r in blocked] == [(5, "deny"), (10, "deny"), (15, "deny"), (20, "deny")]
    assert [r.seq for r in store.query(AuditQuery(agent_id="b", outcome="blocked"))] == [10, 20]
    window = AuditQuery(since="2026-03-02T09:00:05", until="2026-03-02T09:00:09", limit=2, offset=1)
    assert [r.seq for r in store.query(window)] == [6, 7]
    assert store.query(AuditQuery(kind="retention")) == []
    assert store.first_seq_at_or_after("2026-03-02T09:00:07.5") == 8
    assert store.first_seq_at_or_after("2027") is None


def test_an_empty_store_has_the_genesis_head_and_verifies(store: PostgresAuditStore) -> None:
    head = store.head()
    assert (head.count, head.seq, head.hash) == (0, 0, GENESIS_HASH)
    assert list(store.stored()) == []
    result = verify_store(store)
    assert (result.ok, result.count, result.head_hash) == (True, 0, GENESIS_HASH)


def test_the_schema_is_created_once_and_versioned(
    open_store: Callable[..., PostgresAuditStore], raw: Any, schema: str
) -> None:
    open_store().append(body(1))
    open_store().append(body(2))  # a second store finds the schema in place and continues the chain
    assert raw.execute("SELECT version FROM risk_schema_version ORDER BY version").fetchall() == [(1,), (2,)]
    columns = raw.execute(
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = 'risk_audit' ORDER BY ordinal_position",
        (schema,),
    ).fetchall()
    assert columns == [
        ("seq", "bigint", "NO"),
        *((name, "text", "YES") for name in ("ts", "agent_id", "kind", "outcome", "action_id")),
        ("body", "text", "NO"),
        ("hash", "text", "NO"),
    ]
    indexes = dict(
        raw.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s", (schema,)).fetchall()
    )
    assert "(seq)" in indexes["risk_audit_pkey"]
    assert "(agent_id, ts)" in indexes["risk_audit_agent_ts"]
    assert "(action_id)" in indexes["risk_audit_action"]
    assert [r["seq"] for r in rows(raw)] == [1, 2]


def test_a_trail_made_at_schema_version_1_gets_the_action_index_and_keeps_its_records(
    open_store: Callable[..., PostgresAuditStore], raw: Any
) -> None:
    first = open_store()
    first.append(body(1))
    raw.execute("DROP INDEX risk_audit_action")  # as the first release left it
    raw.execute("DELETE FROM risk_schema_version WHERE version = 2")
    upgraded = open_store()
    assert raw.execute("SELECT version FROM risk_schema_version ORDER BY version").fetchall() == [(1,), (2,)]
    assert raw.execute("SELECT to_regclass('risk_audit_action')").fetchone() == ("risk_audit_action",)
    upgraded.append(body(2))
    assert [r["seq"] for r in rows(raw)] == [1, 2] and verify_store(upgraded).ok


def test_stores_starting_at_once_create_the_schema_exactly_once(
    open_store: Callable[..., PostgresAuditStore], raw: Any
) -> None:
    run_together([open_store] * 8)
    assert raw.execute("SELECT version FROM risk_schema_version ORDER BY version").fetchall() == [(1,), (2,)]


def test_a_schema_newer_than_the_code_is_refused(open_store: Callable[..., PostgresAuditStore], raw: Any) -> None:
    open_store()
    newer = len(risk.audit.postgres._MIGRATIONS) + 1
    raw.execute("INSERT INTO risk_schema_version (version) VALUES (%s)", (newer,))
    with pytest.raises(AuditError, match=rf"schema version {newer}.*upgrade agent-risk"):
        open_store()


def test_create_false_on_an_empty_schema_is_an_audit_error_and_creates_nothing(url: str, raw: Any) -> None:
    with pytest.raises(AuditError, match="no audit trail"):
        open_audit(url, create=False)
    assert raw.execute("SELECT to_regclass('risk_audit'), to_regclass('risk_schema_version')").fetchone() == (
        None,
        None,
    )


# ---- tampering -------------------------------------------------------------------------------------------


def test_editing_a_body_fails_verification_at_that_record(
    six: list[StoredRecord], store: PostgresAuditStore, raw: Any
) -> None:
    fields = json.loads(six[2].text)
    fields.update(outcome="allowed", decision="allow")
    raw.execute("UPDATE risk_audit SET body = %s WHERE seq = 3", (spec_canonical(fields),))
    result = verify_store(store)
    assert (result.ok, result.first_bad_seq, result.count) == (False, 3, 2)


def test_editing_only_the_queryable_outcome_column_is_detected(
    six: list[StoredRecord], store: PostgresAuditStore, raw: Any
) -> None:
    assert raw.execute("UPDATE risk_audit SET outcome = 'allowed' WHERE seq = 3").rowcount == 1
    result = verify_store(store)
    assert (result.ok, result.first_bad_seq, result.count) == (False, 3, 2)


def test_deleting_a_middle_record_fails_at_the_next(
    six: list[StoredRecord], store: PostgresAuditStore, raw: Any
) -> None:
    raw.execute("DELETE FROM risk_audit WHERE seq = 3")
    result = verify_store(store)
    assert (result.ok, result.first_bad_seq, result.count) == (False, 4, 2)


def test_cutting_off_the_tail_fails_only_against_a_kept_head(
    six: list[StoredRecord], store: PostgresAuditStore, raw: Any
) -> None:
    raw.execute("DELETE FROM risk_audit WHERE seq > 4")
    assert verify_store(store).ok
    result = verify_store(store, expected_head=six[-1].hash)
    assert (result.ok, result.first_bad_seq) == (False, 5)


# ---- the guard on PostgreSQL -----------------------------------------------------------------------------


def test_guard_with_a_postgres_url_records_every_decision_and_queries_them(
    make_guard: Callable[..., Guard], raw: Any
) -> None:
    guard = make_guard()
    assert isinstance(guard.audit, PostgresAuditStore)
    allowed = guard.check(ActionType.DATABASE_QUERY, "data.deidentified.claims")
    blocked = guard.check(ActionType.DATABASE_QUERY, "data.phi.patients")
    guard.record_outcome(allowed.action_id, rows=3)
    other = make_guard(agent_id="agent-2")  # a second guard, as another host would run, on the same chain
    other.check(ActionType.FILE_READ, "/srv/reports/q1.csv")
    assert allowed.allowed and not blocked.allowed

    assert [(r["kind"], r["agent_id"]) for r in rows(raw)] == [
        ("policy", "agent-1"),
        ("decision", "agent-1"),
        ("decision", "agent-1"),
        ("outcome", "agent-1"),
        ("policy", "agent-2"),
        ("decision", "agent-2"),
    ]
    result = verify_store(guard.audit)
    assert (result.ok, result.count) == (True, 6)

    (denied,) = guard.audit.query(AuditQuery(agent_id="agent-1", outcome="blocked"))
    assert (denied.action_id, denied.resource, denied.decision) == (blocked.action_id, "data.phi.patients", "deny")
    assert denied.reasons and denied.reasons[0]["code"] == blocked.reason_codes[0]
    decisions = guard.audit.query(AuditQuery(agent_id="agent-2", kind="decision"))
    assert [r.resource for r in decisions] == ["/srv/reports/q1.csv"]


def test_a_locked_audit_table_denies_the_action_and_the_guard_recovers(
    make_guard: Callable[..., Guard], schema: str, tmp_path: Path
) -> None:
    # The URL sets its own lock_timeout (100 ms): the store keeps it rather than its 5 s default.
    guard = make_guard(audit=in_schema(POSTGRES_URL, schema, "lock_timeout=100"))
    assert guard.check(ActionType.FILE_READ, "/srv/reports/q1.csv").allowed
    with psycopg.connect(in_schema(POSTGRES_URL, schema)) as locker:  # one transaction, rolled back on exit
        locker.execute("LOCK TABLE risk_audit IN ACCESS EXCLUSIVE MODE")
        denied = guard.check(ActionType.FILE_READ, "/srv/reports/q1.csv")
        locker.rollback()
    assert not denied.allowed
    assert denied.reason_codes[0] == "audit_unavailable"
    assert guard.audit_failures == 1
    allowed = guard.check(ActionType.FILE_READ, "/srv/reports/q1.csv")
    assert allowed.allowed
    assert [r.action_id for r in guard.audit.query(AuditQuery(kind="decision"))][-1] == allowed.action_id
    assert verify_store(guard.audit).count == 3


# ---- failures --------------------------------------------------------------------------------------------


def test_an_unreachable_server_is_an_audit_error_naming_host_and_port(driver: None) -> None:
    url = "postgresql://postgres:s3cret@127.0.0.1:1/test"
    with pytest.raises(AuditError) as raised:
        PostgresAuditStore(url)
    message = str(raised.value)
    assert "host 127.0.0.1 port 1" in message
    assert "s3cret" not in message
    assert raised.value.__cause__ is None and raised.value.__suppress_context__  # no psycopg traceback chained
    with pytest.raises(AuditError, match="port 1"):
        Guard(audit=url)


def test_a_dropped_connection_fails_one_append_then_reconnects(
    store: PostgresAuditStore, server: Any, schema: str
) -> None:
    store.append(body(1))
    killed = server.execute(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = %s", (schema,)
    ).fetchone()
    assert killed == (1,)
    with pytest.raises(AuditError, match="not written"):
        store.append(body(2))
    store.append(body(3))
    result = verify_store(store)
    assert (result.ok, result.count) == (True, 2)


def test_text_postgresql_cannot_hold_is_an_audit_error_and_the_chain_goes_on(store: PostgresAuditStore) -> None:
    store.append(body(1))
    with pytest.raises(AuditError, match="not written"):
        store.append(body(2, agent="agent\x00nul"))  # agent_id is a column of its own; text holds no NUL
    assert store.append(body(3)).seq == 2
    assert verify_store(store).ok


def test_append_many_stores_more_rows_than_one_statement_takes_in_order_and_a_bad_one_fails_alone(
    store: PostgresAuditStore, raw: Any
) -> None:
    bodies = [body(i) for i in range(2500)]  # 1,000 rows per INSERT statement, in one transaction
    bodies[1700] = body(1700, agent="agent\x00nul")
    results = store.append_many(bodies)
    assert isinstance(results[1700], AuditError) and "not written" in str(results[1700])
    stored = assert_one_chain(raw, store, 2499)
    assert [r["action_id"] for r in stored] == [b["action_id"] for n, b in enumerate(bodies) if n != 1700]
    assert [r.seq for n, r in enumerate(results) if n != 1700] == list(range(1, 2500))


def test_a_closed_store_raises_audit_error(store: PostgresAuditStore) -> None:
    store.close()
    with pytest.raises(AuditError, match="closed"):
        store.append(body(1))
    with pytest.raises(AuditError, match="closed"):
        store.head()


# ---- concurrency -----------------------------------------------------------------------------------------


def test_eight_threads_sharing_one_store_append_800_records_on_one_chain(store: PostgresAuditStore, raw: Any) -> None:
    run_together([lambda n=n: [store.append(body(i, agent=f"t{n}")) for i in range(100)] for n in range(8)])
    stored = assert_one_chain(raw, store, 800)
    assert sorted({r["action_id"] for r in stored}) == sorted(f"act-t{n}-{i}" for n in range(8) for i in range(100))


def test_two_stores_with_their_own_connections_append_400_records_without_forks_or_gaps(
    open_store: Callable[..., PostgresAuditStore], raw: Any
) -> None:
    stores = [open_store(), open_store()]
    run_together(
        [lambda s=s, n=n: [s.append(body(i, agent=f"s{n}")) for i in range(200)] for n, s in enumerate(stores)]
    )
    stored = assert_one_chain(raw, stores[0], 400)
    assert sum(r["agent_id"] == "s0" for r in stored) == sum(r["agent_id"] == "s1" for r in stored) == 200


def test_two_stores_of_four_threads_each_group_their_appends_and_keep_one_chain(
    open_store: Callable[..., PostgresAuditStore], raw: Any
) -> None:
    """Threads of one store commit together; the two stores' groups collide on seqs and retry whole."""
    stores = [open_store(), open_store()]
    run_together(
        [
            lambda s=s, n=n, t=t: [s.append(body(i, agent=f"s{n}t{t}")) for i in range(100)]
            for n, s in enumerate(stores)
            for t in range(4)
        ]
    )
    stored = assert_one_chain(raw, stores[0], 800)
    assert len({r["action_id"] for r in stored}) == 800


def _append_from_process(url: str, agent: str, n: int, barrier: Any) -> None:
    store = PostgresAuditStore(url)
    barrier.wait(timeout=60)
    for i in range(n):
        store.append(body(i, agent=agent))
    store.close()


def test_two_processes_append_400_records_and_the_chain_verifies(store: PostgresAuditStore, raw: Any, url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_append_from_process, args=(url, f"p{n}", 200, barrier)) for n in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    stored = assert_one_chain(raw, store, 400)
    assert sorted(r["agent_id"] for r in stored) == ["p0"] * 200 + ["p1"] * 200


# ---- retention -------------------------------------------------------------------------------------------


def test_purge_deletes_old_records_and_the_rest_still_verifies(store: PostgresAuditStore, raw: Any) -> None:
    for n, year in enumerate((2018, 2019, 2019, 2021, 2022), start=1):
        store.append(body(n, ts=datetime(year, 6, 1, tzinfo=UTC).isoformat(timespec="microseconds")))
    kept_head = store.head().hash
    anchor = rows(raw)[2]["hash"]

    assert purge(store, datetime(2020, 1, 1, tzinfo=UTC)) == 3  # the default six-year retention allows it

    stored = rows(raw)
    assert [(r["seq"], r["kind"]) for r in stored] == [(4, "decision"), (5, "decision"), (6, "retention")]
    detail = json.loads(stored[-1]["body"])["detail"]
    assert (detail["purged_through_seq"], detail["anchor_hash"]) == (3, anchor)
    result = verify_store(store)
    assert (result.ok, result.count) == (True, 3)
    assert verify_store(store, expected_head=kept_head).ok
    store.append(body(7))  # the chain goes on after the purge
    assert verify_store(store).count == 4
    # Records purged without their retention record are missing records: the chain fails where it was.
    raw.execute("DELETE FROM risk_audit WHERE kind = 'retention'")
    failed = verify_store(store)
    assert (failed.ok, failed.first_bad_seq) == (False, 7) and "expected seq 6" in failed.problem


def test_purge_keeps_what_the_retention_period_protects(store: PostgresAuditStore) -> None:
    now = datetime.now(UTC)
    store.append(body(1, ts=(now - timedelta(days=10)).isoformat(timespec="microseconds")))
    store.append(body(2, ts=(now - timedelta(days=1)).isoformat(timespec="microseconds")))
    assert purge(store, now - timedelta(days=5), retention=timedelta(days=3)) == 1
    assert [r.kind for r in store.query(AuditQuery())] == ["decision", "retention"]
    assert verify_store(store).ok


def _insert_row(raw: Any, seq: int, fields: dict[str, Any]) -> None:
    """Add a row as an attacker with database access would: its text hashed from the genesis, columns filled."""
    from risk.audit.record import canonical_json, chain_hash

    text = canonical_json({**fields, "seq": seq, "prev_hash": GENESIS_HASH}).decode()
    raw.execute(
        "INSERT INTO risk_audit (seq, ts, agent_id, kind, outcome, action_id, body, hash) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (seq, fields.get("ts"), fields.get("agent_id"), fields.get("kind"), fields.get("outcome"),
         fields.get("action_id"), text, chain_hash(GENESIS_HASH, text.encode())),
    )  # fmt: skip


def test_a_row_before_the_chains_start_or_a_forged_retention_row_there_fails_verification(
    store: PostgresAuditStore, raw: Any
) -> None:
    for n in range(1, 6):
        store.append(body(n))
    kept = store.head().hash
    _insert_row(raw, 0, body(9, outcome="allowed", resource="/etc/shadow"))
    assert "/etc/shadow" in [r.resource for r in store.query(AuditQuery())]
    result = verify_store(store, expected_head=kept)
    assert (result.ok, result.first_bad_seq) == (False, 0), result
    assert "precedes the chain's start" in result.problem
    # Young records 1..3 deleted, and a retention row naming record 3's hash put at seq 0, outside the chain.
    anchor = rows(raw)[3]["hash"]  # seq 0 is rows[0]: this is seq 3
    raw.execute("DELETE FROM risk_audit WHERE seq <= 3")
    forged = {"record_id": "x", "ts": datetime.now(UTC).isoformat(), "kind": "retention", "agent_id": "*",
              "detail": {"purged_through_seq": 3, "anchor_hash": anchor}}  # fmt: skip
    _insert_row(raw, 0, forged)
    for head in (None, kept):
        result = verify_store(store, expected_head=head)
        assert (result.ok, result.first_bad_seq) == (False, 0), result
    raw.execute("DELETE FROM risk_audit WHERE seq = 0")
    result = verify_store(store, expected_head=kept)
    assert (result.ok, result.first_bad_seq) == (False, 1), result
    assert "missing with no purge" in result.problem


@pytest.mark.parametrize("group", [1, 3])
def test_a_writer_whose_cached_head_another_process_purged_reseals_onto_the_real_head(
    open_store: Callable[..., PostgresAuditStore], raw: Any, group: int
) -> None:
    idle, other = open_store(), open_store()
    old = datetime(2010, 1, 1, tzinfo=UTC).isoformat(timespec="microseconds")
    idle.append(body(1, ts=old))  # idle caches head 1
    for n in range(2, 6):
        other.append(body(n, ts=old))
    assert purge(other, datetime(2015, 1, 1, tzinfo=UTC)) == 5  # seqs 1..5 are free again; 6 is the retention
    sealed = idle.append_many([body(n) for n in range(10, 10 + group)])
    assert [s.seq for s in sealed if not isinstance(s, AuditError)] == list(range(7, 7 + group))
    assert [r["seq"] for r in rows(raw)] == list(range(6, 7 + group))
    result = verify_store(other)
    assert (result.ok, result.count) == (True, 1 + group), result


def test_the_append_statement_reads_the_primary_key_however_the_plan_is_cached(
    store: PostgresAuditStore, raw: Any
) -> None:
    """A prepared statement keeps the plan it got while the trail was small and not analyzed yet: the append's
    probe for later records must be an index lookup in that plan too, not a scan of every row (which made each
    append slower as the trail grew)."""
    for n in range(1, 21):
        store.append(body(n))
    sql, params = risk.audit.postgres._inserting([(21, *(["x"] * (len(COLUMNS) - 1)))])
    raw.execute("SET plan_cache_mode = force_generic_plan")
    plan = "\n".join(row[0] for row in raw.execute(f"EXPLAIN {sql}", params).fetchall())
    assert "Scan" in plan and "Seq Scan" not in plan, plan
    assert all("using risk_audit_pkey" in line for line in plan.splitlines() if "Scan" in line), plan


def test_the_lookup_of_an_actions_decisions_is_one_index_scan_however_the_plan_is_cached(
    store: PostgresAuditStore, raw: Any
) -> None:
    """How an outcome or a report finds the agent of an action id: by the action index alone. With a tenant's
    agent prefix too, the generic plan on a trail not yet analyzed read every record of the tenant."""
    store.append_many([body(n, agent=f"tenant/agent-{n % 5}", action_id=uuid.uuid4().hex) for n in range(1, 201)])
    where, params = where_clause(decisions_of("ab" * 16), "%s")
    raw.execute("SET plan_cache_mode = force_generic_plan")
    plan = "\n".join(row[0] for row in raw.execute(f"EXPLAIN {_SELECT} {where}", params).fetchall())
    assert "Scan" in plan and "Seq Scan" not in plan, plan
    assert all("on risk_audit_action" in line for line in plan.splitlines() if "Index Scan" in line), plan


def test_connections_notice_a_silent_server_in_seconds_unless_the_url_says_otherwise(
    open_store: Callable[..., PostgresAuditStore], url: str
) -> None:
    """Without keepalives and a limit on unacknowledged data, a partition left every request of the process
    waiting on the kernel's retries, about 15 minutes; the URL's own settings win."""
    store = open_store()
    store.append(body(1))
    given = store._connection().info.get_parameters()
    assert (given["keepalives"], given["tcp_user_timeout"], given["connect_timeout"]) == ("1", "10000", "10")
    own = open_store(f"{url}&tcp_user_timeout=2500&keepalives_idle=30")
    own.head()
    chosen = own._connection().info.get_parameters()
    assert (chosen["tcp_user_timeout"], chosen["keepalives_idle"], chosen["keepalives_count"]) == ("2500", "30", "3")
    catalog = Catalog(url)
    try:
        assert catalog._conn.info.get_parameters()["tcp_user_timeout"] == "10000"
    finally:
        catalog.close()


def test_a_connection_the_server_dropped_while_idle_is_replaced_before_the_next_statement(
    store: PostgresAuditStore, server: Any, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a server restart or a failover, the first statement on each idle connection failed: an append (a
    decision denied audit_unavailable, a terminate unrecorded), or a catalog read (/readyz 503)."""
    monkeypatch.setattr(risk.audit.postgres, "IDLE_CHECK_SECONDS", 0.0)  # every use counts as after a quiet spell
    catalog = Catalog(url)
    try:
        store.append(body(1))
        catalog.run("SELECT 1")
        for pid in (store._conn.info.backend_pid, catalog._conn.info.backend_pid):
            server.execute("SELECT pg_terminate_backend(%s)", (pid,))
        assert store.append(body(2)).seq == 2
        assert catalog.run("SELECT value FROM risk_generations WHERE name = 'model'").rows
        assert verify_store(store).ok
    finally:
        catalog.close()


# ---- a server that stops answering ------------------------------------------------------------------------


@pytest.fixture
def stalling(url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[StallingProxy, str]]:
    """A proxy in front of the test's server that can stop answering, its URL (connections give up after 2 s),
    and a statement deadline of 1 s."""
    monkeypatch.setattr(risk.audit.postgres, "STATEMENT_DEADLINE", 1.0)
    parts = urlsplit(url)
    proxy = StallingProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    user, at, _ = parts.netloc.rpartition("@")
    query = urlencode({**dict(parse_qsl(parts.query)), "connect_timeout": "2"}, quote_via=quote)
    yield proxy, urlunsplit(parts._replace(netloc=f"{user}{at}127.0.0.1:{proxy.port}", query=query))
    proxy.close()


def finished_within(seconds: float, *calls: Callable[[], object]) -> list[BaseException | None]:
    """Run `calls` at once, each in a thread; what each raised (None if nothing). Fails if any is still running
    after `seconds`: a statement the server never answers held its caller, and every caller queued behind it."""
    raised: list[BaseException | None] = [None] * len(calls)

    def run(i: int) -> None:
        try:
            calls[i]()
        except BaseException as exc:
            raised[i] = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds)
    assert not any(t.is_alive() for t in threads), f"still waiting after {seconds} s"
    return raised


def test_a_server_that_stops_answering_fails_the_statements_at_their_deadline_and_the_store_recovers(
    open_store: Callable[..., PostgresAuditStore], stalling: tuple[StallingProxy, str]
) -> None:
    """A server stalled with its connection up (the proxy holds every byte) held an append for ever, and every
    other append of the process behind the store's lock, with no error to count: now each fails (the action
    is denied) once the statement has gone 1 s unanswered, and the store reconnects when the server is back."""
    proxy, proxied = stalling
    store = open_store(proxied)
    store.append(body(1))
    proxy.stall.set()
    raised = finished_within(30, lambda: store.append(body(2)), lambda: store.append(body(3)), store.head)
    assert all(isinstance(exc, AuditError) for exc in raised), raised
    # The one whose statement was cut says so (psycopg's words blamed the server for closing the connection);
    # the others gave up waiting behind it, were cut too, or could not connect again.
    messages = [str(exc) for exc in raised]
    assert any("no answer within 1 s, so the connection was cut off" in m for m in messages), messages
    assert all("no answer within 1 s" in m or "is busy" in m or "connection timeout expired" in m for m in messages), (
        "\n".join(messages)
    )
    proxy.stall.clear()
    last = store.append(body(4))
    result = verify_store(store)
    assert result.ok
    assert [r.record().action_id for r in store.stored()][-1] == "act-agent-1-4"
    assert last.seq == result.count


def test_a_guard_and_the_catalog_over_a_stalled_server_deny_and_fail_instead_of_waiting(
    make_guard: Callable[..., Guard], stalling: tuple[StallingProxy, str]
) -> None:
    proxy, proxied = stalling
    guard = make_guard(audit=proxied)
    catalog = Catalog(proxied)
    try:
        assert guard.check(ActionType.FILE_READ, "/srv/reports/q1.csv").allowed
        proxy.stall.set()
        decisions: list[Any] = []
        raised = finished_within(
            30,
            lambda: decisions.append(guard.check(ActionType.FILE_READ, "/srv/reports/q2.csv")),
            lambda: catalog.run("SELECT value FROM risk_generations WHERE name = 'model'"),
        )
        assert raised[0] is None and isinstance(raised[1], CatalogError), raised
        assert not decisions[0].allowed and decisions[0].reason_codes[0] == "audit_unavailable"
        assert guard.audit_failures == 1
        proxy.stall.clear()
        assert guard.check(ActionType.FILE_READ, "/srv/reports/q3.csv").allowed
        assert catalog.run("SELECT value FROM risk_generations WHERE name = 'model'").rows == [(0,)]
    finally:
        proxy.stall.clear()
        catalog.close()


def test_a_pooler_that_holds_a_new_connections_first_statements_fails_them_at_their_deadline(
    open_store: Callable[..., PostgresAuditStore], stalling: tuple[StallingProxy, str], server: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A new connection (a store or catalog opening, or a reconnect after the server dropped the old one) ran
    its first statements, the session settings, before the watch took it: a pooler that accepts the connection
    and then holds its queries stalled the opening, or the reconnect with every request of the process
    queued behind the lock, for ever."""
    proxy, proxied = stalling
    store = open_store(proxied)
    store.append(body(1))
    monkeypatch.setattr(risk.audit.postgres, "IDLE_CHECK_SECONDS", 0.0)  # the dropped connection is noticed
    server.execute("SELECT pg_terminate_backend(%s)", (store._conn.info.backend_pid,))
    adopt = risk.audit.postgres.ConnectionWatch.adopt

    def held(self: Any, conn: Any) -> None:  # the server takes the connection, then answers nothing
        proxy.stall.set()
        adopt(self, conn)

    monkeypatch.setattr(risk.audit.postgres.ConnectionWatch, "adopt", held)
    openings: list[tuple[Callable[[], object], type[Exception]]] = [
        (lambda: store.append(body(2)), AuditError),  # the reconnect
        (lambda: open_store(proxied), AuditError),
        (lambda: Catalog(proxied), CatalogError),
    ]
    for opening, error in openings:
        raised = finished_within(30, opening)[0]
        assert isinstance(raised, error) and "no answer within 1 s, so the connection was cut off" in str(raised)
        proxy.stall.clear()
    monkeypatch.setattr(risk.audit.postgres.ConnectionWatch, "adopt", adopt)
    assert store.append(body(2)).seq == 2
    assert verify_store(store).ok


def test_a_connection_cut_off_just_after_its_answer_is_replaced_not_used_again(
    store: PostgresAuditStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watchdog may cut a connection whose statement has been answered while the lock is still held. The
    connection looked whole for the idle check's second after, and the next statement failed on it."""
    monkeypatch.setattr(risk.audit.postgres, "IDLE_CHECK_SECONDS", 60.0)  # no round trip would notice
    store.append(body(1))
    connection = store._conn
    store._lock.seconds = 0.2
    with store._lock:
        store._connection().execute("SELECT 1")
        time.sleep(0.6)  # answered, and the holder still busy: the watchdog cuts the connection
    assert store.append(body(2)).seq == 2
    assert store._conn is not connection
    assert verify_store(store).ok


def test_a_catalog_transaction_doing_other_work_between_its_statements_is_not_cut_off(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A policy change appends its audit record inside the catalog transaction, which sat idle meanwhile under
    a deadline that ran from its last statement: a slow append (answered within its own deadline) had the
    catalog's connection cut off, and the change rolled back after its record was written."""
    monkeypatch.setattr(risk.audit.postgres, "STATEMENT_DEADLINE", 0.3)
    catalog = Catalog(url)
    try:
        with catalog.transaction():
            time.sleep(0.8)
            catalog.run("UPDATE risk_generations SET value = value + 1 WHERE name = 'model'")
            time.sleep(0.8)
        assert catalog.run("SELECT value FROM risk_generations WHERE name = 'model'").rows == [(1,)]
        assert not catalog._watch._cut
    finally:
        catalog.close()


def test_closing_the_service_closes_every_store_though_one_is_busy_behind_a_stalled_statement(
    stalling: tuple[StallingProxy, str], tmp_path: Path
) -> None:
    """The audit store's close waits for its lock only as long as a statement may take, then fails: the
    catalog and the state were left open behind it."""
    proxy, proxied = stalling
    service = Service.start(Settings(home=tmp_path, database_url=proxied, model=None))
    service.audit.append(body(1))
    proxy.stall.set()
    purging = threading.Thread(target=lambda: service.audit.delete_through(0), daemon=True)  # purges wait on
    purging.start()
    time.sleep(0.2)
    try:
        with pytest.raises(AuditError, match="is busy"):
            service.close()
        assert service.catalog._conn.closed
    finally:
        proxy.stall.clear()
        purging.join(timeout=30)
        service.audit.close()


def test_closing_a_guard_closes_the_state_store_it_opened_though_its_audit_store_is_busy(
    stalling: tuple[StallingProxy, str], redis_url: str, tmp_path: Path
) -> None:
    """As the service's: the Redis connections of the guard's own state store were left open behind the error."""
    import redis

    proxy, proxied = stalling
    name = f"risk-test-{uuid.uuid4().hex[:12]}"
    guard = Guard(audit=proxied, state=f"{redis_url}&client_name={name}", home=tmp_path, model=None, online=False)
    server = redis.Redis.from_url(redis_url.partition("?")[0])

    purging = threading.Thread(target=lambda: guard.audit.delete_through(0), daemon=True)  # purges wait on

    def connected() -> int:
        return sum(client["name"] == name for client in server.client_list())

    try:
        assert guard.check(ActionType.DATABASE_QUERY, "data.deidentified.claims").allowed
        assert connected() == 1
        proxy.stall.set()
        purging.start()
        time.sleep(0.2)
        with pytest.raises(AuditError, match="is busy"):
            guard.close()
        deadline = time.monotonic() + 5
        while connected() and time.monotonic() < deadline:  # the server sees the socket close a moment later
            time.sleep(0.05)
        assert connected() == 0
    finally:
        proxy.stall.clear()
        if purging.is_alive():
            purging.join(timeout=30)
        guard.audit.close()
        server.close()


def test_the_statement_deadline_follows_the_servers_statement_timeout(
    open_store: Callable[..., PostgresAuditStore], schema: str
) -> None:
    """A URL (or role) that lets statements run longer on the server gets as long here, and a little more, so
    the server's own error comes first; without one a statement gets STATEMENT_DEADLINE."""
    assert open_store()._lock.seconds == risk.audit.postgres.STATEMENT_DEADLINE
    longer = open_store(in_schema(POSTGRES_URL, schema, "statement_timeout=40s"))
    assert longer._lock.seconds == 40 + risk.audit.postgres.STATEMENT_GRACE


def test_a_model_trained_from_a_trail_names_it_in_its_card_without_the_password(
    make_guard: Callable[..., Guard], url: str, tmp_path: Path
) -> None:
    """Cards are shipped and committed beside their models: the source URL they name must not carry a password,
    in the URL's user part or as a parameter."""
    guard = make_guard(blocked_resources=[])
    for i in range(30):
        guard.check(ActionType.DATABASE_QUERY, f"data.deidentified.t{i % 3}", {"sql": "SELECT 1"})
    guard.close()
    user, _, rest = url.partition("@")
    for with_password in (f"{user}:s3cret@{rest}", f"{url}&password=s3cret"):  # trust auth takes any password
        _, artifact = train(with_password, tmp_path / "models", name="from-trail", replace=True)
        card = artifact.with_suffix(".json").read_text()
        assert "s3cret" not in card
        assert "***" in json.loads(card)["training"]["source"]


def test_a_child_forked_during_a_statement_never_cuts_the_parents_connection(
    open_store: Callable[..., PostgresAuditStore], url: str
) -> None:
    """The child inherited the parent's watches with the statement under way: its own watchdog (started by the
    first store it opened) found that statement unanswered past its deadline and shut down the socket, which is
    the parent's connection too."""
    store = open_store()
    store.append(body(1))
    connection = store._conn
    store._lock.seconds = 0.5
    with store._lock:
        store._lock.watch(store._conn)  # a statement under way, as another thread of the parent forks
        pid = os.fork()
        if pid == 0:  # the child: a store of its own, then time for its watchdog to look
            try:
                PostgresAuditStore(url).close()
                time.sleep(2)
            finally:
                os._exit(0)
    os.waitpid(pid, 0)
    assert store.append(body(2)).seq == 2
    assert store._conn is connection  # whole, not replaced after a cut (the idle check would hide the cut)
