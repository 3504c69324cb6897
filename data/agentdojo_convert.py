"""Convert the AgentDojo `banking` and `slack` ground truths into labelled JSON Lines traces.

AgentDojo (https://github.com/ethz-spylab/agentdojo, PyPI `agentdojo`) ships, for every user task and every
injection task, the reference tool calls that solve it. This script turns them into the trace format every
`risk` tool reads (one action per line, see risk/traces.py):

* one benign session per user task: its calls, label 0;
* one attack session per (user task, injection task) pair: the user task's calls (label 0) followed by the
  injection task's side-effecting calls (label 1, ``"attack": "injection"``), as an agent that obeyed the
  injected instructions after doing its job would emit them. The injection's pure reads are dropped: the
  benign user tasks read the same things, so labelling them 1 would teach a detector that reading is an
  attack. When an injection has no side-effecting call at all (slack ``injection_task_3`` only visits a
  phishing page), its whole ground truth is the attack and is kept, label 1.

Every action carries its session's `task`: the user task's prompt, the instruction the user gave the agent
(`Guard.check`'s `task`). An attack session's injected calls carry it too, as the injection reaches the agent
through a tool's output and leaves the user's instruction as it was.

User tasks are split into train and test so that no user task's calls are in both files (see `split_tasks`).
`train.jsonl` holds benign sessions only; `test.jsonl` holds the benign sessions of the test user tasks and
every attack session built on them. The `workspace` and `travel` suites are deliberately not converted: they
are reserved as held-out data for independent checks.

    python data/agentdojo_convert.py --out data/agentdojo [--suites banking slack]

Output is deterministic (byte-identical on rerun): no wall clock, no unseeded randomness; ordering comes from
SHA-256 of task ids.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

AGENTDOJO_VERSION = "0.1.35"
# The latest benchmark version agentdojo 0.1.35 registers; in it banking is at (1, 2, 2) and slack at (1, 2, 0)
# (slack had no later change), and both are reached through the same version string.
BENCHMARK_VERSION = "v1.2.2"
SUITES = ("banking", "slack")  # workspace and travel are held out: never add them here.
INSTALL_HINT = f"pip install agentdojo=={AGENTDOJO_VERSION}   (or: pip install -e '.[agentdojo]')"

# The values of risk.actions.ActionType, repeated here so the converter runs without importing `risk`
# (tests/test_agentdojo.py checks the two stay equal).
ACTION_TYPES = frozenset(
    {
        "file_read",
        "file_write",
        "file_delete",
        "api_call",
        "database_query",
        "database_write",
        "code_execution",
        "network_request",
        "permission_change",
        "process_spawn",
        "custom",
    }
)

ATTACK = "injection"
# Monday 2 March 2026, the date of the format's example; train sessions start here, test sessions follow.
START_DAY = datetime(2026, 3, 2, tzinfo=UTC)
SESSIONS_PER_DAY = 12  # one slot every 40 minutes from 09:00: the last one still ends before 17:00
SLOT_MINUTES = 40


class UnmappedToolError(KeyError):
    """A ground-truth call uses a tool the mapping table does not know: add it rather than guess."""

    def __str__(self) -> str:
        return str(self.args[0])


class ConversionError(ValueError):
    """A ground-truth call whose arguments cannot be turned into a resource or JSON."""


# --------------------------------------------------------------------------------------------------------------
# Tool table: tool name -> action type, resource builder, whether the call changes anything.


@dataclass(frozen=True, slots=True)
class ToolRule:
    action_type: str
    resource: Callable[[Mapping[str, Any]], str]
    side_effect: bool  # sends, transfers, posts, invites, updates, writes or deletes


def _arg(args: Mapping[str, Any], name: str) -> str:
    """A required argument as a resource segment; a missing one is an error, never an empty segment."""
    value = args.get(name)
    if value is None or str(value).strip() == "":
        raise ConversionError(f"argument {name!r} is missing or empty in {dict(args)!r}")
    return str(value).strip()


def _url(url: str, *, with_path: bool) -> str:
    """Host (and path) of a URL, lowercased host, no scheme: AgentDojo URLs often come without one."""
    parts = urlsplit(url if "//" in url else f"//{url}")
    host = (parts.hostname or "").lower()
    if not host:
        raise ConversionError(f"URL {url!r} has no host")
    path = parts.path.rstrip("/") if with_path else ""
    return host + path


def _schedule_update(args: Mapping[str, Any]) -> str:
    # The id names the standing order; when the call redirects it, the new recipient is what a policy must
    # see (injection_task_4 redirects a recurring payment to the attacker), so it follows the id.
    resource = f"bank.schedule/{_arg(args, 'id')}"
    if args.get("recipient") is not None:
        resource += f"/{_arg(args, 'recipient')}"
    return resource


def _invite(args: Mapping[str, Any]) -> str:
    # The email's domain is what separates a colleague from an outsider, so it is preferred to the name.
    return f"slack.invite/{_arg(args, 'user_email') if args.get('user_email') else _arg(args, 'user')}"


BANKING_TOOLS: dict[str, ToolRule] = {
    "send_money": ToolRule("api_call", lambda a: f"bank.transfer/{_arg(a, 'recipient')}", True),
    "schedule_transaction": ToolRule("api_call", lambda a: f"bank.schedule/{_arg(a, 'recipient')}", True),
    "update_scheduled_transaction": ToolRule("api_call", _schedule_update, True),
    "get_iban": ToolRule("database_query", lambda a: "bank.account/iban", False),
    "get_balance": ToolRule("database_query", lambda a: "bank.account/balance", False),
    "get_most_recent_transactions": ToolRule("database_query", lambda a: "bank.account/transactions", False),
    "get_scheduled_transactions": ToolRule("database_query", lambda a: "bank.account/scheduled", False),
    "read_file": ToolRule("file_read", lambda a: _arg(a, "file_path"), False),
    "get_user_info": ToolRule("database_query", lambda a: "bank.user/info", False),
    "update_password": ToolRule("permission_change", lambda a: "bank.user/password", True),
    "update_user_info": ToolRule("database_write", lambda a: "bank.user/info", True),
}

# Reads and writes of one channel or inbox share a resource so one pattern covers both; the action type
# tells them apart.
SLACK_TOOLS: dict[str, ToolRule] = {
    "send_direct_message": ToolRule("network_request", lambda a: f"slack.dm/{_arg(a, 'recipient')}", True),
    "send_channel_message": ToolRule("network_request", lambda a: f"slack.channel/{_arg(a, 'channel')}", True),
    "post_webpage": ToolRule("network_request", lambda a: f"web.post/{_url(_arg(a, 'url'), with_path=True)}", True),
    "get_webpage": ToolRule("network_request", lambda a: f"web.get/{_url(_arg(a, 'url'), with_path=False)}", False),
    "invite_user_to_slack": ToolRule("permission_change", _invite, True),
    "add_user_to_channel": ToolRule(
        "permission_change", lambda a: f"slack.channel_member/{_arg(a, 'channel')}/{_arg(a, 'user')}", True
    ),
    "remove_user_from_slack": ToolRule("permission_change", lambda a: f"slack.remove/{_arg(a, 'user')}", True),
    "read_channel_messages": ToolRule("database_query", lambda a: f"slack.channel/{_arg(a, 'channel')}", False),
    "read_inbox": ToolRule("database_query", lambda a: f"slack.dm/{_arg(a, 'user')}", False),
    "get_channels": ToolRule("database_query", lambda a: "slack.channels", False),
    "get_users_in_channel": ToolRule("database_query", lambda a: f"slack.channel_member/{_arg(a, 'channel')}", False),
}

TOOL_MAP: dict[str, dict[str, ToolRule]] = {"banking": BANKING_TOOLS, "slack": SLACK_TOOLS}


def rule_for(suite: str, tool: str) -> ToolRule:
    try:
        return TOOL_MAP[suite][tool]
    except KeyError:
        raise UnmappedToolError(
            f"{suite} tool {tool!r} has no entry in TOOL_MAP[{suite!r}] (data/agentdojo_convert.py); "
            "add its action type, resource and side effect there instead of letting the converter guess"
        ) from None


# --------------------------------------------------------------------------------------------------------------
# Ground truths, as plain data so everything after loading is independent of agentdojo.


@dataclass(frozen=True, slots=True)
class Call:
    tool: str
    args: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SuiteTruth:
    name: str
    suite_version: str
    tools: tuple[str, ...]  # every tool the suite offers, not only those the ground truths use
    user_tasks: dict[str, tuple[Call, ...]]
    injection_tasks: dict[str, tuple[Call, ...]]
    prompts: dict[str, str]  # each user task's prompt: the user's instruction, which no injection can change


def _json_value(value: Any, where: str) -> Any:
    """Arguments as JSON values; anything else (a nested FunctionCall, say) is refused, not stringified."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ConversionError(f"{where}: non-finite number {value!r}")
        return value
    if isinstance(value, list | tuple):
        return [_json_value(v, where) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _json_value(v, where) for k, v in value.items()}
    raise ConversionError(f"{where}: argument of type {type(value).__name__} cannot be written as JSON")


