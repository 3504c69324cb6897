"""The `risk` command: check an action against a policy, inspect and verify the audit trail, run the demo."""

from __future__ import annotations

import csv
import functools
import json
import re
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from risk.audit.record import FIELDS, AuditRecord
from risk.audit.store import DEFAULT_RETENTION, AuditQuery, open_audit, purge, records, utc_time, verify_store
from risk.errors import PolicyError, RiskError

app = typer.Typer(help="agent-risk: runtime governance and risk scoring for AI agents.", no_args_is_help=True)
audit_app = typer.Typer(help="Inspect, verify, export and purge the audit trail.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
keys_app = typer.Typer(help="API keys of the HTTP service: create, list, revoke.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
console = Console()
err = Console(stderr=True)

AuditUrl = Annotated[
    str | None, typer.Option("--audit", help="Audit store URL (default: $RISK_AUDIT_URL or sqlite under $RISK_HOME).")
]


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


@app.command()
def check(
    action_type: Annotated[str, typer.Argument(help="Action type, e.g. database_query.")],
    resource: Annotated[str, typer.Argument(help="The resource the action touches.")],
    policy: Annotated[Path, typer.Option("--policy", help="YAML or TOML policy file.")],
    payload: Annotated[str | None, typer.Option(help="The action's payload as JSON.")] = None,
    agent: Annotated[str | None, typer.Option(help="Agent id (default: the policy's).")] = None,
    audit: AuditUrl = None,
) -> None:
    """Decide one action under a policy file and print the decision as JSON. Exit 0 if allowed, 1 if denied."""
    from risk.guard import Guard

    try:
        body = json.loads(payload) if payload is not None else None
    except json.JSONDecodeError as exc:
        raise _fail(f"--payload is not valid JSON: {exc}") from None
    try:
        guard = Guard.from_file(policy, **({"audit": audit} if audit else {}))
        decision = guard.check(action_type, resource, body, agent_id=agent)
    except (RiskError, ValueError) as exc:
        raise _fail(str(exc)) from None
    out = {
        "allowed": decision.allowed,
        "outcome": decision.outcome.value,
        "risk_score": round(decision.risk_score, 4),
        "action_id": decision.action_id,
        "normalized_resource": decision.normalized_resource,
        "reasons": [r.to_dict() for r in decision.reasons],
    }
    print(json.dumps(out, indent=2))
    raise typer.Exit(0 if decision.allowed else 1)


@audit_app.command()
def verify(
    audit: AuditUrl = None,
    head: Annotated[str | None, typer.Option(help="A head hash kept elsewhere; also catches truncation.")] = None,
) -> None:
    """Recompute every hash in the chain. Exit 1 naming the first bad record."""
    if head is not None and not re.fullmatch(r"[0-9a-f]{64}", head):  # else reported as records cut off the end
        raise _fail(f"--head must be the 64 lower-case hex digits `risk audit head` prints, not {head!r}")
    store = _open(audit)
    result = verify_store(store, expected_head=head)
    if result.ok:
        console.print(f"[green]ok[/green]: {result.count} records verify; head {result.head_hash}")
        return
    where = f" at record seq {result.first_bad_seq}" if result.first_bad_seq is not None else ""
    err.print(f"[red]FAILED[/red]{where}: {result.problem} ({result.count} verified before it)")
    raise typer.Exit(1)


@audit_app.command()
def head(audit: AuditUrl = None) -> None:
    """Print the record count and the head hash, to keep somewhere the agent cannot write."""
    h = _open(audit).head()
    print(json.dumps({"count": h.count, "seq": h.seq, "head": h.hash}))


@audit_app.command()
def query(
    audit: AuditUrl = None,
    agent: Annotated[str | None, typer.Option(help="Only this agent.")] = None,
    since: Annotated[str | None, typer.Option(help="From this ISO time (inclusive).")] = None,
    until: Annotated[str | None, typer.Option(help="Before this ISO time.")] = None,
    outcome: Annotated[
        str | None, typer.Option(help="allowed, alerted, blocked, paused, rolled_back, terminated.")
    ] = None,
    kind: Annotated[
        str | None, typer.Option(help="decision, outcome, killswitch, rollback, policy, retention.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1)] = 50,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON record per line.")] = False,
) -> None:
    """List audit records matching the filters."""
    records = _open(audit).query(
        AuditQuery(
            agent_id=agent, since=_iso(since), until=_iso(until), outcome=outcome, kind=kind, limit=limit, offset=offset
        )
    )
    if as_json:
        for r in records:
            print(json.dumps(r.to_dict(), default=str))
        return
    table = Table("seq", "ts", "agent", "kind", "action", "resource", "risk", "outcome")
    for r in records:
        risk = f"{r.risk_score:.2f}" if r.risk_score is not None else ""
        cells = (str(r.seq), r.ts, r.agent_id, r.kind, r.action_type or "", r.resource or "", risk, r.outcome or "")
        table.add_row(*(escape(c) for c in cells))  # an agent's resource string is data, never markup
    console.print(table)


@audit_app.command()
def export(
    audit: AuditUrl = None,
    fmt: Annotated[str, typer.Option("--format", help="jsonl (the trace format) or csv (every field).")] = "jsonl",
    output: Annotated[Path | None, typer.Option(help="File to write (default: standard output).")] = None,
) -> None:
    """Export the audit trail: decisions as JSON Lines traces, or every record as CSV."""
    if fmt not in ("jsonl", "csv"):
        raise _fail(f"--format must be jsonl or csv, not {fmt!r}")
    store = _open(audit)
    out = output.open("w", newline="", encoding="utf-8") if output else sys.stdout
    try:
        if fmt == "jsonl":
            for r in records(store):
                if r.kind == "decision":
                    out.write(json.dumps(trace_line(r), default=str) + "\n")
        else:
            writer = csv.writer(out)
            writer.writerow(FIELDS)
            for r in records(store):
                writer.writerow(
                    [
                        json.dumps(v, default=str) if isinstance(v, dict | list) else v
                        for v in (getattr(r, f) for f in FIELDS)
                    ]
                )
    finally:
        if output:
            out.close()


def trace_line(record: AuditRecord) -> dict[str, Any]:
    """A decision record in the trace format every `risk` tool reads."""
    line: dict[str, Any] = {
        "ts": record.ts,
        "agent_id": record.agent_id,
        "session_id": record.session_id,
        "action_type": record.action_type,
        "resource": record.resource,
    }
    if record.payload is not None:
        line["payload"] = record.payload
    line.update(action_id=record.action_id, risk_score=record.risk_score, outcome=record.outcome)
    return line


@audit_app.command("purge")
def purge_command(
    before: Annotated[str, typer.Option(help="Delete records older than this ISO date.")],
    audit: AuditUrl = None,
    retention_days: Annotated[int, typer.Option(min=0, help="Retention period in days.")] = DEFAULT_RETENTION.days,
) -> None:
    """Delete records older than --before; refuses anything younger than the retention period."""
    store = _open(audit)
    try:
        deleted = purge(store, datetime.fromisoformat(before), retention=timedelta(days=retention_days))
    except ValueError as exc:
        raise _fail(str(exc)) from None
    except RiskError as exc:
        raise _fail(str(exc), code=1) from None
    console.print(f"purged {deleted} records older than {before}")


@app.command("rollback")
def rollback_command(
    agent: Annotated[str, typer.Argument(help="The agent whose actions to undo.")],
    policy: Annotated[
        Path | None, typer.Option("--policy", help="The agent's policy file: its audit trail, home and window.")
    ] = None,
    audit: AuditUrl = None,
    home: Annotated[Path | None, typer.Option(help="The agent's home, where its snapshots are.")] = None,
    actor: Annotated[str, typer.Option(help="Who rolls back, as the audit records name them.")] = "operator",
) -> None:
    """Undo what the agent did inside its rollback window in processes that have ended (a crash, a restart):
    the file steps their guards left, newest first, each recorded in the audit trail. Prints the report as
    JSON. Exit 0 if every step was undone, 1 if any was not."""
    from risk.guard import Guard

    overrides: dict[str, Any] = {"model": None, "online": False}  # undoing scores nothing
    if audit:
        overrides["audit"] = audit
    if home is not None:
        overrides["home"] = home
    try:
        guard = Guard.from_file(policy, **overrides) if policy is not None else Guard(**overrides)
    except (RiskError, ValueError) as exc:
        raise _fail(str(exc)) from None
    try:
        report = guard.rollback(agent, actor=actor)
    finally:
        guard.close()
    steps = [
        {"action_id": s.action_id, "description": s.description, "status": s.status.value, "error": s.error}
        for s in report.steps
    ]
    print(json.dumps({"agent_id": agent, "complete": report.complete, "steps": steps}, indent=2))
    raise typer.Exit(0 if report.complete else 1)


@app.command("train")
def train_command(
    source: Annotated[str, typer.Argument(help="Benign history: a trace file (JSONL) or an audit URL.")],
    out: Annotated[Path, typer.Option(help="Folder for the artifact and its card.")] = Path("models"),
    name: Annotated[str, typer.Option(help="Model name.")] = "default",
    version: Annotated[str, typer.Option(help="Model version.")] = "1",
    seed: Annotated[int, typer.Option(help="Random seed (same data and seed, same model).")] = 0,
    evaluate: Annotated[
        Path | None, typer.Option(help="A labelled trace to evaluate the model on; its metrics go in the card.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a model of the same name and version.")] = False,
) -> None:
    """Fit the behavioral model on benign history; writes models/<name>-<version>.joblib and its card."""
    from risk.train import train

    try:
        model, artifact = train(source, out, name=name, version=version, seed=seed, evaluate_on=evaluate, replace=force)
    except (RiskError, ValueError) as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:  # --out names a file, or a folder that cannot be written
        raise _fail(f"cannot write the model to {out}: {exc.strerror or exc}") from None
    console.print(f"wrote {artifact} and {artifact.with_suffix('.json')} ({model.model_version})")


@app.command("evaluate")
def evaluate_command(
    test: Annotated[Path, typer.Argument(help="Labelled trace to replay (JSONL).")],
    train: Annotated[Path | None, typer.Option(help="Benign trace to train the guard on first.")] = None,
    policy: Annotated[
        Path | None,
        typer.Option(
            help="Policy file (default: max_risk_score 0.5, mode pause); its model and online settings give way "
            "to --train and --online."
        ),
    ] = None,
    online: Annotated[bool, typer.Option("--online", help="Also score with the streaming model.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Replay a labelled trace through a fresh guard and print detection metrics."""
    from risk.evaluate import evaluate
    from risk.policy import load_policy_file
    from risk.traces import read_trace

    try:
        history = list(read_trace(train)) if train else []
        if train and not history:  # an empty file would silently leave the shipped model in charge
            raise _fail(f"{train} holds no actions to train on; give a benign trace, or leave out --train")
        result = evaluate(
            list(read_trace(test)),
            history,
            policy=load_policy_file(policy) if policy else None,
            online=online,
        )
    except (RiskError, ValueError) as exc:
        raise _fail(str(exc)) from None
    if as_json:
        print(json.dumps(result))
        return
    table = Table("metric", "value", title=f"evaluation of {test}")
    for key, value in result.items():
        if key != "by_attack":
            table.add_row(key, escape(str(value)))
    for attack, numbers in result["by_attack"].items():
        table.add_row(f"denied: {attack}", f"{numbers['denied']:.2%} of {numbers['actions']}")
    console.print(table)


@app.command()
def demo(
    home: Annotated[Path, typer.Option(help="Where the demo keeps its audit trail.")] = Path(".risk/demo"),
) -> None:
    """Govern a small agent on the embedded default and show what the guard did."""
    from risk.demo import run_demo

    run_demo(home, console)


@app.command("mcp-proxy")
def mcp_proxy(
    upstream: Annotated[list[str], typer.Argument(help="The upstream MCP server's command, after --.")],
    policy: Annotated[
        Path, typer.Option("--policy", help="Policy file with a tools: section (and optionally tool_timeout).")
    ],
    http: Annotated[
        str | None, typer.Option(help="Serve streamable HTTP at HOST:PORT (path /mcp) instead of stdio.")
    ] = None,
    tool_timeout: Annotated[
        float | None,
        typer.Option(
            help="Seconds the upstream has to answer a tool call (else the client gets an error result and the "
            "call is recorded as one that may have run); overrides the policy file's tool_timeout, default 60."
        ),
    ] = None,
) -> None:
    """Serve MCP, checking every tool call of the upstream server before it runs.

    If the upstream server exits, every later call is refused and the proxy exits with status 1: over HTTP at
    once, on stdio when the client closes the connection.
    """
    try:
        import anyio

        from risk.integrations.mcp_proxy import GatewayPolicy, UpstreamFailed, UpstreamGone, serve
    except ModuleNotFoundError as exc:
        raise _fail(f"risk mcp-proxy needs the mcp package ({exc}): pip install 'agent-risk[mcp]'") from None
    address = None
    if http is not None:
        host, _, port = http.rpartition(":")
        if not host or not port.isdigit():
            raise _fail(f"--http must be HOST:PORT such as 127.0.0.1:8765, not {http!r}")
        address = (host, int(port))
    try:
        gateway = GatewayPolicy.from_file(policy, tool_timeout=tool_timeout)
    except (RiskError, ValueError) as exc:
        raise _fail(str(exc)) from None
    try:  # on stdio, stdout is the protocol's: every message of ours goes to stderr
        anyio.run(functools.partial(serve, gateway, upstream, http=address))
    except UpstreamGone as exc:
        raise _fail(str(exc), code=1) from None
    except OSError as exc:
        raise _fail(f"cannot start the upstream server {upstream[0]!r}: {exc}") from None
    except BaseExceptionGroup as group:  # raised inside the upstream connection's task group
        wrong: BaseException | None = group.subgroup((PolicyError, UpstreamFailed))
        if wrong is None:
            raise
        while isinstance(wrong, BaseExceptionGroup):
            wrong = wrong.exceptions[0]
        raise _fail(str(wrong), code=1 if isinstance(wrong, UpstreamFailed) else 2) from None
    finally:
        gateway.guard.close()


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes; more than 1 needs RISK_REDIS_URL.")] = 1,
    policy: Annotated[
        list[str] | None,
        typer.Option(help="[TENANT=]FILE: the service's default policy, or TENANT's; repeatable."),
    ] = None,
) -> None:
    """Run the HTTP service (uvicorn). Stores come from RISK_HOME, RISK_DATABASE_URL and RISK_REDIS_URL."""
    import os
    import tempfile

    import uvicorn

    from risk.audit.store import default_audit_url
    from risk.catalog import Catalog, default_catalog_url
    from risk.state import open_state
    from risk.tenants import Tenants

    if workers > 1 and not os.environ.get("RISK_REDIS_URL"):
        raise _fail(
            "--workers above 1 needs RISK_REDIS_URL: with in-process state, a pause on one worker would not hold "
            "on another"
        )
    audit_url = os.environ.get("RISK_DATABASE_URL") or default_audit_url()
    if policy:  # applied once here, so workers start from the same catalog
        try:
            tenants = Tenants(
                Catalog(default_catalog_url()), open_audit(audit_url), open_state("memory://"), model=None
            )
            for spec in policy:
                old, new = tenants.apply_policy_file(spec)
                change = "unchanged" if old == new else f"{old[:12] or 'none'} -> {new[:12]}"
                console.print(f"policy {escape(spec)}: {change}")
        except (RiskError, ValueError) as exc:
            raise _fail(str(exc)) from None
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # so /metrics adds up every worker's counts
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="risk-metrics-")
    url = f"http://{host}:{port}"
    # Plain print: rich would wrap the URLs; and a database URL may hold a password, so it is named, not shown.
    audit_where = "the database at $RISK_DATABASE_URL" if os.environ.get("RISK_DATABASE_URL") else audit_url
    state_where = "Redis at $RISK_REDIS_URL" if os.environ.get("RISK_REDIS_URL") else "in process"
    print(f"agent-risk service on {url}  (API docs {url}/docs, health {url}/readyz, metrics {url}/metrics)")
    print(f"audit trail: {audit_where}; state: {state_where}")
    print("make a key: risk keys create --tenant TENANT --role agent|reviewer|auditor|admin", flush=True)
    uvicorn.run(
        "api.app:create_app", factory=True, host=host, port=port, workers=workers, loop="uvloop", http="httptools",
        access_log=False,
    )  # fmt: skip


DatabaseUrl = Annotated[
    str | None, typer.Option("--database", help="Catalog URL (default: $RISK_DATABASE_URL or sqlite under $RISK_HOME).")
]
KeysAuditUrl = Annotated[
    str | None,
    typer.Option(
        "--audit",
        help="The service's audit trail, where the change is recorded (default: the --database if PostgreSQL, "
        "audit.db beside a SQLite catalog, else $RISK_DATABASE_URL or sqlite under $RISK_HOME).",
    ),
]


def _key_event(database: str | None, audit_url: str | None, tenant: str, fields: dict[str, Any]) -> None:
    """Record a key made or revoked here in the service's audit trail, as the service records its own (actor
    `cli`); raises RiskError or ValueError if it cannot be written."""
    import os

    from risk.audit.store import default_audit_url
    from risk.tenants import record_event

    if audit_url is None and database is not None:
        audit_url = (
            f"sqlite:///{Path(database.removeprefix('sqlite:///')).with_name('audit.db')}"
            if database.startswith("sqlite:///")
            else database
        )
    audit = open_audit(audit_url or os.environ.get("RISK_DATABASE_URL") or default_audit_url())
    try:
        record_event(audit, f"{tenant}/*", {"actor": "cli", **fields})
    finally:
        audit.close()


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="Tenant name: a-z, 0-9, _ and -.")],
    role: Annotated[str, typer.Option(help="agent, reviewer, auditor or admin.")],
    note: Annotated[str, typer.Option(help="What the key is for.")] = "",
    agent: Annotated[
        list[str] | None,
        typer.Option(help="Bind an agent key to this agent id or fnmatch pattern (repeatable); default: any agent."),
    ] = None,
    database: DatabaseUrl = None,
    audit: KeysAuditUrl = None,
) -> None:
    """Make an API key and print it once; only its salted hash is stored. The audit trail records it."""
    from risk.catalog import Catalog, default_catalog_url
    from risk.keys import KeyStore, Role

    if role not in Role.__members__.values():
        raise _fail(f"--role must be one of {', '.join(r.value for r in Role)}, not {role!r}")
    if agent and role != Role.AGENT:
        raise _fail(f"--agent binds agent keys only; {role} keys act for no agent")
    try:
        keys = KeyStore(Catalog(database or default_catalog_url()))
        key, token = keys.create(tenant, role, note, agents=agent or None)
    except (RiskError, ValueError) as exc:
        raise _fail(str(exc)) from None
    try:
        detail: dict[str, object] = {"key_id": key.key_id, "role": key.role.value}
        if key.agents is not None:
            detail["agents"] = list(key.agents)
        _key_event(database, audit, key.tenant, {"kind": "key_created", "detail": detail})
    except (RiskError, ValueError) as exc:  # no key without a trace: it is revoked, never shown
        keys.revoke(key.tenant, key.key_id)
        raise _fail(f"the key was not made: its creation could not be audited ({exc})", code=1) from None
    bound = f", bound to agents {', '.join(key.agents)}" if key.agents is not None else ""
    err.print(f"key {key.key_id} for tenant {key.tenant}, role {key.role.value}{bound}; it is shown only now:")
    print(token)


