"""`risk mcp-proxy`: an MCP server that governs every tool call before an upstream MCP server runs it.

    client ──stdio or streamable HTTP──> risk mcp-proxy ──stdio──> upstream server
                       tools/list: forwarded
                       tools/call: checked by the guard first; denied calls never reach the upstream

The policy file is a Guard policy (see `Guard.from_file`) with one more section, `tools:`, that says what
each tool does (see `risk.integrations.tool_map`); calls are checked as the framework integrations check
theirs (see `risk.integrations.toolcalls`). A denied call comes back as a tool result with `isError: true`
whose text says why, so the model can read it; the upstream's answer to an allowed call is passed through
unchanged and its success or error is recorded as the action's outcome. Only tools are
proxied: the upstream's resources and prompts are not offered to the client.

The upstream has `tool_timeout` seconds (policy file or `--tool-timeout`, default 60) to answer a call; one
it does not answer in time, or does not answer because it exited, comes back to the client as an error
result, and its outcome is recorded as of a call that may have run. A tools/list has as long: one it does not
answer in time is an error to the client (and a call that needed it is refused), and at the start, where the
gateway reads the upstream's list before it serves, it ends the gateway with `UpstreamFailed`. Once the
upstream has exited, every later call is refused without a check (nothing can run it) and the gateway ends
with `UpstreamGone`: over HTTP at once, on stdio when the client closes the connection (the client's stdin
read cannot be cut short).

A call is checked as the upstream will read its arguments, from the tool's input schema in `tools/list`:
an argument left out has its default, and one sent as JSON text where the tool does not take plain text is
decoded, as the MCP SDK's servers decode it. A call to a tool the upstream does not list is refused.

Needs the `mcp` extra: `pip install 'agent-risk[mcp]'`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections.abc import AsyncIterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import mcp.types as types
import uvicorn
from anyio.streams.memory import MemoryObjectSendStream
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage

from risk.errors import PolicyError, RiskError
from risk.guard import Guard
from risk.integrations.tool_map import ToolMap, conform, schema_defaults
from risk.integrations.toolcalls import ToolGovernor
from risk.policy import load_policy_file

MAX_ERROR_CHARS = 500
MAX_LIST_PAGES = 100  # tools/list pages read to find a tool the client never listed
DEFAULT_TOOL_TIMEOUT = 60.0  # seconds the upstream has to answer a tools/call (the TypeScript SDK's request default)
UPSTREAM_GONE = "the upstream MCP server has exited, so no tool can run; restart the gateway"
HTTP_SHUTDOWN_SECONDS = 5  # for answers still being sent when the gateway stops serving HTTP

log = logging.getLogger("risk")


class UpstreamGone(RiskError):
    """The upstream MCP server exited while the gateway served it; restart the gateway."""


class UpstreamFailed(RiskError):
    """The gateway could not read the upstream MCP server's tools before serving: not answered in time, or refused."""


@dataclass(frozen=True, slots=True)
class GatewayPolicy:
    """A policy file read for the gateway: the guard it configures, its `tools:` section and its `tool_timeout`
    (seconds the upstream has to answer a call)."""

    guard: Guard
    tools: ToolMap
    tool_timeout: float = DEFAULT_TOOL_TIMEOUT

    @classmethod
    def from_file(cls, path: str | Path, *, tool_timeout: float | None = None, **overrides: Any) -> GatewayPolicy:
        """The policy in the file at `path`; `tool_timeout` (say from the command line) overrides the file's."""
        fields = load_policy_file(path)
        tools = ToolMap.from_config(fields.pop("tools", None))
        in_file = fields.pop("tool_timeout", DEFAULT_TOOL_TIMEOUT)
        if tool_timeout is None:
            timeout = _seconds(in_file, f"{path}: tool_timeout")
        else:
            timeout = _seconds(tool_timeout, "--tool-timeout")
        return cls(Guard.from_fields(fields, source=str(path), **overrides), tools, timeout)


