"""Governance for the OpenAI Agents SDK: `govern(agent, guard)` checks every function-tool call before it runs.

It uses the SDK's own tool guardrails. Before a call, an input guardrail asks the guard: an allowed call
runs; a denied one does not, and the model reads the guard's explanation as the tool's result; a call that
pauses, rolls back or terminates the agent raises the SDK's `ToolInputGuardrailTripwireTriggered`, which ends
`Runner.run` (its `.output.output_info` is the Decision). After a call, an output guardrail records the
outcome. Needs the `openai-agents` extra: `pip install 'agent-risk[openai-agents]'`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

from risk.guard import Guard
from risk.integrations.tool_map import ToolMap, ToolSpec, conform, schema_defaults
from risk.integrations.toolcalls import GovernedCall, ToolGovernor

try:
    from agents import (
        Agent,
        FunctionTool,
        ToolGuardrailFunctionOutput,
        ToolInputGuardrail,
        ToolInputGuardrailData,
        ToolOutputGuardrail,
        ToolOutputGuardrailData,
    )
    from agents.tool import default_tool_error_function
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "risk.integrations.openai_agents needs the OpenAI Agents SDK: pip install 'agent-risk[openai-agents]'"
    ) from exc

__all__ = ["govern"]

_GUARDRAIL_NAME = "agent-risk"


def govern(
    agent: Agent[Any],
    guard: Guard,
    mapping: Mapping[str, ToolSpec] | None = None,
    *,
    agent_id: str | None = None,
    allow_ungoverned: bool = False,
) -> Agent[Any]:
    """Govern every function tool of `agent` with `guard`, in place; returns the agent.

    `mapping` gives each tool its action type and resource; a tool it leaves out gets the defaults (see
    `risk.integrations.tool_map`), and a tool or argument it names that the agent does not have raises
    ValueError. Tools the guardrails cannot reach (hosted tools, MCP servers) raise ValueError unless
    `allow_ungoverned=True`. The tools are copied, so an agent sharing them stays
    as it was; an agent this one hands off to needs its own `govern` call. Governing again replaces the
    earlier guard.
    """
    functions = [tool for tool in agent.tools if isinstance(tool, FunctionTool)]
    unreachable = [
        getattr(tool, "name", type(tool).__name__) for tool in agent.tools if not isinstance(tool, FunctionTool)
    ]
    unreachable += [f"MCP server {server.name}" for server in agent.mcp_servers]
    if unreachable and not allow_ungoverned:
        raise ValueError(
            f"agent {agent.name} has tools the guard cannot check: {', '.join(unreachable)}; put MCP servers "
            "behind `risk mcp-proxy`, or pass allow_ungoverned=True to let these run unchecked"
        )
    tool_map = ToolMap.for_tools(mapping, {tool.name: _parameters(tool) for tool in functions})
    governor = ToolGovernor(guard, tool_map, agent_id=agent_id)
    pending: dict[str, GovernedCall] = {}  # tool call id -> its check, until the output guardrail records it
    agent.tools = [
        _governed(tool, governor, pending) if isinstance(tool, FunctionTool) else tool for tool in agent.tools
    ]
    return agent


def _parameters(tool: FunctionTool) -> list[str]:
    return list(tool.params_json_schema.get("properties", {}))


def _governed(tool: FunctionTool, governor: ToolGovernor, pending: dict[str, GovernedCall]) -> FunctionTool:
    """A copy of `tool` whose last input guardrail is the guard and whose first output guardrail records."""

    def check(data: ToolInputGuardrailData) -> ToolGuardrailFunctionOutput:
        context = data.context
        try:
            args = json.loads(context.tool_arguments or "{}")
        except json.JSONDecodeError:
            args = None
        if not isinstance(args, dict):
            return ToolGuardrailFunctionOutput.reject_content(f"denied: {tool.name} needs a JSON object of arguments")
        try:  # as the tool's pydantic model will read them (only OpenAI's own API enforces a strict schema)
            args = conform(args, tool.params_json_schema)
        except ValueError as exc:
            return ToolGuardrailFunctionOutput.reject_content(f"denied: {tool.name}: {exc}")
        # With pre_approval_tool_input_guardrails the SDK checks a call before a person approves it and again
        # before it runs: the first check's action is this one, and never runs as itself.
        earlier = pending.pop(context.tool_call_id, None)
        if earlier is not None:
            governor.abandon(earlier, "checked again before it ran (after its approval)")
        # An argument left out still acts with its default (a non-strict tool may omit it): check that too.
        call = governor.check(tool.name, {**schema_defaults(tool.params_json_schema), **args})
        if call.stops_run:
            return ToolGuardrailFunctionOutput.raise_exception(output_info=call.decision)
        if not call.allowed:
            return ToolGuardrailFunctionOutput.reject_content(call.message, output_info=call.decision)
        pending[context.tool_call_id] = call
        return ToolGuardrailFunctionOutput.allow(output_info=call.decision)

    def record(data: ToolOutputGuardrailData) -> ToolGuardrailFunctionOutput:
        call = pending.pop(data.context.tool_call_id, None)
        if call is not None:
            # The SDK hands a failing tool's error to the model as this fixed text: the one sign it failed.
            failed = data.output == default_tool_error_function(data.context, RuntimeError())
            governor.finish(call, error=str(data.output) if failed else None)
        return ToolGuardrailFunctionOutput.allow(output_info=call.decision if call else None)

    governed = copy.copy(tool)
    governed.tool_input_guardrails = [
        *(g for g in tool.tool_input_guardrails or () if g.name != _GUARDRAIL_NAME),
        ToolInputGuardrail(check, name=_GUARDRAIL_NAME),
    ]
    governed.tool_output_guardrails = [
        ToolOutputGuardrail(record, name=_GUARDRAIL_NAME),
        *(g for g in tool.tool_output_guardrails or () if g.name != _GUARDRAIL_NAME),
    ]
    return governed
