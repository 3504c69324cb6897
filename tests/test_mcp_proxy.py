"""The MCP gateway, end to end with the real `mcp` SDK: a real client starts `risk mcp-proxy`, which starts a
real upstream server (tests/mcp_upstream.py) with a tool that writes files and one that reads them.

The tool-map tests at the end need no MCP at all.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import mcp.types as types
import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from services import free_port

from risk import ActionType, PolicyError
from risk.audit.record import AuditRecord
from risk.audit.store import open_audit, records, verify_store
from risk.integrations.tool_map import ToolMap, action_type_for, conform

UPSTREAM = Path(__file__).resolve().parent / "mcp_upstream.py"
T = TypeVar("T")


def policy_file(tmp_path: Path, *, mode: str = "block") -> Path:
    """Writes allowed under `allowed/`, anything under `locked/` blocked; rules only, so scores are fixed."""
    (tmp_path / "allowed").mkdir(exist_ok=True)
    (tmp_path / "locked").mkdir(exist_ok=True)
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"""\
agent_id: notes-agent
audit: sqlite:///{tmp_path}/audit.db
model: null
online: false
mode: {mode}
allowed_resources: ["{tmp_path}/allowed/*"]
blocked_resources: ["{tmp_path}/locked/*"]
tools:
  write_file: {{action_type: file_write, resource: "{{path}}"}}
