"""The Guard through its public API: the mode table, limits, approvals, guarded tools and rollback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from together import run_together

import risk.rollback
from risk import (
    ActionDenied,
    ActionType,
    AgentPaused,
    AgentStatus,
    AgentTerminated,
    AuditError,
    Guard,
    KillSwitchMode,
    Outcome,
    PolicyError,
    StateError,
    StepStatus,
)
from risk.audit.store import AuditQuery, open_audit, verify_store
from risk.killswitch import KillSwitch
from risk.resources import readings
from risk.scoring.model import ModelError
from risk.state import AgentState, MemoryState


class Clock:
    """A clock the test moves by hand, so windows are tested without sleeping."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def make_guard(tmp_path: Path, **kwargs: object) -> Guard:
    kwargs.setdefault("audit", f"sqlite:///{tmp_path}/audit.db")
    kwargs.setdefault("home", tmp_path / "home")
    return Guard(**kwargs)  # type: ignore[arg-type]


def records(guard: Guard, **filters: object) -> list:
    return guard.audit.query(AuditQuery(limit=10_000, **filters))  # type: ignore[arg-type]


# ---- the seed configurations from the product brief run unchanged ------------------------------------


def test_brief_configurations_run_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    hipaa = Guard(
        api_key="vtk_...",
        allowed_resources=["data.deidentified.*"],
        blocked_resources=["data.phi.*", "patients.identified.*"],
        mode=KillSwitchMode.PAUSE,
    )
    assert hipaa.check(ActionType.DATABASE_QUERY, "data.deidentified.claims").allowed
    assert not hipaa.check(ActionType.DATABASE_QUERY, "patients.identified.mrn").allowed
    assert hipaa.status().status is AgentStatus.PAUSED

    compliant = Guard(
        api_key="vtk_...",
        allowed_action_types=[ActionType.DATABASE_QUERY, ActionType.FILE_READ],
        allowed_resources=["data.deidentified.*", "/reports/readonly/*"],
        blocked_resources=["data.phi.*", "*.pii", "prod.*"],
        max_risk_score=0.5,
        max_actions_per_minute=10,
        mode=KillSwitchMode.PAUSE,
    )
    assert compliant.check(ActionType.FILE_READ, "/reports/readonly/q3.csv").allowed
    denied = compliant.check(ActionType.FILE_WRITE, "/reports/readonly/q3.csv")
    assert not denied.allowed and "action_type_not_allowed" in denied.reason_codes
    assert (tmp_path / ".risk" / "audit.db").exists(), "the embedded default keeps its audit under ./.risk"


def test_action_type_accepts_member_or_string_and_rejects_unknown(tmp_path: Path) -> None:
    guard = make_guard(tmp_path)
    assert guard.check("file_read", "/tmp/x").action_type is ActionType.FILE_READ
    assert guard.check("FILE_READ", "/tmp/x").action_type is ActionType.FILE_READ
    with pytest.raises(ValueError, match="accepted: file_read"):
        guard.check("file_open", "/tmp/x")
    with pytest.raises(ValueError, match="non-empty"):
        guard.check(ActionType.FILE_READ, "   ")
    with pytest.raises(ValueError, match="must be a string"):
        guard.check(ActionType.FILE_READ, 42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "call",
    [
        {"agent_id": 2**64},  # broke the SQLite row
        {"agent_id": ["a"]},  # broke the state store's key
        {"agent_id": 7},
        {"agent_id": ""},
        {"session_id": 5},
        {"payload": 10**5000},  # refused, and not as "nested too deeply"
    ],
    ids=[
        "huge-agent-id",
        "list-agent-id",
        "int-agent-id",
        "empty-agent-id",
        "int-session-id",
        "huge-int",
    ],
)
def test_check_refuses_ids_and_payloads_it_cannot_keep_with_a_value_error(tmp_path: Path, call: dict[str, Any]) -> None:
    guard = make_guard(tmp_path, model=None)
    payload = call.pop("payload", None)
    with pytest.raises(ValueError, match=r"agent_id|session_id|cannot be written as JSON") as caught:
        guard.check(ActionType.CUSTOM, "svc.x", payload, **call)
    assert "nested" not in str(caught.value)
    assert guard.check(ActionType.CUSTOM, "svc.x").allowed  # and goes on deciding


def test_payloads_json_cannot_sort_or_key_are_decided_and_digested(tmp_path: Path) -> None:
    """Keys of mixed types beside a value orjson cannot write, or keys JSON has no form for, are written as
    their text: the check is decided, not a TypeError."""
    guard = make_guard(tmp_path, model=None)
    for payload in (
        {1: "a", "b": 2**64},
        {1: "a", "b": "\ud800"},
        {(1, 2): "x"},
        {Decimal(1): "x"},
        {2**70: 1, "x": 2},
    ):
        assert guard.check(ActionType.CUSTOM, "svc.x", payload).allowed, payload


def test_record_outcome_refuses_an_action_or_agent_id_that_is_not_text(tmp_path: Path) -> None:
    guard = make_guard(tmp_path, model=None)
    decision = guard.check(ActionType.CUSTOM, "svc.x")
    for call in ({"action_id": []}, {"action_id": 2**63}, {"action_id": decision.action_id, "agent_id": ["a"]}):
        with pytest.raises(ValueError, match=r"action_id|agent_id"):
            guard.record_outcome(**call)  # type: ignore[arg-type]
    guard.record_outcome(decision.action_id, success=True)


def test_an_amount_too_large_for_a_float_is_scored_not_a_model_failure(tmp_path: Path) -> None:
    guard = make_guard(tmp_path)  # the default model reads amounts
    decision = guard.check(ActionType.API_CALL, "bank.transfer", {"amount": 10**400})
    assert "model_unavailable" not in decision.reason_codes


# ---- every row of the mode table ---------------------------------------------------------------------


def violating_guard(tmp_path: Path, mode: KillSwitchMode, **kwargs: object) -> Guard:
    return make_guard(tmp_path, blocked_resources=["data.phi.*"], mode=mode, **kwargs)


