"""The audit trail: one hash-chained record per decision and event, tamper detection, retention, failure modes.

Every tamper test opens the SQLite file with the `sqlite3` module, as an attacker with file access would.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import multiprocessing
import sqlite3
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from audit_file import (
    DEFAULTS,
    decode,
    edit,
    hashed_text,
    raw_rows,
    recompute_hash,
    spec_canonical,
    spec_hash,
    stored_row,
    stored_rows,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from together import run_together

from risk import ActionDenied, ActionType, AuditError, Guard, KillSwitchMode, Outcome, RetentionError
from risk.audit.record import FIELDS, GENESIS_HASH, Sealed, canonical_json
from risk.audit.sqlite import SQLiteAuditStore
from risk.audit.store import DEFAULT_RETENTION, AuditQuery, ChainAppender, open_audit, purge, verify_store, where_clause
from risk.guard import decided_together
from risk.redaction import mask

# ---- helpers ---------------------------------------------------------------------------------------------


def url_of(path: Path, **options: object) -> str:
    query = "&".join(f"{key}={value}" for key, value in options.items())
    return f"sqlite:///{path}" + (f"?{query}" if query else "")


def spec_digest(payload: Any) -> str:
    return hashlib.sha256(spec_canonical(payload)).hexdigest()


@contextlib.contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    """A second, independent connection to the audit file (autocommit), as another process would have."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def rehash(conn: sqlite3.Connection, seq: int, prev_hash: str) -> str:
    """What an attacker does after editing a record: recompute its prev_hash and its own hash."""
    edit(conn, seq, prev_hash=prev_hash)
    return recompute_hash(conn, seq)


def prev_of(conn: sqlite3.Connection, seq: int) -> str:
    return str(decode(stored_row(conn, seq))["prev_hash"])


def verify(url: str, expected_head: str | None = None) -> Any:
    store = open_audit(url)
    try:
        return verify_store(store, expected_head=expected_head)
    finally:
        store.close()


def db_bytes(path: Path) -> bytes:
    """Everything SQLite wrote for the audit file: the database and its write-ahead log."""
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())


class Clock:
    """An injectable Guard clock returning a UNIX time; move it by assigning `when`."""

    def __init__(self, when: datetime) -> None:
        self.when = when

    def __call__(self) -> float:
        return self.when.timestamp()


def at(year: int, month: int = 1, day: int = 1, hour: int = 12) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "audit.db"


@pytest.fixture
def make_guard(guards: Callable[..., Guard], tmp_path: Path, db_path: Path) -> Callable[..., Guard]:
    def make(**kwargs: Any) -> Guard:
        defaults = {"agent_id": "agent-1", "blocked_resources": ["data.phi.*"], "audit": url_of(db_path)}
        return guards(**{**defaults, "home": tmp_path / "home", **kwargs})

    return make


@pytest.fixture
def six_records(make_guard: Callable[..., Guard], db_path: Path) -> str:
    """A trail of 6 records: the policy (seq 1), then 5 decisions; seq 3 is a blocked one. Returns the URL."""
    guard = make_guard()
    guard.check(ActionType.DATABASE_QUERY, "data.deidentified.claims")
    assert not guard.check(ActionType.DATABASE_QUERY, "data.phi.patients").allowed
    for table in ("visits", "providers", "payers"):
        assert guard.check(ActionType.DATABASE_QUERY, f"data.deidentified.{table}").allowed
    assert [r["seq"] for r in raw_rows(db_path)] == [1, 2, 3, 4, 5, 6]
    return url_of(db_path)


# ---- one record per decision and event, written before check returns --------------------------------------


