"""The LangChain integration, driven through LangChain's own agent loop (`create_agent`, which runs tools in
LangGraph's ToolNode) by LangChain's fake chat model: real tool calls, no network, no API key."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import BaseTool, StructuredTool, ToolException, tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel, Field

from risk import ActionType, AgentPaused, AgentStatus, Guard, KillSwitchMode, Outcome
from risk.audit.store import AuditQuery
from risk.integrations.langchain import GovernedTool, govern_tools


class ScriptedChatModel(GenericFakeChatModel):
    """LangChain's fake chat model, answering in the order given; it accepts tools as a real one does."""

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ScriptedChatModel:
        return self


@tool
def write_file(path: str, text: str) -> str:
    """Write text to a file."""
    Path(path).write_text(text)
    return f"wrote {len(text)} characters to {path}"


def make_guard(guards: Callable[..., Guard], tmp_path: Path, **kwargs: Any) -> Guard:
    defaults = {"blocked_resources": [f"{tmp_path}/secrets/*"], "model": None, "online": False}
    return guards(audit=f"sqlite:///{tmp_path}/audit.db", home=tmp_path / "home", **{**defaults, **kwargs})


def calls_writing(*paths: Path) -> list[AIMessage]:
    """The model's turns: write each file in turn, then say it is done."""
    turns = [
        AIMessage("", tool_calls=[{"name": "write_file", "args": {"path": str(p), "text": p.stem}, "id": f"call-{i}"}])
        for i, p in enumerate(paths, start=1)
    ]
    return [*turns, AIMessage("done")]


def agent_for(tools: list[GovernedTool], turns: list[AIMessage]) -> Any:
    return create_agent(ScriptedChatModel(messages=iter(turns)), tools=tools)


def tool_messages(result: dict[str, Any]) -> dict[str, ToolMessage]:
    return {m.tool_call_id: m for m in result["messages"] if isinstance(m, ToolMessage)}


@pytest.mark.parametrize("run", ["sync", "async"])
def test_allowed_call_runs_and_blocked_call_is_refused_with_its_reason(
    guards: Callable[..., Guard], tmp_path: Path, run: str
) -> None:
    (tmp_path / "secrets").mkdir()
    allowed, blocked = tmp_path / "notes.txt", tmp_path / "secrets" / "keys.txt"
    guard = make_guard(guards, tmp_path)
    tools = govern_tools([write_file], guard, {"write_file": (ActionType.FILE_WRITE, "path")})
    agent = agent_for(tools, calls_writing(allowed, blocked))
    request = {"messages": [HumanMessage("save my notes, then the keys")]}

    result = agent.invoke(request) if run == "sync" else asyncio.run(agent.ainvoke(request))

    assert result["messages"][-1].content == "done"
    assert allowed.read_text() == "notes"
    assert not blocked.exists()
    seen = tool_messages(result)
    assert seen["call-1"].status == "success" and seen["call-1"].content == f"wrote 5 characters to {allowed}"
    assert seen["call-2"].status == "error"
    assert "denied" in seen["call-2"].content and "blocked" in seen["call-2"].content

    decisions = guard.audit.query(AuditQuery(kind="decision", limit=100))
    assert [(d.action_type, d.resource, d.decision) for d in decisions] == [
        ("file_write", str(allowed), "allow"),
        ("file_write", str(blocked), "deny"),
    ]
    assert decisions[1].outcome == Outcome.BLOCKED.value
    outcomes = guard.audit.query(AuditQuery(kind="outcome", limit=100))
    assert [(o.action_id, o.outcome) for o in outcomes] == [(decisions[0].action_id, "success")]


@pytest.mark.parametrize("run", ["sync", "async"])
def test_calls_made_inside_working_on_carry_its_task(guards: Callable[..., Guard], tmp_path: Path, run: str) -> None:
    guard = make_guard(guards, tmp_path)
    tools = govern_tools([write_file], guard, {"write_file": (ActionType.FILE_WRITE, "path")})
    agent = agent_for(tools, calls_writing(tmp_path / "a.txt", tmp_path / "b.txt"))
    message = "save my notes in a.txt and b.txt"
    with guard.working_on(message):
        request = {"messages": [HumanMessage(message)]}
        agent.invoke(request) if run == "sync" else asyncio.run(agent.ainvoke(request))
    digests = [d.task_digest for d in guard.audit.query(AuditQuery(kind="decision", limit=100))]
    assert digests == [hashlib.sha256(message.encode()).hexdigest()] * 2