def test_alert_mode_lets_the_violation_run_and_records_an_alert(tmp_path: Path) -> None:
    guard = violating_guard(tmp_path, KillSwitchMode.ALERT)
    d = guard.check(ActionType.DATABASE_QUERY, "data.phi.patients")
    assert d.allowed and d.outcome is Outcome.ALERTED and "resource_blocked" in d.reason_codes
    assert guard.check(ActionType.DATABASE_QUERY, "data.claims").outcome is Outcome.ALLOWED
    assert guard.status().status is AgentStatus.RUNNING
    assert [r.outcome for r in records(guard, kind="decision")] == ["alerted", "allowed"]


def test_block_mode_denies_the_violation_and_the_agent_keeps_running(tmp_path: Path) -> None:
    guard = violating_guard(tmp_path, KillSwitchMode.BLOCK)
    d = guard.check(ActionType.DATABASE_QUERY, "data.phi.patients")
    assert not d.allowed and d.outcome is Outcome.BLOCKED
    assert guard.check(ActionType.DATABASE_QUERY, "data.claims").allowed
    assert guard.status().status is AgentStatus.RUNNING


def test_pause_mode_denies_everything_until_a_reviewer_resumes(tmp_path: Path) -> None:
    guard = violating_guard(tmp_path, KillSwitchMode.PAUSE)
    assert guard.check(ActionType.DATABASE_QUERY, "data.phi.patients").outcome is Outcome.PAUSED
    later = guard.check(ActionType.DATABASE_QUERY, "data.claims")
    assert not later.allowed and later.outcome is Outcome.PAUSED and later.reason_codes[0] == "agent_paused"
    guard.resume(actor="alice")
    assert guard.check(ActionType.DATABASE_QUERY, "data.claims").allowed
    transitions = records(guard, kind="killswitch")
    assert [(r.detail["to"], r.actor) for r in transitions] == [("paused", "guard"), ("running", "alice")]


def test_resume_does_not_approve_the_action_that_paused_the_agent(tmp_path: Path) -> None:
    guard = violating_guard(tmp_path, KillSwitchMode.PAUSE)
    guard.check(ActionType.DATABASE_QUERY, "data.phi.patients")
    guard.resume()
    assert guard.check(ActionType.DATABASE_QUERY, "data.phi.patients").outcome is Outcome.PAUSED


def test_approve_lets_the_pausing_action_run_exactly_once(tmp_path: Path) -> None:
    guard = violating_guard(tmp_path, KillSwitchMode.PAUSE)
    paused = guard.check(ActionType.DATABASE_QUERY, "data.phi.patients", {"q": 1})
    assert guard.approve(actor="bob") == paused.action_id
    retried = guard.check(ActionType.DATABASE_QUERY, "data.phi.patients", {"q": 1})
    assert retried.allowed and retried.reason_codes[0] == "approved"
    assert guard.check(ActionType.DATABASE_QUERY, "data.phi.patients", {"q": 1}).outcome is Outcome.PAUSED


def test_an_approval_does_not_carry_over_to_another_file_with_the_same_normalized_path(tmp_path: Path) -> None:
    """`<r>/dirlink/../summary.csv` normalizes to `<r>/summary.csv`, the approved file, but the OS follows
    dirlink first and opens `<o>/summary.csv`, outside the allowed folder: that needs its own review."""
    base = Path(os.path.realpath(tmp_path))
    (base / "r").mkdir()
    (base / "o" / "dir").mkdir(parents=True)
    (base / "r" / "patient_summary.csv").write_text("in")
    (base / "o" / "patient_summary.csv").write_text("out")
    (base / "r" / "dirlink").symlink_to(base / "o" / "dir", target_is_directory=True)
    guard = make_guard(tmp_path, mode=KillSwitchMode.PAUSE, allowed_resources=[f"{base}/r/*"], max_risk_score=0.5,
                       model=None)  # fmt: skip
    assert guard.check(ActionType.FILE_READ, f"{base}/r/patient_summary.csv").outcome is Outcome.PAUSED
    guard.approve(actor="bob")
    elsewhere = f"{base}/r/dirlink/../patient_summary.csv"
    assert Path(elsewhere).read_text() == "out"
    decision = guard.check(ActionType.FILE_READ, elsewhere)
    assert decision.outcome is Outcome.PAUSED, decision.explain()
    assert "approved" not in decision.reason_codes
    assert "resource_not_allowed" in decision.reason_codes


def test_an_approval_is_used_by_the_actions_next_check_even_when_it_needs_none(tmp_path: Path) -> None:
    """An approval of a rate-limit pause: the retry after the window runs on the approval, which is then gone,
    so it cannot later waive a violation nobody reviewed (here the data-volume limit)."""
    clock = Clock()
    guard = make_guard(tmp_path, mode=KillSwitchMode.PAUSE, max_actions_per_minute=1, max_rows_per_window=10,
                       model=None, clock=clock)  # fmt: skip
    query = (ActionType.DATABASE_QUERY, "data.claims", {"q": 1})
    assert guard.check(*query).allowed
    clock.now += 1
    assert guard.check(*query).reason_codes[0] == "rate_limited"
    guard.approve(actor="bob")
    clock.now += 61
    retried = guard.check(*query)
    assert retried.allowed and retried.reason_codes[0] == "approved"
    guard.record_outcome(retried.action_id, rows=10)
    clock.now += 61
    later = guard.check(*query)
    assert later.outcome is Outcome.PAUSED and later.reason_codes[0] == "data_volume_exceeded"


def test_an_approved_action_runs_past_the_rate_limit_that_paused_it(tmp_path: Path) -> None:
    clock = Clock()
    guard = make_guard(tmp_path, mode=KillSwitchMode.PAUSE, max_actions_per_minute=1, model=None, clock=clock)
    assert guard.check(ActionType.API_CALL, "svc.a").allowed
    assert guard.check(ActionType.API_CALL, "svc.a").reason_codes[0] == "rate_limited"
    guard.approve(actor="bob")
    assert guard.check(ActionType.API_CALL, "svc.a").reason_codes[0] == "approved"  # within the same minute
    assert guard.check(ActionType.API_CALL, "svc.a").reason_codes[0] == "rate_limited"


def test_a_pause_after_an_approval_drops_it_so_a_resume_does_not_let_the_approved_action_run(tmp_path: Path) -> None:
    guard = violating_guard(tmp_path, KillSwitchMode.PAUSE)
    guard.check(ActionType.DATABASE_QUERY, "data.phi.patients", {"q": 1})
    guard.approve(actor="bob")
    assert guard.check(ActionType.DATABASE_QUERY, "data.phi.other").outcome is Outcome.PAUSED  # before the retry
    guard.resume(actor="bob")  # declines the new pause
    assert guard.check(ActionType.DATABASE_QUERY, "data.phi.patients", {"q": 1}).outcome is Outcome.PAUSED
    assert guard.status().approved_fingerprint is None