def test_store_runs_in_wal_mode(make_guard: Callable[..., Guard], db_path: Path) -> None:
    make_guard()
    with raw(db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_stored_records_hold_only_audit_record_fields(six_records: str, db_path: Path) -> None:
    required = {"seq", "record_id", "ts", "kind", "agent_id", "prev_hash", "hash"}
    for row in stored_rows(db_path):
        fields = set(decode(row))
        assert required <= fields <= set(FIELDS), fields - set(FIELDS)


def test_first_record_is_the_policy_with_seq_1_and_the_genesis_prev_hash(
    make_guard: Callable[..., Guard], db_path: Path
) -> None:
    guard = make_guard()
    (first,) = raw_rows(db_path)
    assert first["seq"] == 1
    assert first["prev_hash"] == GENESIS_HASH == "0" * 64
    assert first["kind"] == "policy"
    assert first["policy_hash"] == guard.policy.policy_hash
    assert first["detail"]["policy"]["blocked_resources"] == ["data.phi.*"]


def test_each_decision_is_committed_with_all_its_fields_before_check_returns(
    make_guard: Callable[..., Guard], db_path: Path
) -> None:
    clock = Clock(datetime(2026, 3, 2, 9, 30, 15, 123456, tzinfo=UTC))
    guard = make_guard(clock=clock)
    payload = {"sql": "select count(*) from claims"}
    for resource, allowed in (("data.deidentified.claims", True), ("DATA.PHI.patients", False)):
        decision = guard.check(ActionType.DATABASE_QUERY, resource, payload, session_id="s-7")
        assert decision.allowed is allowed
        # A separate connection sees the committed row the moment check has returned.
        with raw(db_path) as conn:
            cursor = conn.execute("SELECT * FROM audit WHERE action_id = ?", (decision.action_id,))
            found = cursor.fetchone()
            assert found is not None
            row = {**DEFAULTS, **decode(dict(zip([d[0] for d in cursor.description], found, strict=True)))}
        assert row["kind"] == "decision"
        assert row["record_id"] == decision.action_id
        assert row["ts"] == "2026-03-02T09:30:15.123456+00:00"
        assert row["agent_id"] == "agent-1"
        assert row["session_id"] == "s-7"
        assert row["action_type"] == "database_query"
        assert row["resource"] == resource
        assert row["resource_normalized"] == decision.normalized_resource
        assert row["payload_digest"] == spec_digest(payload)
        assert row["risk_score"] == decision.risk_score
        assert [r["code"] for r in row["reasons"]] == list(decision.reason_codes)
        assert row["decision"] == ("allow" if allowed else "deny")
        assert row["outcome"] == decision.outcome.value
        assert row["mode"] == "block"
        assert row["policy_hash"] == guard.policy.policy_hash
        assert row["model_version"] == guard.model_version
    assert [r["kind"] for r in raw_rows(db_path)] == ["policy", "decision", "decision"]


def test_hash_chain_follows_the_specified_construction(six_records: str, db_path: Path) -> None:
    prev = GENESIS_HASH
    for expected_seq, row in enumerate(stored_rows(db_path), start=1):
        fields = decode(row)
        text = hashed_text(row)
        assert text == spec_canonical(json.loads(text)), "the hashed text is canonical JSON: sorted keys, no spaces"
        assert json.loads(text) == {k: v for k, v in fields.items() if k != "hash"}
        assert fields["seq"] == expected_seq
        assert fields["prev_hash"] == prev
        assert fields["hash"] == spec_hash(prev, text)
        prev = fields["hash"]
    head = open_audit(six_records).head()
    assert (head.count, head.seq, head.hash) == (6, 6, prev)


def test_killswitch_rollback_and_outcome_events_are_each_one_chained_record(
    make_guard: Callable[..., Guard], db_path: Path
) -> None:
    guard = make_guard(mode=KillSwitchMode.ROLLBACK)
    undone: list[str] = []
    write = guard.check(
        ActionType.DATABASE_WRITE, "data.deidentified.claims", {"sql": "update claims set x=1 where id=2"}
    )
    guard.register_undo(write.action_id, lambda: undone.append("claims"), "restore claims row 2")
    guard.record_outcome(write.action_id, rows=1)
    tripped = guard.check(ActionType.DATABASE_QUERY, "data.phi.patients")
    assert tripped.outcome is Outcome.ROLLED_BACK
    assert undone == ["claims"]
    while_paused = guard.check(ActionType.DATABASE_QUERY, "data.deidentified.claims")
    assert while_paused.outcome is Outcome.PAUSED
    guard.resume()
    guard.terminate(reason="done for today")
    guard.reset()

    rows = raw_rows(db_path)
    assert [(r["kind"], r["outcome"]) for r in rows] == [
        ("policy", None),
        ("decision", "allowed"),
        ("outcome", "success"),
        ("decision", "rolled_back"),
        ("rollback", "undone"),
        ("killswitch", "paused"),
        ("decision", "paused"),
        ("killswitch", "running"),
        ("killswitch", "terminated"),
        ("killswitch", "running"),
    ]
    assert rows[2]["action_id"] == write.action_id and rows[2]["detail"]["rows"] == 1
    assert rows[4]["action_id"] == write.action_id and rows[4]["detail"]["step"] == "restore claims row 2"
    assert rows[5]["action_id"] == tripped.action_id
    assert [(r["detail"]["from"], r["detail"]["to"], r["actor"]) for r in rows[5:] if r["kind"] == "killswitch"] == [
        ("running", "paused", "guard"),
        ("paused", "running", "reviewer"),
        ("running", "terminated", "reviewer"),
        ("terminated", "running", "reviewer"),
    ]
    assert [r["seq"] for r in rows] == list(range(1, 11))
    result = verify(url_of(db_path))
    assert result.ok and result.count == 10


# ---- payloads --------------------------------------------------------------------------------------------

PHI_PAYLOAD = {
    "note": "Pt MRN: 00123456, SSN 123-45-6789, mail jo.doe@example.org, call (555) 123-4567",
    "card": "4111 1111 1111 1111",
    "order": "4111 1111 1111 1112",
    "items": ["ssn 987-65-4321", 7, None],
}
SECRETS = (b"123-45-6789", b"987-65-4321", b"jo.doe@example.org", b"(555) 123-4567", b"4111 1111 1111 1111")


def test_by_default_only_the_payload_digest_is_stored(make_guard: Callable[..., Guard], db_path: Path) -> None:
    guard = make_guard()
    decision = guard.check(ActionType.DATABASE_WRITE, "data.deidentified.notes", PHI_PAYLOAD)
    row = raw_rows(db_path)[-1]
    assert row["action_id"] == decision.action_id
    assert row["payload"] is None
    assert row["payload_digest"] == spec_digest(PHI_PAYLOAD)
    stored = db_bytes(db_path)
    assert not [secret for secret in SECRETS if secret in stored]


def test_keep_payloads_stores_the_payload_masked_and_digests_the_original(
    make_guard: Callable[..., Guard], db_path: Path
) -> None:
    guard = make_guard(keep_payloads=True)
    guard.check(ActionType.DATABASE_WRITE, "data.deidentified.notes", PHI_PAYLOAD)
    row = raw_rows(db_path)[-1]
    assert row["payload"] == {
        "note": "Pt [MRN], SSN [SSN], mail [EMAIL], call [PHONE]",
        "card": "[CARD]",
        "order": "4111 1111 1111 1112",  # fails the Luhn check: not a card number, kept
        "items": ["ssn [SSN]", 7, None],
    }
    assert row["payload_digest"] == spec_digest(PHI_PAYLOAD)
    stored = db_bytes(db_path)
    assert not [secret for secret in SECRETS if secret in stored]
    assert verify(url_of(db_path)).ok


def test_keep_payloads_masks_identifiers_in_dictionary_keys(make_guard: Callable[..., Guard], db_path: Path) -> None:
    guard = make_guard(keep_payloads=True)
    guard.check(ActionType.API_CALL, "mail.send", {"status_by_recipient": {"jo.doe@example.org": "sent"}})
    row = raw_rows(db_path)[-1]
    assert "jo.doe@example.org" not in json.dumps(row["payload"])
    assert b"jo.doe@example.org" not in db_bytes(db_path)


@pytest.mark.parametrize("keep_payloads", [False, True])
def test_an_outcomes_error_message_is_kept_with_identifiers_masked(
    make_guard: Callable[..., Guard], db_path: Path, keep_payloads: bool
) -> None:
    """A tool's error often quotes the data it worked on; the trail keeps the message, not the identifiers."""
    guard = make_guard(keep_payloads=keep_payloads)
    decision = guard.check(ActionType.DATABASE_QUERY, "data.claims")
    guard.record_outcome(decision.action_id, success=False, error="no claim for 123-45-6789, mailed jo@example.org")
    assert raw_rows(db_path)[-1]["detail"]["error"] == "no claim for [SSN], mailed [EMAIL]"


def test_keep_payloads_masks_card_numbers_given_as_json_numbers(
    make_guard: Callable[..., Guard], db_path: Path
) -> None:
    guard = make_guard(keep_payloads=True)
    guard.check(ActionType.API_CALL, "payments.charge", {"card_number": 4111111111111111, "amount": 12})
    row = raw_rows(db_path)[-1]
    assert "4111111111111111" not in json.dumps(row["payload"])
    assert row["payload"]["amount"] == 12


def test_keep_payloads_masks_card_numbers_next_to_a_hyphen_or_letter_or_given_as_an_integral_float(
    make_guard: Callable[..., Guard], db_path: Path
) -> None:
    guard = make_guard(keep_payloads=True)
    payload = {"ref": "order-4111111111111111", "card": "4111111111111111-12/29", "pan": 4111111111111111.0,
               "spaced": "555 4111 1111 1111 1111", "amount": 12.0, "rate": 0.5, "ts": 1700000000.0}  # fmt: skip
    guard.check(ActionType.API_CALL, "payments.charge", payload)
    row = raw_rows(db_path)[-1]
    assert row["payload"] == {"ref": "order-[CARD]", "card": "[CARD]-12/29", "pan": "[CARD]",
                              "spaced": "555 [CARD]", "amount": 12.0, "rate": 0.5, "ts": 1700000000.0}  # fmt: skip


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("4111-1111-1111-1111-12", "[CARD]-12"),
        ("2024-4111111111111111", "2024-[CARD]"),
        ("x4111111111111111y", "x[CARD]y"),
        ("4111111111111111 4012888888881881", "[CARD] [CARD]"),
        ("94111111111111111", "94111111111111111"),  # digits touching the number make another number
        ("order-4111111111111112", "order-4111111111111112"),  # not Luhn-valid
        ("1234-5678-9012-3456-7890", "1234-5678-9012-3456-7890"),  # no stretch of its groups is Luhn-valid
    ],
)
def test_card_numbers_are_masked_where_no_digit_touches_them_and_only_if_luhn_valid(text: str, masked: str) -> None:
    assert mask(text) == masked


def test_integral_floats_are_masked_only_when_their_digits_are_a_card_number() -> None:
    assert mask([4111111111111111.0, -4111111111111111.0, 4111111111111112.0, 4111111111111111.5]) == [
        "[CARD]", "[CARD]", 4111111111111112.0, 4111111111111111.5
    ]  # fmt: skip
    # Past 2**53 a float is rounded, its digits cannot be checked, and it may still show most of a card's.
    assert mask([float("42119580275056985"), 9.1e15, 1e19]) == ["[CARD]", "[CARD]", 1e19]