""",
        encoding="utf-8",
    )
    return path


def proxy_command(policy: Path, upstream: Path = UPSTREAM) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "risk.cli", "mcp-proxy", "--policy", str(policy), "--", sys.executable, str(upstream)],
        cwd=policy.parent,
        env=dict(os.environ),  # the SDK passes on only a few variables: keep PYTHONPATH, so this code is tested
    )


def through(server: StdioServerParameters, scenario: Callable[[ClientSession], Awaitable[T]]) -> T:
    """Run `scenario` with a client session connected to `server` over stdio."""

    async def main() -> T:
        async with stdio_client(server) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            return await scenario(session)

    return anyio.run(main)


def audit(tmp_path: Path) -> list[AuditRecord]:
    store = open_audit(f"sqlite:///{tmp_path}/audit.db", create=False)
    try:
        return list(records(store))
    finally:
        store.close()


def text(result: types.CallToolResult) -> str:
    return " ".join(block.text for block in result.content if isinstance(block, types.TextContent))


def test_tools_list_is_the_upstream_list(tmp_path: Path) -> None:
    async def names_and_schemas(session: ClientSession) -> list[tuple[str, Any]]:
        return [(t.name, t.input_schema) for t in (await session.list_tools()).tools]

    direct = through(StdioServerParameters(command=sys.executable, args=[str(UPSTREAM)]), names_and_schemas)
    proxied = through(proxy_command(policy_file(tmp_path)), names_and_schemas)
    assert proxied == direct
    assert {name for name, _ in proxied} == {"write_file", "read_file"}


def test_allowed_call_runs_and_blocked_call_never_reaches_the_upstream(tmp_path: Path) -> None:
    policy = policy_file(tmp_path)
    locked = tmp_path / "locked" / "keys.txt"
    locked.write_text("original", encoding="utf-8")

    async def scenario(session: ClientSession) -> tuple[types.CallToolResult, types.CallToolResult]:
        allowed = await session.call_tool("write_file", {"path": f"{tmp_path}/allowed/a.txt", "content": "hello"})
        blocked = await session.call_tool("write_file", {"path": str(locked), "content": "overwritten"})
        return allowed, blocked

    allowed, blocked = through(proxy_command(policy), scenario)

    assert not allowed.is_error
    assert (tmp_path / "allowed" / "a.txt").read_text(encoding="utf-8") == "hello"
    assert blocked.is_error
    assert text(blocked).startswith("write_file: denied (blocked")
    assert "matches blocked pattern" in text(blocked)
    assert locked.read_text(encoding="utf-8") == "original"

    trail = audit(tmp_path)
    decisions = [r for r in trail if r.kind == "decision"]
    assert [(d.decision, d.outcome, d.resource) for d in decisions] == [
        ("allow", "allowed", f"{tmp_path}/allowed/a.txt"),
        ("deny", "blocked", str(locked)),
    ]
    denial = decisions[1]
    assert denial.action_type == "file_write"
    assert "resource_blocked" in [r["code"] for r in denial.reasons]
    outcomes = {r.action_id: r for r in trail if r.kind == "outcome"}
    assert outcomes[decisions[0].action_id].outcome == "success"
    assert denial.action_id not in outcomes  # it never ran, so nothing ran to report
    assert decisions[0].session_id == decisions[1].session_id is not None
    verification = verify_store(open_audit(f"sqlite:///{tmp_path}/audit.db", create=False))
    assert verification.ok and verification.count == len(trail)
    cli = subprocess.run(
        [sys.executable, "-m", "risk.cli", "audit", "verify", "--audit", f"sqlite:///{tmp_path}/audit.db"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr


def test_streamable_http_governs_calls_the_same_way(tmp_path: Path) -> None:
    port = free_port()  # for the proxy to listen on
    policy = policy_file(tmp_path)
    command = [sys.executable, "-m", "risk.cli", "mcp-proxy", "--policy", str(policy), "--http", f"127.0.0.1:{port}"]
    proxy = subprocess.Popen(
        [*command, "--", sys.executable, str(UPSTREAM)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        assert proxy.stderr is not None
        for line in proxy.stderr:  # uvicorn says when it listens; an exit ends the loop instead
            if "Uvicorn running on" in line:
                break
        else:
            pytest.fail(f"the proxy exited with {proxy.wait()} before it listened")

        async def main() -> tuple[list[str], types.CallToolResult, types.CallToolResult]:
            async with (
                streamable_http_client(f"http://127.0.0.1:{port}/mcp") as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                names = [t.name for t in (await session.list_tools()).tools]
                allowed = await session.call_tool("write_file", {"path": f"{tmp_path}/allowed/h.txt", "content": "x"})
                blocked = await session.call_tool("write_file", {"path": f"{tmp_path}/locked/h.txt", "content": "x"})
                return names, allowed, blocked

        names, allowed, blocked = anyio.run(main)
    finally:
        proxy.terminate()
        proxy.wait(timeout=30)

    assert sorted(names) == ["read_file", "write_file"]
    assert not allowed.is_error and (tmp_path / "allowed" / "h.txt").read_text(encoding="utf-8") == "x"
    assert blocked.is_error and "matches blocked pattern" in text(blocked)
    assert not (tmp_path / "locked" / "h.txt").exists()
    decisions = [r for r in audit(tmp_path) if r.kind == "decision"]
    assert [d.outcome for d in decisions] == ["allowed", "blocked"]


def test_tool_error_is_forwarded_and_recorded_as_a_failed_outcome(tmp_path: Path) -> None:
    missing = f"{tmp_path}/allowed/missing.txt"

    async def scenario(session: ClientSession) -> types.CallToolResult:
        return await session.call_tool("read_file", {"path": missing})

    result = through(proxy_command(policy_file(tmp_path)), scenario)

    assert result.is_error and f"no such file: {missing}" in text(result)
    trail = audit(tmp_path)
    (decision,) = [r for r in trail if r.kind == "decision"]
    assert decision.action_type == "file_read"  # not in tools:, so from the tool's name
    assert decision.resource == missing  # and the resource from its `path` argument
    (outcome,) = [r for r in trail if r.kind == "outcome"]
    assert outcome.action_id == decision.action_id
    assert outcome.outcome == "error" and missing in outcome.detail["error"]
    # The client got the error's text: it counts towards max_bytes_per_window, in bytes as sent.
    assert outcome.detail["bytes"] == len(result.model_dump_json(by_alias=True).encode())


def test_pause_denies_every_later_call_until_a_person_resumes(tmp_path: Path) -> None:
    async def scenario(session: ClientSession) -> list[types.CallToolResult]:
        return [
            await session.call_tool("write_file", {"path": f"{tmp_path}/elsewhere.txt", "content": "x"}),
            await session.call_tool("write_file", {"path": f"{tmp_path}/allowed/b.txt", "content": "y"}),
        ]

    outside, later = through(proxy_command(policy_file(tmp_path, mode="pause")), scenario)

    assert outside.is_error and "matches no allowed pattern" in text(outside)
    assert later.is_error and "paused" in text(later)
    assert not (tmp_path / "elsewhere.txt").exists()
    assert not (tmp_path / "allowed" / "b.txt").exists()


def test_rollback_mode_restores_what_the_upstream_wrote(tmp_path: Path) -> None:
    notes = tmp_path / "allowed" / "notes.txt"

    async def scenario(session: ClientSession) -> list[types.CallToolResult]:
        notes.write_text("before", encoding="utf-8")
        return [
            await session.call_tool("write_file", {"path": str(notes), "content": "overwritten"}),
            await session.call_tool("write_file", {"path": f"{tmp_path}/allowed/new.txt", "content": "new"}),
            await session.call_tool("write_file", {"path": f"{tmp_path}/locked/keys.txt", "content": "x"}),
        ]

    overwrite, create, blocked = through(proxy_command(policy_file(tmp_path, mode="rollback")), scenario)

    assert not overwrite.is_error and not create.is_error
    assert blocked.is_error and "rolled_back" in text(blocked)
    assert notes.read_text(encoding="utf-8") == "before"
    assert not (tmp_path / "allowed" / "new.txt").exists()
    assert [r.outcome for r in audit(tmp_path) if r.kind == "rollback"] == ["undone", "undone"]


def test_a_call_without_its_resource_argument_is_refused_before_the_guard(tmp_path: Path) -> None:
    async def scenario(session: ClientSession) -> types.CallToolResult:
        return await session.call_tool("write_file", {"content": "no path"})

    result = through(proxy_command(policy_file(tmp_path)), scenario)

    assert result.is_error and "'{path}'" in text(result)
    assert not [r for r in audit(tmp_path) if r.kind == "decision"]


MAILER = """
from pathlib import Path
from mcp.server.mcpserver import MCPServer