@pytest.mark.parametrize("release", ["approve", "resume", "reset"])
def test_a_release_the_trail_cannot_record_is_not_made(tmp_path: Path, release: str) -> None:
    path = tmp_path / "audit.db"
    guard = violating_guard(tmp_path, KillSwitchMode.PAUSE, audit=f"sqlite:///{path}?timeout=0.05")
    assert guard.check(ActionType.DATABASE_QUERY, "data.phi.patients").outcome is Outcome.PAUSED
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    with pytest.raises(AuditError, match=f"was not {release}"):
        getattr(guard, release)(actor="mallory")
    locker.execute("ROLLBACK")
    assert guard.status().status is AgentStatus.PAUSED
    assert guard.check(ActionType.DATABASE_QUERY, "data.phi.patients").reason_codes[0] == "agent_paused"
    getattr(guard, release)(actor="bob")  # recorded now, so made
    assert [r.actor for r in records(guard, kind="killswitch")] == ["guard", "bob"]


def test_approve_or_resume_of_a_running_agent_is_refused(tmp_path: Path) -> None:
    guard = violating_guard(tmp_path, KillSwitchMode.PAUSE)
    with pytest.raises(StateError, match="running"):
        guard.approve()
    with pytest.raises(StateError, match="running"):
        guard.resume()


def test_a_tool_still_running_when_rollback_mode_trips_is_undone_when_it_returns(tmp_path: Path) -> None:
    """Its step is registered when it returns, after the trip's rollback ran: it was never undone."""
    slow_file = tmp_path / "slow.txt"
    slow_file.write_text("before")
    guard = make_guard(tmp_path, blocked_resources=["*.pii"], mode=KillSwitchMode.ROLLBACK, model=None)
    written, tripped = threading.Event(), threading.Event()

    @guard.tool(ActionType.FILE_WRITE)
    def slow_write(path: str, text: str) -> None:
        Path(path).write_text(text)
        written.set()
        tripped.wait(10)  # still running while another call of the agent trips the kill switch

    worker = threading.Thread(target=slow_write, args=(str(slow_file), "agent"))
    worker.start()
    assert written.wait(10)
    assert guard.check(ActionType.FILE_WRITE, str(tmp_path / "patients.pii")).outcome is Outcome.ROLLED_BACK
    tripped.set()
    worker.join(10)
    assert slow_file.read_text() == "before"
    undone = records(guard, kind="rollback")
    assert [(r.outcome, r.actor) for r in undone] == [("undone", "guard")]