def test_non_finite_floats_are_written_as_strings_not_as_null(make_guard: Callable[..., Guard], db_path: Path) -> None:
    assert canonical_json({"x": float("nan")}) == canonical_json({"x": "NaN"}) != canonical_json({"x": None})
    assert canonical_json([float("inf"), -float("inf"), None, 1.5]) == b'["Infinity","-Infinity",null,1.5]'
    assert canonical_json({"big": 2**70, "x": float("nan")}) == b'{"big":1180591620717411303424,"x":"NaN"}'
    assert canonical_json({"a": None, "b": 0.5}) == b'{"a":null,"b":0.5}'  # finite values: as before
    # Beside a record's unset (None) fields, a nested NaN is still found.
    record = {"session_id": None, "detail": {"x": float("nan"), "y": None}, "reasons": [{"weight": float("inf")}]}
    expected = b'{"detail":{"x":"NaN","y":null},"reasons":[{"weight":"Infinity"}],"session_id":null}'
    assert canonical_json(record) == expected
    guard = make_guard(keep_payloads=True)
    guard.check(ActionType.API_CALL, "metrics.push", {"value": float("nan"), "none": None})
    guard.check(ActionType.API_CALL, "metrics.push", {"value": None, "none": None})
    nan_row, none_row = raw_rows(db_path)[-2:]
    assert nan_row["payload"] == {"value": "NaN", "none": None}
    assert nan_row["payload_digest"] != none_row["payload_digest"]


def test_keep_payloads_keeps_integers_beyond_64_bits_exactly(make_guard: Callable[..., Guard], db_path: Path) -> None:
    guard = make_guard(keep_payloads=True)
    big = 2**64 + 1
    guard.check(ActionType.API_CALL, "ledger.post", {"entry_id": big})
    assert raw_rows(db_path)[-1]["payload"] == {"entry_id": big}
    assert verify(url_of(db_path)).ok