def _seconds(value: Any, source: str) -> float:
    """`value` as seconds for the upstream to answer a call: finite and above 0, since a call that may wait
    forever is what the timeout is there to prevent."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise PolicyError(f"{source} must be a number of seconds above 0, not {value!r}")
    return float(value)


class GovernedTools:
    """Tool calls checked by a guard before `upstream` runs them, their outcomes recorded after.

    `upstream_gone` is set once the upstream has exited (see `relay_upstream`); `timeout` is the seconds it
    has to answer a call.
    """

    def __init__(
        self,
        guard: Guard,
        tools: ToolMap,
        upstream: ClientSession,
        *,
        session_id: str | None = None,
        timeout: float = DEFAULT_TOOL_TIMEOUT,
        upstream_gone: anyio.Event | None = None,
    ):
        self.governor = ToolGovernor(guard, tools, session_id=session_id)
        self.upstream = upstream
        self.timeout = timeout
        self.upstream_gone = upstream_gone or anyio.Event()
        self.schemas: dict[str, dict[str, Any]] = {}  # tool name -> its input schema, from the last tools/list

    async def list_tools(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        if self.upstream_gone.is_set():
            raise MCPError(code=types.CONNECTION_CLOSED, message=UPSTREAM_GONE)
        result = await self._upstream_list(params)
        self.schemas.update({tool.name: tool.input_schema for tool in result.tools})
        return result

    async def call_tool(
        self, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        arguments = params.arguments or {}
        if self.upstream_gone.is_set():  # refused unchecked: a check would record as allowed a call that cannot run
            return _error_result(f"denied: {UPSTREAM_GONE}")
        try:
            schema = await self._input_schema(params.name)
        except MCPError as exc:  # the upstream's list, read again for a tool not in it, did not come
            return _error_result(f"denied: {params.name}: {exc.message}")
        if schema is None:  # nothing says how the upstream reads the arguments: they cannot be checked
            return _error_result(f"denied: {params.name} is not a tool the upstream lists")
        try:
            read = as_the_tool_reads(arguments, schema)
        except ValueError as exc:  # an argument of a type the tool does not take: what it would act on is unknown
            return _error_result(f"denied: {params.name}: {exc}")
        call = self.governor.check(params.name, read)
        if not call.allowed:
            return _error_result(call.message)
        try:
            result = await self.upstream.call_tool(params.name, arguments, read_timeout_seconds=self.timeout)
        except MCPError as exc:
            unanswered = self._unanswered(exc)
            if unanswered is None:  # the upstream refused the request: the client gets its error as it was
                self.governor.finish(call, error=_clip(f"upstream error {exc.code}: {exc.message}"))
                raise
            # It may have run (or may still be running, after a timeout): its undo stays unsettled, as for a cancel.
            self.governor.finish(call, error=f"no answer, it may have run: {unanswered}", over=False)
            return _error_result(f"{params.name}: {unanswered}; the call may have run")
        except BaseException as exc:  # the upstream failed, or the client gave up waiting: it may still be running
            why = f"{type(exc).__name__}: {exc}"
            self.governor.finish(call, error=_clip(f"no answer, it may have run: {why}"), over=False)
            raise
        size = len(result.model_dump_json(by_alias=True).encode())  # the client gets an error's content too
        error = _clip(_text(result) or "the tool reported an error") if result.is_error else None
        self.governor.finish(call, error=error, size=size)
        return result

    def _unanswered(self, exc: MCPError) -> str | None:
        """Why the upstream gave no answer, when `exc` says it gave none: it exited, or it took too long (the SDK
        then sent it a cancel); None for an error the upstream itself answered."""
        if exc.code == types.CONNECTION_CLOSED and self.upstream_gone.is_set():
            return "the upstream server exited before it answered"
        if exc.code == types.REQUEST_TIMEOUT:
            return f"the upstream server did not answer within {self.timeout:g} s"
        return None

    async def read_schemas(self) -> dict[str, dict[str, Any]]:
        """Every tool's input schema, from the upstream's list (as many pages as MAX_LIST_PAGES)."""
        cursor: str | None = None
        for _ in range(MAX_LIST_PAGES):
            page = await self._upstream_list(types.PaginatedRequestParams(cursor=cursor) if cursor else None)
            self.schemas.update({tool.name: tool.input_schema for tool in page.tools})
            cursor = page.next_cursor
            if not cursor:
                break
        return self.schemas

    async def _upstream_list(self, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        """A page of the upstream's tools/list, which has as long as a call to be answered."""
        try:
            with anyio.fail_after(self.timeout):
                return await self.upstream.list_tools(params=params)
        except TimeoutError:
            message = f"the upstream server did not answer tools/list within {self.timeout:g} s"
            raise MCPError(code=types.REQUEST_TIMEOUT, message=message) from None

    async def _input_schema(self, name: str) -> dict[str, Any] | None:
        if name not in self.schemas:  # added since the gateway started, perhaps: read the upstream's list again
            await self.read_schemas()
        return self.schemas.get(name)