server = MCPServer("mail")
OUTBOX = Path(__file__).with_name("outbox.txt")


@server.tool()
def send_message(to: list[str], body: str) -> str:
    \"\"\"Send `body` to each recipient.\"\"\"
    with OUTBOX.open("a") as out:
        out.writelines(f"{r}\\n" for r in to)
    return f"sent to {to}"


@server.tool()
def send_report(body: str, to: str = "boss@evil.example") -> str:
    \"\"\"Send a report, by default to the boss.\"\"\"
    with OUTBOX.open("a") as out:
        out.write(f"{to}\\n")
    return f"sent to {to}"


@server.tool()
def close_account(account_id: int) -> str:
    \"\"\"Close a bank account.\"\"\"
    with OUTBOX.open("a") as out:
        out.write(f"closed {account_id}\\n")
    return "closed"


if __name__ == "__main__":
    server.run()
"""


def test_a_call_is_checked_as_the_upstream_reads_its_arguments(tmp_path: Path) -> None:
    upstream = tmp_path / "mailer.py"
    upstream.write_text(MAILER, encoding="utf-8")
    policy = tmp_path / "gateway.yaml"
    policy.write_text(
        f"""\
agent_id: mailer
audit: sqlite:///{tmp_path}/audit.db
model: null
online: false
mode: block
blocked_resources: ["mail/*@evil.example", "bank.account/1"]
tools:
  send_message: {{action_type: network_request, resource: "mail/{{to}}"}}
  send_report: {{action_type: network_request, resource: "mail/{{to}}"}}
  close_account: {{action_type: api_call, resource: "bank.account/{{account_id}}"}}
""",
        encoding="utf-8",
    )

    async def scenario(session: ClientSession) -> list[types.CallToolResult]:
        # Never listed by this client: the gateway reads the upstream's list itself to learn the schemas.
        return [
            await session.call_tool("send_message", {"to": ["ann@x.example"], "body": "hi"}),
            # A list sent as JSON text, which the upstream decodes into a list of one blocked recipient.
            await session.call_tool("send_message", {"to": '["boss@evil.exampl\\u0065"]', "body": "x"}),
            await session.call_tool("send_message", {"to": '{"not": "a list"}', "body": "x"}),
            await session.call_tool("send_report", {"body": "x"}),  # its default recipient is blocked
            await session.call_tool("no_such_tool", {"path": "x"}),
            # The upstream's pydantic reads "01" and 1.0 as the integer 1: a blocked account, whatever it is sent as.
            await session.call_tool("close_account", {"account_id": 1.0}),
            await session.call_tool("close_account", {"account_id": "01"}),
        ]

    sent, as_text, an_object, by_default, unknown, as_float, as_string = through(
        proxy_command(policy, upstream), scenario
    )

    assert not sent.is_error
    assert as_text.is_error and "mail/boss@evil.example" in text(as_text)
    assert an_object.is_error and "'to' must be array, as the tool's schema says" in text(an_object)
    assert as_float.is_error and "bank.account/1" in text(as_float)
    assert as_string.is_error and "'account_id' must be integer" in text(as_string)
    assert by_default.is_error and "mail/boss@evil.example" in text(by_default)
    assert unknown.is_error and "not a tool the upstream lists" in text(unknown)
    assert (tmp_path / "outbox.txt").read_text(encoding="utf-8") == "ann@x.example\n"


def test_an_argument_the_tool_does_not_take_is_not_what_gets_checked(tmp_path: Path) -> None:
    """send_message is not mapped, so its resource is the first resource-like argument the call gives: a `path`
    the tool does not take (and ignores) was checked in place of its real `to`."""
    upstream = tmp_path / "mailer.py"
    upstream.write_text(MAILER, encoding="utf-8")
    policy = tmp_path / "gateway.yaml"
    policy.write_text(
        f"audit: sqlite:///{tmp_path}/audit.db\nmodel: null\nonline: false\nblocked_resources: ['*@evil.example']\n",
        encoding="utf-8",
    )

    async def scenario(session: ClientSession) -> types.CallToolResult:
        decoy = {"to": ["boss@evil.example"], "body": "secrets", "path": "harmless.txt"}
        return await session.call_tool("send_message", decoy)

    result = through(proxy_command(policy, upstream), scenario)

    assert result.is_error and "boss@evil.example" in text(result)
    assert not (tmp_path / "outbox.txt").exists()
    assert [(r.resource, r.decision) for r in audit(tmp_path) if r.kind == "decision"] == [
        ("boss@evil.example", "deny")
    ]


SLOW_WRITER = """
import time
from pathlib import Path
from mcp.server.mcpserver import MCPServer

server = MCPServer("slow")


@server.tool()
def slow_write(path: str, content: str) -> str:
    \"\"\"Write `content` to `path`, slowly.\"\"\"
    time.sleep(1.5)
    Path(path).write_text(content)
    return "wrote"