_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def test_any_json_payload_round_trips_through_sqlite_and_the_chain_still_verifies(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    guard = Guard(audit=url_of(path), keep_payloads=True, home=tmp_path)

    @settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(payload=_json_values, resource=st.text(min_size=1, max_size=20).filter(str.strip))
    def check_one(payload: Any, resource: str) -> None:
        decision = guard.check(ActionType.CUSTOM, resource, payload)
        record = next(r for r in guard.audit.query(AuditQuery(limit=1, offset=guard.audit.head().count - 1)))
        assert record.action_id == decision.action_id
        # The digest is of the original payload's canonical JSON, which decodes back to exactly that payload.
        assert record.payload_digest == hashlib.sha256(canonical_json(payload)).hexdigest()
        assert json.loads(canonical_json(payload)) == payload
        assert record.payload == mask(payload)

    try:
        check_one()
        result = verify_store(guard.audit)
        assert result.ok, result
    finally:
        guard.close()


# ---- verification and tampering --------------------------------------------------------------------------


def test_untampered_chain_verifies_and_reports_its_head(six_records: str, db_path: Path) -> None:
    head = raw_rows(db_path)[-1]["hash"]
    result = verify(six_records)
    assert (result.ok, result.count, result.head_hash, result.first_bad_seq) == (True, 6, head, None)
    assert verify(six_records, expected_head=head).ok
    # A head kept earlier is still in the chain, so it verifies too.
    assert verify(six_records, expected_head=raw_rows(db_path)[3]["hash"]).ok


def test_empty_store_verifies_with_the_genesis_head(db_path: Path) -> None:
    result = verify(url_of(db_path))
    assert (result.ok, result.count, result.head_hash) == (True, 0, GENESIS_HASH)


@pytest.mark.parametrize(
    "changes",
    [
        lambda r: {"outcome": "allowed", "decision": "allow"},
        lambda r: {"risk_score": 0.01},
        lambda r: {"reasons": []},
        lambda r: {"reasons": [{**reason, "weight": 0.0} for reason in r["reasons"]]},
        lambda r: {"ts": "2020-01-01T00:00:00.000000+00:00"},
        lambda r: {"resource": "data.deidentified.patients"},
        lambda r: {"risk_score": str(r["risk_score"])},
    ],
    ids=["outcome", "risk_score", "reasons-emptied", "reason-weights", "ts", "resource", "risk_score-as-text"],
)
def test_editing_a_field_fails_verification_at_that_record(
    six_records: str, db_path: Path, changes: Callable[[dict[str, Any]], dict[str, Any]]
) -> None:
    with raw(db_path) as conn:
        edit(conn, 3, **changes(raw_rows(db_path)[2]))
    result = verify(six_records)
    assert not result.ok
    assert (result.first_bad_seq, result.count) == (3, 2)


@pytest.mark.parametrize("field", [f for f in FIELDS if f != "seq"])
def test_every_field_is_covered_by_the_hash(six_records: str, db_path: Path, field: str) -> None:
    replacement: Any = {
        "risk_score": 0.123,
        "payload": {"x": 1},
        "reasons": [{"code": "forged"}],
        "detail": {"forged": True},
        "prev_hash": "1" * 64,
        "hash": "2" * 64,
    }.get(field, "forged")
    with raw(db_path) as conn:
        edit(conn, 3, **{field: replacement})
    assert raw_rows(db_path)[2][field] == replacement
    result = verify(six_records)
    assert (result.ok, result.first_bad_seq) == (False, 3)


def test_editing_only_the_queryable_outcome_column_is_detected(six_records: str, db_path: Path) -> None:
    with raw(db_path) as conn:
        assert conn.execute("UPDATE audit SET outcome = 'allowed' WHERE seq = 3").rowcount == 1
    result = verify(six_records)
    assert (result.ok, result.first_bad_seq, result.count) == (False, 3, 2)


def test_editing_a_record_and_recomputing_its_own_hash_fails_at_the_next_record(
    six_records: str, db_path: Path
) -> None:
    with raw(db_path) as conn:
        edit(conn, 3, outcome="allowed", decision="allow", reasons=[])
        rehash(conn, 3, prev_of(conn, 3))
    row = stored_rows(db_path)[2]
    assert decode(row)["hash"] == spec_hash(decode(row)["prev_hash"], hashed_text(row))
    result = verify(six_records)
    assert not result.ok
    assert (result.first_bad_seq, result.count) == (4, 3)


def test_rewriting_a_record_and_rehashing_every_later_one_is_caught_only_against_a_kept_head(
    six_records: str, db_path: Path
) -> None:
    kept_head = raw_rows(db_path)[-1]["hash"]
    with raw(db_path) as conn:
        prev = prev_of(conn, 3)
        edit(conn, 3, outcome="allowed", decision="allow")
        for seq in range(3, 7):
            prev = rehash(conn, seq, prev)
    # A fully rewritten suffix is self-consistent: only the head kept elsewhere exposes it.
    assert verify(six_records).ok
    result = verify(six_records, expected_head=kept_head)
    assert not result.ok
    assert result.first_bad_seq is not None


def test_deleting_a_middle_record_fails_at_the_record_after_the_gap(six_records: str, db_path: Path) -> None:
    with raw(db_path) as conn:
        conn.execute("DELETE FROM audit WHERE seq = 3")
    result = verify(six_records)
    assert not result.ok
    assert (result.first_bad_seq, result.count) == (4, 2)


def test_deleting_a_middle_record_and_renumbering_the_rest_fails_at_the_gap(six_records: str, db_path: Path) -> None:
    with raw(db_path) as conn:
        conn.execute("DELETE FROM audit WHERE seq = 3")
        for seq in (4, 5, 6):
            conn.execute("UPDATE audit SET seq = ? WHERE seq = ?", (seq - 1, seq))
    assert [r["seq"] for r in stored_rows(db_path)] == [1, 2, 3, 4, 5]
    result = verify(six_records)
    assert not result.ok
    assert (result.first_bad_seq, result.count) == (3, 2)


def test_deleting_the_first_record_without_a_purge_fails_at_seq_1(six_records: str, db_path: Path) -> None:
    with raw(db_path) as conn:
        conn.execute("DELETE FROM audit WHERE seq = 1")
    result = verify(six_records)
    assert not result.ok
    assert result.first_bad_seq == 1


def test_swapping_two_records_fails_at_the_first_of_them(six_records: str, db_path: Path) -> None:
    with raw(db_path) as conn:
        conn.execute("UPDATE audit SET seq = -1 WHERE seq = 3")
        conn.execute("UPDATE audit SET seq = 3 WHERE seq = 4")
        conn.execute("UPDATE audit SET seq = 4 WHERE seq = -1")
    result = verify(six_records)
    assert not result.ok
    assert (result.first_bad_seq, result.count) == (3, 2)


def test_swapping_two_records_contents_but_keeping_seq_fails_at_the_first_of_them(
    six_records: str, db_path: Path
) -> None:
    with raw(db_path) as conn:
        other = ", ".join(row[1] for row in conn.execute("PRAGMA table_info(audit)") if row[1] != "seq")
        conn.execute("CREATE TEMP TABLE swap AS SELECT * FROM audit WHERE seq IN (3, 4)")
        conn.execute(
            f"UPDATE audit SET ({other}) = (SELECT {other} FROM swap WHERE swap.seq = 7 - audit.seq) "
            "WHERE seq IN (3, 4)"
        )
    rows = raw_rows(db_path)
    assert rows[2]["outcome"] == "allowed" and rows[3]["outcome"] == "blocked"
    result = verify(six_records)
    assert (result.ok, result.first_bad_seq) == (False, 3)


def test_truncating_the_tail_passes_without_a_head_but_fails_against_the_head_kept_before(
    six_records: str, db_path: Path
) -> None:
    kept_head = raw_rows(db_path)[-1]["hash"]
    with raw(db_path) as conn:
        conn.execute("DELETE FROM audit WHERE seq > 4")
    # Documented limitation: what remains is a valid chain, so verification without a head passes.
    result = verify(six_records)
    assert (result.ok, result.count) == (True, 4)
    result = verify(six_records, expected_head=kept_head)
    assert not result.ok
    assert (result.first_bad_seq, result.count) == (5, 4)


def test_deleting_every_record_is_caught_only_against_a_kept_head(six_records: str, db_path: Path) -> None:
    kept_head = raw_rows(db_path)[-1]["hash"]
    with raw(db_path) as conn:
        conn.execute("DELETE FROM audit")
    assert verify(six_records).ok
    result = verify(six_records, expected_head=kept_head)
    assert (result.ok, result.first_bad_seq) == (False, 1)


def test_editing_the_last_record_and_rehashing_it_is_caught_only_against_a_kept_head(
    six_records: str, db_path: Path
) -> None:
    kept_head = raw_rows(db_path)[-1]["hash"]
    with raw(db_path) as conn:
        edit(conn, 6, outcome="blocked", decision="deny")
        rehash(conn, 6, prev_of(conn, 6))
    assert verify(six_records).ok
    assert not verify(six_records, expected_head=kept_head).ok


# ---- audit write failure denies -------------------------------------------------------------------------


def test_locked_audit_denies_an_allowed_action_and_recovers_once_released(
    make_guard: Callable[..., Guard], db_path: Path
) -> None:
    guard = make_guard(audit=url_of(db_path, timeout=0.05))
    assert guard.check(ActionType.FILE_READ, "/srv/reports/q1.csv").allowed
    with raw(db_path) as locker:
        locker.execute("BEGIN EXCLUSIVE")
        denied = guard.check(ActionType.FILE_READ, "/srv/reports/q1.csv")
        assert not denied.allowed
        assert denied.outcome is Outcome.BLOCKED
        assert denied.reason_codes[0] == "audit_unavailable"
        assert guard.audit_failures == 1
        locker.execute("ROLLBACK")
    allowed = guard.check(ActionType.FILE_READ, "/srv/reports/q1.csv")
    assert allowed.allowed
    assert guard.audit_failures == 1
    rows = raw_rows(db_path)
    assert [r["seq"] for r in rows] == [1, 2, 3]
    assert allowed.action_id == rows[-1]["action_id"]
    assert denied.action_id not in {r["action_id"] for r in rows}
    assert verify(url_of(db_path)).ok


@pytest.mark.parametrize("removed", [("",), ("-wal", "-shm"), ("", "-wal", "-shm")])
def test_an_audit_file_deleted_or_replaced_under_the_guard_denies_instead_of_losing_the_records(
    make_guard: Callable[..., Guard], db_path: Path, removed: tuple[str, ...]
) -> None:
    """SQLite goes on writing to a deleted file without a word: every action was allowed and its record lost with
    the file, or (with the log deleted) written where a second writer, chaining into a new log, never saw it."""
    guard = make_guard()
    assert guard.check(ActionType.FILE_READ, "/srv/reports/q1.csv").allowed
    for suffix in removed:
        Path(f"{db_path}{suffix}").unlink()
    denied = guard.check(ActionType.FILE_READ, "/srv/reports/q1.csv")
    assert (denied.allowed, denied.reason_codes[0]) == (False, "audit_unavailable")
    assert "deleted or replaced" in denied.reasons[0].message and guard.audit_failures == 1
    if len(removed) == 3:  # a new trail at the path (a restarted worker's): still not the files this store opened
        assert make_guard().check(ActionType.FILE_READ, "/srv/reports/q1.csv").allowed
        assert not guard.check(ActionType.FILE_READ, "/srv/reports/q1.csv").allowed


def test_checks_decided_together_are_committed_at_once_and_a_record_that_fails_denies_only_its_action(
    make_guard: Callable[..., Guard], db_path: Path
) -> None:
    guard = make_guard(mode=KillSwitchMode.PAUSE)
    read = functools.partial(guard.check, ActionType.DATABASE_QUERY)
    decisions = decided_together(
        lambda: [
            read("data.deidentified.claims"),
            read("data.deidentified.claims", agent_id="agent-\ud800"),  # a record SQLite cannot hold
            read("data.phi.patients"),  # pauses agent-1
            read("data.deidentified.claims"),  # so this one is denied by the pause
        ]
    )
    assert [(d.outcome, d.reason_codes[0]) for d in decisions] == [
        (Outcome.ALLOWED, "action_type"), (Outcome.BLOCKED, "audit_unavailable"),
        (Outcome.PAUSED, "resource_blocked"), (Outcome.PAUSED, "agent_paused"),
    ]  # fmt: skip
    assert guard.audit_failures == 1
    rows = raw_rows(db_path)
    assert [(r["kind"], r.get("action_id")) for r in rows[1:]] == [
        ("decision", decisions[0].action_id), ("decision", decisions[2].action_id),
        ("killswitch", decisions[2].action_id), ("decision", decisions[3].action_id),
    ]  # fmt: skip
    assert verify(url_of(db_path)).ok


def test_guarded_tool_body_does_not_run_while_the_audit_is_locked(
    make_guard: Callable[..., Guard], db_path: Path, tmp_path: Path
) -> None:
    guard = make_guard(audit=url_of(db_path, timeout=0.05))
    report = tmp_path / "report.txt"
    report.write_text("q1 totals")
    ran: list[str] = []

    @guard.tool(ActionType.FILE_READ, resource="path")
    def read_report(path: str) -> str:
        ran.append(path)
        return Path(path).read_text()

    with raw(db_path) as locker:
        locker.execute("BEGIN EXCLUSIVE")
        with pytest.raises(ActionDenied) as denied:
            read_report(str(report))
        locker.execute("ROLLBACK")
    assert ran == []
    assert denied.value.decision.reason_codes[0] == "audit_unavailable"
    assert guard.audit_failures == 1

    assert read_report(str(report)) == "q1 totals"
    assert ran == [str(report)]
    assert [r["kind"] for r in raw_rows(db_path)] == ["policy", "decision", "outcome"]


def test_guard_refuses_to_start_when_its_policy_record_cannot_be_written(db_path: Path, tmp_path: Path) -> None:
    Guard(audit=url_of(db_path), home=tmp_path).close()
    with raw(db_path) as locker:
        locker.execute("BEGIN EXCLUSIVE")
        with pytest.raises(AuditError):
            Guard(audit=url_of(db_path, timeout=0.05), home=tmp_path)
        locker.execute("ROLLBACK")


# ---- concurrency ------------------------------------------------------------------------------------------


def test_eight_threads_sharing_one_guard_write_1600_decisions_on_one_chain(
    make_guard: Callable[..., Guard], db_path: Path
) -> None:
    guard = make_guard()

    def work(n: int) -> list[str]:
        checks = (guard.check(ActionType.DATABASE_QUERY, f"data.t{n}.r{i}", agent_id=f"a{n}") for i in range(200))
        return [decision.action_id for decision in checks]

    decided = run_together([functools.partial(work, n) for n in range(8)])
    rows = raw_rows(db_path)
    decisions = [r for r in rows if r["kind"] == "decision"]
    assert len(decisions) == 1600
    assert len(rows) == 1601
    assert [r["seq"] for r in rows] == list(range(1, 1602))
    assert {r["action_id"] for r in decisions} == {a for ids in decided for a in ids}
    result = verify(url_of(db_path))
    assert (result.ok, result.count) == (True, 1601)


def test_two_guards_with_separate_connections_append_to_one_file_without_forks_or_gaps(
    tmp_path: Path, db_path: Path
) -> None:
    guards = [Guard(agent_id=f"proc-{n}", audit=url_of(db_path), home=tmp_path) for n in range(2)]

    def work(guard: Guard) -> None:
        for i in range(200):
            guard.check(ActionType.FILE_READ, f"/srv/data/{i}.csv")

    run_together([functools.partial(work, g) for g in guards])
    for g in guards:
        g.close()
    rows = raw_rows(db_path)
    assert len(rows) == 402
    assert [r["seq"] for r in rows] == list(range(1, 403))
    assert len({r["prev_hash"] for r in rows}) == 402  # no two records claim the same predecessor
    assert sum(r["agent_id"] == "proc-0" for r in rows) == sum(r["agent_id"] == "proc-1" for r in rows) == 201
    result = verify(url_of(db_path))
    assert (result.ok, result.count) == (True, 402)


def test_two_stores_of_four_threads_each_group_their_appends_and_keep_one_chain(db_path: Path) -> None:
    """Threads of one store commit together; the two stores' groups collide on seqs and retry whole."""
    stores = [open_audit(url_of(db_path)) for _ in range(2)]
    record = {"ts": "2026-01-01T00:00:00+00:00", "kind": "decision"}
    run_together(
        [
            lambda s=s, name=f"s{n}t{t}": [
                s.append({**record, "record_id": f"{name}-{i}", "agent_id": name}) for i in range(200)
            ]
            for n, s in enumerate(stores)
            for t in range(4)
        ]
    )
    for s in stores:
        s.close()
    rows = raw_rows(db_path)
    assert [r["seq"] for r in rows] == list(range(1, 1601))
    assert len({r["record_id"] for r in rows}) == len({r["prev_hash"] for r in rows}) == 1600
    result = verify(url_of(db_path))
    assert (result.ok, result.count) == (True, 1600)


@pytest.mark.parametrize(
    ("bad", "inserts", "says"),
    [
        ({"nonsense": 1}, [1, 2], "nonsense"),  # not an audit field: it cannot be sealed, and never reaches the store
        ({"agent_id": "a\ud800"}, [1, 3, 1, 1, 1], "surrogate"),  # sealed, but SQLite cannot hold it: one by one
    ],
)
def test_appends_waiting_on_a_commit_go_in_one_group_and_a_bad_record_fails_alone(
    db_path: Path, bad: dict[str, Any], inserts: list[int], says: str
) -> None:
    store = SQLiteAuditStore(url_of(db_path))
    inserted: list[int] = []
    waiting = threading.Event()

    def insert(records: list[tuple[Sealed, dict[str, Any]]]) -> bool:
        inserted.append(len(records))
        if len(inserted) == 1:  # hold the first commit until three more appends wait behind it
            waiting.wait(30)
        return store._insert(records)

    appender = ChainAppender(store._read_head, insert, budget=5.0)
    record = {"ts": "2026-01-01T00:00:00+00:00", "kind": "decision", "agent_id": "a"}
    results: dict[str, Any] = {}

    def append(name: str, **extra: Any) -> None:
        try:
            results[name] = appender.append({**record, "record_id": name, **extra}, "test")
        except AuditError as exc:
            results[name] = exc

    threads = [threading.Thread(target=append, args=("first",))]
    threads[0].start()
    while not inserted:
        threading.Event().wait(0.001)
    later = [
        threading.Thread(target=append, args=("good-1",)),
        threading.Thread(target=append, args=("bad",), kwargs=bad),
        threading.Thread(target=append, args=("good-2",)),
    ]
    for t in later:
        t.start()
    while len(appender._waiting) < 3:
        threading.Event().wait(0.001)
    waiting.set()
    for t in [*threads, *later]:
        t.join(30)
    assert inserted == inserts  # the three that waited went as one group
    assert isinstance(results["bad"], AuditError) and says in str(results["bad"])
    assert results["first"].seq == 1 and {results["good-1"].seq, results["good-2"].seq} == {2, 3}
    store.close()
    assert sorted(r["record_id"] for r in raw_rows(db_path)) == ["first", "good-1", "good-2"]
    assert verify(url_of(db_path)).ok


def test_append_many_commits_its_records_in_order_together_and_a_bad_one_fails_alone(db_path: Path) -> None:
    store = SQLiteAuditStore(url_of(db_path))
    commits: list[int] = []
    store._appender._insert = lambda records: commits.append(len(records)) or store._insert(records)  # type: ignore[method-assign]
    record = {"ts": "2026-01-01T00:00:00+00:00", "kind": "decision", "agent_id": "a"}
    results = store.append_many([{**record, "record_id": f"r{n}"} for n in range(5)])
    assert commits == [5] and [r.seq for r in results if isinstance(r, Sealed)] == [1, 2, 3, 4, 5]
    bodies = [{**record, "record_id": "good-1"}, {**record, "record_id": "bad", "agent_id": "a\ud800"},
              {**record, "record_id": "unsealable", "nonsense": 1}, {**record, "record_id": "good-2"}]  # fmt: skip
    results = store.append_many(bodies)
    assert [type(r).__name__ for r in results] == ["Sealed", "AuditRecordError", "AuditError", "Sealed"]
    assert commits == [5, 3, 1, 1, 1]  # the store refused the group for one record: then one by one
    store.close()
    assert [r["record_id"] for r in raw_rows(db_path)] == ["r0", "r1", "r2", "r3", "r4", "good-1", "good-2"]
    assert verify(url_of(db_path)).ok


def test_a_write_lock_held_past_the_timeout_denies_and_a_released_one_is_waited_for(
    make_guard: Callable[..., Guard], db_path: Path
) -> None:
    """Another process holding SQLite's write lock: appends retry within `timeout`, then deny, never allow."""
    guard = make_guard(audit=url_of(db_path, timeout=1))
    holder = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # the write lock, as a long write in another process holds it
    denied = guard.check(ActionType.DATABASE_QUERY, "data.deidentified.claims")
    assert (denied.allowed, denied.reasons[0].code) == (False, "audit_unavailable")
    assert "busy for 1 s" in denied.reasons[0].message

    release = threading.Timer(0.1, holder.execute, args=("COMMIT",))
    release.start()
    try:
        allowed = guard.check(ActionType.DATABASE_QUERY, "data.deidentified.claims")  # waits out the 0.1 s
    finally:
        release.join()
        holder.close()
    assert allowed.allowed
    decisions = [r for r in raw_rows(db_path) if r["kind"] == "decision"]
    assert [r["action_id"] for r in decisions] == [allowed.action_id]  # the denied one could not be recorded
    assert verify(url_of(db_path)).ok


def _append_from_process(url: str, home: str, agent: str, n: int, barrier: Any) -> None:
    guard = Guard(agent_id=agent, audit=url, home=home)
    barrier.wait(timeout=30)
    for i in range(n):
        guard.check(ActionType.DATABASE_QUERY, f"data.deidentified.t{i}")
    guard.close()


def test_two_processes_append_to_one_file_and_the_chain_verifies(tmp_path: Path, db_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [
        ctx.Process(target=_append_from_process, args=(url_of(db_path), str(tmp_path), f"p{n}", 100, barrier))
        for n in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    rows = raw_rows(db_path)
    assert [r["seq"] for r in rows] == list(range(1, 203))
    assert sorted(r["agent_id"] for r in rows if r["kind"] == "decision") == ["p0"] * 100 + ["p1"] * 100
    result = verify(url_of(db_path))
    assert (result.ok, result.count) == (True, 202)


# ---- retention --------------------------------------------------------------------------------------------


def test_purge_refuses_to_delete_records_younger_than_the_retention(
    make_guard: Callable[..., Guard], db_path: Path
) -> None:
    guard = make_guard()
    guard.check(ActionType.FILE_READ, "/srv/a.csv")
    now = datetime.now(UTC)
    for before, retention in (
        (now - timedelta(days=30), DEFAULT_RETENTION),
        (now - DEFAULT_RETENTION + timedelta(days=1), DEFAULT_RETENTION),
        (now - timedelta(days=1), timedelta(days=7)),
        (now + timedelta(hours=1), timedelta(0)),
    ):
        with pytest.raises(RetentionError, match="retention"):
            purge(guard.audit, before, retention=retention)
    assert [r["kind"] for r in raw_rows(db_path)] == ["policy", "decision"]


def test_default_retention_is_at_least_six_years() -> None:
    assert DEFAULT_RETENTION.days >= 6 * 365 + 1  # six years, leap days included


def test_purge_deletes_old_records_appends_a_retention_record_and_the_rest_still_verifies(
    make_guard: Callable[..., Guard], db_path: Path
) -> None:
    clock = Clock(at(2019, 3))
    guard = make_guard(clock=clock)
    for i in range(3):
        guard.check(ActionType.FILE_READ, f"/srv/old/{i}.csv")
    clock.when = at(2020, 6)
    for i in range(2):
        guard.check(ActionType.FILE_READ, f"/srv/new/{i}.csv")
    before_purge = raw_rows(db_path)
    kept_head = before_purge[-1]["hash"]

    deleted = purge(guard.audit, datetime(2020, 1, 1, tzinfo=UTC))  # the default six-year retention

    assert deleted == 4
    rows = raw_rows(db_path)
    assert [r["seq"] for r in rows] == [5, 6, 7]
    assert [r["resource"] for r in rows[:2]] == ["/srv/new/0.csv", "/srv/new/1.csv"]
    retention = rows[-1]
    assert retention["kind"] == "retention"
    assert retention["detail"]["purged_through_seq"] == 4
    assert retention["detail"]["anchor_hash"] == before_purge[3]["hash"]
    assert retention["prev_hash"] == kept_head
    result = verify(url_of(db_path))
    assert (result.ok, result.count, result.head_hash) == (True, 3, retention["hash"])
    assert verify(url_of(db_path), expected_head=kept_head).ok
    # The chain goes on after the purge.
    clock.when = at(2026, 1)
    guard.check(ActionType.FILE_READ, "/srv/new/2.csv")
    assert verify(url_of(db_path)).count == 4


@pytest.mark.parametrize(
    "before",
    [
        datetime(2019, 12, 31, 19),
        datetime(2019, 12, 31, 19, tzinfo=UTC),
        datetime(2020, 1, 1, 0, tzinfo=timezone(timedelta(hours=5))),
        datetime(2019, 12, 31, 14, tzinfo=timezone(timedelta(hours=-5))),
    ],
    ids=["naive-means-utc", "utc", "utc+5", "utc-5"],
)
def test_purge_deletes_exactly_the_records_older_than_the_instant_before_whatever_its_offset(
    make_guard: Callable[..., Guard], db_path: Path, before: datetime
) -> None:
    clock = Clock(datetime(2019, 12, 31, 18, tzinfo=UTC))  # an hour before `before` (19:00 UTC)
    guard = make_guard(clock=clock)
    guard.check(ActionType.FILE_READ, "/srv/older.csv")
    clock.when = datetime(2019, 12, 31, 20, tzinfo=UTC)  # an hour after it
    guard.check(ActionType.FILE_READ, "/srv/newer.csv")

    deleted = purge(guard.audit, before, retention=timedelta(0))

    rows = raw_rows(db_path)
    assert deleted == 2
    assert [(r["kind"], r["resource"]) for r in rows] == [("decision", "/srv/newer.csv"), ("retention", None)]
    assert verify(url_of(db_path)).ok


def test_short_retention_allows_purging_recent_records(make_guard: Callable[..., Guard], db_path: Path) -> None:
    clock = Clock(datetime.now(UTC) - timedelta(days=10))
    guard = make_guard(clock=clock)
    guard.check(ActionType.FILE_READ, "/srv/a.csv")
    clock.when = datetime.now(UTC) - timedelta(days=1)
    guard.check(ActionType.FILE_READ, "/srv/b.csv")
    before = datetime.now(UTC) - timedelta(days=5)
    with pytest.raises(RetentionError):
        purge(guard.audit, before)
    assert purge(guard.audit, before, retention=timedelta(days=3)) == 2
    assert [r["kind"] for r in raw_rows(db_path)] == ["decision", "retention"]
    assert verify(url_of(db_path)).ok


def test_purging_twice_keeps_a_verifiable_chain(make_guard: Callable[..., Guard], db_path: Path) -> None:
    clock = Clock(at(2017))
    guard = make_guard(clock=clock)
    for year in (2017, 2018, 2019):
        clock.when = at(year, 6)
        guard.check(ActionType.FILE_READ, f"/srv/{year}.csv")
    kept_head = raw_rows(db_path)[-1]["hash"]
    assert purge(guard.audit, datetime(2018, 1, 1, tzinfo=UTC)) == 2
    assert verify(url_of(db_path)).ok
    assert purge(guard.audit, datetime(2019, 1, 1, tzinfo=UTC)) == 1
    rows = raw_rows(db_path)
    assert [r["kind"] for r in rows] == ["decision", "retention", "retention"]
    result = verify(url_of(db_path), expected_head=kept_head)
    assert (result.ok, result.count) == (True, 3)


def test_purging_every_record_leaves_the_retention_record_anchored_to_the_old_head(
    make_guard: Callable[..., Guard], db_path: Path
) -> None:
    guard = make_guard(clock=Clock(at(2019)))
    guard.check(ActionType.FILE_READ, "/srv/a.csv")
    kept_head = raw_rows(db_path)[-1]["hash"]
    assert purge(guard.audit, datetime(2020, 1, 1, tzinfo=UTC)) == 2
    rows = raw_rows(db_path)
    assert [(r["seq"], r["kind"]) for r in rows] == [(3, "retention")]
    assert rows[0]["detail"]["anchor_hash"] == kept_head
    assert verify(url_of(db_path)).ok
    assert verify(url_of(db_path), expected_head=kept_head).ok


def test_purge_before_the_oldest_record_deletes_and_appends_nothing(
    make_guard: Callable[..., Guard], db_path: Path
) -> None:
    guard = make_guard(clock=Clock(at(2019)))
    guard.check(ActionType.FILE_READ, "/srv/a.csv")
    assert purge(guard.audit, datetime(2018, 1, 1, tzinfo=UTC)) == 0
    assert [r["kind"] for r in raw_rows(db_path)] == ["policy", "decision"]


def test_deleting_the_retention_record_after_a_purge_is_detected(
    make_guard: Callable[..., Guard], db_path: Path
) -> None:
    clock = Clock(at(2019))
    guard = make_guard(clock=clock)
    guard.check(ActionType.FILE_READ, "/srv/a.csv")
    clock.when = at(2021)
    guard.check(ActionType.FILE_READ, "/srv/b.csv")
    purge(guard.audit, datetime(2020, 1, 1, tzinfo=UTC))
    assert verify(url_of(db_path)).ok
    with raw(db_path) as conn:
        conn.execute("DELETE FROM audit WHERE kind = 'retention'")
    result = verify(url_of(db_path))
    assert (result.ok, result.first_bad_seq) == (False, 1)


def _young(n: int) -> dict[str, Any]:
    """A record's fields, written now (inside any retention period)."""
    return {"record_id": f"r{n}", "ts": datetime.now(UTC).isoformat(timespec="microseconds"), "kind": "decision",
            "agent_id": "a", "resource": f"/srv/{n}.csv"}  # fmt: skip


def _insert_row(conn: sqlite3.Connection, seq: int, fields: dict[str, Any], hash_: str | None = None) -> None:
    """Add a row the way an attacker with the file would: its text hashed (or `hash_`) and its columns filled."""
    text = canonical_json({**fields, "seq": seq}).decode()
    conn.execute(
        "INSERT INTO audit (seq, ts, agent_id, kind, outcome, action_id, body, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (seq, fields.get("ts"), fields.get("agent_id"), fields.get("kind"), fields.get("outcome"),
         fields.get("action_id"), text, hash_ or spec_hash(GENESIS_HASH, text.encode())),
    )  # fmt: skip


@pytest.mark.parametrize("seq", [0, -5])
def test_a_row_added_before_the_chains_start_fails_verification_though_queries_show_it(db_path: Path, seq: int) -> None:
    store = SQLiteAuditStore(url_of(db_path))
    for n in range(1, 4):
        store.append(_young(n))
    kept = store.head().hash
    with raw(db_path) as conn:
        _insert_row(conn, seq, {**_young(9), "resource": "/etc/shadow", "prev_hash": GENESIS_HASH})
    assert "/etc/shadow" in [r.resource for r in store.query(AuditQuery(agent_id="a"))]
    for head in (None, kept):
        result = verify_store(store, expected_head=head)
        assert (result.ok, result.first_bad_seq) == (False, seq), result
        assert "precedes the chain's start" in result.problem
    store.close()


@pytest.mark.parametrize("forged_seq", [0, -1])
def test_young_records_deleted_behind_a_forged_retention_row_outside_the_chain_fail_verification(
    db_path: Path, forged_seq: int
) -> None:
    store = SQLiteAuditStore(url_of(db_path))
    for n in range(1, 6):
        store.append(_young(n))
    kept = store.head().hash
    hashes = {s.seq: s.hash for s in store.stored()}
    forged = {"record_id": "x", "ts": _young(0)["ts"], "kind": "retention", "agent_id": "*", "actor": "cli",
              "detail": {"purged_through_seq": 3, "anchor_hash": hashes[3]}, "prev_hash": GENESIS_HASH}  # fmt: skip
    with raw(db_path) as conn:
        conn.execute("DELETE FROM audit WHERE seq <= 3")
        _insert_row(conn, forged_seq, forged)
    for head in (None, kept):
        result = verify_store(store, expected_head=head)
        assert (result.ok, result.first_bad_seq) == (False, forged_seq), result
    # Without the forged row, records 1..3 are missing with no purge in the chain to account for them.
    with raw(db_path) as conn:
        conn.execute("DELETE FROM audit WHERE seq <= 0")
    result = verify_store(store, expected_head=kept)
    assert (result.ok, result.first_bad_seq) == (False, 1), result
    assert "missing with no purge" in result.problem
    store.close()


def test_a_retention_record_anchors_the_chain_only_if_it_names_the_hash_the_chain_starts_from(db_path: Path) -> None:
    store = SQLiteAuditStore(url_of(db_path))
    for n in range(1, 4):
        store.append({**_young(n), "ts": "2010-01-01T00:00:00.000000+00:00"})
    store.append(_young(4))
    # A retention record in the chain, naming seq 2 but the hash of another record: it vouches for nothing.
    store.append({"record_id": "x", "ts": _young(0)["ts"], "kind": "retention", "agent_id": "*",
                  "detail": {"purged_through_seq": 2, "anchor_hash": "f" * 64}})  # fmt: skip
    with raw(db_path) as conn:
        conn.execute("DELETE FROM audit WHERE seq <= 2")
    result = verify_store(store)
    assert (result.ok, result.first_bad_seq) == (False, 1), result
    store.close()


@pytest.mark.parametrize("group", [1, 3])
def test_a_writer_whose_cached_head_another_process_purged_reseals_onto_the_real_head(
    db_path: Path, group: int
) -> None:
    idle, other = SQLiteAuditStore(url_of(db_path)), SQLiteAuditStore(url_of(db_path))
    idle.append({**_young(1), "ts": "2010-01-01T00:00:00.000000+00:00"})  # idle caches head 1
    for n in range(2, 6):
        other.append({**_young(n), "ts": "2010-01-01T00:00:00.000000+00:00"})
    assert purge(other, datetime(2015, 1, 1, tzinfo=UTC)) == 5  # seqs 1..5 are free again; 6 is the retention
    sealed = idle.append_many([_young(n) for n in range(10, 10 + group)])
    assert [s.seq for s in sealed if isinstance(s, Sealed)] == list(range(7, 7 + group))
    with raw(db_path) as conn:
        assert [r[0] for r in conn.execute("SELECT seq FROM audit ORDER BY seq")] == list(range(6, 7 + group))
    result = verify_store(other)
    assert (result.ok, result.count) == (True, 1 + group), result
    idle.close()
    other.close()


@pytest.mark.parametrize("between", ["head", "first_seq_at_or_after"])
def test_purge_never_deletes_a_young_record_appended_while_it_reads_the_boundary_and_head(
    db_path: Path, between: str
) -> None:
    young: list[int] = []

    class Busy(SQLiteAuditStore):
        """A store another writer appends a young record to right after `between` returns."""

        def _then_append(self, result: Any) -> Any:
            young.append(writer.append(_young(100 + len(young))).seq)
            return result

        def head(self) -> Any:
            result = super().head()
            return self._then_append(result) if between == "head" else result

        def first_seq_at_or_after(self, ts: str) -> int | None:
            result = super().first_seq_at_or_after(ts)
            return self._then_append(result) if between == "first_seq_at_or_after" else result

    operator = Busy(url_of(db_path))
    writer = SQLiteAuditStore(url_of(db_path))
    for n in range(1, 4):
        operator.append({**_young(n), "ts": "2010-01-01T00:00:00.000000+00:00"})
    assert purge(operator, datetime(2015, 1, 1, tzinfo=UTC)) == 3
    with raw(db_path) as conn:
        left = [r[0] for r in conn.execute("SELECT seq FROM audit ORDER BY seq")]
    # Verifying first (purge refuses a trail that fails) reads the head once more: a young record each time.
    assert young[0] == 4 and all(seq in left for seq in young), (young, left)
    assert verify_store(writer).ok
    operator.close()
    writer.close()


def test_a_head_kept_before_a_purge_deleted_its_record_names_both_causes_and_the_purges(db_path: Path) -> None:
    store = SQLiteAuditStore(url_of(db_path))
    for n in range(1, 3):
        store.append({**_young(n), "ts": "2010-01-01T00:00:00.000000+00:00"})
    kept = store.head().hash
    store.append({**_young(3), "ts": "2010-01-01T00:00:00.000000+00:00"})
    store.append(_young(4))
    assert purge(store, datetime(2015, 1, 1, tzinfo=UTC), actor="ops@example") == 3
    result = verify_store(store, expected_head=kept)
    assert not result.ok
    today = datetime.now(UTC).date().isoformat()
    assert "records were cut off the end, or the head's record was deleted by a purge" in result.problem
    assert f"the purge through seq 3 on {today} by ops@example (retention record seq 5)" in result.problem
    # Without a purge, only the first cause is possible.
    truncated = SQLiteAuditStore(url_of(db_path.with_name("other.db")))
    truncated.append(_young(1))
    result = verify_store(truncated, expected_head="a" * 64)
    assert result.problem.endswith("not found: records were cut off the end"), result
    store.close()
    truncated.close()


def test_the_wal_is_checkpointed_in_the_background_not_inside_appends(tmp_path: Path) -> None:
    """Appends never run SQLite's automatic checkpoint; a background thread copies the log into the database."""
    db = tmp_path / "a.db"
    store = open_audit(f"sqlite:///{db}")
    assert store._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0  # type: ignore[attr-defined]
    empty = db.stat().st_size
    for i in range(300):
        store.append({"record_id": f"r{i}", "ts": "2026-01-01T00:00:00+00:00", "kind": "decision", "agent_id": "a",
                      "detail": {"padding": "x" * 500}})  # fmt: skip
    for _ in range(300):  # the database file grows only when a checkpoint copies the log into it
        if db.stat().st_size > empty:
            break
        threading.Event().wait(0.1)
    assert db.stat().st_size > empty
    assert verify_store(store).ok
    checkpointer = store._checkpointer._thread  # type: ignore[attr-defined]
    assert checkpointer.is_alive()
    store.close()
    assert not checkpointer.is_alive()


def test_a_steady_stream_of_appends_keeps_the_wal_bounded_and_closing_empties_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Passive checkpoints alone never let a busy log start over; past the limit a RESTART one makes it."""
    monkeypatch.setattr("risk.audit.sqlite.CHECKPOINT_SECONDS", 0.02)
    monkeypatch.setattr("risk.audit.sqlite.WAL_LIMIT_BYTES", 256 * 1024)
    db = tmp_path / "a.db"
    wal = tmp_path / "a.db-wal"
    store = open_audit(f"sqlite:///{db}")
    record = {"ts": "2026-01-01T00:00:00+00:00", "kind": "decision", "agent_id": "a", "detail": {"pad": "x" * 2000}}
    largest = 0
    for i in range(3000):  # about 60 MB of log if it never starts over (6 to 10 MB measured with restarts)
        store.append({**record, "record_id": f"r{i}"})
        if i % 50 == 0:
            largest = max(largest, wal.stat().st_size)
            threading.Event().wait(0.002)  # a stream, not one burst: checkpoint rounds fall between appends
    assert 0 < largest < 16 * 1024 * 1024
    assert verify_store(store).count == 3000 and verify_store(store).ok
    store.close()
    assert not wal.exists() or wal.stat().st_size == 0
    reopened = open_audit(f"sqlite:///{db}")
    assert verify_store(reopened).count == 3000
    reopened.close()


def test_a_new_file_another_process_is_writing_opens_once_it_is_free(db_path: Path) -> None:
    """Switching a file to WAL under another writer fails at once in SQLite: the store waits within `timeout`."""
    other = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE unrelated (a)")  # a new file, not yet in WAL mode
    other.execute("BEGIN IMMEDIATE")  # its write lock, as a second process opening the same new file holds it
    release = threading.Timer(0.3, other.execute, ("COMMIT",))
    release.start()
    store = open_audit(url_of(db_path, timeout=10))
    release.join()
    assert store.append({"record_id": "r1", "ts": "2026-01-01T00:00:00+00:00", "kind": "decision"}).seq == 1
    store.close()

    other.close()

    fresh = db_path.with_name("fresh.db")
    holder = sqlite3.connect(fresh, isolation_level=None)
    holder.execute("CREATE TABLE unrelated (a)")
    holder.execute("BEGIN IMMEDIATE")  # held past the timeout: the open fails, and says why
    with pytest.raises(AuditError, match="database is locked"):
        open_audit(url_of(fresh, timeout=0.2))
    holder.execute("ROLLBACK")
    holder.close()


def test_an_action_is_found_by_its_id_through_an_index_in_trails_old_and_new(tmp_path: Path) -> None:
    """How an outcome finds its agent when the worker that decided the action is another: by the action id, in an
    index, not by reading the trail (a file made before the index gets it when opened)."""
    path = tmp_path / "a.db"
    record = {"record_id": "r1", "ts": "2026-01-01T00:00:00+00:00", "kind": "decision", "agent_id": "t/a",
              "action_id": "a1"}  # fmt: skip
    first = SQLiteAuditStore(f"sqlite:///{path}")
    first.append(record)
    first.close()
    with contextlib.closing(sqlite3.connect(path)) as raw:
        raw.execute("DROP INDEX audit_action")  # as an earlier release made the file
        raw.commit()
    store = SQLiteAuditStore(f"sqlite:///{path}")
    query = AuditQuery(action_id="a1", kind="decision", agent_prefix="t/", newest_first=True, limit=1)
    assert [r.agent_id for r in store.query(query)] == ["t/a"]
    where, params = where_clause(query, "?")
    with contextlib.closing(sqlite3.connect(path)) as raw:
        steps = raw.execute(f"EXPLAIN QUERY PLAN SELECT seq FROM audit {where}", params).fetchall()
    plan = " ".join(str(step[-1]) for step in steps)
    assert "USING INDEX audit_action" in plan, plan
    store.close()


def test_a_row_sharing_its_seq_at_a_page_boundary_fails_verification(db_path: Path) -> None:
    """Verification pages through the trail by seq; with the table's key on seq gone, a second row at the last
    seq of a page was never read, though queries show it."""
    store = SQLiteAuditStore(url_of(db_path))
    store.append_many([_young(n) for n in range(1, 1101)])
    assert verify_store(store).ok
    with raw(db_path) as conn:
        conn.executescript(
            "CREATE TABLE audit_copy AS SELECT * FROM audit; DROP TABLE audit; ALTER TABLE audit_copy RENAME TO audit;"
        )
        _insert_row(conn, 1000, {**_young(1000), "resource": "data.phi.patients", "outcome": "allowed"}, "e" * 64)
    result = verify_store(store)
    assert not result.ok and "share a seq" in result.problem, result


@pytest.mark.parametrize(
    "tamper",
    [
        "UPDATE audit SET body = CAST(body AS BLOB) WHERE seq = 3",
        "UPDATE audit SET body = '" + "[" * 100_000 + "]" * 100_000 + "' WHERE seq = 3",
        "UPDATE audit SET hash = CAST(hash AS BLOB) WHERE seq = 3",
    ],
    ids=["blob", "deeply-nested", "blob-hash"],
)
def test_verification_names_a_malformed_row_instead_of_crashing(db_path: Path, tamper: str) -> None:
    store = SQLiteAuditStore(url_of(db_path))
    for n in range(1, 6):
        store.append(_young(n))
    with raw(db_path) as conn:
        conn.execute(tamper)
    result = verify_store(store)
    assert (result.ok, result.first_bad_seq) == (False, 3) and "edited" in result.problem, result


def test_an_edited_purge_record_is_named_at_its_seq_and_a_failing_trail_is_never_purged(db_path: Path) -> None:
    store = SQLiteAuditStore(url_of(db_path))
    for n in range(1, 5):
        store.append({**_young(n), "ts": "2010-01-01T00:00:00.000000+00:00"})
    store.append(_young(5))
    with raw(db_path) as conn:
        conn.execute("UPDATE audit SET body = replace(body, '/srv/2.csv', '/srv/x.csv') WHERE seq = 2")
    with pytest.raises(RetentionError, match="does not verify"):  # the purge would delete the evidence
        purge(store, datetime(2015, 1, 1, tzinfo=UTC))
    with raw(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM audit").fetchone() == (5,)
        conn.execute("UPDATE audit SET body = replace(body, '/srv/x.csv', '/srv/2.csv') WHERE seq = 2")
    assert purge(store, datetime(2015, 1, 1, tzinfo=UTC)) == 4
    with raw(db_path) as conn:  # the purge record (seq 6) edited: its own seq is named, not seq 1
        conn.execute("UPDATE audit SET body = replace(body, '\"purged_through_seq\":4', '\"purged_through_seq\":3') "
                     "WHERE seq = 6")  # fmt: skip
    result = verify_store(store)
    assert (result.ok, result.first_bad_seq) == (False, 6) and "edited" in result.problem, result