def test_rollback_mode_denies_undoes_the_window_and_pauses(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    kept = work / "kept.txt"
    kept.write_text("before")
    guard = make_guard(tmp_path, blocked_resources=["*.pii"], mode=KillSwitchMode.ROLLBACK)

    @guard.tool(ActionType.FILE_WRITE)
    def write(path: str, text: str) -> None:
        Path(path).write_text(text)

    write(str(kept), "after")
    write(str(work / "new.txt"), "created")
    with pytest.raises(AgentPaused) as denied:
        write(str(work / "patients.pii"), "ssn")
    assert denied.value.decision.outcome is Outcome.ROLLED_BACK
    assert kept.read_text() == "before" and not (work / "new.txt").exists() and not (work / "patients.pii").exists()
    assert guard.status().status is AgentStatus.PAUSED
    steps = records(guard, kind="rollback")
    assert [r.outcome for r in steps] == ["undone", "undone"]


def test_terminate_mode_stops_the_agent_until_reset(tmp_path: Path) -> None:
    guard = violating_guard(tmp_path, KillSwitchMode.TERMINATE)
    assert guard.check(ActionType.DATABASE_QUERY, "data.phi.x").outcome is Outcome.TERMINATED
    assert guard.check(ActionType.DATABASE_QUERY, "data.claims").outcome is Outcome.TERMINATED
    with pytest.raises(StateError, match="reset"):
        guard.resume()
    guard.reset(actor="ciso")
    assert guard.check(ActionType.DATABASE_QUERY, "data.claims").allowed


def test_manual_terminate_and_status_are_per_agent(tmp_path: Path) -> None:
    guard = make_guard(tmp_path)
    guard.terminate("agent-a", actor="ciso", reason="exfiltration suspected")
    assert guard.status("agent-a").status is AgentStatus.TERMINATED
    assert guard.status("agent-b").status is AgentStatus.RUNNING
    assert not guard.check(ActionType.FILE_READ, "/x", agent_id="agent-a").allowed
    assert guard.check(ActionType.FILE_READ, "/x", agent_id="agent-b").allowed


def test_risk_above_threshold_triggers_the_mode(tmp_path: Path) -> None:
    guard = make_guard(tmp_path, max_risk_score=0.5)
    drop = guard.check(ActionType.DATABASE_QUERY, "data.claims", {"sql": "DROP TABLE claims"})
    assert drop.risk_score > 0.5 and not drop.allowed and drop.reason_codes[0] == "risk_above_threshold"
    read = guard.check(ActionType.DATABASE_QUERY, "data.claims", {"sql": "SELECT * FROM claims WHERE id = 1"})
    assert read.allowed and read.risk_score < 0.2


# ---- limits --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [10, 5000])
def test_rate_limit_admits_exactly_the_limit_per_sliding_minute(tmp_path: Path, limit: int) -> None:
    clock = Clock()
    guard = make_guard(tmp_path, max_actions_per_minute=limit, clock=clock)
    admitted = 0
    for i in range(limit + 5):
        clock.now += 30.0 / limit  # the whole burst fits in half a minute
        d = guard.check(ActionType.FILE_READ, f"/data/{i}")
        admitted += d.allowed
        if not d.allowed:
            assert d.reason_codes == ("rate_limited",) or d.reason_codes[0] == "rate_limited"
    assert admitted == limit
    clock.now += 31.0  # the first actions leave the window
    assert guard.check(ActionType.FILE_READ, "/data/later").allowed


def test_data_volume_limit_counts_rows_reported_by_tools(tmp_path: Path) -> None:
    clock = Clock()
    guard = make_guard(tmp_path, max_rows_per_window=100, volume_window_seconds=3600, clock=clock)

    @guard.tool(ActionType.DATABASE_QUERY, resource="table", rows=len)
    def select(table: str, n: int) -> list[int]:
        return list(range(n))

    assert len(select("claims", 60)) == 60
    assert len(select("claims", 60)) == 60  # 60 < 100 when this call was checked
    with pytest.raises(ActionDenied) as denied:
        select("claims", 1)
    assert "data_volume_exceeded" in denied.value.decision.reason_codes
    clock.now += 3601
    assert select("claims", 1) == [0]


def test_bytes_volume_limit_counts_reported_outcomes(tmp_path: Path) -> None:
    guard = make_guard(tmp_path, max_bytes_per_window=1000, clock=Clock())
    d = guard.check(ActionType.NETWORK_REQUEST, "api.partner/upload")
    guard.record_outcome(d.action_id, bytes=1500)
    assert "data_volume_exceeded" in guard.check(ActionType.NETWORK_REQUEST, "api.partner/upload").reason_codes


def test_an_outcome_without_its_agent_counts_for_the_agent_of_its_decision(tmp_path: Path) -> None:
    """Reported without agent_id, agent b's 100 rows counted toward the guard's default agent a: a was stopped and
    b stayed under its limit, and the trail had b's decision with a's outcome. An id no decision has is refused."""
    guard = make_guard(tmp_path, agent_id="a", max_rows_per_window=100, clock=Clock())
    of_b = guard.check(ActionType.DATABASE_QUERY, "data.claims", agent_id="b")
    guard.record_outcome(of_b.action_id, rows=100)
    assert guard.check(ActionType.DATABASE_QUERY, "data.claims").allowed  # agent a
    assert "data_volume_exceeded" in guard.check(ActionType.DATABASE_QUERY, "data.claims", agent_id="b").reason_codes
    assert [r.agent_id for r in records(guard, action_id=of_b.action_id)] == ["b", "b"]
    with pytest.raises(ValueError, match="no decision"):
        guard.record_outcome("0" * 32, rows=1)
    assert len(records(guard, kind="outcome")) == 1


def test_a_tool_whose_row_measure_gives_no_valid_count_returns_its_result_and_the_outcome_says_so(
    tmp_path: Path,
) -> None:
    """A DB-API cursor's rowcount is -1 for a SELECT: the tool ran, so its result comes back and its outcome is
    recorded, with the count left out and named in the record rather than taken out of the window."""
    guard = make_guard(tmp_path, max_rows_per_window=100, clock=Clock())
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE claims (id INTEGER)")

    @guard.tool(ActionType.DATABASE_QUERY, resource=lambda sql: "data.claims", rows=lambda cur: cur.rowcount)
    def query(sql: str) -> sqlite3.Cursor:
        return conn.execute(sql)

    assert query("SELECT id FROM claims").fetchall() == []
    [outcome] = guard.audit.query(AuditQuery(kind="outcome"))
    assert outcome.outcome == "success"
    assert outcome.detail["rows"] is None and "got -1 (not counted)" in outcome.detail["error"]


def test_a_tool_whose_row_measure_raises_returns_its_result_and_its_outcome_is_recorded(tmp_path: Path) -> None:
    guard = make_guard(tmp_path)
    ran = []

    @guard.tool(ActionType.DATABASE_WRITE, resource=lambda table: f"data.{table}", rows=lambda cur: cur.rowcount)
    def insert(table: str) -> None:
        ran.append(table)

    assert insert("claims") is None and ran == ["claims"]
    [outcome] = guard.audit.query(AuditQuery(kind="outcome"))
    assert outcome.outcome == "success" and outcome.detail["rows"] is None
    assert "measuring rows raised AttributeError" in outcome.detail["error"]


# ---- guarded tools -------------------------------------------------------------------------------------


def test_denied_tool_body_does_not_run_and_outcomes_are_recorded(tmp_path: Path) -> None:
    guard = make_guard(tmp_path, allowed_resources=["/reports/*"])
    calls: list[str] = []

    @guard.tool(ActionType.FILE_READ)
    def read(path: str) -> str:
        calls.append(path)
        if path.endswith("missing"):
            raise FileNotFoundError(path)
        return "contents"

    assert read("/reports/a") == "contents"
    with pytest.raises(ActionDenied):
        read("/etc/shadow")
    with pytest.raises(FileNotFoundError):
        read("/reports/missing")
    assert calls == ["/reports/a", "/reports/missing"]
    outcomes = records(guard, kind="outcome")
    assert [r.outcome for r in outcomes] == ["success", "error"]
    assert "FileNotFoundError" in outcomes[1].detail["error"]


def test_tool_resource_can_be_computed_and_async_tools_are_governed(tmp_path: Path) -> None:
    guard = make_guard(tmp_path, blocked_resources=["mail.send/*@evil.example"])

    @guard.tool(ActionType.NETWORK_REQUEST, resource=lambda to, body: f"mail.send/{to}")
    async def send(to: str, body: str) -> str:
        return "sent"

    assert asyncio.run(send("alice@example.com", "hi")) == "sent"
    with pytest.raises(ActionDenied):
        asyncio.run(send("mallory@evil.example", "data"))


def test_tool_with_unknown_resource_argument_is_refused_at_decoration(tmp_path: Path) -> None:
    guard = make_guard(tmp_path)
    with pytest.raises(ValueError, match="has no argument 'path'"):

        @guard.tool(ActionType.FILE_READ)
        def read(filename: str) -> None: ...


def test_paused_and_terminated_tools_raise_their_own_exceptions(tmp_path: Path) -> None:
    guard = make_guard(tmp_path, blocked_resources=["*.pii"], mode=KillSwitchMode.PAUSE)

    @guard.tool(ActionType.FILE_READ)
    def read(path: str) -> str:
        return path

    with pytest.raises(AgentPaused):
        read("/x.pii")
    with pytest.raises(AgentPaused):
        read("/fine.txt")
    guard.terminate()
    with pytest.raises(AgentTerminated):
        read("/fine.txt")


# ---- rollback ------------------------------------------------------------------------------------------


def test_rollback_restores_files_exactly_and_is_idempotent(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    original = bytes(range(256)) * 10
    (work / "data.bin").write_bytes(original)
    (work / "doomed.txt").write_text("keep me")
    guard = make_guard(tmp_path)

    @guard.tool(ActionType.FILE_WRITE)
    def write(path: str, data: bytes) -> None:
        Path(path).write_bytes(data)

    @guard.tool(ActionType.FILE_DELETE)
    def delete(path: str) -> None:
        Path(path).unlink()

    write(str(work / "data.bin"), b"clobbered")
    write(str(work / "data.bin"), b"clobbered twice")
    write(str(work / "created.txt"), b"new")
    delete(str(work / "doomed.txt"))

    report = guard.rollback()
    assert report.complete and len(report.steps) == 4
    assert (work / "data.bin").read_bytes() == original
    assert (work / "doomed.txt").read_text() == "keep me"
    assert not (work / "created.txt").exists()

    (work / "data.bin").write_bytes(b"changed by a human after the rollback")
    again = guard.rollback()
    assert again.steps == ()
    assert (work / "data.bin").read_bytes() == b"changed by a human after the rollback"


def file_tools(guard: Guard) -> Any:
    @guard.tool(ActionType.FILE_WRITE)
    def write(path: str, data: str) -> None:
        with open(path, "w") as out:
            out.write(data)

    return write


def test_rollback_never_writes_or_deletes_outside_the_folder_it_snapshotted(tmp_path: Path) -> None:
    """A link planted where the restore used to stage its copy, or a folder swapped for a link to elsewhere,
    must not turn the guard's own rollback into a write or a deletion outside: the first is a new file of a
    random name, the second fails and is reported."""
    work, outside = tmp_path / "work", tmp_path / "outside"
    (work / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "victim").write_text("precious")
    (outside / "new.txt").write_text("precious too")
    (work / "f").write_text("f before")
    (work / "sub" / "g").write_text("g before")
    guard = make_guard(tmp_path, model=None)
    write = file_tools(guard)
    (work / ".f.risk-restore").symlink_to(outside / "victim")  # the name the restore staged its copy under
    write(str(work / "f"), "agent")
    write(str(work / "sub" / "g"), "agent")
    write(str(work / "sub" / "new.txt"), "agent")
    (work / "sub").rename(work / "sub.old")
    (work / "sub").symlink_to(outside)  # by someone else, after the writes
    report = guard.rollback()
    assert (outside / "victim").read_text() == "precious" and (outside / "new.txt").read_text() == "precious too"
    assert (work / "f").read_text() == "f before" and not (work / "f").is_symlink()
    assert not report.complete and len(report.not_undone) == 2
    assert all("no longer the folder it was" in step.error for step in report.not_undone)


def test_rollback_restores_the_file_a_tool_opened_by_the_path_as_given(tmp_path: Path) -> None:
    """The snapshot is of the path the tool opens, not of its normalized reading ("%41" is not "A", a link's
    target is what a write through it changes, a relative path is the working directory's)."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "%41.txt").write_text("percent before")
    (work / "A.txt").write_text("bystander")
    (work / "real_cfg").write_text("cfg before")
    (work / "cfg").symlink_to("real_cfg")
    guard = make_guard(tmp_path, model=None)
    write = file_tools(guard)
    write(str(work / "%41.txt"), "agent")
    write(str(work / "cfg"), "agent")
    report = guard.rollback()
    assert report.complete, report.not_undone
    assert (work / "%41.txt").read_text() == "percent before" and (work / "A.txt").read_text() == "bystander"
    assert (work / "real_cfg").read_text() == "cfg before" and (work / "cfg").is_symlink()


def test_snapshots_are_private_and_restores_keep_owner_mode_and_long_names(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    long = work / ("n" * 250)
    long.write_text("long before")
    owned = work / "owned"
    owned.write_text("owned before")
    owner = 65534 if os.geteuid() == 0 else os.getuid()  # only root can give a file away
    os.chown(owned, owner, owner)
    owned.chmod(0o4755)
    guard = make_guard(tmp_path, model=None)
    write = file_tools(guard)
    write(str(long), "agent")
    write(str(owned), "agent")
    snapshots = guard.home / "snapshots"
    assert stat.S_IMODE(snapshots.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in snapshots.iterdir()} == {0o600}  # no setuid copy either
    report = guard.rollback()
    assert report.complete, report.not_undone
    assert long.read_text() == "long before" and owned.read_text() == "owned before"
    restored = owned.stat()
    assert (restored.st_uid, restored.st_gid, stat.S_IMODE(restored.st_mode)) == (owner, owner, 0o4755)


def test_rollback_restores_a_hard_linked_file_under_every_name(tmp_path: Path) -> None:
    one, other = tmp_path / "one.txt", tmp_path / "other.txt"
    one.write_text("before")
    os.link(one, other)
    guard = make_guard(tmp_path, model=None)
    file_tools(guard)(str(one), "agent")
    assert guard.rollback().complete
    assert (one.read_text(), other.read_text(), one.stat().st_nlink) == ("before", "before", 2)


def test_rollback_leaves_a_file_someone_changed_after_the_action(tmp_path: Path) -> None:
    """Restoring over a later change would throw away someone else's work: the step fails, saying why."""
    target = tmp_path / "shared.txt"
    target.write_text("v0")
    guard = make_guard(tmp_path, model=None)
    write = file_tools(guard)
    write(str(target), "v1 by the agent")
    target.write_text("v2, a person's edit after it")
    report = guard.rollback()
    assert not report.complete and "changed after the action" in report.not_undone[0].error
    assert target.read_text() == "v2, a person's edit after it"


def test_snapshots_are_deleted_once_undone_or_past_the_rollback_window(tmp_path: Path) -> None:
    """Every guarded write keeps a copy of the file: kept forever, a long run filled the disk (and the undo
    log, memory) with copies no rollback could use."""
    clock = Clock()
    work = tmp_path / "work"
    work.mkdir()
    guard = make_guard(tmp_path, model=None, rollback_window=60, clock=clock)
    write = file_tools(guard)
    snapshots = guard.home / "snapshots"
    for i in range(5):  # at 0, 30, 60, 90 and 120 s: at the last, those of 0 and 30 s are past the window
        (work / f"f{i}").write_text("before")
        write(str(work / f"f{i}"), "agent")
        clock.now += 30
    assert kept(snapshots) == (3, 3)
    assert [len(steps) for steps in guard._undo._steps.values()] == [3]
    report = guard.rollback()  # at 150 s: the writes of 90 and 120 s
    assert report.complete and len(report.steps) == 2
    assert [(work / f"f{i}").read_text() for i in range(5)] == ["agent"] * 3 + ["before"] * 2
    assert kept(snapshots) == (1, 1)  # the write of 60 s, until the next write leaves it behind


def kept(snapshots: Path) -> tuple[int, int]:
    """How many snapshots, and how many records of their steps, are in the folder `snapshots`."""
    names = [p.name for p in snapshots.iterdir()]
    return sum(not n.endswith(".step") for n in names), sum(n.endswith(".step") for n in names)


def test_rollback_restores_a_sqlite_table_exactly(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "app.db")
    conn.execute("CREATE TABLE claims (id INTEGER PRIMARY KEY, amount REAL, status TEXT)")
    conn.executemany("INSERT INTO claims VALUES (?, ?, ?)", [(i, i * 10.5, "open") for i in range(20)])
    conn.commit()
    before = conn.execute("SELECT * FROM claims ORDER BY id").fetchall()
    guard = make_guard(tmp_path)

    @guard.tool(ActionType.DATABASE_WRITE, resource="table", connection=conn)
    def execute(table: str, sql: str) -> None:
        conn.execute(sql)

    execute("claims", "UPDATE claims SET status = 'paid' WHERE id < 10")
    execute("claims", "DELETE FROM claims WHERE id >= 15")
    execute("claims", "INSERT INTO claims VALUES (100, 1.0, 'fraud')")
    assert conn.execute("SELECT count(*) FROM claims").fetchone()[0] == 16

    report = guard.rollback()
    assert report.complete
    assert conn.execute("SELECT * FROM claims ORDER BY id").fetchall() == before
    assert guard.rollback().steps == ()
    assert conn.execute("SELECT * FROM claims ORDER BY id").fetchall() == before
    conn.commit()
    reopened = sqlite3.connect(tmp_path / "app.db")
    assert reopened.execute("SELECT * FROM claims ORDER BY id").fetchall() == before


def test_rollback_reports_what_it_could_not_undo(tmp_path: Path) -> None:
    guard = make_guard(tmp_path)
    undone: list[str] = []

    @guard.tool(ActionType.API_CALL, resource="account", compensate=lambda account, amount: undone.append(account))
    def transfer(account: str, amount: int) -> None: ...

    @guard.tool(ActionType.API_CALL, resource="url")
    def post(url: str) -> None: ...

    def broken() -> None:
        raise RuntimeError("partner API down")

    transfer("acct-1", 5)
    post("https://api.example.com/hook")
    d = guard.check(ActionType.API_CALL, "refunds")
    guard.register_undo(d.action_id, broken, "cancel refund")
    report = guard.rollback()
    statuses = [s.status for s in report.steps]
    assert statuses == [StepStatus.FAILED, StepStatus.IRREVERSIBLE, StepStatus.UNDONE]
    assert not report.complete and len(report.not_undone) == 2
    assert "partner API down" in report.steps[0].error
    assert undone == ["acct-1"]


def test_rollback_only_undoes_actions_inside_the_window(tmp_path: Path) -> None:
    clock = Clock()
    guard = make_guard(tmp_path, rollback_window=60, clock=clock)
    target = tmp_path / "f.txt"

    @guard.tool(ActionType.FILE_WRITE)
    def write(path: str, text: str) -> None:
        Path(path).write_text(text)

    write(str(target), "old write")
    clock.now += 120
    write(str(target), "recent write")
    report = guard.rollback()
    assert len(report.steps) == 1
    assert target.read_text() == "old write"


def test_two_rollbacks_at_once_run_each_undo_once(tmp_path: Path) -> None:
    guard = make_guard(tmp_path)
    calls = []
    both_inside = threading.Barrier(2, timeout=2)

    def refund() -> None:
        calls.append("refund")
        with contextlib.suppress(threading.BrokenBarrierError):  # the second rollback never gets here
            both_inside.wait()

    decision = guard.check(ActionType.API_CALL, "https://api.example.com/pay")
    guard.register_undo(decision.action_id, refund, "refund the payment")
    reports = run_together([guard.rollback, guard.rollback])
    assert calls == ["refund"]
    assert sorted(len(r.steps) for r in reports) == [0, 1]


def test_overlapping_async_tools_are_undone_in_the_reverse_of_the_order_they_started(tmp_path: Path) -> None:
    guard = make_guard(tmp_path)
    target = tmp_path / "report.txt"
    target.write_text("original")

    @guard.tool(ActionType.FILE_WRITE)
    async def slow_write(path: str, text: str) -> None:
        Path(path).write_text(text)
        await asyncio.sleep(0.05)  # returns after fast_write, which started after it

    @guard.tool(ActionType.FILE_WRITE)
    async def fast_write(path: str, text: str) -> None:
        Path(path).write_text(text)

    async def agent() -> None:
        first = asyncio.create_task(slow_write(str(target), "A"))
        await asyncio.sleep(0.01)
        await fast_write(str(target), "B")
        await first

    asyncio.run(agent())
    report = guard.rollback()
    assert report.complete and len(report.steps) == 2
    assert target.read_text() == "original"


# ---- audit failure and files -------------------------------------------------------------------------


def test_audit_write_failure_denies(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    guard = make_guard(tmp_path, audit=f"sqlite:///{path}?timeout=0.05")
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    d = guard.check(ActionType.FILE_READ, "/reports/ok.csv")
    assert not d.allowed and d.reason_codes[0] == "audit_unavailable"
    assert guard.audit_failures == 1
    locker.execute("ROLLBACK")
    assert guard.check(ActionType.FILE_READ, "/reports/ok.csv").allowed
    assert verify_store(guard.audit).ok


class BrokenState(MemoryState):
    """A state store whose backend has gone away (a Redis outage, say)."""

    def get_state(self, agent_id: str) -> AgentState:
        raise StateError("connection refused")


def test_a_state_store_failure_denies_and_is_audited(tmp_path: Path) -> None:
    guard = make_guard(tmp_path, state=BrokenState())
    d = guard.check(ActionType.FILE_READ, "/reports/ok.csv")
    assert not d.allowed and d.outcome is Outcome.BLOCKED and d.reason_codes[0] == "state_unavailable"
    assert records(guard, kind="decision")[-1].outcome == "blocked"


def test_policy_from_yaml_and_toml_files(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        "allowed_action_types: [database_query, file_read]\n"
        "allowed_resources: ['data.deidentified.*']\n"
        "blocked_resources: ['data.phi.*']\n"
        "mode: pause\nmax_actions_per_minute: 10\n"
    )
    (tmp_path / "p.toml").write_text('blocked_resources = ["prod.*"]\nmode = "terminate"\n')
    yaml_guard = Guard.from_file(tmp_path / "p.yaml", audit=f"sqlite:///{tmp_path}/a.db")
    assert yaml_guard.policy.mode is KillSwitchMode.PAUSE
    assert not yaml_guard.check("database_query", "data.phi.x").allowed
    toml_guard = Guard.from_file(tmp_path / "p.toml", audit=f"sqlite:///{tmp_path}/b.db")
    assert toml_guard.check("database_query", "prod.users").outcome is Outcome.TERMINATED


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("allowed_resourcez: ['x']\n", "unknown field"),
        ("mode: explode\n", "accepted: alert, block, pause, rollback, terminate"),
        ("allowed_action_types: [file_open]\n", "allowed_action_types"),
        ("blocked_resources: ['']\n", "blocked_resources"),
        ("max_risk_score: 2\n", "max_risk_score"),
        ("mode: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_policy_files_fail_with_a_message_naming_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError, match=message):
        Guard.from_file(path, audit=f"sqlite:///{tmp_path}/a.db")


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("audit: ['sqlite:///x.db']\n", "audit"),
        ("audit: 5\n", "audit"),
        ("state: 5\n", "state"),
        ("model: 5\n", "model"),
        ("keep_payloads: 'false'\n", "keep_payloads"),
        ("online: 'no'\n", "online"),
    ],
)
def test_settings_of_another_type_are_refused_not_used(tmp_path: Path, text: str, field: str) -> None:
    """`audit: [url]` made a Python list the trail (every action allowed, no record stored), and the string
    "false" kept payloads: a setting that is not of a type the guard can use is a PolicyError naming it."""
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError, match=f"bad.yaml: {field} must be"):
        Guard.from_file(path, home=tmp_path)
    assert list(tmp_path.iterdir()) == [path]  # no trail was opened anywhere


def test_a_risk_score_that_is_not_a_number_counts_as_above_the_threshold(tmp_path: Path) -> None:
    """NaN compares false with everything: a threshold written as `score > limit` would let it through."""
    guard = make_guard(tmp_path, max_risk_score=0.5, model=None)
    violations = guard._violations("a", 0.0, ActionType.FILE_READ, readings("/reports/x.csv"), None, float("nan"), None)
    assert [v.code for v in violations] == ["risk_above_threshold"]


def test_a_guard_that_cannot_be_made_closes_what_it_opened(tmp_path: Path) -> None:
    """A model that does not load (or a policy record the trail refuses) left the audit store's checkpoint thread
    and connections open: a caller retrying in a loop ran out of file descriptors."""

    def opened() -> tuple[int, int]:  # what a leak would leave: checkpoint threads, and descriptors of the trail
        threads = sum(t.name == "risk-audit-checkpoint" for t in threading.enumerate())
        fds = []
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):  # the listing's own descriptor is gone once it is read
                fds.append(os.readlink(f"/proc/self/fd/{fd}"))
        return threads, sum(str(tmp_path) in fd for fd in fds)

    before = opened()
    for _ in range(10):
        with pytest.raises(ModelError):
            Guard(audit=f"sqlite:///{tmp_path}/audit.db", home=tmp_path, model="no-such-model")
    assert opened() == before
    # A store passed in is the caller's, shared by its other guards (the service's one trail): it stays open.
    shared = open_audit(f"sqlite:///{tmp_path}/shared.db")
    running = Guard(audit=shared, home=tmp_path, model=None, online=False)
    with pytest.raises(ModelError):
        Guard(audit=shared, home=tmp_path, model="no-such-model")
    assert running.check(ActionType.FILE_READ, "/srv/reports/q1.csv").allowed
    shared.close()


