"""The OpenAI Agents SDK integration, driven by the SDK's own scripted model through `Runner.run`: real tool
calls, no network, no API key."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from agents import (
    Agent,
    FunctionTool,
    RunConfig,
    Runner,
    ToolInputGuardrailTripwireTriggered,
    WebSearchTool,
    function_tool,
)
from agents.run_config import ToolExecutionConfig
from agents.testing import ScriptedModel, assistant_message, function_call

from risk import ActionType, AgentStatus, Guard, KillSwitchMode, Outcome
from risk.audit.store import AuditQuery
from risk.integrations.openai_agents import govern


def make_guard(guards: Callable[..., Guard], tmp_path: Path, **kwargs: Any) -> Guard:
    defaults = {"blocked_resources": [f"{tmp_path}/secrets/*"], "model": None, "online": False}
    return guards(audit=f"sqlite:///{tmp_path}/audit.db", home=tmp_path / "home", **{**defaults, **kwargs})


def writer_agent(model: ScriptedModel) -> Agent[Any]:
    @function_tool
    def write_file(path: str, text: str) -> str:
        """Write text to a file."""
        Path(path).write_text(text)
        return f"wrote {len(text)} characters to {path}"

    return Agent(name="writer", instructions="Write the files you are asked to.", model=model, tools=[write_file])


def run(agent: Agent[Any], prompt: str) -> Any:
    return Runner.run_sync(agent, prompt, run_config=RunConfig(tracing_disabled=True))


def outputs_seen_by_model(model: ScriptedModel) -> dict[str, str]:
    """The tool results the model was shown on its last turn, by call id."""
    call = model.last_call
    assert call is not None
    return {item["call_id"]: str(item["output"]) for item in call.input if item.get("type") == "function_call_output"}


def test_allowed_call_runs_and_blocked_call_is_refused_with_its_reason(
    guards: Callable[..., Guard], tmp_path: Path
) -> None:
    (tmp_path / "secrets").mkdir()
    allowed, blocked = tmp_path / "notes.txt", tmp_path / "secrets" / "keys.txt"
    model = ScriptedModel(
        [
            [function_call("write_file", {"path": str(allowed), "text": "hello"}, call_id="call-1")],
            [function_call("write_file", {"path": str(blocked), "text": "stolen"}, call_id="call-2")],
            [assistant_message("done")],
        ]
    )
    guard = make_guard(guards, tmp_path)
    agent = govern(writer_agent(model), guard, {"write_file": (ActionType.FILE_WRITE, "path")})

    result = run(agent, "save my notes, then the keys")

    assert result.final_output == "done"
    assert allowed.read_text() == "hello"
    assert not blocked.exists()
    seen = outputs_seen_by_model(model)
    assert seen["call-1"] == f"wrote 5 characters to {allowed}"
    assert "denied" in seen["call-2"] and "blocked" in seen["call-2"] and "wrote" not in seen["call-2"]

    decisions = guard.audit.query(AuditQuery(kind="decision", limit=100))
    assert [(d.action_type, d.resource, d.decision) for d in decisions] == [
        ("file_write", str(allowed), "allow"),
        ("file_write", str(blocked), "deny"),
    ]
    assert decisions[1].outcome == Outcome.BLOCKED.value
    outcomes = guard.audit.query(AuditQuery(kind="outcome", limit=100))
    assert [(o.action_id, o.outcome) for o in outcomes] == [(decisions[0].action_id, "success")]
    assert guard.status().status is AgentStatus.RUNNING


def test_calls_made_inside_working_on_carry_its_task(guards: Callable[..., Guard], tmp_path: Path) -> None:
    model = ScriptedModel(
        [
            [function_call("write_file", {"path": str(tmp_path / "a.txt"), "text": "hello"}, call_id="call-1")],
            [assistant_message("done")],
        ]
    )
    guard = make_guard(guards, tmp_path)
    agent = govern(writer_agent(model), guard, {"write_file": (ActionType.FILE_WRITE, "path")})
    message = "save my notes in a.txt"
    with guard.working_on(message):
        assert run(agent, message).final_output == "done"
    (decision,) = guard.audit.query(AuditQuery(kind="decision", limit=100))
    assert decision.task_digest == hashlib.sha256(message.encode()).hexdigest()


def test_pause_ends_the_run_with_the_sdk_tripwire_and_the_tool_never_runs(
    guards: Callable[..., Guard], tmp_path: Path
) -> None:
    (tmp_path / "secrets").mkdir()
    allowed, blocked = tmp_path / "notes.txt", tmp_path / "secrets" / "keys.txt"
    model = ScriptedModel(
        [
            [function_call("write_file", {"path": str(allowed), "text": "hello"}, call_id="call-1")],
            [function_call("write_file", {"path": str(blocked), "text": "stolen"}, call_id="call-2")],
            [assistant_message("never reached")],
        ]
    )
    guard = make_guard(guards, tmp_path, mode=KillSwitchMode.PAUSE)
    agent = govern(writer_agent(model), guard, {"write_file": (ActionType.FILE_WRITE, "path")})

    with pytest.raises(ToolInputGuardrailTripwireTriggered) as stopped:
        run(agent, "save my notes, then the keys")

    decision = stopped.value.output.output_info
    assert decision.outcome is Outcome.PAUSED and decision.resource == str(blocked)
    assert allowed.read_text() == "hello"
    assert not blocked.exists()
    assert model.remaining_steps == 1  # the model was not asked again
    assert guard.status().status is AgentStatus.PAUSED
    kinds = [r.kind for r in guard.audit.query(AuditQuery(limit=100))]
    assert kinds == ["policy", "decision", "outcome", "decision", "killswitch"]


def test_a_terminated_agent_cannot_run_even_an_allowed_tool(guards: Callable[..., Guard], tmp_path: Path) -> None:
    target = tmp_path / "notes.txt"
    model = ScriptedModel([[function_call("write_file", {"path": str(target), "text": "x"}, call_id="call-1")]])
    guard = make_guard(guards, tmp_path)
    guard.terminate(reason="under investigation")
    agent = govern(writer_agent(model), guard, {"write_file": (ActionType.FILE_WRITE, "path")})

    with pytest.raises(ToolInputGuardrailTripwireTriggered) as stopped:
        run(agent, "save my notes")

    assert stopped.value.output.output_info.outcome is Outcome.TERMINATED
    assert not target.exists()


def test_a_failing_tool_is_recorded_as_failed(guards: Callable[..., Guard], tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "notes.txt"
    model = ScriptedModel(
        [
            [function_call("write_file", {"path": str(missing), "text": "x"}, call_id="call-1")],
            [assistant_message("gave up")],
        ]
    )
    guard = make_guard(guards, tmp_path)
    agent = govern(writer_agent(model), guard, {"write_file": (ActionType.FILE_WRITE, "path")})

    assert run(agent, "save my notes").final_output == "gave up"

    (outcome,) = guard.audit.query(AuditQuery(kind="outcome", limit=100))
    assert outcome.outcome == "error"


def test_unmapped_tool_is_read_from_its_name_and_arguments_as_the_gateway_reads_it(
    guards: Callable[..., Guard], tmp_path: Path
) -> None:
    (tmp_path / "secrets").mkdir()
    blocked = tmp_path / "secrets" / "keys.txt"
    model = ScriptedModel(
        [[function_call("write_file", {"path": str(blocked), "text": "x"}, call_id="c")], [assistant_message("ok")]]
    )
    guard = make_guard(guards, tmp_path)
    agent = govern(writer_agent(model), guard)

    run(agent, "go")

    (decision,) = guard.audit.query(AuditQuery(kind="decision", limit=10))
    assert (decision.action_type, decision.resource, decision.decision) == ("file_write", str(blocked), "deny")
    assert "resource_blocked" in [r["code"] for r in decision.reasons]
    assert not blocked.exists()


def test_an_omitted_argument_is_checked_with_its_default(guards: Callable[..., Guard], tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    target = tmp_path / "secrets" / "key.txt"

    @function_tool(strict_mode=False)  # a non-strict tool: the model may leave `path` out
    def save_file(text: str, path: str = str(target)) -> str:
        """Save text."""
        Path(path).write_text(text)
        return "saved"

    model = ScriptedModel([[function_call("save_file", {"text": "x"}, call_id="c")], [assistant_message("ok")]])
    guard = make_guard(guards, tmp_path)
    agent = govern(Agent(name="saver", instructions="Save.", model=model, tools=[save_file]), guard)

    run(agent, "go")

    (decision,) = guard.audit.query(AuditQuery(kind="decision", limit=10))
    assert (decision.action_type, decision.resource, decision.decision) == ("file_write", str(target), "deny")
    assert not target.exists()


def test_govern_copies_tools_so_an_agent_sharing_them_stays_ungoverned(
    guards: Callable[..., Guard], tmp_path: Path
) -> None:
    agent = writer_agent(ScriptedModel())
    original = agent.tools[0]
    assert isinstance(original, FunctionTool)
    govern(agent, make_guard(guards, tmp_path))
    govern(agent, make_guard(guards, tmp_path))  # governing again replaces the guard, it does not stack

    governed = agent.tools[0]
    assert isinstance(governed, FunctionTool) and governed is not original
    assert not original.tool_input_guardrails
    assert [g.name for g in governed.tool_input_guardrails or ()] == ["agent-risk"]


def test_mapping_errors_are_caught_when_governing(guards: Callable[..., Guard], tmp_path: Path) -> None:
    guard = make_guard(guards, tmp_path)
    with pytest.raises(ValueError, match="does not have: wrte_file"):
        govern(writer_agent(ScriptedModel()), guard, {"wrte_file": ActionType.FILE_WRITE})
    with pytest.raises(ValueError, match="no argument 'file'"):
        govern(writer_agent(ScriptedModel()), guard, {"write_file": (ActionType.FILE_WRITE, "file")})
    with pytest.raises(ValueError, match="unknown action type"):
        govern(writer_agent(ScriptedModel()), guard, {"write_file": "scribble"})


def test_tools_the_guard_cannot_see_are_refused_unless_allowed(guards: Callable[..., Guard], tmp_path: Path) -> None:
    agent = writer_agent(ScriptedModel())
    agent.tools.append(WebSearchTool())
    guard = make_guard(guards, tmp_path)
    with pytest.raises(ValueError, match="cannot check: web_search"):
        govern(agent, guard)

    govern(agent, guard, allow_ungoverned=True)
    assert isinstance(agent.tools[1], WebSearchTool)


def test_arguments_are_checked_as_the_tools_model_reads_them(guards: Callable[..., Guard], tmp_path: Path) -> None:
    """pydantic hands the tool "01", 1.0 or true for an int as 1, and a UUID in any of its spellings as that UUID:
    checked as sent, the blocked account and order ran. An integral float is checked as the integer, a UUID in its
    canonical form, and an argument of another type than the schema's is refused."""
    order = "12345678-1234-5678-1234-567812345678"
    ran: list[Any] = []

    @function_tool
    def close_account(account_id: int) -> str:
        """Close a bank account."""
        ran.append(account_id)
        return "closed"

    @function_tool
    def cancel_order(order_id: uuid.UUID) -> str:
        """Cancel an order."""
        ran.append(order_id)
        return "cancelled"

    sent = [("close_account", {"account_id": a}) for a in (1, "01", " 1", 1.0, True)] + [
        ("cancel_order", {"order_id": o}) for o in (order, order.replace("-", ""), f"{{{order}}}", f"urn:uuid:{order}")
    ]
    model = ScriptedModel([
        *([function_call(name, args, call_id=f"call-{i}")] for i, (name, args) in enumerate(sent)),
        [assistant_message("done")],
    ])  # fmt: skip
    agent = Agent(name="banker", model=model, tools=[close_account, cancel_order])
    guard = make_guard(guards, tmp_path, blocked_resources=["bank.account/1", f"orders/{order}"])
    govern(agent, guard, {"close_account": ("api_call", "bank.account/{account_id}"),
                          "cancel_order": ("api_call", "orders/{order_id}")})  # fmt: skip

    assert run(agent, "close it").final_output == "done"

    assert ran == []
    seen = outputs_seen_by_model(model)
    refused = [i for i, (_, args) in enumerate(sent) if "as the tool's schema says" in seen[f"call-{i}"]]
    assert [sent[i][1] for i in refused] == [{"account_id": "01"}, {"account_id": " 1"}, {"account_id": True}]
    decisions = guard.audit.query(AuditQuery(kind="decision", limit=100))
    assert [(d.resource, d.decision) for d in decisions] == [
        ("bank.account/1", "deny"), ("bank.account/1", "deny"), *[(f"orders/{order}", "deny")] * 4,
    ]  # fmt: skip


