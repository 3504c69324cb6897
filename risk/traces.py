"""Traces: the JSON Lines format every `risk` tool reads and `risk audit export` writes.

One action per line, the same shape `Guard.check` takes::

    {"ts": "2026-03-02T09:06:05+00:00", "agent_id": "assistant", "session_id": "s-17",
     "action_type": "network_request", "resource": "mail.send/alice@example.com",
     "payload": {"tool": "send_email", "args": {"recipients": ["alice@example.com"]}}, "label": 0}

`label` is optional (1 harmful, 0 benign); so is `task`, the instruction the agent was carrying out as its user
gave it (`Guard.check`'s `task`). Other keys (such as `attack`) are kept in `extra`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from risk.actions import MAX_AMOUNT, ActionType, checked_task, encoded_payload, outcome_amount
from risk.resources import MAX_RESOURCE_LENGTH, readings


class TraceError(ValueError):
    """A trace line that does not fit the format; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class TraceAction:
    ts: float
    agent_id: str
    session_id: str | None
    action_type: ActionType
    resource: str
    payload: Any = None
    label: int | None = None
    task: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def outcome(self) -> tuple[bool, int | None, int | None]:
        """(success, rows, bytes) from the optional `outcome` key; a trace without it reports success."""
        reported = self.extra.get("outcome")
        if not isinstance(reported, dict):
            return True, None, None
        rows, size = reported.get("rows"), reported.get("bytes")
        return (
            reported.get("status", "success") == "success",
            rows if isinstance(rows, int) else None,
            size if isinstance(size, int) else None,
        )


_KNOWN = frozenset({"ts", "agent_id", "session_id", "action_type", "resource", "payload", "label", "task"})


def read_trace(path: str | Path) -> Iterator[TraceAction]:
    """The actions of a trace file, in file order. Raises TraceError naming the first bad line."""
    path = Path(path)
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise TraceError(f"cannot read trace {path}: {exc.strerror}") from None
    with handle:
        for number, data in enumerate(handle, 1):
            # Decoded line by line, so a line that is not UTF-8 is named like any other bad line.
            try:
                line = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise TraceError(f"{path}:{number}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
            if line.strip():
                yield parse_line(line, f"{path}:{number}")


def parse_line(line: str, where: str = "trace") -> TraceAction:
    try:
        raw = json.loads(line)
    except ValueError as exc:  # not JSON, or an integer too long to read (more than 4,300 digits)
        raise TraceError(f"{where}: not JSON ({getattr(exc, 'msg', exc)})") from None
    except RecursionError:
        raise TraceError(f"{where}: JSON nested too deeply to read") from None
    if not isinstance(raw, dict):
        raise TraceError(f"{where}: a trace line is a JSON object")
    missing = [k for k in ("ts", "agent_id", "action_type", "resource") if k not in raw]
    if missing:
        raise TraceError(f"{where}: missing {', '.join(missing)}")
    try:
        moment = datetime.fromisoformat(str(raw["ts"]))
        ts = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()  # naive times are UTC
        datetime.fromtimestamp(ts, UTC)  # a time every tool can turn back into a date (not year 0 or 10000)
        action_type = ActionType.parse(raw["action_type"])
    except (ValueError, OverflowError) as exc:
        raise TraceError(f"{where}: {exc}") from None
    label = raw.get("label")
    if label is not None and (type(label) is not int or label not in (0, 1)):
        raise TraceError(f"{where}: label must be 0, 1 or absent, not {label!r}")
    if not isinstance(raw["resource"], str) or not isinstance(raw["agent_id"], str):
        raise TraceError(f"{where}: resource and agent_id must be strings")
    if not raw["resource"].strip() or len(raw["resource"]) > MAX_RESOURCE_LENGTH:
        raise TraceError(f"{where}: resource must be non-empty and at most {MAX_RESOURCE_LENGTH} characters")
    try:
        task = checked_task(raw.get("task"))
        # What a guard refuses to check, refused here, where the file and line can be named: a resource too
        # long once normalized, a payload nested too deeply (which also kept `risk train` from recursing).
        readings(raw["resource"])
        encoded_payload(raw.get("payload"))
    except ValueError as exc:
        raise TraceError(f"{where}: {exc}") from None
    outcome = raw.get("outcome")
    if isinstance(outcome, dict):
        for key in ("rows", "bytes"):
            count = outcome.get(key)
            if isinstance(count, int):  # as a guard takes an outcome's counts: replays report them to one
                try:
                    outcome_amount(key, count)
                except ValueError:
                    raise TraceError(f"{where}: outcome {key} must be between 0 and {MAX_AMOUNT}") from None
    session = raw.get("session_id")
    return TraceAction(
        ts=ts,
        agent_id=raw["agent_id"],
        session_id=str(session) if session is not None else None,
        action_type=action_type,
        resource=raw["resource"],
        payload=raw.get("payload"),
        label=label,
        task=task,
        extra={k: v for k, v in raw.items() if k not in _KNOWN},
    )