def as_the_tool_reads(arguments: Mapping[str, Any], schema: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments as an upstream with this input schema reads them, for the guard to check.

    An argument left out has its default. The MCP SDK's servers decode an argument sent as JSON text into
    the list or object it spells unless the tool takes plain text (some clients send lists that way), so
    checking the text would miss what the tool acts on: it is decoded here the same way. Its pydantic then
    converts the rest (see `conform`, whose ValueError this raises). The upstream still gets the arguments
    as the client sent them.

    >>> schema = {"properties": {"to": {"type": "array"}, "body": {"type": "string"}, "cc": {"default": "a@x"}}}
    >>> as_the_tool_reads({"to": '["b@y"]', "body": '["text"]'}, schema)
    {'cc': 'a@x', 'to': ['b@y'], 'body': '["text"]'}
    """
    properties = schema.get("properties")
    properties = properties if isinstance(properties, Mapping) else {}
    read = {**schema_defaults(schema), **arguments}
    for name, value in arguments.items():
        spec = properties.get(name)
        if not isinstance(value, str) or (isinstance(spec, Mapping) and spec.get("type") == "string"):
            continue
        try:
            decoded = json.loads(value)
        except (ValueError, RecursionError):  # not JSON: the tool gets the text, and so does the check
            continue
        if not isinstance(decoded, str | int | float):  # as the SDK: text and numbers stay text
            read[name] = decoded
    return conform(read, schema)


def _error_result(message: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=message)], is_error=True)


def _text(result: types.CallToolResult) -> str:
    return " ".join(block.text for block in result.content if isinstance(block, types.TextContent))


def _clip(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


async def relay_upstream(
    source: AsyncIterable[SessionMessage | Exception],
    sink: MemoryObjectSendStream[SessionMessage | Exception],
    gone: anyio.Event,
) -> None:
    """Pass the upstream's messages on to its session, and set `gone` when they end: the upstream exited, closed
    its output or could no longer be written to. `gone` is set before the session learns of the end, so a call
    the session then fails with "Connection closed" is known to have lost its upstream."""
    async with sink:
        try:
            async for message in source:
                await sink.send(message)
        except anyio.BrokenResourceError:  # the session closed first: the gateway is stopping, not the upstream
            return
        gone.set()
        log.error("risk mcp-proxy: %s", UPSTREAM_GONE)


async def serve(policy: GatewayPolicy, upstream_command: Sequence[str], *, http: tuple[str, int] | None = None) -> None:
    """Serve MCP, governing the upstream server that `upstream_command` starts (and stops with the proxy).

    On stdin and stdout by default, returning when the client closes the connection; with `http=(host, port)`,
    as streamable HTTP at `http://host:port/mcp`, until the process is interrupted. Every client shares the
    one upstream connection and the policy's agent. Raises UpstreamGone when the upstream exited meanwhile:
    over HTTP the gateway stops serving at once; on stdio it refuses every call until the client closes.
    """
    if not upstream_command:
        raise ValueError("no upstream server command: put it after '--', e.g. -- python server.py")
    command, *args = upstream_command
    # The upstream is ours to start, with the environment we were given (its keys, its settings).
    upstream_process = StdioServerParameters(command=command, args=args, env=dict(os.environ))
    gone = anyio.Event()
    async with (
        stdio_client(upstream_process, errlog=sys.stderr) as (read, write),
        anyio.create_task_group() as relay,
    ):
        to_session, from_upstream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
        relay.start_soon(relay_upstream, read, to_session, gone)
        async with ClientSession(from_upstream, write) as upstream:
            await _serve_upstream(policy, upstream, gone, http)
        relay.cancel_scope.cancel()
    if gone.is_set():
        raise UpstreamGone(UPSTREAM_GONE)


async def _serve_upstream(
    policy: GatewayPolicy, upstream: ClientSession, gone: anyio.Event, http: tuple[str, int] | None
) -> None:
    """Serve the client side, governing calls to `upstream` (see `serve`), until the client leaves or, over
    HTTP, the upstream is gone."""
    hello = await upstream.initialize()  # unbounded: an upstream may take long to start (npx fetching it)
    gate = GovernedTools(
        policy.guard,
        policy.tools,
        upstream,
        session_id=os.urandom(8).hex(),
        timeout=policy.tool_timeout,
        upstream_gone=gone,
    )
    # An entry for a tool or argument the upstream lacks would never apply: the tool would be read by the
    # defaults instead (a misspelt `send_mail` left `send_email` unmapped).
    try:
        schemas = await gate.read_schemas()
    except MCPError as exc:  # without the list no call can be checked as the upstream reads it
        raise UpstreamFailed(f"cannot read the upstream MCP server's tools: {exc.message}") from None
    try:
        policy.tools.check_against({name: list(schema.get("properties") or ()) for name, schema in schemas.items()})
    except ValueError as exc:
        raise PolicyError(f"tools: {exc}") from None
    server: Server[Any] = Server(
        hello.server_info.name,
        version=hello.server_info.version,
        instructions=hello.instructions,
        on_list_tools=gate.list_tools,
        on_call_tool=gate.call_tool,
    )
    if http is None:  # its stdin read cannot be cut short: once the upstream is gone, calls are refused until then
        async with stdio_server() as (client_read, client_write):
            await server.run(client_read, client_write, server.create_initialization_options())
        return
    host, port = http
    app = server.streamable_http_app(host=host)
    web = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=HTTP_SHUTDOWN_SECONDS)
    )

    async def stop_when_the_upstream_is_gone() -> None:
        await gone.wait()
        web.should_exit = True  # a graceful stop: answers being sent (a call the exit failed) still go out

    async with anyio.create_task_group() as watch:
        watch.start_soon(stop_when_the_upstream_is_gone)
        await web.serve()
        watch.cancel_scope.cancel()