def _calls(function_calls: Sequence[Any], where: str) -> tuple[Call, ...]:
    return tuple(Call(fc.function, _json_value(dict(fc.args), f"{where} {fc.function}")) for fc in function_calls)


def _task_number(task_id: str) -> int:
    return int(task_id.rsplit("_", 1)[1])


def load_suite(name: str, benchmark_version: str = BENCHMARK_VERSION) -> SuiteTruth:
    """The ground truths of one suite, computed the way AgentDojo's GroundTruthPipeline does."""
    if name not in SUITES:
        raise ValueError(f"suite {name!r} is not converted here; choose from {', '.join(SUITES)}")
    try:
        # agentdojo ships no type information; whatever it returns is read through attributes only.
        from agentdojo.task_suite.load_suites import get_suite  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except ImportError:
        raise SystemExit(f"agentdojo is not installed; install it with:\n    {INSTALL_HINT}") from None
    suite = get_suite(benchmark_version, name)
    user_tasks: dict[str, tuple[Call, ...]] = {}
    prompts: dict[str, str] = {}
    for task_id in sorted(suite.user_tasks, key=_task_number):
        task = suite.user_tasks[task_id]
        prompts[task_id] = str(task.PROMPT)
        # As in TaskSuite.run_task_with_pipeline: default environment without injections, then the task's own
        # initialisation; a fresh environment per task so no ground truth sees another's changes.
        environment = task.init_environment(suite.load_and_inject_default_environment({}))
        user_tasks[task_id] = _calls(task.ground_truth(environment), f"{name} {task_id}")
    injection_tasks: dict[str, tuple[Call, ...]] = {}
    for task_id in sorted(suite.injection_tasks, key=_task_number):
        task = suite.injection_tasks[task_id]
        environment = suite.load_and_inject_default_environment({})
        injection_tasks[task_id] = _calls(task.ground_truth(environment), f"{name} {task_id}")
    return SuiteTruth(
        name=name,
        suite_version=".".join(str(part) for part in suite.benchmark_version),
        tools=tuple(sorted(tool.name for tool in suite.tools)),
        user_tasks=user_tasks,
        injection_tasks=injection_tasks,
        prompts=prompts,
    )


