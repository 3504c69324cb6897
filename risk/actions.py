"""The data types every other module speaks: actions, decisions, reasons and outcomes."""

from __future__ import annotations

import enum
import functools
import hashlib
import operator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from risk.audit.record import canonical_json


class ActionType(enum.StrEnum):
    """What kind of thing an agent is about to do.

    Accepts the member or its string value:

    >>> ActionType.parse("file_read") is ActionType.FILE_READ
    True
    >>> ActionType.parse(ActionType.DATABASE_QUERY).value
    'database_query'
    """

    FILE_READ = "file_read"
    FILE_WRITE = "file_write"
    FILE_DELETE = "file_delete"
    API_CALL = "api_call"
    DATABASE_QUERY = "database_query"
    DATABASE_WRITE = "database_write"
    CODE_EXECUTION = "code_execution"
    NETWORK_REQUEST = "network_request"
    PERMISSION_CHANGE = "permission_change"
    PROCESS_SPAWN = "process_spawn"
    CUSTOM = "custom"

    @classmethod
    def parse(cls, value: ActionType | str) -> ActionType:
        return _parse(cls, value, "action type")

    @property
    def is_file(self) -> bool:
        return self in _FILE_TYPES


_FILE_TYPES = frozenset({ActionType.FILE_READ, ActionType.FILE_WRITE, ActionType.FILE_DELETE})


class KillSwitchMode(enum.StrEnum):
    """What happens when a rule or the risk threshold is crossed (see the README's mode table)."""

    ALERT = "alert"
    BLOCK = "block"
    PAUSE = "pause"
    ROLLBACK = "rollback"
    TERMINATE = "terminate"

    @classmethod
    def parse(cls, value: KillSwitchMode | str) -> KillSwitchMode:
        return _parse(cls, value, "kill switch mode")


E = TypeVar("E", bound=enum.StrEnum)


@functools.cache
def _members(kind: type[E]) -> dict[str, E]:
    """Every member of `kind` by its value and by its lower-cased name."""
    return {**{m.name.lower(): m for m in kind}, **{m.value: m for m in kind}}


def _parse(kind: type[E], value: E | str, what: str) -> E:
    """A member of `kind` from itself, its value or its name, in any case; else a ValueError listing them."""
    if isinstance(value, kind):
        return value
    if isinstance(value, str):
        member: E | None = _members(kind).get(value.strip().lower())
        if member is not None:
            return member
    accepted = ", ".join(m.value for m in kind)
    raise ValueError(f"unknown {what} {value!r}; accepted: {accepted}")


MAX_PAYLOAD_DEPTH = 64  # levels of lists and objects a payload may have, embedded and in the service alike
MAX_TASK_LENGTH = 32_768  # characters of a check's task: a long prompt fits, a document pasted whole does not


def checked_task(task: Any) -> str | None:
    """`task` if it is None or a string of at most MAX_TASK_LENGTH characters; else ValueError, saying why."""
    if task is not None and not isinstance(task, str):
        raise ValueError(f"task must be a string or None, got {type(task).__name__}")
    if task is not None and len(task) > MAX_TASK_LENGTH:
        raise ValueError(f"task is {len(task)} characters long; the limit is {MAX_TASK_LENGTH}")
    return task


def checked_id(name: str, value: Any, *, optional: bool = True) -> str | None:
    """`value` if it is a non-empty string (or None, if `optional`); else ValueError naming `name`: an id that is
    not text (a number, a list) broke the stores' keys and rows further on."""
    if (value is None and optional) or (isinstance(value, str) and value):
        return value
    raise ValueError(f"{name} must be a non-empty string{' or None' if optional else ''}, not {value!r:.80}")


def task_digest(task: str) -> str:
    """The SHA-256 the audit trail keeps of a task instead of its text. An unpaired surrogate is not UTF-8: it is
    hashed as its backslash escape, the form a remote guard sends, so both guards record the same digest.

    >>> task_digest("read \\\\ud800 q3") == task_digest("read \\ud800 q3")
    True
    """
    return hashlib.sha256(task.encode("utf-8", "backslashreplace")).hexdigest()


def encoded_payload(payload: Any) -> bytes:
    """The payload as the audit trail hashes it: canonical JSON, with values JSON lacks as their text.

    Raises ValueError for a payload nested more than MAX_PAYLOAD_DEPTH levels deep or containing itself: the
    scorers walk it, and the service refuses the same; and for one no JSON can hold (an integer of more than
    4,300 digits, say).
    """
    deep = f"payload is nested more than {MAX_PAYLOAD_DEPTH} levels deep, or contains itself"
    try:
        text = canonical_json(payload)
    except (ValueError, TypeError, RecursionError) as exc:  # a cycle, a nesting beyond the stack, or worse
        if nesting(payload) > MAX_PAYLOAD_DEPTH:
            raise ValueError(deep) from None
        raise ValueError(f"payload cannot be written as JSON ({exc})") from None
    # Nesting needs as many brackets; counting them in C spares the walk for nearly every payload.
    if text.count(b"[") + text.count(b"{") > MAX_PAYLOAD_DEPTH and nesting(payload) > MAX_PAYLOAD_DEPTH:
        raise ValueError(deep)
    return text


def nesting(value: Any) -> int:
    """How many levels of lists and objects `value` has, counted up to one past MAX_PAYLOAD_DEPTH (iteratively:
    a deep value cannot exhaust the stack, and one that contains itself ends there too).

    >>> nesting({"a": [1, {"b": []}]}), nesting("flat")
    (4, 0)
    """
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list | tuple) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if depth > MAX_PAYLOAD_DEPTH:
            break
        stack.extend((child, depth + 1) for child in children)
    return deepest