@server.tool()
def write_file(path: str, content: str) -> str:
    \"\"\"Write `content` to `path`.\"\"\"
    Path(path).write_text(content)
    return "wrote"


if __name__ == "__main__":
    server.run()
"""


def test_a_call_the_client_gave_up_on_is_still_undone_by_a_rollback(tmp_path: Path) -> None:
    """The upstream finished the write after the client cancelled: its undo had noted the file as it was at the
    cancel, so the rollback took the write for someone else's later change and left it."""
    upstream = tmp_path / "slow.py"
    upstream.write_text(SLOW_WRITER, encoding="utf-8")
    policy = policy_file(tmp_path, mode="rollback")
    with policy.open("a", encoding="utf-8") as more:
        more.write('  slow_write: {action_type: file_write, resource: "{path}"}\n')
    notes = tmp_path / "allowed" / "notes.txt"
    notes.write_text("before", encoding="utf-8")

    async def scenario(session: ClientSession) -> types.CallToolResult:
        with anyio.move_on_after(0.5):  # the SDK's client sends notifications/cancelled
            await session.call_tool("slow_write", {"path": str(notes), "content": "overwritten"})
        with anyio.fail_after(10):
            while notes.read_text(encoding="utf-8") != "overwritten":
                await anyio.sleep(0.05)
        return await session.call_tool("write_file", {"path": f"{tmp_path}/locked/keys.txt", "content": "x"})

    blocked = through(proxy_command(policy, upstream), scenario)

    assert blocked.is_error and "rolled_back" in text(blocked)
    assert notes.read_text(encoding="utf-8") == "before"
    trail = audit(tmp_path)
    (outcome,) = [r for r in trail if r.kind == "outcome"]
    assert outcome.outcome == "error" and "it may have run" in outcome.detail["error"]
    assert [r.outcome for r in trail if r.kind == "rollback"] == ["undone"]


STALLING = """
import os
import time
from pathlib import Path
from mcp.server.mcpserver import MCPServer

server = MCPServer("stalling")


@server.tool()
def write_when_released(path: str, content: str, release: str) -> str:
    \"\"\"Write `content` to `path` once the file `release` exists (or after a minute).\"\"\"
    for _ in range(1200):
        if Path(release).exists():
            break
        time.sleep(0.05)
    Path(path).write_text(content)
    return "wrote"


@server.tool()
def write_and_exit(path: str, content: str) -> str:
    \"\"\"Write `content` to `path`, then exit without answering.\"\"\"
    Path(path).write_text(content)
    os._exit(3)


@server.tool()
def write_file(path: str, content: str) -> str:
    \"\"\"Write `content` to `path`.\"\"\"
    Path(path).write_text(content)
    return "wrote"


if __name__ == "__main__":
    server.run()
"""


def stalling_gateway(tmp_path: Path, *, mode: str = "block", extra: str = "") -> tuple[Path, Path]:
    """The STALLING upstream and a policy mapping its tools as file writes; `extra` is added to the policy."""
    upstream = tmp_path / "stalling.py"
    upstream.write_text(STALLING, encoding="utf-8")
    policy = policy_file(tmp_path, mode=mode)
    with policy.open("a", encoding="utf-8") as more:
        more.write('  write_when_released: {action_type: file_write, resource: "{path}"}\n')
        more.write('  write_and_exit: {action_type: file_write, resource: "{path}"}\n')
        more.write(extra)
    return policy, upstream


@pytest.mark.parametrize("set_in", ["policy file", "command line"])
def test_a_call_the_upstream_does_not_answer_in_time_is_an_error_and_still_undone_by_a_rollback(
    tmp_path: Path, set_in: str
) -> None:
    """An upstream that hung held the client's call forever; now the client gets an error result after the
    timeout, and the call is recorded as one that may have run: the write it made later is rolled back."""
    in_file = "tool_timeout: 0.5\n" if set_in == "policy file" else "tool_timeout: 600\n"
    policy, upstream = stalling_gateway(tmp_path, mode="rollback")
    policy.write_text(in_file + policy.read_text(), encoding="utf-8")  # top-level, before the tools: section
    server = proxy_command(policy, upstream)
    if set_in == "command line":  # overrides the file's 600
        server.args[server.args.index("--") : 0] = ["--tool-timeout", "0.5"]
    notes = tmp_path / "allowed" / "notes.txt"
    notes.write_text("before", encoding="utf-8")
    release = tmp_path / "release"

    async def scenario(session: ClientSession) -> tuple[types.CallToolResult, types.CallToolResult]:
        with anyio.fail_after(30):  # a safety bound: the gateway's timeout is what ends this call
            stalled = await session.call_tool(
                "write_when_released", {"path": str(notes), "content": "overwritten", "release": str(release)}
            )
        release.touch()  # the upstream was never stopped: it writes now, after the client was told it timed out
        with anyio.fail_after(30):
            while notes.read_text(encoding="utf-8") != "overwritten":
                await anyio.sleep(0.05)
        return stalled, await session.call_tool("write_file", {"path": f"{tmp_path}/locked/k.txt", "content": "x"})

    stalled, blocked = through(server, scenario)

    assert stalled.is_error
    assert text(stalled) == (
        "write_when_released: the upstream server did not answer within 0.5 s; the call may have run"
    )
    assert blocked.is_error and "rolled_back" in text(blocked)
    assert notes.read_text(encoding="utf-8") == "before"  # its undo was not settled at the timeout
    trail = audit(tmp_path)
    (outcome,) = [r for r in trail if r.kind == "outcome"]
    assert outcome.outcome == "error"
    assert outcome.detail["error"] == "no answer, it may have run: the upstream server did not answer within 0.5 s"
    assert [r.outcome for r in trail if r.kind == "rollback"] == ["undone"]