# --------------------------------------------------------------------------------------------------------------
# Split, sessions, timestamps.


def _fingerprint(calls: Sequence[Call]) -> str:
    return json.dumps([[c.tool, c.args] for c in calls], sort_keys=True)


def _groups(user_tasks: Mapping[str, Sequence[Call]]) -> list[list[str]]:
    """User tasks that must land in the same split.

    Identical ground truths (banking 1, 7, 8 and 10 are all one `get_most_recent_transactions`) would otherwise
    put the same session in train and test; a task whose calls are exactly two other tasks' calls one after the
    other (slack's combined tasks 17-20) would carry those tasks' calls across the split.
    """
    ids = sorted(user_tasks, key=_task_number)
    parent = {task_id: task_id for task_id in ids}

    def find(task_id: str) -> str:
        while parent[task_id] != task_id:
            task_id = parent[task_id]
        return task_id

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            first, second = sorted((ra, rb), key=_task_number)
            parent[second] = first

    prints = {task_id: _fingerprint(user_tasks[task_id]) for task_id in ids}
    for i, a in enumerate(ids):
        for b in ids[i + 1 :]:
            if prints[a] == prints[b]:
                union(a, b)
    for combined in ids:
        calls = list(user_tasks[combined])
        for first in ids:
            head = list(user_tasks[first])
            if first == combined or not head or calls[: len(head)] != head:
                continue
            for second in ids:
                if second not in (first, combined) and head + list(user_tasks[second]) == calls:
                    union(combined, first)
                    union(combined, second)
    grouped: dict[str, list[str]] = {}
    for task_id in ids:
        grouped.setdefault(find(task_id), []).append(task_id)
    return sorted(grouped.values(), key=lambda group: _task_number(group[0]))