MAX_AMOUNT = 2**53  # rows or bytes one outcome may report: exact as a float, as the volume windows keep them


def outcome_amount(unit: str, value: Any) -> int | None:
    """The rows or bytes an outcome reports, checked: a whole number from 0 to MAX_AMOUNT, or None.

    A negative count would take volume out of a data-volume window (and NaN would stop it from ever adding up),
    so a bad value is refused rather than recorded.

    >>> outcome_amount("rows", 12), outcome_amount("rows", None)
    (12, None)
    >>> outcome_amount("rows", -1)
    Traceback (most recent call last):
    ...
    ValueError: rows must be a whole number from 0 to 9007199254740992, got -1
    """
    if value is None:
        return None
    if not isinstance(value, bool):
        try:
            amount = operator.index(value)  # ints and integer types such as numpy's; not floats or strings
        except TypeError:
            pass
        else:
            if 0 <= amount <= MAX_AMOUNT:
                return amount
    raise ValueError(f"{unit} must be a whole number from 0 to {MAX_AMOUNT}, got {value!r}")


class Outcome(enum.StrEnum):
    """What the decision point did with one action."""

    ALLOWED = "allowed"
    ALERTED = "alerted"
    BLOCKED = "blocked"
    PAUSED = "paused"
    ROLLED_BACK = "rolled_back"
    TERMINATED = "terminated"

    @property
    def allows(self) -> bool:
        return self in (Outcome.ALLOWED, Outcome.ALERTED)

    @property
    def stops(self) -> bool:
        """True when the agent may not act again until a reviewer steps in: its run has to end."""
        return self in (Outcome.PAUSED, Outcome.ROLLED_BACK, Outcome.TERMINATED)


class AgentStatus(enum.StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    TERMINATED = "terminated"


@dataclass(frozen=True, slots=True)
class Reason:
    """Why a decision came out as it did: a stable machine code and a sentence for people.

    `violation` reasons break the policy and trigger the kill switch by themselves;
    the others explain the risk score (`weight` is their contribution).
    """

    code: str
    message: str
    weight: float = 0.0
    violation: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "weight": round(self.weight, 6),
            "violation": self.violation,
        }


def heaviest_first(reason: Reason) -> float:
    """Sort key that puts the reason weighing most on a score first."""
    return -reason.weight


@dataclass(frozen=True, slots=True)
class Action:
    """One thing an agent is about to do, after normalization."""

    action_type: ActionType
    resource: str
    readings: tuple[str, ...]
    payload: Any
    agent_id: str
    session_id: str | None
    ts: float


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer of the decision point for one action. `allowed` is all most callers need."""

    action_id: str
    agent_id: str
    allowed: bool
    outcome: Outcome
    risk_score: float
    reasons: tuple[Reason, ...] = field(default_factory=tuple)
    action_type: ActionType = ActionType.CUSTOM
    resource: str = ""
    normalized_resource: str = ""

    @property
    def reason_codes(self) -> tuple[str, ...]:
        return tuple(r.code for r in self.reasons)

    def to_dict(self) -> dict[str, Any]:
        """The decision as JSON-ready fields, as the HTTP service returns it.

        >>> d = Decision("a1", "bot", False, Outcome.BLOCKED, 1.0, (Reason("resource_blocked", "no", 1.0, True),))
        >>> Decision.from_dict(d.to_dict()) == d
        True
        """
        return {
            "action_id": self.action_id,
            "agent_id": self.agent_id,
            "allowed": self.allowed,
            "outcome": self.outcome.value,
            "risk_score": self.risk_score,
            "reasons": [r.to_dict() for r in self.reasons],
            "action_type": self.action_type.value,
            "resource": self.resource,
            "normalized_resource": self.normalized_resource,
        }

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> Decision:
        """The decision `to_dict` gave; raises ValueError or KeyError on anything else.

        `allowed` must be a JSON boolean that agrees with `outcome`: "false" or [0] would be true as Python
        sees them, and an answer read as an allow must be one.

        >>> Decision.from_dict({"action_id": "a1", "agent_id": "bot", "allowed": "false", "outcome": "blocked",
        ...                     "risk_score": 1.0})
        Traceback (most recent call last):
        ValueError: allowed must be true or false, got 'false'
        """
        allowed, outcome = fields["allowed"], Outcome(fields["outcome"])
        if not isinstance(allowed, bool):
            raise ValueError(f"allowed must be true or false, got {allowed!r}")
        if allowed != outcome.allows:
            raise ValueError(f"allowed={allowed} contradicts outcome {outcome.value!r}")
        return cls(
            action_id=str(fields["action_id"]),
            agent_id=str(fields["agent_id"]),
            allowed=allowed,
            outcome=outcome,
            risk_score=float(fields["risk_score"]),
            reasons=tuple(
                Reason(str(r["code"]), str(r["message"]), float(r.get("weight", 0.0)), bool(r.get("violation", False)))
                for r in fields.get("reasons", ())
            ),
            action_type=ActionType.parse(fields.get("action_type", ActionType.CUSTOM)),
            resource=str(fields.get("resource", "")),
            normalized_resource=str(fields.get("normalized_resource", "")),
        )

    def explain(self) -> str:
        verdict = "allowed" if self.allowed else "denied"
        why = "; ".join(r.message for r in self.reasons) or "no rule fired"
        return f"{verdict} ({self.outcome.value}, risk {self.risk_score:.2f}): {why}"