SNAPSHOT_ON_A_FULL_DISK = """
import resource, signal, sys
from pathlib import Path
from risk import ActionType, Guard
from risk.audit.store import AuditQuery

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
tmp = Path(sys.argv[1])
guard = Guard(audit=f"sqlite:///{tmp}/audit.db", home=tmp / "home", model=None, online=False)
ran = []

@guard.tool(ActionType.FILE_WRITE)
def write(path: str) -> None:
    ran.append(path)

try:
    write(str(tmp / "big.bin"))
except OSError as exc:
    print("raised", exc.errno)
outcome, = guard.audit.query(AuditQuery(kind="outcome"))
print("ran", len(ran), "|", outcome.outcome, outcome.detail["error"].split(":")[0])
print("kept", sorted(p.name for p in (tmp / "home" / "snapshots").iterdir()))
"""


def test_a_guarded_write_whose_snapshot_fails_does_not_run_and_leaves_no_partial_copy(tmp_path: Path) -> None:
    """The allowed decision had no outcome, and the half-written copy stayed in the snapshots folder, which by
    default shares the disk with the audit trail."""
    (tmp_path / "big.bin").write_bytes(b"x" * (2 << 20))
    script = tmp_path / "full.py"
    script.write_text(SNAPSHOT_ON_A_FULL_DISK)
    ran = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert ran.stdout.splitlines() == ["raised 27", "ran 0 | error not run", "kept []"], ran.stderr


