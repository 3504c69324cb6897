"""The `risk` command: check, audit verify / head / query / export / purge, and rollback.

Most tests drive the Typer app in process with CliRunner; a few run the real entry point in a subprocess.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from audit_file import edit, raw_rows, recompute_hash, spec_canonical
from typer.testing import CliRunner, Result

from risk import ActionType, Guard
from risk.audit.record import FIELDS, GENESIS_HASH
from risk.audit.store import AuditQuery, open_audit
from risk.cli import app

POLICY_YAML = """\
agent_id: claims-bot
blocked_resources:
  - "data.phi.*"
mode: block
"""

TRACE_KEYS = ["ts", "agent_id", "session_id", "action_type", "resource", "action_id", "risk_score", "outcome"]


def one_line(text: str) -> str:
    """Rich wraps long lines; compare messages with their whitespace collapsed."""
    return " ".join(text.split())


def sql(*statements: str) -> Callable[[sqlite3.Connection], None]:
    def run(conn: sqlite3.Connection) -> None:
        for statement in statements:
            conn.execute(statement)

    return run


def tamper(path: Path, change: Callable[[sqlite3.Connection], None]) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        change(conn)
    finally:
        conn.close()


class Clock:
    def __init__(self, when: datetime) -> None:
        self.when = when

    def __call__(self) -> float:
        return self.when.timestamp()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "audit.db"


@pytest.fixture
def url(db_path: Path) -> str:
    return f"sqlite:///{db_path}"


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY_YAML)
    return path


@pytest.fixture
def run(tmp_path: Path) -> Callable[..., Result]:
    runner = CliRunner()
    env = {"COLUMNS": "250", "RISK_HOME": str(tmp_path / "home"), "RISK_AUDIT_URL": None}

    def invoke(*args: str) -> Result:
        return runner.invoke(app, list(args), env=env)

    return invoke


@pytest.fixture
def make_guard(guards: Callable[..., Guard], tmp_path: Path, url: str) -> Callable[..., Guard]:
    def make(**kwargs: Any) -> Guard:
        defaults = {"agent_id": "alice", "blocked_resources": ["data.phi.*"], "audit": url}
        return guards(**{**defaults, "home": tmp_path / "home", **kwargs})

    return make


@pytest.fixture
def six_records(make_guard: Callable[..., Guard]) -> None:
    """Policy (seq 1) and five decisions; seq 3 is blocked."""
    guard = make_guard()
    guard.check(ActionType.DATABASE_QUERY, "data.deidentified.claims")
    guard.check(ActionType.DATABASE_QUERY, "data.phi.patients")
    for table in ("visits", "providers", "payers"):
        guard.check(ActionType.DATABASE_QUERY, f"data.deidentified.{table}")


@pytest.fixture
def timeline(make_guard: Callable[..., Guard]) -> None:
    """Eight records over three months, two agents:

    seq 1 policy   alice  2024-01-10     seq 5 decision bob    2024-02-10 allowed
    seq 2 decision alice  2024-01-10 ok  seq 6 decision alice  2024-03-10 allowed
    seq 3 decision bob    2024-01-10 blk seq 7 decision bob    2024-03-10 allowed
    seq 4 decision alice  2024-02-10 blk seq 8 outcome  alice  2024-03-10 success
    """
    clock = Clock(datetime(2024, 1, 10, 12, tzinfo=UTC))
    guard = make_guard(clock=clock)
    guard.check(ActionType.DATABASE_QUERY, "data.claims")
    guard.check(ActionType.DATABASE_QUERY, "data.phi.a", agent_id="bob")
    clock.when = datetime(2024, 2, 10, 12, tzinfo=UTC)
    guard.check(ActionType.DATABASE_QUERY, "data.phi.b")
    guard.check(ActionType.DATABASE_QUERY, "data.claims", agent_id="bob")
    clock.when = datetime(2024, 3, 10, 12, tzinfo=UTC)
    last = guard.check(ActionType.DATABASE_QUERY, "data.claims")
    guard.check(ActionType.DATABASE_QUERY, "data.claims", agent_id="bob")
    guard.record_outcome(last.action_id, rows=1)


# ---- risk check -------------------------------------------------------------------------------------------


def test_check_prints_the_decision_as_json_and_exits_0_when_allowed(
    run: Callable[..., Result], policy_file: Path, url: str, db_path: Path
) -> None:
    result = run("check", "database_query", "data.deidentified.claims", "--policy", str(policy_file), "--audit", url)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert set(out) == {"allowed", "outcome", "risk_score", "action_id", "normalized_resource", "reasons"}
    assert (out["allowed"], out["outcome"], out["normalized_resource"]) == (True, "allowed", "data.deidentified.claims")
    recorded = raw_rows(db_path)
    assert [r["kind"] for r in recorded] == ["policy", "decision"]
    assert recorded[-1]["action_id"] == out["action_id"]
    assert recorded[-1]["agent_id"] == "claims-bot"


def test_check_exits_1_when_denied_and_still_records_the_decision(
    run: Callable[..., Result], policy_file: Path, url: str, db_path: Path
) -> None:
    result = run("check", "database_query", "DATA.PHI.patients", "--policy", str(policy_file), "--audit", url)
    assert result.exit_code == 1, result.output
    out = json.loads(result.stdout)
    assert (out["allowed"], out["outcome"]) == (False, "blocked")
    assert "resource_blocked" in [r["code"] for r in out["reasons"]]
    recorded = raw_rows(db_path)[-1]
    assert (recorded["action_id"], recorded["outcome"]) == (out["action_id"], "blocked")


def test_check_records_the_payload_digest_and_the_agent_override(
    run: Callable[..., Result], policy_file: Path, url: str, db_path: Path
) -> None:
    payload = {"sql": "select * from claims where id = 7"}
    result = run(
        "check",
        "database_query",
        "data.deidentified.claims",
        "--policy",
        str(policy_file),
        "--payload",
        json.dumps(payload),
        "--agent",
        "other-bot",
        "--audit",
        url,
    )
    assert result.exit_code == 0, result.output
    recorded = raw_rows(db_path)[-1]
    assert recorded["payload_digest"] == hashlib.sha256(spec_canonical(payload)).hexdigest()
    assert recorded["agent_id"] == "other-bot"


def test_check_reads_a_toml_policy_and_its_audit_field(run: Callable[..., Result], tmp_path: Path) -> None:
    db = tmp_path / "from_policy.db"
    policy = tmp_path / "policy.toml"
    policy.write_text(f'agent_id = "toml-bot"\nblocked_resources = ["data.phi.*"]\naudit = "sqlite:///{db}"\n')
    result = run("check", "file_read", "data.phi.x", "--policy", str(policy))
    assert result.exit_code == 1, result.output
    assert [(r["kind"], r["agent_id"]) for r in raw_rows(db)] == [("policy", "toml-bot"), ("decision", "toml-bot")]


@pytest.mark.parametrize(
    ("policy_text", "expected"),
    [
        ("blocked_resources: ['data.phi.*']\nmax_risk: 0.5\n", "max_risk"),
        ("mode: explode\n", "explode"),
        ("blocked_resources: [data.phi.*\n", "not valid YAML"),
        ("- just\n- a list\n", "mapping"),
        ("max_risk_score: 7\n", "max_risk_score"),
        ("keep_payloads: 'false'\n", "keep_payloads must be true or false"),
    ],
    ids=["unknown-field", "bad-mode", "invalid-yaml", "not-a-mapping", "out-of-range", "not-a-boolean"],
)
def test_check_exits_2_with_a_readable_error_for_a_bad_policy_file(
    run: Callable[..., Result], tmp_path: Path, url: str, policy_text: str, expected: str
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text)
    result = run("check", "file_read", "/srv/a.csv", "--policy", str(policy), "--audit", url)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert result.stdout == ""
    message = one_line(result.stderr)
    assert message.startswith("error:")
    assert expected in message
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["file_read", "/srv/a.csv", "--payload", '{"sql": '], "--payload is not valid JSON"),
        (["file_read", "/srv/a.csv", "--payload", "{'single': 'quotes'}"], "--payload is not valid JSON"),
        (["teleport", "/srv/a.csv"], "unknown action type"),
    ],
    ids=["truncated-json", "python-literal", "unknown-action-type"],
)
def test_check_exits_2_with_a_readable_error_for_bad_arguments(
    run: Callable[..., Result], policy_file: Path, url: str, args: list[str], expected: str
) -> None:
    result = run("check", *args, "--policy", str(policy_file), "--audit", url)
    assert result.exit_code == 2, result.output
    assert expected in one_line(result.stderr)
    assert "Traceback" not in result.output


def test_check_exits_2_when_the_policy_file_does_not_exist(
    run: Callable[..., Result], tmp_path: Path, url: str
) -> None:
    result = run("check", "file_read", "/srv/a.csv", "--policy", str(tmp_path / "missing.yaml"), "--audit", url)
    assert result.exit_code == 2
    assert "cannot read policy file" in one_line(result.stderr)


# ---- risk audit verify / head -----------------------------------------------------------------------------


def test_audit_verify_passes_on_an_untampered_trail(run: Callable[..., Result], url: str, six_records: None) -> None:
    result = run("audit", "verify", "--audit", url)
    assert result.exit_code == 0, result.output
    assert "ok: 6 records verify" in one_line(result.stdout)


def edit_and_rehash(conn: sqlite3.Connection) -> None:
    edit(conn, 3, outcome="allowed", decision="allow")
    recompute_hash(conn, 3)


@pytest.mark.parametrize(
    ("change", "bad_seq"),
    [
        (sql("UPDATE audit SET outcome = 'allowed' WHERE seq = 3"), 3),
        (lambda conn: edit(conn, 3, outcome="allowed", decision="allow"), 3),
        (lambda conn: edit(conn, 3, risk_score=0.0), 3),
        (lambda conn: edit(conn, 3, reasons=[]), 3),
        (edit_and_rehash, 4),
        (sql("DELETE FROM audit WHERE seq = 3"), 4),
        (
            sql(
                "UPDATE audit SET seq = -1 WHERE seq = 3",
                "UPDATE audit SET seq = 3 WHERE seq = 4",
                "UPDATE audit SET seq = 4 WHERE seq = -1",
            ),
            3,
        ),
        (sql("DELETE FROM audit WHERE seq = 1"), 1),
    ],
    ids=[
        "edit-outcome-column",
        "edit-outcome",
        "edit-risk-score",
        "edit-reasons",
        "edit-and-recompute-own-hash",
        "delete-middle",
        "reorder",
        "delete-first",
    ],
)
def test_audit_verify_exits_1_naming_the_first_bad_record(
    run: Callable[..., Result],
    url: str,
    db_path: Path,
    six_records: None,
    change: Callable[[sqlite3.Connection], None],
    bad_seq: int,
) -> None:
    tamper(db_path, change)
    result = run("audit", "verify", "--audit", url)
    assert result.exit_code == 1, result.output
    message = one_line(result.stderr)
    assert f"FAILED at record seq {bad_seq}:" in message


def test_audit_verify_passes_a_truncated_tail_without_head_but_fails_with_the_head_kept_before(
    run: Callable[..., Result], url: str, db_path: Path, six_records: None
) -> None:
    kept = json.loads(run("audit", "head", "--audit", url).stdout)["head"]
    tamper(db_path, sql("DELETE FROM audit WHERE seq > 4"))
    # Without a head kept elsewhere, a cleanly truncated chain is indistinguishable from a shorter one.
    assert run("audit", "verify", "--audit", url).exit_code == 0
    result = run("audit", "verify", "--head", kept, "--audit", url)
    assert result.exit_code == 1
    message = one_line(result.stderr)
    assert "FAILED at record seq 5:" in message
    assert kept in message.replace(" ", "")


def test_audit_verify_with_the_current_head_passes(run: Callable[..., Result], url: str, six_records: None) -> None:
    kept = json.loads(run("audit", "head", "--audit", url).stdout)["head"]
    assert run("audit", "verify", "--head", kept, "--audit", url).exit_code == 0


@pytest.mark.parametrize("head", ["foo", "A" * 64, " " + "a" * 63])
def test_audit_verify_refuses_a_head_that_is_not_a_hash(
    run: Callable[..., Result], url: str, six_records: None, head: str
) -> None:
    """Not reported as records cut off the end, which would send an auditor looking for a truncation."""
    result = run("audit", "verify", "--head", head, "--audit", url)
    assert result.exit_code == 2 and "64 lower-case hex digits" in one_line(result.stderr), result.output


def test_audit_head_prints_count_seq_and_head_as_json(
    run: Callable[..., Result], url: str, db_path: Path, six_records: None
) -> None:
    result = run("audit", "head", "--audit", url)
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"count": 6, "seq": 6, "head": raw_rows(db_path)[-1]["hash"]}


def test_audit_head_of_an_empty_trail_is_the_genesis(run: Callable[..., Result], url: str) -> None:
    open_audit(url).close()
    assert json.loads(run("audit", "head", "--audit", url).stdout) == {"count": 0, "seq": 0, "head": GENESIS_HASH}


# ---- risk audit query -------------------------------------------------------------------------------------


def query_seqs(run: Callable[..., Result], url: str, *args: str) -> list[int]:
    result = run("audit", "query", "--json", "--audit", url, *args)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert all(list(r) == list(FIELDS) for r in records)
    return [r["seq"] for r in records]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], [1, 2, 3, 4, 5, 6, 7, 8]),
        (["--agent", "alice"], [1, 2, 4, 6, 8]),
        (["--agent", "bob"], [3, 5, 7]),
        (["--since", "2024-02-01", "--until", "2024-03-01"], [4, 5]),
        (["--since", "2024-02-10T13:00:00+01:00"], [4, 5, 6, 7, 8]),
        (["--until", "2024-02-10T13:00:00+01:00"], [1, 2, 3]),
        (["--outcome", "blocked"], [3, 4]),
        (["--kind", "policy"], [1]),
        (["--kind", "outcome"], [8]),
        (["--kind", "decision", "--agent", "alice", "--outcome", "allowed"], [2, 6]),
        (["--limit", "2"], [1, 2]),
        (["--limit", "2", "--offset", "2"], [3, 4]),
        (["--agent", "nobody"], []),
    ],
    ids=[
        "all",
        "agent-alice",
        "agent-bob",
        "since-until",
        "since-is-inclusive-and-offset-aware",
        "until-is-exclusive",
        "outcome",
        "kind-policy",
        "kind-outcome",
        "combined",
        "limit",
        "offset",
        "no-match",
    ],
)
def test_audit_query_filters(
    run: Callable[..., Result], url: str, timeline: None, args: list[str], expected: list[int]
) -> None:
    assert query_seqs(run, url, *args) == expected


def test_audit_query_json_lines_carry_every_field(
    run: Callable[..., Result], url: str, db_path: Path, timeline: None
) -> None:
    result = run("audit", "query", "--json", "--kind", "outcome", "--audit", url)
    (record,) = [json.loads(line) for line in result.stdout.splitlines()]
    stored = raw_rows(db_path)[7]
    assert record["hash"] == stored["hash"]
    assert record["detail"] == stored["detail"]
    assert (record["ts"], record["agent_id"], record["outcome"]) == (
        "2024-03-10T12:00:00.000000+00:00",
        "alice",
        "success",
    )


@pytest.mark.parametrize("bad", [["--since", "last tuesday"], ["--until", "2024-13-01"], ["--limit", "0"]])
def test_audit_query_rejects_bad_filters_with_exit_2(
    run: Callable[..., Result], url: str, timeline: None, bad: list[str]
) -> None:
    result = run("audit", "query", "--audit", url, *bad)
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_audit_query_prints_a_table_by_default(run: Callable[..., Result], url: str, timeline: None) -> None:
    result = run("audit", "query", "--agent", "bob", "--audit", url)
    assert result.exit_code == 0, result.output
    assert "data.phi.a" in result.stdout and "blocked" in result.stdout
    assert "data.phi.b" not in result.stdout


@pytest.mark.parametrize("resource", ["reports/[/]draft.csv", "reports/[bold]q3[/bold].csv"])
def test_audit_query_table_shows_resources_verbatim_even_when_they_look_like_markup(
    run: Callable[..., Result], url: str, make_guard: Callable[..., Guard], resource: str
) -> None:
    make_guard().check(ActionType.FILE_READ, resource)
    result = run("audit", "query", "--audit", url)
    assert result.exit_code == 0, result.exception
    assert resource in result.stdout


# ---- risk audit export ------------------------------------------------------------------------------------


def test_audit_export_jsonl_writes_decisions_in_the_trace_format(
    run: Callable[..., Result], url: str, db_path: Path, make_guard: Callable[..., Guard]
) -> None:
    guard = make_guard(keep_payloads=True)
    with_payload = guard.check(
        ActionType.DATABASE_QUERY, "data.claims", {"sql": "select 1", "ssn": "123-45-6789"}, session_id="s-1"
    )
    without_payload = guard.check(ActionType.DATABASE_QUERY, "data.phi.patients")
    guard.record_outcome(with_payload.action_id)

    result = run("audit", "export", "--format", "jsonl", "--audit", url)

    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["action_id"] for line in lines] == [with_payload.action_id, without_payload.action_id]
    first, second = lines
    assert list(first) == [*TRACE_KEYS[:5], "payload", *TRACE_KEYS[5:]]
    assert list(second) == TRACE_KEYS
    stored = {r["action_id"]: r for r in raw_rows(db_path) if r["kind"] == "decision"}
    for line in lines:
        row = stored[line["action_id"]]
        assert line["ts"] == row["ts"]
        assert (line["agent_id"], line["action_type"], line["resource"]) == (
            row["agent_id"],
            row["action_type"],
            row["resource"],
        )
        assert (line["risk_score"], line["outcome"]) == (row["risk_score"], row["outcome"])
    assert first["session_id"] == "s-1"
    assert first["payload"] == {"sql": "select 1", "ssn": "[SSN]"}
    assert (first["outcome"], second["outcome"]) == ("allowed", "blocked")


def test_audit_export_jsonl_to_a_file(run: Callable[..., Result], url: str, tmp_path: Path, six_records: None) -> None:
    out = tmp_path / "trace.jsonl"
    result = run("audit", "export", "--output", str(out), "--audit", url)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 5
    assert all(list(line) == TRACE_KEYS for line in lines)


def test_audit_export_csv_writes_every_field_of_every_record_with_a_header(
    run: Callable[..., Result], url: str, db_path: Path, six_records: None, tmp_path: Path
) -> None:
    result = run("audit", "export", "--format", "csv", "--audit", url)
    assert result.exit_code == 0, result.output
    table = list(csv.reader(io.StringIO(result.stdout)))
    assert table[0] == list(FIELDS)
    stored = raw_rows(db_path)
    assert len(table) == 1 + len(stored) == 7
    records = [dict(zip(table[0], line, strict=True)) for line in table[1:]]
    for record, row in zip(records, stored, strict=True):
        assert int(record["seq"]) == row["seq"]
        assert (record["hash"], record["prev_hash"], record["kind"]) == (row["hash"], row["prev_hash"], row["kind"])
        assert json.loads(record["reasons"]) == row["reasons"]
        assert json.loads(record["detail"]) == row["detail"]
    assert float(records[2]["risk_score"]) == stored[2]["risk_score"]
    assert records[2]["outcome"] == "blocked"

    out = tmp_path / "audit.csv"
    assert run("audit", "export", "--format", "csv", "--output", str(out), "--audit", url).exit_code == 0
    assert list(csv.reader(out.open(newline=""))) == table


def test_audit_export_rejects_an_unknown_format(run: Callable[..., Result], url: str) -> None:
    result = run("audit", "export", "--format", "xml", "--audit", url)
    assert result.exit_code == 2
    assert "jsonl or csv" in one_line(result.stderr)


# ---- risk audit purge -------------------------------------------------------------------------------------


@pytest.fixture
def old_and_new(make_guard: Callable[..., Guard]) -> None:
    """Policy and two decisions in 2019 (seq 1-3), two decisions a month ago (seq 4-5)."""
    clock = Clock(datetime(2019, 3, 1, tzinfo=UTC))
    guard = make_guard(clock=clock)
    guard.check(ActionType.FILE_READ, "/srv/2019/a.csv")
    guard.check(ActionType.FILE_READ, "/srv/2019/b.csv")
    clock.when = datetime.now(UTC) - timedelta(days=30)
    guard.check(ActionType.FILE_READ, "/srv/recent/a.csv")
    guard.check(ActionType.FILE_READ, "/srv/recent/b.csv")


def test_audit_purge_deletes_records_older_than_the_retention_and_the_trail_still_verifies(
    run: Callable[..., Result], url: str, db_path: Path, old_and_new: None
) -> None:
    kept = json.loads(run("audit", "head", "--audit", url).stdout)["head"]
    result = run("audit", "purge", "--before", "2020-01-01", "--audit", url)
    assert result.exit_code == 0, result.output
    assert "purged 3 records" in one_line(result.stdout)
    stored = raw_rows(db_path)
    assert [(r["seq"], r["kind"]) for r in stored] == [(4, "decision"), (5, "decision"), (6, "retention")]
    assert run("audit", "verify", "--audit", url).exit_code == 0
    assert run("audit", "verify", "--head", kept, "--audit", url).exit_code == 0
    assert json.loads(run("audit", "head", "--audit", url).stdout) == {
        "count": 3,
        "seq": 6,
        "head": stored[-1]["hash"],
    }


def test_audit_purge_refuses_a_date_inside_the_default_retention(
    run: Callable[..., Result], url: str, db_path: Path, old_and_new: None
) -> None:
    before = (datetime.now(UTC) - timedelta(days=365)).date().isoformat()
    result = run("audit", "purge", "--before", before, "--audit", url)
    assert result.exit_code == 1
    assert "retention" in one_line(result.stderr)
    assert len(raw_rows(db_path)) == 5


def test_audit_purge_with_a_short_retention_deletes_recent_records(
    run: Callable[..., Result], url: str, db_path: Path, old_and_new: None
) -> None:
    before = (datetime.now(UTC) - timedelta(days=7)).date().isoformat()
    assert run("audit", "purge", "--before", before, "--retention-days", "30", "--audit", url).exit_code == 1
    result = run("audit", "purge", "--before", before, "--retention-days", "0", "--audit", url)
    assert result.exit_code == 0, result.output
    assert [r["kind"] for r in raw_rows(db_path)] == ["retention"]
    assert run("audit", "verify", "--audit", url).exit_code == 0


def test_audit_purge_rejects_a_date_that_is_not_iso_with_exit_2(
    run: Callable[..., Result], url: str, db_path: Path, old_and_new: None
) -> None:
    result = run("audit", "purge", "--before", "01/01/2020", "--audit", url)
    assert result.exit_code == 2
    assert len(raw_rows(db_path)) == 5


# ---- the real entry point ---------------------------------------------------------------------------------


def run_process(tmp_path: Path, *args: str, executable: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RISK_HOME": str(tmp_path / "home"), "COLUMNS": "250"}
    env.pop("RISK_AUDIT_URL", None)
    command = executable or [sys.executable, "-m", "risk.cli"]
    return subprocess.run([*command, *args], capture_output=True, text=True, env=env, timeout=60, check=False)


def test_python_m_risk_cli_checks_and_verifies_for_real(
    tmp_path: Path, policy_file: Path, url: str, db_path: Path
) -> None:
    allowed = run_process(
        tmp_path, "check", "database_query", "data.claims", "--policy", str(policy_file), "--audit", url
    )
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout)["allowed"] is True
    denied = run_process(
        tmp_path, "check", "database_query", "data.phi.x", "--policy", str(policy_file), "--audit", url
    )
    assert denied.returncode == 1, denied.stderr
    assert json.loads(denied.stdout)["outcome"] == "blocked"
    bad = run_process(
        tmp_path, "check", "file_read", "/a", "--policy", str(policy_file), "--payload", "{", "--audit", url
    )
    assert bad.returncode == 2
    assert "--payload is not valid JSON" in one_line(bad.stderr)

    tamper(db_path, lambda conn: edit(conn, 3, outcome="allowed", decision="allow"))
    verified = run_process(tmp_path, "audit", "verify", "--audit", url)
    assert verified.returncode == 1
    assert "FAILED at record seq 3:" in one_line(verified.stderr)


def test_installed_risk_console_script_runs(tmp_path: Path, url: str, six_records: None) -> None:
    script = Path(sys.executable).parent / "risk"
    assert script.exists(), f"console script not installed next to {sys.executable}"
    result = run_process(tmp_path, "audit", "head", "--audit", url, executable=[str(script)])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["count"] == 6


# ---- risk rollback ------------------------------------------------------------------------------------------

ENDED_WRITER = """
import os, sys
from risk import ActionType, Guard
audit, home, path, then = sys.argv[1:]
guard = Guard(audit=audit, home=home, agent_id="claims-bot", model=None, online=False)
@guard.tool(ActionType.FILE_WRITE)
def write(path: str, text: str) -> None:
    open(path, "w").write(text)
    if then == "crash":
        os._exit(3)  # the process dies in the middle of the action
