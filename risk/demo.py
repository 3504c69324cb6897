"""`risk demo` / `make run`: a claims-analytics agent governed by the README's configuration."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from risk.actions import ActionType, KillSwitchMode
from risk.audit.store import verify_store
from risk.errors import GuardDenied
from risk.guard import Guard


def run_demo(home: Path, console: Console) -> None:
    home.mkdir(parents=True, exist_ok=True)
    audit_url = f"sqlite:///{(home / 'audit.db').resolve()}"
    guard = Guard(
        agent_id="claims-analyst",
        allowed_action_types=[ActionType.DATABASE_QUERY, ActionType.FILE_READ],
        allowed_resources=["data.deidentified.*", "/reports/readonly/*"],
        blocked_resources=["data.phi.*", "*.pii", "prod.*"],
        max_risk_score=0.5,
        max_actions_per_minute=10,
        mode=KillSwitchMode.PAUSE,
        audit=audit_url,
        home=home,
    )
    table = Table("step", "action", "resource", "risk", "outcome", "why", title="A claims agent under PAUSE mode")

    def attempt(step: str, action: ActionType, resource: str, payload: object = None) -> None:
        d = guard.check(action, resource, payload)
        why = d.reasons[0].message if d.reasons else ""
        style = "green" if d.allowed else "red"
        table.add_row(step, action.value, resource, f"{d.risk_score:.2f}", f"[{style}]{d.outcome.value}[/{style}]", why)

    attempt("1", ActionType.DATABASE_QUERY, "data.deidentified.claims", {"sql": "SELECT count(*) FROM claims"})
    attempt("2", ActionType.FILE_READ, "/reports/readonly/q3.csv")
    attempt("3", ActionType.FILE_READ, "/reports/readonly/../../etc/passwd")
    attempt("4", ActionType.DATABASE_QUERY, "data.deidentified.claims")
    guard.resume(actor="reviewer@hospital.example")
    table.add_row("", "", "reviewer resumes the agent", "", "", "")
    attempt("5", ActionType.DATABASE_QUERY, "ｄａｔａ.phi.patients")
    guard.resume(actor="reviewer@hospital.example")
    attempt("6", ActionType.DATABASE_QUERY, "data.deidentified.claims", {"sql": "DROP TABLE claims"})
    console.print(table)

    workdir = home / "workspace"
    workdir.mkdir(exist_ok=True)
    notes = workdir / "notes.txt"
    notes.write_text("original notes\n")
    writer = Guard(
        agent_id="report-writer",
        allowed_resources=[f"{workdir.resolve()}/*"],
        max_risk_score=0.5,
        mode=KillSwitchMode.ROLLBACK,
        audit=audit_url,
        home=home,
    )

    @writer.tool(ActionType.FILE_WRITE, resource="path")
    def write_file(path: str, text: str) -> None:
        Path(path).write_text(text)

    write_file(str(notes.resolve()), "overwritten by the agent\n")
    write_file(str((workdir / "draft.txt").resolve()), "a new draft\n")
    try:
        write_file(str(workdir.resolve()) + "/run.sh", "rm -rf / --no-preserve-root")
    except GuardDenied as denied:
        console.print(f"\nROLLBACK mode: {denied.decision.explain()}")
    console.print(
        f"notes.txt after rollback: {notes.read_text()!r}; draft.txt exists: {(workdir / 'draft.txt').exists()}"
    )

    result = verify_store(guard.audit)
    head = guard.audit.head()
    console.print(f"\naudit trail {audit_url}: {result.count} records, verifies: {result.ok}, head {head.hash[:16]}…")
    console.print("inspect it with: risk audit query --audit " + audit_url)