def test_a_kill_switch_move_and_its_record_are_not_split_by_another_move() -> None:
    """A terminate set its state, and a reset (of the now terminated agent) set and recorded its own before the
    terminate's record: the trail's last word was 'terminated' for an agent that was running."""
    state = MemoryState()
    recorded: list[tuple[str, str]] = []
    recording, release = threading.Event(), threading.Event()

    def record(agent_id: str, fields: dict[str, Any], *, strict: bool = False) -> None:
        if fields["outcome"] == "terminated":
            recording.set()
            release.wait(10)  # the terminate's record is slow to write
        recorded.append((fields["detail"]["from"], fields["detail"]["to"]))

    switch = KillSwitch(state, record)
    terminating = threading.Thread(target=switch.terminate, args=("a",), kwargs={"actor": "t", "reason": "x"})
    terminating.start()
    assert recording.wait(10)
    resetting = threading.Thread(target=switch.reset, args=("a",), kwargs={"actor": "r"})
    resetting.start()
    resetting.join(0.5)  # unlocked, the reset is made and recorded meanwhile
    release.set()
    terminating.join(10)
    resetting.join(10)
    assert recorded == [("running", "terminated"), ("terminated", "running")]
    assert state.get_state("a").status is AgentStatus.RUNNING


def test_a_governed_call_whose_second_snapshot_fails_leaves_no_first_one(tmp_path: Path) -> None:
    """The call was refused, but the copy of the first file it would write stayed in the snapshots folder."""
    from risk.integrations.tool_map import ToolMap
    from risk.integrations.toolcalls import ToolGovernor

    (tmp_path / "a.txt").write_text("a")
    unreadable = tmp_path / "b.sock"  # opening a socket's name fails (ENXIO), as a full disk fails the copy
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(unreadable))
    guard = make_guard(tmp_path, model=None, online=False)
    governor = ToolGovernor(guard, ToolMap.from_config({"write_files": (ActionType.FILE_WRITE, "paths")}))
    call = governor.check("write_files", {"paths": [str(tmp_path / "a.txt"), str(unreadable)]})
    server.close()
    assert not call.allowed and "could not be prepared" in call.message
    assert list((tmp_path / "home" / "snapshots").iterdir()) == []
    assert [r.outcome for r in records(guard, kind="outcome")] == ["error", "error"]