write(path, "written by the agent")
"""


def test_rollback_undoes_what_an_agent_whose_process_ended_did_and_exits_1_for_a_step_not_undone(
    tmp_path: Path,
) -> None:
    """After the agent's process crashed there was no way to undo its work from the command line (a guard's
    undo steps lived in its process). Each `risk rollback` runs as a process of its own, as an operator's."""
    url = f"sqlite:///{tmp_path}/audit.db"
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY_YAML + f"audit: {url}\n")
    script = tmp_path / "writer.py"
    script.write_text(ENDED_WRITER)
    crashed, edited, made = tmp_path / "crashed.txt", tmp_path / "edited.txt", tmp_path / "made.txt"
    for target, then, status in ((edited, "exit", 0), (crashed, "crash", 3), (made, "crash", 3)):
        if target is not made:  # which the agent makes
            target.write_text("before")
        ended = subprocess.run([sys.executable, str(script), url, str(tmp_path / "home"), str(target), then],
                               capture_output=True, text=True, timeout=120)  # fmt: skip
        assert ended.returncode == status, ended.stderr
    edited.write_text("a person's edit, after the agent's")

    def rollback(*more: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "risk.cli", "rollback", "claims-bot", "--policy", str(policy),
                               "--home", str(tmp_path / "home"), *more],
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    first = rollback()
    assert first.returncode == 1, first.stderr
    report = json.loads(first.stdout)
    assert not report["complete"]
    assert [s["status"] for s in report["steps"]] == ["undone", "undone", "failed"]  # newest first
    assert "changed after the action" in report["steps"][2]["error"]
    assert crashed.read_text() == "before" and edited.read_text() == "a person's edit, after the agent's"
    assert not made.exists()
    store = open_audit(url, create=False)
    rollbacks = store.query(AuditQuery(kind="rollback", limit=100))
    store.close()
    assert sorted((r.outcome, r.actor) for r in rollbacks) == [("failed", "operator")] + [("undone", "operator")] * 2

    again = rollback("--actor", "alice")  # the failed step is tried again by the next one; the undone one is not
    assert again.returncode == 1, again.stderr
    assert [(s["status"], s["action_id"]) for s in json.loads(again.stdout)["steps"]] == [
        ("failed", report["steps"][2]["action_id"])
    ]
