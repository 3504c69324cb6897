"""Governance for LangChain tools: `govern_tools(tools, guard)` checks every call before the tool runs.

Each tool is wrapped in a `GovernedTool` with the same name, description and argument schema, so any
LangChain runner (`create_agent`, LangGraph's `ToolNode`, a hand-written loop) uses it unchanged. An allowed
call runs the original tool and its outcome is recorded; a denied call does not run, and the model gets a
`ToolMessage` with `status="error"` holding the guard's explanation; a call that pauses, rolls back or
terminates the agent raises `AgentPaused` or `AgentTerminated`, which ends the run. Needs `langchain-core`:
`pip install 'agent-risk[langchain]'`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from risk.guard import Guard
from risk.integrations.tool_map import ToolMap, ToolSpec, schema_defaults
from risk.integrations.toolcalls import GovernedCall, ToolGovernor

try:
    from langchain_core.messages import ToolMessage
    from langchain_core.tools import BaseTool
    from langchain_core.tools import tool as as_tool
    from langchain_core.utils.pydantic import get_fields
    from pydantic import PrivateAttr
    from pydantic_core import PydanticUndefined, to_jsonable_python
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("risk.integrations.langchain needs langchain-core: pip install 'agent-risk[langchain]'") from exc

__all__ = ["GovernedTool", "govern_tools"]


def govern_tools(
    tools: Iterable[BaseTool | Callable[..., Any]],
    guard: Guard,
    mapping: Mapping[str, ToolSpec] | None = None,
    *,
    agent_id: str | None = None,
) -> list[GovernedTool]:
    """The tools, each checked by `guard` before it runs; plain functions become tools first.

    `mapping` gives each tool its action type and resource; a tool it leaves out gets the defaults (see
    `risk.integrations.tool_map`). A mapping naming an unknown tool or argument raises ValueError.
    """
    originals = [t if isinstance(t, BaseTool) else as_tool(t) for t in tools]
    tool_map = ToolMap.for_tools(mapping, {t.name: _model_arguments(t) for t in originals})
    governor = ToolGovernor(guard, tool_map, agent_id=agent_id)
    return [GovernedTool.around(t, governor) for t in originals]


class GovernedTool(BaseTool):
    """A LangChain tool whose every call a guard checks before the wrapped `tool` runs.

    It delegates `run` and `arun` whole to the wrapped tool, so its argument validation, injected
    arguments, error handling and callbacks stay as they were.
    """

    tool: BaseTool
    _governor: ToolGovernor = PrivateAttr()

    @classmethod
    def around(cls, tool: BaseTool, governor: ToolGovernor) -> GovernedTool:
        governed = cls(
            tool=tool,
            name=tool.name,
            description=tool.description,
            # A single-input tool has no schema of its own: its input schema is the one the model must see.
            args_schema=tool.args_schema if tool.args_schema is not None else tool.get_input_schema(),
            return_direct=tool.return_direct,
            response_format=tool.response_format,
            tags=tool.tags,
            metadata=tool.metadata,
            extras=tool.extras,
        )
        governed._governor = governor
        return governed

    def run(self, tool_input: str | dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        call = self._governor.check(self.name, self._arguments(tool_input, kwargs.get("tool_call_id")))
        if not call.allowed:
            return _refusal(call, kwargs.get("tool_call_id"))
        try:
            output = self.tool.run(tool_input, *args, **kwargs)
        except BaseException as exc:
            self._governor.finish(call, error=f"{type(exc).__name__}: {exc}")
            raise
        self._governor.finish(call, error=_error_in(output))
        return output

    async def arun(self, tool_input: str | dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        call = self._governor.check(self.name, self._arguments(tool_input, kwargs.get("tool_call_id")))
        if not call.allowed:
            return _refusal(call, kwargs.get("tool_call_id"))
        try:
            output = await self.tool.arun(tool_input, *args, **kwargs)
        except BaseException as exc:
            self._governor.finish(call, error=f"{type(exc).__name__}: {exc}")
            raise
        self._governor.finish(call, error=_error_in(output))
        return output

    def _run(self, *args: Any, **kwargs: Any) -> Any:
        # BaseTool requires it; `run` and `arun` above never reach it, since they delegate to the wrapped tool.
        raise NotImplementedError("a GovernedTool runs through run() or arun(), which check the call first")

    def _arguments(self, tool_input: str | dict[str, Any], tool_call_id: str | None) -> dict[str, Any]:
        """The arguments as the tool will get them, with the defaults of those left out (the tool acts on them
        too); injected ones (state, runtime, call id) are not the model's.

        They are read through the tool's own schema, as the tool reads them: pydantic hands an `int` argument
        sent as "01" or 1.0 to the tool as 1, and an argument sent under its alias as its field, so checked as
        sent, a blocked `account/1` or path ran as `account/01` or under the alias. Input the schema refuses
        is checked as sent; the tool refuses it too, without running.
        """
        visible = _model_arguments(self.tool)
        if isinstance(tool_input, str):
            given = {visible[0]: tool_input} if visible else {"input": tool_input}
        else:
            read: str | dict[str, Any]
            try:
                read = self.tool._parse_input(dict(tool_input), tool_call_id)
            except Exception:  # pydantic's or the tool's own validation error
                read = tool_input
            given = {key: value for key, value in (read if isinstance(read, dict) else tool_input).items()
                     if key in visible}  # fmt: skip
        # As JSON reads them (a UUID, a date or a nested model as the text and objects the tool was given).
        arguments: dict[str, Any] = to_jsonable_python(
            {**_model_defaults(self.tool), **given}, fallback=str, bytes_mode="base64"
        )  # bytes that are not UTF-8 (an image) as base64: as text, they raised before the check
        return arguments


def _model_arguments(tool: BaseTool) -> list[str]:
    """The argument names a model fills in for `tool`."""
    schema = tool.tool_call_schema
    if isinstance(schema, dict):
        return list(schema.get("properties", {}))
    return list(get_fields(schema))


def _model_defaults(tool: BaseTool) -> dict[str, Any]:
    """The defaults of the arguments a model fills in for `tool` (a default factory is not called)."""
    schema = tool.tool_call_schema
    if isinstance(schema, dict):
        return schema_defaults(schema)
    return {
        name: field.default
        for name, field in get_fields(schema).items()
        if field.default is not PydanticUndefined and field.default is not None
    }


def _refusal(call: GovernedCall, tool_call_id: str | None) -> Any:
    """What the model gets for a denied call; a pause or termination ends the run instead."""
    if call.stops_run:
        raise call.denial()
    if tool_call_id is None:
        return call.message
    return ToolMessage(call.message, tool_call_id=tool_call_id, name=call.tool, status="error")


def _error_in(output: Any) -> str | None:
    """The error a tool reported in its output (LangChain turns handled tool errors into error messages)."""
    if isinstance(output, ToolMessage) and output.status == "error":
        return str(output.content)
    return None