def run_past_an_approval(guards: Callable[..., Guard], tmp_path: Path, *, approve: bool) -> tuple[Guard, Path]:
    """A run whose one call, a write to `notes.txt` (which holds "v0"), needs a person's approval and is checked
    before it and again after (pre_approval_tool_input_guardrails); the person approves it or refuses it."""
    target = tmp_path / "notes.txt"
    target.write_text("v0")

    @function_tool(needs_approval=True)
    def write_file(path: str, text: str) -> str:
        """Write text to a file."""
        Path(path).write_text(text)
        return "ok"

    call = function_call("write_file", {"path": str(target), "text": "hi"}, call_id="call-1")
    model = ScriptedModel([[call], [assistant_message("done")]])
    guard = make_guard(guards, tmp_path)
    agent = govern(
        Agent(name="w", model=model, tools=[write_file]), guard, {"write_file": (ActionType.FILE_WRITE, "path")}
    )
    config = RunConfig(
        tracing_disabled=True, tool_execution=ToolExecutionConfig(pre_approval_tool_input_guardrails=True)
    )
    first = Runner.run_sync(agent, "take notes", run_config=config)
    state = first.to_state()
    for interruption in first.interruptions:
        (state.approve if approve else state.reject)(interruption)
    assert Runner.run_sync(agent, state, run_config=config).final_output == "done"
    return guard, target