@keys_app.command("list")
def keys_list(tenant: Annotated[str, typer.Option(help="Tenant name.")], database: DatabaseUrl = None) -> None:
    """List a tenant's keys (ids and roles, never the keys)."""
    from risk.catalog import Catalog, default_catalog_url
    from risk.keys import KeyStore

    for key in KeyStore(Catalog(database or default_catalog_url())).list(tenant):
        print(json.dumps({"key_id": key.key_id, "role": key.role.value, "created_at": key.created_at,
                          "revoked_at": key.revoked_at, "note": key.note,
                          "agents": key.agents}))  # fmt: skip


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key id (the part after rk_).")],
    tenant: Annotated[str, typer.Option(help="Tenant name.")],
    database: DatabaseUrl = None,
    audit: KeysAuditUrl = None,
) -> None:
    """Revoke a key; every worker refuses it within a few seconds. The audit trail records it."""
    from risk.catalog import Catalog, default_catalog_url
    from risk.keys import KeyStore

    if not KeyStore(Catalog(database or default_catalog_url())).revoke(tenant, key_id):
        raise _fail(f"tenant {tenant} has no live key {key_id}", code=1)
    try:
        _key_event(database, audit, tenant, {"kind": "key_revoked", "detail": {"key_id": key_id}})
    except (RiskError, ValueError) as exc:  # the revocation stands: refusing is the safe side
        raise _fail(f"revoked {key_id}, but the revocation could not be audited: {exc}", code=1) from None
    console.print(f"revoked {key_id}")


def _open(url: str | None) -> Any:
    try:
        return open_audit(url, create=False)
    except (RiskError, ValueError) as exc:
        raise _fail(str(exc)) from None


def _iso(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return utc_time(value)
    except ValueError as exc:
        raise _fail(str(exc)) from None


if __name__ == "__main__":
    app()