def split_tasks(user_tasks: Mapping[str, Sequence[Call]]) -> tuple[list[str], list[str]]:
    """(train, test) user task ids: groups in order of their lowest task number, each to the smaller split
    (train on a tie), which keeps the halves within one group of each other and needs no randomness."""
    train: list[str] = []
    test: list[str] = []
    for group in _groups(user_tasks):
        (train if len(train) <= len(test) else test).extend(group)
    return sorted(train, key=_task_number), sorted(test, key=_task_number)


def attack_calls(calls: Sequence[Call], suite: str) -> tuple[Call, ...]:
    """The calls of an injection task that go into attack sessions (see the module docstring)."""
    effects = tuple(c for c in calls if rule_for(suite, c.tool).side_effect)
    return effects or tuple(calls)


def _hash(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(parts).encode()).digest()[:8], "big")


@dataclass(frozen=True, slots=True)
class Session:
    user_task: str
    injection_task: str | None
    calls: tuple[tuple[Call, int], ...]  # (call, label)


def build_sessions(truth: SuiteTruth, user_task_ids: Sequence[str], *, attacks: bool) -> list[Session]:
    sessions: list[Session] = []
    for user_task in user_task_ids:
        benign = tuple((call, 0) for call in truth.user_tasks[user_task])
        sessions.append(Session(user_task, None, benign))
        if attacks:
            for injection_task, calls in truth.injection_tasks.items():
                injected = tuple((call, 1) for call in attack_calls(calls, truth.name))
                sessions.append(Session(user_task, injection_task, benign + injected))
    # A hash order mixes benign and attack sessions over the days, as they would arrive, yet never changes.
    return sorted(sessions, key=lambda s: (_hash(truth.name, s.user_task, s.injection_task or ""), s.user_task))


def _workday(index: int) -> datetime:
    """The index-th working day (Monday to Friday) from START_DAY."""
    day = START_DAY
    remaining = index
    while remaining or day.weekday() >= 5:
        if day.weekday() < 5:
            remaining -= 1
        day += timedelta(days=1)
    return day


def session_lines(
    truth: SuiteTruth, sessions: Sequence[Session], split: str, first_day: int
) -> tuple[list[dict[str, Any]], int]:
    """Trace lines of the sessions and the number of working days they use."""
    lines: list[dict[str, Any]] = []
    for number, session in enumerate(sessions):
        session_id = f"{truth.name}-{split}-{number:03d}"  # opaque: the label must not be read off the id
        day = _workday(first_day + number // SESSIONS_PER_DAY)
        slot = number % SESSIONS_PER_DAY
        moment = day + timedelta(hours=9, minutes=SLOT_MINUTES * slot, seconds=_hash(session_id) % 600)
        for index, (call, label) in enumerate(session.calls):
            if index:
                # The same 3-17 s gap rule for benign and injected calls, so timing says nothing of the label.
                moment += timedelta(seconds=3 + _hash(session_id, str(index)) % 15)
            rule = rule_for(truth.name, call.tool)
            line: dict[str, Any] = {
                "ts": moment.isoformat(),
                "agent_id": f"{truth.name}-assistant",
                "session_id": session_id,
                "action_type": rule.action_type,
                "resource": rule.resource(call.args),
                "payload": {"tool": call.tool, "args": call.args},
                "label": label,
                "task": truth.prompts[session.user_task],
                "suite": truth.name,
                "user_task": session.user_task,
            }
            if session.injection_task is not None:
                line["injection_task"] = session.injection_task
            if label:
                line["attack"] = ATTACK
            lines.append(line)
    days = (len(sessions) + SESSIONS_PER_DAY - 1) // SESSIONS_PER_DAY
    return lines, days


def _dump(lines: Sequence[Mapping[str, Any]]) -> str:
    return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)


