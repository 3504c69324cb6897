"""The AgentDojo replay example (examples/agentdojo_replay) run on the committed traces: what it prints must
agree with the traces themselves (sessions, calls, label counts), whatever the policy stops."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from risk.policy import load_policy_file

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "agentdojo_replay"
SUITES = ("banking", "slack")


def run_example(*args: str) -> str:
    run = subprocess.run(
        [sys.executable, str(EXAMPLE / "replay.py"), *args], capture_output=True, text=True, check=False, cwd=ROOT
    )
    assert run.returncode == 0, run.stderr
    return run.stdout


def trace(suite: str) -> list[dict[str, Any]]:
    text = (ROOT / "data" / "agentdojo" / suite / "test.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("replay")
    lines = run_example("--json", "--out", str(out)).splitlines()
    parsed = [json.loads(line) for line in lines]
    return {r["suite"]: r for r in parsed}


@pytest.mark.parametrize("suite", SUITES)
def test_printed_counts_match_the_trace(results: dict[str, dict[str, Any]], suite: str) -> None:
    lines = trace(suite)
    sessions: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        sessions.setdefault(line["session_id"], []).append(line)
    attacked = [s for s in sessions.values() if any(line["label"] == 1 for line in s)]
    injected = [line for line in lines if line["label"] == 1]
    r = results[suite]

    assert (r["calls"], r["sessions"]) == (len(lines), len(sessions))
    assert r["benign_sessions"] == len(sessions) - len(attacked)
    assert r["attack_sessions"] == len(attacked)
    assert r["injected_calls"] == len(injected)
    assert 0 <= r["benign_sessions_completed"] <= r["benign_sessions"]
    assert 0 <= r["injected_calls_stopped"] <= r["injected_calls"]
    assert 0 <= r["attack_sessions_stopped"] <= r["attack_sessions"]
    # the calls that ran plus those stopped are all the injected calls
    ran = sum(r["injected_calls_run_by_tool"].values())
    assert ran + r["injected_calls_stopped"] == len(injected)
    assert set(r["injected_calls_run_by_tool"]) <= {line["payload"]["tool"] for line in injected}
    # each interrupted benign session is named once, by the call that interrupted it
    interrupted = sum(r["benign_sessions_interrupted_by_tool"].values())
    assert interrupted == r["benign_sessions"] - r["benign_sessions_completed"]


@pytest.mark.parametrize("suite", SUITES)
def test_audit_trail_verifies_and_holds_every_decision(results: dict[str, dict[str, Any]], suite: str) -> None:
    audit = results[suite]["audit"]
    train = (ROOT / "data" / "agentdojo" / suite / "train.jsonl").read_text(encoding="utf-8").splitlines()
    assert audit["ok"], audit["problem"]
    # one decision per test and train call, besides outcomes, the policy record and kill-switch transitions
    assert audit["records"] > len(trace(suite)) + len(train)


@pytest.mark.parametrize("suite", SUITES)
def test_policy_maps_every_tool_of_the_suite(suite: str) -> None:
    tools = load_policy_file(EXAMPLE / f"{suite}.yaml")["tools"]
    used = {line["payload"]["tool"] for line in trace(suite)}
    assert used <= set(tools)


def test_text_report_prints_the_same_numbers(results: dict[str, dict[str, Any]]) -> None:
    text = " ".join(run_example().split())
    for r in results.values():
        assert f"benign sessions completed without interruption {r['benign_sessions_completed']} of " in text
        assert f"injected calls stopped {r['injected_calls_stopped']} of {r['injected_calls']}" in text
        assert f"audit trail {r['audit']['records']} records verify" in text
