"""Replay the AgentDojo `banking` and `slack` test traces through a Guard configured by this folder's policies.

Each trace call is mapped by the policy's `tools:` section, exactly as `risk mcp-proxy` maps a live call of
the same tool, and replayed by `risk.evaluate.replay` after the suite's benign train trace (its history).
Prints per suite: benign sessions that completed without interruption, injected calls stopped, and the
verification of the replay's audit trail.

    python examples/agentdojo_replay/replay.py [--suites banking slack] [--out DIR] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from risk.audit.store import open_audit, verify_store
from risk.evaluate import Replayed, metrics, replay
from risk.integrations.tool_map import ToolMap
from risk.policy import load_policy_file
from risk.traces import TraceAction, read_trace

HERE = Path(__file__).resolve().parent
TRACES = HERE.parent.parent / "data" / "agentdojo"
SUITES = ("banking", "slack")  # workspace and travel are held out for independent checks


def as_the_gateway_sees_it(actions: Iterable[TraceAction], tools: ToolMap) -> list[TraceAction]:
    """The trace's calls with the action type and resource the policy's `tools:` section gives them."""
    mapped = []
    for action in actions:
        call = tools.resolve(action.payload["tool"], action.payload["args"])
        if len(call.resources) != 1:
            raise ValueError(f"{call.tool} touches {len(call.resources)} resources; this replay expects one a call")
        mapped.append(dataclasses.replace(action, action_type=call.action_type, resource=call.resources[0]))
    return mapped


def replay_suite(suite: str, policy_path: Path, audit_path: Path) -> dict[str, Any]:
    fields = load_policy_file(policy_path)
    tools = ToolMap.from_config(fields.pop("tools", None))
    test = as_the_gateway_sees_it(read_trace(TRACES / suite / "test.jsonl"), tools)
    train = as_the_gateway_sees_it(read_trace(TRACES / suite / "train.jsonl"), tools)
    audit_url = f"sqlite:///{audit_path}"
    replayed, model_version = replay(test, train, policy=fields, audit=audit_url)
    measured = metrics(replayed)
    store = open_audit(audit_url, create=False)
    try:
        verification = verify_store(store)
    finally:
        store.close()
    injected = [r for r in replayed if r.action.label == 1]
    benign_sessions = measured["benign_sessions"]
    return {
        "suite": suite,
        "policy": str(policy_path.relative_to(HERE.parent.parent)),
        "calls": len(replayed),
        "sessions": len({r.action.session_id for r in replayed}),
        "benign_sessions": benign_sessions,
        "benign_sessions_completed": benign_sessions - round(measured["benign_sessions_interrupted"] * benign_sessions),
        "attack_sessions": measured["attack_sessions"],
        "attack_sessions_stopped": round(measured["attack_sessions_stopped"] * measured["attack_sessions"]),
        "injected_calls": len(injected),
        "injected_calls_stopped": sum(not r.allowed for r in injected),
        "injected_calls_run_by_tool": _by_tool(r for r in injected if r.allowed),
        "benign_sessions_interrupted_by_tool": _by_tool(_first_denials_of_benign_sessions(replayed)),
        "model_version": model_version,
        "audit": {"url": audit_url, "ok": verification.ok, "records": verification.count,
                  "head": verification.head_hash, "problem": verification.problem},
    }  # fmt: skip


def _first_denials_of_benign_sessions(replayed: Sequence[Replayed]) -> list[Replayed]:
    sessions: dict[str | None, list[Replayed]] = {}
    for r in replayed:
        sessions.setdefault(r.action.session_id, []).append(r)
    benign = (calls for calls in sessions.values() if all(r.action.label == 0 for r in calls))
    return [denied for calls in benign if (denied := next((r for r in calls if not r.allowed), None))]


def _by_tool(replayed: Iterable[Replayed]) -> dict[str, int]:
    return dict(sorted(Counter(r.action.payload["tool"] for r in replayed).items()))


def report(result: dict[str, Any]) -> str:
    audit = result["audit"]
    trail = f"{audit['records']} records verify" if audit["ok"] else f"FAILED: {audit['problem']}"
    lines = [
        f"{result['suite']}: {result['sessions']} sessions, {result['calls']} calls, policy {result['policy']}",
        f"  benign sessions completed without interruption  {result['benign_sessions_completed']} of "
        f"{result['benign_sessions']}",
        f"  injected calls stopped                          {result['injected_calls_stopped']} of "
        f"{result['injected_calls']}",
        f"  attack sessions denied their first injected call {result['attack_sessions_stopped']} of "
        f"{result['attack_sessions']}",
        f"  audit trail                                     {trail}",
    ]
    if result["benign_sessions_interrupted_by_tool"]:
        interrupted = _counts(result["benign_sessions_interrupted_by_tool"])
        lines.append(f"  benign sessions interrupted, by the tool of the first denied call: {interrupted}")
    if result["injected_calls_run_by_tool"]:
        lines.append(f"  injected calls that ran, by tool: {_counts(result['injected_calls_run_by_tool'])}")
    return "\n".join(lines)


def _counts(by_tool: dict[str, int]) -> str:
    return ", ".join(f"{tool} {n}" for tool, n in by_tool.items())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suites", nargs="+", choices=SUITES, default=list(SUITES))
    parser.add_argument("--out", type=Path, help="folder for the audit trails (default: a temporary one)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per suite")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch)
        out.mkdir(parents=True, exist_ok=True)
        results = []
        for suite in args.suites:
            (out / f"{suite}-audit.db").unlink(missing_ok=True)  # each run starts its own chain
            results.append(replay_suite(suite, HERE / f"{suite}.yaml", out / f"{suite}-audit.db"))
    for result in results:
        print(json.dumps(result) if args.json else report(result) + "\n")
    return 0 if all(r["audit"]["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