@pytest.mark.parametrize(
    ("in_file", "flag", "message"),
    [
        ("tool_timeout: 0\n", [], "tool_timeout must be a number of seconds above 0, not 0"),
        ("tool_timeout: never\n", [], "tool_timeout must be a number of seconds above 0, not 'never'"),
        ("tool_timeout: .inf\n", [], "tool_timeout must be a number of seconds above 0, not inf"),
        ("", ["--tool-timeout", "-1"], "--tool-timeout must be a number of seconds above 0, not -1.0"),
    ],
)
def test_a_tool_timeout_that_is_no_bound_stops_the_gateway(
    tmp_path: Path, in_file: str, flag: list[str], message: str
) -> None:
    policy = policy_file(tmp_path)
    policy.write_text(in_file + policy.read_text(), encoding="utf-8")
    command = [sys.executable, "-m", "risk.cli", "mcp-proxy", "--policy", str(policy), *flag]
    ran = subprocess.run([*command, "--", sys.executable, str(UPSTREAM)], capture_output=True, text=True,
                         check=False, stdin=subprocess.DEVNULL, timeout=60)  # fmt: skip
    assert ran.returncode == 2
    assert message in " ".join(ran.stderr.split()) and "Traceback" not in ran.stderr


class RawClient:
    """An MCP client speaking JSON-RPC lines to the gateway's stdin and stdout itself, so the test can close
    the connection and see the gateway's exit status and stderr (the SDK's client owns its process)."""

    def __init__(self, policy: Path, upstream: Path) -> None:
        server = proxy_command(policy, upstream)
        self.stderr = policy.parent / "gateway.stderr"
        with self.stderr.open("w", encoding="utf-8") as errors:
            self.process = subprocess.Popen(
                [server.command, *server.args],
                cwd=server.cwd,
                env=server.env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
            )
        self.last_id = 0
        hello = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}
        assert "result" in self.request("initialize", hello)
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()

    def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """The gateway's answer to one request (notifications it sends meanwhile are skipped)."""
        self.last_id += 1
        self.send({"jsonrpc": "2.0", "id": self.last_id, "method": method, "params": params})
        assert self.process.stdout is not None
        while True:
            ready, _, _ = select.select([self.process.stdout], [], [], 30)  # a safety bound
            assert ready, f"no answer to {method} in 30 s"
            line = self.process.stdout.readline()
            assert line, f"the gateway closed its output before answering {method}"
            message: dict[str, Any] = json.loads(line)
            if message.get("id") == self.last_id:
                return message

    def close(self) -> tuple[int, str]:
        """Close the connection; the gateway's exit status and what it wrote on stderr."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        status = self.process.wait(timeout=60)
        self.process.stdout.close()
        return status, self.stderr.read_text(encoding="utf-8")


def test_after_the_upstream_exits_no_call_is_checked_and_the_gateway_exits_with_an_error(tmp_path: Path) -> None:
    """The gateway went on after its upstream died: every later call was checked and recorded as allowed, then
    failed with "Connection closed", and it exited 0. Now the call in flight gets an error result saying the
    upstream exited (recorded as one that may have run), later calls are refused unchecked, and the gateway
    exits with status 1 saying why."""
    policy, upstream = stalling_gateway(tmp_path)
    notes = tmp_path / "allowed" / "notes.txt"
    client = RawClient(policy, upstream)
    try:
        in_flight = client.request(
            "tools/call", {"name": "write_and_exit", "arguments": {"path": str(notes), "content": "x"}}
        )
        later = client.request(
            "tools/call", {"name": "write_file", "arguments": {"path": f"{tmp_path}/allowed/b.txt", "content": "y"}}
        )
        listed = client.request("tools/list", {})
    finally:
        status, stderr = client.close()

    assert in_flight["result"]["isError"] is True
    assert in_flight["result"]["content"][0]["text"] == (
        "write_and_exit: the upstream server exited before it answered; the call may have run"
    )
    assert notes.read_text(encoding="utf-8") == "x"  # it did run
    assert later["result"]["isError"] is True
    assert "the upstream MCP server has exited" in later["result"]["content"][0]["text"]
    assert not (tmp_path / "allowed" / "b.txt").exists()
    assert "the upstream MCP server has exited" in listed["error"]["message"]
    assert status == 1
    assert "the upstream MCP server has exited, so no tool can run; restart the gateway" in " ".join(stderr.split())
    assert "Traceback" not in stderr
    trail = audit(tmp_path)
    assert [(r.resource, r.decision) for r in trail if r.kind == "decision"] == [(str(notes), "allow")]
    (outcome,) = [r for r in trail if r.kind == "outcome"]
    assert outcome.outcome == "error"
    assert outcome.detail["error"] == "no answer, it may have run: the upstream server exited before it answered"
    assert verify_store(open_audit(f"sqlite:///{tmp_path}/audit.db", create=False)).ok


def test_over_http_the_gateway_stops_when_the_upstream_exits(tmp_path: Path) -> None:
    port = free_port()
    policy, upstream = stalling_gateway(tmp_path)
    command = [sys.executable, "-m", "risk.cli", "mcp-proxy", "--policy", str(policy), "--http", f"127.0.0.1:{port}"]
    proxy = subprocess.Popen([*command, "--", sys.executable, str(upstream)], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path)  # fmt: skip
    try:
        assert proxy.stderr is not None
        for line in proxy.stderr:
            if "Uvicorn running on" in line:
                break
        else:
            pytest.fail(f"the proxy exited with {proxy.wait()} before it listened")

        async def main() -> types.CallToolResult:
            async with (
                streamable_http_client(f"http://127.0.0.1:{port}/mcp") as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                return await session.call_tool("write_and_exit", {"path": f"{tmp_path}/allowed/h.txt", "content": "x"})

        in_flight = anyio.run(main)
        status = proxy.wait(timeout=60)  # it stops by itself
        stderr = proxy.stderr.read()
    finally:
        if proxy.poll() is None:
            proxy.kill()
            proxy.wait(timeout=30)

    assert in_flight.is_error and "exited before it answered; the call may have run" in text(in_flight)
    assert status == 1
    assert "the upstream MCP server has exited" in stderr
    (outcome,) = [r for r in audit(tmp_path) if r.kind == "outcome"]
    assert "the upstream server exited before it answered" in outcome.detail["error"]


LIST_STALLING = """
import sys
import time
from pathlib import Path