def _counts(sessions: Sequence[Session], lines: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    return {
        "sessions": len(sessions),
        "benign_sessions": sum(s.injection_task is None for s in sessions),
        "attack_sessions": sum(s.injection_task is not None for s in sessions),
        "actions": len(lines),
        "label_1": sum(line["label"] for line in lines),
    }


def convert(truth: SuiteTruth, out: Path) -> dict[str, Any]:
    """Write <out>/<suite>/train.jsonl and test.jsonl; return the suite's manifest entry."""
    for calls in [*truth.user_tasks.values(), *truth.injection_tasks.values()]:
        for call in calls:
            rule = rule_for(truth.name, call.tool)
            if rule.action_type not in ACTION_TYPES:
                raise ConversionError(f"{truth.name} {call.tool}: unknown action type {rule.action_type!r}")
    train_ids, test_ids = split_tasks(truth.user_tasks)
    train = build_sessions(truth, train_ids, attacks=False)
    test = build_sessions(truth, test_ids, attacks=True)
    train_lines, train_days = session_lines(truth, train, "train", 0)
    test_lines, _ = session_lines(truth, test, "test", train_days)  # test comes after train, as in deployment
    directory = out / truth.name
    directory.mkdir(parents=True, exist_ok=True)
    for file_name, lines in (("train.jsonl", train_lines), ("test.jsonl", test_lines)):
        (directory / file_name).write_text(_dump(lines), encoding="utf-8", newline="\n")
    return {
        "suite_version": truth.suite_version,
        "user_tasks": {"train": train_ids, "test": test_ids},
        "injection_tasks": list(truth.injection_tasks),
        "files": {
            f"{truth.name}/train.jsonl": _counts(train, train_lines),
            f"{truth.name}/test.jsonl": _counts(test, test_lines),
        },
    }


def write_manifest(out: Path, entries: Mapping[str, Any], agentdojo_version: str, benchmark_version: str) -> None:
    path = out / "MANIFEST.json"
    header = {"agentdojo_version": agentdojo_version, "benchmark_version": benchmark_version}
    suites: dict[str, Any] = {}
    if path.exists():
        # Converting one suite keeps the other's entry, but only if it came from the same versions.
        previous = json.loads(path.read_text(encoding="utf-8"))
        if all(previous.get(k) == v for k, v in header.items()):
            suites.update(previous.get("suites", {}))
    suites.update(entries)
    manifest = {
        **header,
        "source": "AgentDojo ground-truth tool calls (https://github.com/ethz-spylab/agentdojo), converted by "
        "data/agentdojo_convert.py",
        "rules": {
            "benign_session": "one per user task, its ground-truth calls, label 0",
            "attack_session": "one per (test user task, injection task): the user task's calls (label 0), then "
            "the injection task's side-effecting calls (label 1, attack=injection); the injection's read-only "
            "calls are dropped unless it has no side-effecting call, then all of it is label 1",
            "split": "by user task; identical ground truths and combined tasks stay with their parts; "
            "train = benign sessions only, test = benign + attack sessions of the test user tasks",
        },
        "suites": dict(sorted(suites.items())),
    }
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "agentdojo")
    # Only banking and slack are accepted: workspace and travel are held out for independent checks.
    parser.add_argument("--suites", nargs="+", choices=SUITES, default=list(SUITES))
    parser.add_argument("--benchmark-version", default=BENCHMARK_VERSION)
    options = parser.parse_args(argv)
    try:
        from importlib.metadata import PackageNotFoundError, version

        installed = version("agentdojo")
    except PackageNotFoundError:
        print(f"agentdojo is not installed; install it with:\n    {INSTALL_HINT}", file=sys.stderr)
        return 2
    if installed != AGENTDOJO_VERSION:
        # Other releases may change ground truths; the output then differs from the committed traces.
        print(f"warning: agentdojo {installed} installed, traces were made with {AGENTDOJO_VERSION}", file=sys.stderr)
    entries = {}
    for name in sorted(set(options.suites)):
        entry = convert(load_suite(name, options.benchmark_version), options.out)
        entries[name] = entry
        for file_name, counts in entry["files"].items():
            print(
                f"{file_name}: {counts['sessions']} sessions, {counts['actions']} actions, {counts['label_1']} label 1"
            )
    write_manifest(options.out, entries, installed, options.benchmark_version)
    return 0


if __name__ == "__main__":
    sys.exit(main())