def test_pause_ends_the_run_and_the_tool_never_runs(guards: Callable[..., Guard], tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    allowed, blocked = tmp_path / "notes.txt", tmp_path / "secrets" / "keys.txt"
    guard = make_guard(guards, tmp_path, mode=KillSwitchMode.PAUSE)
    turns = calls_writing(allowed, blocked)
    agent = agent_for(govern_tools([write_file], guard, {"write_file": (ActionType.FILE_WRITE, "path")}), turns)

    with pytest.raises(AgentPaused) as stopped:
        agent.invoke({"messages": [HumanMessage("save my notes, then the keys")]})

    assert stopped.value.decision.resource == str(blocked)
    assert allowed.read_text() == "notes"
    assert not blocked.exists()
    assert guard.status().status is AgentStatus.PAUSED
    kinds = [r.kind for r in guard.audit.query(AuditQuery(limit=100))]
    assert kinds == ["policy", "decision", "outcome", "decision", "killswitch"]


def test_rollback_mode_restores_what_the_agent_wrote(guards: Callable[..., Guard], tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    notes, blocked = tmp_path / "notes.txt", tmp_path / "secrets" / "keys.txt"
    notes.write_text("before")
    guard = make_guard(guards, tmp_path, mode=KillSwitchMode.ROLLBACK)
    agent = agent_for(
        govern_tools([write_file], guard, {"write_file": (ActionType.FILE_WRITE, "path")}),
        calls_writing(notes, blocked),
    )

    with pytest.raises(AgentPaused):
        agent.invoke({"messages": [HumanMessage("overwrite my notes, then take the keys")]})

    assert notes.read_text() == "before"
    assert not blocked.exists()


def test_a_call_still_running_when_rollback_mode_trips_is_undone_when_it_returns(
    guards: Callable[..., Guard], tmp_path: Path
) -> None:
    """ToolNode runs a turn's calls in parallel: the slow write was checked and running when the other call tripped
    ROLLBACK. Its step used to be made when it returned, after the trip's rollback ran, so its write stayed."""
    (tmp_path / "secrets").mkdir()
    notes = tmp_path / "notes.txt"
    notes.write_text("before")
    guard = make_guard(guards, tmp_path, mode=KillSwitchMode.ROLLBACK)
    written, tripped = threading.Event(), threading.Event()

    @tool
    def slow_write(path: str, text: str) -> str:
        """Write text to a file, slowly."""
        Path(path).write_text(text)
        written.set()
        tripped.wait(10)  # still running while the agent's other call trips the kill switch
        return "wrote"

    slow, fast = govern_tools([slow_write, write_file], guard, {
        "slow_write": (ActionType.FILE_WRITE, "path"), "write_file": (ActionType.FILE_WRITE, "path"),
    })  # fmt: skip
    worker = threading.Thread(target=slow.invoke, args=({"path": str(notes), "text": "agent"},))
    worker.start()
    assert written.wait(10)
    with pytest.raises(AgentPaused):
        fast.invoke({"path": str(tmp_path / "secrets" / "keys.txt"), "text": "x"})
    tripped.set()
    worker.join(10)
    assert notes.read_text() == "before"
    undone = guard.audit.query(AuditQuery(kind="rollback"))
    assert [(r.outcome, r.actor) for r in undone] == [("undone", "guard")]


def test_a_failing_tool_is_recorded_as_failed(guards: Callable[..., Guard], tmp_path: Path) -> None:
    @tool
    def read_file(path: str) -> str:
        """Read a file."""
        if not Path(path).exists():
            raise ToolException(f"no file {path}")
        return Path(path).read_text()

    read_file.handle_tool_error = True  # the model reads the error, as most agents are configured
    guard = make_guard(guards, tmp_path)
    turns = [
        AIMessage("", tool_calls=[{"name": "read_file", "args": {"path": str(tmp_path / "none")}, "id": "c"}]),
        AIMessage("gave up"),
    ]
    agent = agent_for(govern_tools([read_file], guard, {"read_file": (ActionType.FILE_READ, "path")}), turns)

    result = agent.invoke({"messages": [HumanMessage("read it")]})

    assert tool_messages(result)["c"].status == "error"
    (outcome,) = guard.audit.query(AuditQuery(kind="outcome", limit=10))
    assert outcome.outcome == "error"


def test_unmapped_functions_get_the_tool_map_defaults(guards: Callable[..., Guard], tmp_path: Path) -> None:
    done: list[str] = []

    def send_message(to: str, body: str) -> str:
        """Send a message."""
        done.append(to)
        return "sent"

    def get_balance() -> str:
        """The account's balance."""
        done.append("balance")
        return "12"

    guard = make_guard(guards, tmp_path, blocked_resources=["eve", "tool/get_balance"])
    turns = [
        AIMessage("", tool_calls=[{"name": "send_message", "args": {"to": "eve", "body": "hi"}, "id": "c1"}]),
        AIMessage("", tool_calls=[{"name": "get_balance", "args": {}, "id": "c2"}]),
        AIMessage("ok"),
    ]
    governed = govern_tools([send_message, get_balance], guard)
    result = agent_for(governed, turns).invoke({"messages": [HumanMessage("tell eve my balance")]})

    assert done == []
    assert [m.status for m in tool_messages(result).values()] == ["error", "error"]
    decisions = guard.audit.query(AuditQuery(kind="decision", limit=10))
    assert [(d.action_type, d.resource, d.decision) for d in decisions] == [
        ("network_request", "eve", "deny"),  # from the words of its name, and its `to` argument
        ("custom", "tool/get_balance", "deny"),  # a name that says nothing, and no resource-like argument
    ]


def test_a_list_argument_is_one_check_per_element_and_one_denial_refuses_the_call(
    guards: Callable[..., Guard], tmp_path: Path
) -> None:
    sent: list[list[str]] = []

    def send_email(recipients: list[str], body: str) -> str:
        """Send an email."""
        sent.append(recipients)
        return "sent"

    guard = make_guard(guards, tmp_path, blocked_resources=["*@evil.example"])
    (governed,) = govern_tools([send_email], guard)

    answer = governed.invoke({"recipients": ["ann@x.example", "eve@evil.example"], "body": "hi"})

    assert sent == []
    assert "eve@evil.example" in answer and "blocked" in answer
    decisions = guard.audit.query(AuditQuery(kind="decision", limit=10))
    assert [(d.resource, d.decision) for d in decisions] == [("ann@x.example", "allow"), ("eve@evil.example", "deny")]
    (outcome,) = guard.audit.query(AuditQuery(kind="outcome", limit=10))
    assert outcome.action_id == decisions[0].action_id
    assert outcome.outcome == "error" and outcome.detail["error"].startswith("not run: send_email: denied")


def test_an_unmapped_list_argument_with_a_blank_element_is_refused_not_checked_as_the_tool(
    guards: Callable[..., Guard], tmp_path: Path
) -> None:
    (tmp_path / "secrets").mkdir()
    key = tmp_path / "secrets" / "key.txt"
    key.write_text("k")
    deleted: list[list[str]] = []

    def delete_files(path: list[str]) -> str:
        """Delete each file."""
        deleted.append(path)
        return "deleted"

    guard = make_guard(guards, tmp_path)
    (governed,) = govern_tools([delete_files], guard)

    answer = governed.invoke({"type": "tool_call", "id": "1", "name": "delete_files", "args": {"path": [str(key), ""]}})

    assert answer.status == "error" and "blank" in answer.content
    assert deleted == [] and key.exists()
    assert guard.audit.query(AuditQuery(kind="decision", limit=10)) == []  # never checked as tool/delete_files


def test_an_omitted_argument_is_checked_with_its_default(guards: Callable[..., Guard], tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    target = tmp_path / "secrets" / "key.txt"
    written: list[str] = []

    def save_file(text: str, path: str = str(target)) -> str:
        """Save text."""
        written.append(path)
        return "saved"

    guard = make_guard(guards, tmp_path)
    (governed,) = govern_tools([save_file], guard)

    answer = governed.invoke({"type": "tool_call", "id": "1", "name": "save_file", "args": {"text": "x"}})

    assert answer.status == "error" and written == []
    (decision,) = guard.audit.query(AuditQuery(kind="decision", limit=10))
    assert (decision.action_type, decision.resource, decision.decision) == ("file_write", str(target), "deny")


def test_callable_and_template_resources(guards: Callable[..., Guard], tmp_path: Path) -> None:
    guard = make_guard(guards, tmp_path, blocked_resources=["mail/eve", "/srv/*"])
    mapping = {
        "write_file": (ActionType.FILE_WRITE, lambda args: f"/srv/{Path(args['path']).name}"),
        "send_message": (ActionType.NETWORK_REQUEST, "mail/{to}"),
    }

    def send_message(to: str, body: str) -> str:
        """Send a message."""
        return "sent"

    written, sent = govern_tools([write_file, send_message], guard, mapping)

    assert "blocked" in written.invoke({"path": str(tmp_path / "notes.txt"), "text": "x"})
    assert "blocked" in sent.invoke({"to": "eve", "body": "x"})
    decisions = guard.audit.query(AuditQuery(kind="decision", limit=10))
    assert [(d.action_type, d.resource) for d in decisions] == [
        ("file_write", "/srv/notes.txt"),
        ("network_request", "mail/eve"),
    ]
    assert not (tmp_path / "notes.txt").exists()


def test_governed_tool_shows_the_model_the_same_tool(guards: Callable[..., Guard], tmp_path: Path) -> None:
    (governed,) = govern_tools([write_file], make_guard(guards, tmp_path))

    assert isinstance(governed, BaseTool)
    assert (governed.name, governed.description) == (write_file.name, write_file.description)
    assert convert_to_openai_tool(governed) == convert_to_openai_tool(write_file)


def test_direct_call_without_an_agent_returns_the_refusal_text(guards: Callable[..., Guard], tmp_path: Path) -> None:
    (governed,) = govern_tools(
        [write_file], make_guard(guards, tmp_path), {"write_file": (ActionType.FILE_WRITE, "path")}
    )
    target = tmp_path / "secrets" / "k"

    answer = governed.invoke({"path": str(target), "text": "x"})

    assert answer.startswith("write_file: denied (blocked")
    assert not target.exists()


def test_missing_resource_argument_is_refused_without_running(guards: Callable[..., Guard], tmp_path: Path) -> None:
    guard = make_guard(guards, tmp_path)
    (governed,) = govern_tools([write_file], guard, {"write_file": (ActionType.FILE_WRITE, "path")})

    answer = governed.invoke({"text": "x"})

    assert "do not fill its resource '{path}'" in answer
    assert guard.audit.query(AuditQuery(kind="decision", limit=10)) == []


def test_mapping_errors_are_caught_when_governing(guards: Callable[..., Guard], tmp_path: Path) -> None:
    guard = make_guard(guards, tmp_path)
    with pytest.raises(ValueError, match="does not have: wrte_file"):
        govern_tools([write_file], guard, {"wrte_file": ActionType.FILE_WRITE})
    with pytest.raises(ValueError, match="no argument 'file'"):
        govern_tools([write_file], guard, {"write_file": (ActionType.FILE_WRITE, "file")})
    with pytest.raises(ValueError, match="no argument 'name'"):
        govern_tools([write_file], guard, {"write_file": (ActionType.FILE_WRITE, "docs/{name}")})
    with pytest.raises(ValueError, match="argument name, a template or a callable"):
        govern_tools([write_file], guard, {"write_file": (ActionType.FILE_WRITE, 3)})


def test_importing_risk_loads_no_framework() -> None:
    code = "import sys, risk, risk.integrations; print(sorted({'agents', 'langchain_core'} & set(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_arguments_are_checked_as_the_tools_schema_reads_them(guards: Callable[..., Guard], tmp_path: Path) -> None:
    """pydantic hands the tool "01", " 1", 1.0 or true for an int as 1, and an argument sent under its alias as its
    field: checked as sent, the blocked account was closed and the secret written through the alias."""
    (tmp_path / "secrets").mkdir()
    secret = tmp_path / "secrets" / "keys.txt"
    ran: list[Any] = []

    @tool
    def close_account(account_id: int) -> str:
        """Close a bank account."""
        ran.append(account_id)
        return "closed"

    class WriteArgs(BaseModel):
        path: str = Field(default=str(tmp_path / "notes.txt"), alias="file_name")
        text: str

    def write(path: str, text: str) -> str:
        Path(path).write_text(text)
        return "wrote"

    aliased = StructuredTool.from_function(write, name="write_file", description="Write.", args_schema=WriteArgs)
    guard = make_guard(guards, tmp_path, blocked_resources=["bank.account/1", f"{tmp_path}/secrets/*"])
    close, write_file = govern_tools([close_account, aliased], guard, {
        "close_account": ("api_call", "bank.account/{account_id}"), "write_file": (ActionType.FILE_WRITE, "path"),
    })  # fmt: skip

    for i, sent in enumerate([1, "1", "01", " 1", "1.0", 1.0, True]):
        answer = close.invoke(
            {"type": "tool_call", "id": f"c{i}", "name": "close_account", "args": {"account_id": sent}}
        )
        assert answer.status == "error" and "bank.account/1" in answer.content, (sent, answer)
    answer = write_file.invoke({"type": "tool_call", "id": "w", "name": "write_file",
                                "args": {"file_name": str(secret), "text": "stolen"}})  # fmt: skip
    assert answer.status == "error" and str(secret) in answer.content

    assert ran == [] and not secret.exists()
    decisions = guard.audit.query(AuditQuery(kind="decision", limit=100))
    assert [(d.resource, d.decision) for d in decisions] == [("bank.account/1", "deny")] * 7 + [(str(secret), "deny")]


def test_a_bytes_argument_that_is_not_text_is_checked(guards: Callable[..., Guard], tmp_path: Path) -> None:
    """Read as JSON, bytes that are not UTF-8 (an image) raised before the check, and the call failed."""

    @tool
    def save_image(path: str, data: bytes) -> str:
        """Save an image."""
        Path(path).write_bytes(data)
        return "saved"

    (governed,) = govern_tools(
        [save_image], make_guard(guards, tmp_path), {"save_image": (ActionType.FILE_WRITE, "path")}
    )
    image = tmp_path / "x.png"
    assert governed.invoke({"path": str(image), "data": b"\x89PNG\r\n\x1a\n\x00"}) == "saved"
    assert image.read_bytes().startswith(b"\x89PNG")