import anyio
import mcp.types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

HANG = Path(sys.argv[1])


async def list_tools(ctx, params):
    while HANG.exists():  # answers tools/list only while the file HANG does not exist
        await anyio.sleep(0.05)
    arguments = {"path": {"type": "string"}, "content": {"type": "string"}}
    return types.ListToolsResult(
        tools=[types.Tool(name="write_file", input_schema={"type": "object", "properties": arguments})]
    )


async def main():
    server = Server("list-stalling", on_list_tools=list_tools)
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


anyio.run(main)
"""


def list_stalling_gateway(tmp_path: Path) -> tuple[StdioServerParameters, Path]:
    """A gateway with a tool_timeout of 0.5 s before an upstream that does not answer tools/list while the file
    it is given exists; that file."""
    upstream = tmp_path / "list_stalling.py"
    upstream.write_text(LIST_STALLING, encoding="utf-8")
    policy = policy_file(tmp_path)
    policy.write_text("tool_timeout: 0.5\n" + policy.read_text(), encoding="utf-8")
    server = proxy_command(policy, upstream)
    hang = tmp_path / "hang"
    server.args.append(str(hang))
    return server, hang


def test_a_tools_list_the_upstream_does_not_answer_in_time_is_an_error_and_a_call_needing_it_is_refused(
    tmp_path: Path,
) -> None:
    """Only tools/call had a timeout: a client's tools/list, or a call to a tool the gateway had not seen (which
    reads the list again), waited for ever on an upstream that hung."""
    server, hang = list_stalling_gateway(tmp_path)

    async def scenario(session: ClientSession) -> tuple[str, types.CallToolResult]:
        hang.touch()
        with anyio.fail_after(30):  # a safety bound: the gateway's timeout is what ends these
            with pytest.raises(MCPError) as listed:
                await session.list_tools()
            return listed.value.error.message, await session.call_tool("read_secrets", {})

    message, call = through(server, scenario)
    assert message == "the upstream server did not answer tools/list within 0.5 s"
    assert call.is_error
    assert text(call) == "denied: read_secrets: the upstream server did not answer tools/list within 0.5 s"
    assert not [r for r in audit(tmp_path) if r.kind == "decision"]


def test_an_upstream_that_does_not_answer_the_gateways_start_stops_it_with_an_error(tmp_path: Path) -> None:
    """The gateway reads the upstream's tools/list before it serves: that waited for ever, the client's
    initialize with it."""
    server, hang = list_stalling_gateway(tmp_path)
    hang.touch()
    ran = subprocess.run([server.command, *server.args], cwd=server.cwd, env=server.env, stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert ran.returncode == 1, ran.stderr
    assert (
        "cannot read the upstream MCP server's tools: the upstream server did not answer tools/list within 0.5 s"
        in (" ".join(ran.stderr.split()))
    )
    assert "Traceback" not in ran.stderr


def test_a_tools_entry_the_upstream_does_not_list_stops_the_gateway(tmp_path: Path) -> None:
    """A misspelt entry would never apply: the tool it meant would be read by the defaults instead."""
    policy = policy_file(tmp_path)
    policy.write_text(policy.read_text().replace("write_file:", "write_files:"), encoding="utf-8")
    server = proxy_command(policy)
    ran = subprocess.run([server.command, *server.args], cwd=server.cwd, env=server.env, stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert ran.returncode == 2, ran.stderr
    assert "write_files" in ran.stderr and "read_file, write_file" in ran.stderr and "Traceback" not in ran.stderr


def test_bad_tools_section_fails_with_a_message_naming_it(tmp_path: Path) -> None:
    policy = tmp_path / "bad.yaml"
    policy.write_text("tools:\n  write_file: {action_type: file_write, resorce: '{path}'}\n", encoding="utf-8")
    run = subprocess.run(
        [sys.executable, "-m", "risk.cli", "mcp-proxy", "--policy", str(policy), "--", sys.executable, str(UPSTREAM)],
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert run.returncode == 2
    assert "tools.write_file: unknown key(s) resorce" in " ".join(run.stderr.split())
    assert run.stdout == ""  # stdout belongs to the protocol


# ---- the tools: section, without MCP ------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "expected"),
    [
        ("read_file", ActionType.FILE_READ),
        ("list_files", ActionType.FILE_READ),
        ("write_file", ActionType.FILE_WRITE),
        ("deleteFile", ActionType.FILE_DELETE),
        ("run_sql_query", ActionType.DATABASE_QUERY),
        ("insert_rows", ActionType.DATABASE_WRITE),
        ("send_email", ActionType.NETWORK_REQUEST),
        ("get_webpage", ActionType.NETWORK_REQUEST),
        ("execute_python", ActionType.CODE_EXECUTION),
        ("run_shell_command", ActionType.PROCESS_SPAWN),
        ("update_password", ActionType.PERMISSION_CHANGE),
        ("delete_file_permissions", ActionType.PERMISSION_CHANGE),  # the most dangerous reading wins
        ("get_balance", ActionType.CUSTOM),
    ],
)
def test_action_type_from_the_tool_name(tool: str, expected: ActionType) -> None:
    assert action_type_for(tool) is expected


def test_default_resource_is_the_first_resource_like_argument_else_the_tool() -> None:
    tools = ToolMap()
    assert tools.resolve("send_email", {"subject": "hi", "to": "a@x.example"}).resources == ("a@x.example",)
    assert tools.resolve("copy", {"url": "https://x.example/a", "path": "/tmp/a"}).resources == ("/tmp/a",)
    assert tools.resolve("send_email", {"recipients": ["a@x.example", "b@x.example"]}).resources == (
        "a@x.example",
        "b@x.example",
    )
    assert tools.resolve("get_balance", {}).resources == ("tool/get_balance",)
    assert tools.resolve("get_balance", {"path": None}).resources == ("tool/get_balance",)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"path": ""}, "blank"),
        ({"path": ["/tmp/secret", ""]}, "blank"),
        ({"path": ["/tmp/secret", "  "]}, "blank"),
        ({"path": ["/tmp/secret", None]}, "must be text, a number or a list"),
        ({"path": ["/tmp/secret", ["nested"]]}, "must be text, a number or a list"),
        ({"to": {"address": "eve@evil.example"}}, "must be text, a number or a list"),
        ({"recipients": []}, "empty list"),
    ],
)
def test_a_resource_argument_that_names_nothing_refuses_the_call_instead_of_checking_the_tool(
    arguments: dict[str, Any], message: str
) -> None:
    # Falling back to `tool/<name>` here would check a harmless name while the tool acts on the value.
    with pytest.raises(ValueError, match=message):
        ToolMap().resolve("delete_files", arguments)


def test_templates_fill_from_arguments_and_alternatives_take_the_first_that_fits() -> None:
    tools = ToolMap.from_config(
        {
            "update_scheduled_transaction": {
                "action_type": "api_call",
                "resource": ["bank.payee/{recipient}", "bank.scheduled/{id}"],
            },
            "add_user_to_channel": {"resource": "chat.member/{channel}/{user}"},
            "get_balance": "database_query",
        }
    )
    change = tools.resolve("update_scheduled_transaction", {"id": 7, "recipient": "US12"})
    assert (change.action_type, change.resources) == (ActionType.API_CALL, ("bank.payee/US12",))
    assert tools.resolve("update_scheduled_transaction", {"id": 7, "amount": 5}).resources == ("bank.scheduled/7",)
    add = tools.resolve("add_user_to_channel", {"channel": "general", "user": ["Ann", "Bo"]})
    assert add.resources == ("chat.member/general/Ann", "chat.member/general/Bo")
    assert add.payload == {"tool": "add_user_to_channel", "args": {"channel": "general", "user": ["Ann", "Bo"]}}
    assert tools.resolve("get_balance", {}).action_type is ActionType.DATABASE_QUERY


def test_python_forms_map_as_the_config_forms_do() -> None:
    python = ToolMap.from_config(
        {
            "write_file": (ActionType.FILE_WRITE, "path"),
            "send_money": ("api_call", "bank.payee/{recipient}"),
            "read_file": ActionType.FILE_READ,
        }
    )
    config = ToolMap.from_config(
        {
            "write_file": {"action_type": "file_write", "resource": "{path}"},
            "send_money": {"action_type": "api_call", "resource": "bank.payee/{recipient}"},
            "read_file": "file_read",
        }
    )
    calls = [
        ("write_file", {"path": "/tmp/a"}),
        ("send_money", {"recipient": ["CH9", "US1"]}),
        ("read_file", {"path": "/b"}),
    ]
    assert [python.resolve(*c) for c in calls] == [config.resolve(*c) for c in calls]
    assert python.resolve("read_file", {"path": "/b"}).resources == ("/b",)  # an action type alone: default resource


def test_a_resource_function_computes_one_resource_or_a_list() -> None:
    tools = ToolMap.from_config(
        {"send_email": (ActionType.NETWORK_REQUEST, lambda args: [f"mail/{r.lower()}" for r in args["to"]])}
    )
    email = tools.resolve("send_email", {"to": ["Ann@x.example", "bo@x.example"]})
    assert email.resources == ("mail/ann@x.example", "mail/bo@x.example")


def test_a_blank_value_in_a_template_refuses_the_call_and_bytes_name_their_path() -> None:
    """Filled into `bank.payee/{recipient}`, a blank recipient left a resource that looked like something to check;
    a path computed as bytes was checked as its repr, "b'/etc/shadow'"."""
    tools = ToolMap.from_config({"pay": ("api_call", "bank.payee/{recipient}")})
    for blank in ("", "  ", ["ann", " "]):
        with pytest.raises(ValueError, match="'recipient' is blank"):
            tools.resolve("pay", {"recipient": blank})
    tools = ToolMap.from_config({"read": ("file_read", lambda args: os.fsencode(args["path"]))})
    assert tools.resolve("read", {"path": "/etc/shadow"}).resources == ("/etc/shadow",)


def test_a_resource_function_that_fails_or_finds_nothing_refuses_the_call() -> None:
    tools = ToolMap.from_config(
        {"fails": ("custom", lambda args: args["missing"]), "finds_nothing": ("custom", lambda args: None)}
    )
    with pytest.raises(ValueError, match="could not be computed: KeyError"):
        tools.resolve("fails", {})
    with pytest.raises(ValueError, match="do not fill its resource"):
        tools.resolve("finds_nothing", {})


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"content": "x"}, "do not fill its resource"),
        ({"path": {"nested": 1}}, "must be text, a number or a list"),
        ({"path": []}, "empty list"),
        ({"path": [f"/tmp/{i}" for i in range(101)]}, "more than 100 resources"),
    ],
)
def test_arguments_that_name_no_resource_are_an_error(arguments: dict[str, Any], message: str) -> None:
    tools = ToolMap.from_config({"write_file": {"resource": "{path}"}})
    with pytest.raises(ValueError, match=message):
        tools.resolve("write_file", arguments)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("not a mapping", "tools: must map tool names"),
        ({"t": {"action_type": "teleport"}}, "tools.t: unknown action type 'teleport'"),
        ({"t": {"resource": "{a.b}"}}, "tools.t: resource template '{a.b}'"),
        ({"t": {"resource": ""}}, "tools.t: resource template ''"),
        ({"t": {"resource": []}}, "tools.t: resource must be a template or a non-empty list"),
        ({"t": {"kind": "file_read"}}, r"tools.t: unknown key\(s\) kind"),
        ({"t": ("file_read",)}, r"tools.t: .* must be \(action type, resource\)"),
        ({"t": ("file_read", "file-path")}, "tools.t: 'file-path' is not an argument name"),
        ({"t": ("file_read", None)}, "tools.t: the resource must be an argument name, a template or a callable"),
    ],
)
def test_bad_tools_section_is_a_policy_error(section: Any, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        ToolMap.from_config(section)


def test_conform_reads_inside_an_optional_as_pydantic_does() -> None:
    """Optional[UUID] and Optional[list[int]] put the format and the items inside anyOf: a UUID in braces and
    [1.0] were checked as sent, while the tool read the canonical UUID and [1]."""
    import uuid

    import pydantic

    class Args(pydantic.BaseModel):
        order: uuid.UUID | None = None
        ids: list[int] | None = None

    order = "12345678-1234-5678-1234-567812345678"
    read = conform({"order": f"{{{order}}}", "ids": [1.0, 2]}, Args.model_json_schema())
    assert read == {"order": order, "ids": [1, 2]}
    assert Args(**read) == Args(order=f"{{{order}}}", ids=[1.0, 2])  # what the tool gets
    with pytest.raises(ValueError, match="'ids' must be integer"):
        conform({"ids": [1.5]}, Args.model_json_schema())