SNAPSHOT_AND_WAIT = """
import os
import sys
from risk import ActionType, Guard
home, path, then = sys.argv[1], sys.argv[2], sys.argv[3]
guard = Guard(audit=f"sqlite:///{home}/audit-{then}.db", home=home, model=None)
@guard.tool(ActionType.FILE_WRITE)
def write(path: str, data: str) -> None:
    open(path, "w").write(data)
    if then == "crash":  # in the middle of the action, before the guard hears it returned
        os._exit(3)
write(path, "written by " + then)
print("snapshotted", flush=True)
if then == "wait":  # until told to roll back: its snapshot must still be there; then write again and wait
    sys.stdin.readline()
    print("complete", guard.rollback().complete, flush=True)
    sys.stdin.readline()
    write(path, "written again")
    print("snapshotted", flush=True)
    sys.stdin.readline()
"""


def test_a_rollback_undoes_what_a_process_that_ended_did_and_a_live_ones_steps_stay_its_own(tmp_path: Path) -> None:
    """Undo steps lived only in the process that made them: after a crash or a restart, what the agent had done
    could not be rolled back, and its snapshots were deleted. Now a record of each file step is kept beside
    its snapshot, and a rollback of the agent in another process takes over the steps ended processes left,
    including one whose tool crashed its process; a live process's steps stay its own."""
    home, script = tmp_path / "home", tmp_path / "snap.py"
    script.write_text(SNAPSHOT_AND_WAIT)
    for name in ("gone.txt", "edited.txt", "crashed.txt", "live.txt"):
        (tmp_path / name).write_text("before")
    snapshots = home / "snapshots"
    for name, then, status, out in (
        ("gone.txt", "exit", 0, "snapshotted\n"),
        ("edited.txt", "exit", 0, "snapshotted\n"),
        ("crashed.txt", "crash", 3, ""),
    ):
        ended = subprocess.run(
            [sys.executable, str(script), str(home), str(tmp_path / name), then],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert (ended.returncode, ended.stdout) == (status, out), ended.stderr
    assert (tmp_path / "crashed.txt").read_text() == "written by crash"
    (tmp_path / "edited.txt").write_text("a person's edit, after the agent's")
    legacy = snapshots / uuid.uuid4().hex  # named as versions before owners were: left alone
    legacy.write_text("old")
    live = subprocess.Popen(
        [sys.executable, str(script), str(home), str(tmp_path / "live.txt"), "wait"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert live.stdout is not None and live.stdin is not None
        assert live.stdout.readline() == "snapshotted\n"  # its guard's sweep kept the steps inside the window
        assert kept(snapshots) == (4 + 1, 4)  # with the legacy copy
        guard = make_guard(tmp_path, model=None)
        report = guard.rollback()  # the same agent, "default"
        assert len(report.steps) == 3, report
        assert [(tmp_path / n).read_text() for n in ("gone.txt", "edited.txt", "crashed.txt", "live.txt")] == [
            "before", "a person's edit, after the agent's", "before", "written by wait",
        ]  # fmt: skip
        (failed,) = report.not_undone  # a change after the action is not thrown away, as in the process itself
        assert failed.status == StepStatus.FAILED and "changed after the action" in failed.error
        assert sorted(r.outcome for r in records(guard, kind="rollback")) == ["failed", "undone", "undone"]
        assert [s.status for s in guard.rollback().steps] == [StepStatus.FAILED]  # the undone ones run once
        assert make_guard(tmp_path, model=None).rollback().steps == ()  # and steps go to one process only
        guard.close()
        assert kept(snapshots) == (2 + 1, 2)  # the live process's snapshot, and the failed step's
        live.stdin.write("\n")
        live.stdin.flush()
        assert live.stdout.readline() == "complete True\n"  # and it could restore from it
        assert (tmp_path / "live.txt").read_text() == "before"
        live.stdin.write("\n")
        live.stdin.flush()
        assert live.stdout.readline() == "snapshotted\n"
    finally:
        live.kill()  # a crash: no clean-up of its own
        live.wait(30)
    clock = Clock(time.time())
    later = make_guard(tmp_path, model=None, clock=clock)
    assert kept(snapshots) == (2 + 1, 2)  # inside the rollback window: a rollback of the agent may take it over
    clock.now += 3600  # an hour on, past the window: the next rollback, of any agent, deletes it
    assert later.rollback("someone else").steps == ()
    later.close()
    # What is left besides the legacy copy is this process's: the failed step it took over, and its claim.
    own = risk.rollback._claims[snapshots][1]
    assert [p for p in snapshots.iterdir() if not p.name.startswith(own)] == [legacy]
    assert [p.name for p in (home / "snapshots-owners").iterdir()] == [own]