def test_a_call_checked_before_and_after_its_approval_leaves_no_decision_without_an_outcome(
    guards: Callable[..., Guard], tmp_path: Path
) -> None:
    """With pre_approval_tool_input_guardrails the SDK runs the guardrails twice for one call: the first allowed
    decision was left without an outcome, as if its action might still be running."""
    guard, target = run_past_an_approval(guards, tmp_path, approve=True)

    assert target.read_text() == "hi"
    decisions = guard.audit.query(AuditQuery(kind="decision", limit=100))
    outcomes = {r.action_id: r for r in guard.audit.query(AuditQuery(kind="outcome", limit=100))}
    assert len(decisions) == 2 and all(d.action_id in outcomes for d in decisions)
    assert [outcomes[d.action_id].outcome for d in decisions] == ["error", "success"]
    assert "checked again" in outcomes[decisions[0].action_id].detail["error"]
    # Only the call that ran is undone: the first check's snapshot, kept, put back the file as it was before the
    # wait for the approval, over what others wrote meanwhile.
    assert [s.action_id for s in guard.rollback().steps] == [decisions[1].action_id]
    assert target.read_text() == "v0" and list((tmp_path / "home" / "snapshots").iterdir()) == []


def test_a_call_whose_approval_is_refused_leaves_no_undo_step_for_a_later_process_to_run(
    guards: Callable[..., Guard], tmp_path: Path
) -> None:
    """A call checked before its approval kept the record of its undo step from that check on: refused, the call
    never ran, and once the process ended a rollback of the agent would have taken the step over and put back
    the file as it was at the check, over whatever was written since."""
    _, target = run_past_an_approval(guards, tmp_path, approve=False)

    assert target.read_text() == "v0"
    assert [p.name for p in (tmp_path / "home" / "snapshots").iterdir() if p.name.endswith(".step")] == []
