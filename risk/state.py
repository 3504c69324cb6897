"""Shared, mutable per-agent state: kill-switch status (with a one-time approval), sliding windows for limits.

The store is chosen by URL. `memory://` serves one process; a Redis store for several workers implements
the same small protocol.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from risk.actions import AgentStatus


@dataclass(frozen=True, slots=True)
class AgentState:
    status: AgentStatus = AgentStatus.RUNNING
    reason: str = ""
    actor: str = ""
    pending_action_id: str | None = None
    pending_fingerprint: str | None = None
    # An approval: the action (by fingerprint) that may run once despite its violations. Kept in the state, so
    # the move that grants it and any later move (a pause, resume, reset) that drops it are each one step.
    approved_fingerprint: str | None = None
    # Which write put the state there (a store may stamp each one): not part of what the state says, so two
    # states that say the same compare equal whoever wrote them.
    write: str = field(default="", compare=False)


@runtime_checkable  # so a Guard can refuse a value that is not a store (a list has an append too)
class StateStore(Protocol):
    def get_state(self, agent_id: str) -> AgentState: ...

    def set_state(self, agent_id: str, state: AgentState) -> None: ...

    def replace_state(self, agent_id: str, expected: AgentState, new: AgentState) -> bool:
        """Set `new` only if the state is still `expected` (compare-and-set); say whether it was set."""
        ...

    def try_acquire(self, key: str, now: float, window: float, limit: int) -> bool:
        """Count one event in `key`'s sliding window if fewer than `limit` are in it; say whether it was."""
        ...

    def add(self, key: str, now: float, amount: float) -> None:
        """Add `amount` at time `now` to `key`'s window."""
        ...

    def total(self, key: str, now: float, window: float) -> float:
        """The sum of amounts added to `key` within the last `window` seconds."""
        ...

    def admit(self, group: str, member: str, limit: int) -> bool:
        """Whether `member` is one of `group`'s members, made one if the group has fewer than `limit`."""
        ...


@dataclass
class _Window:
    events: deque[tuple[float, float]] = field(default_factory=deque)
    sum: float = 0.0

    def expire(self, cutoff: float) -> None:
        events = self.events
        while events and events[0][0] <= cutoff:
            self.sum -= events.popleft()[1]
        if not events:
            self.sum = 0.0  # keep float drift from accumulating


class MemoryState:
    """In-process state for the embedded SDK. Thread-safe; not shared across processes.

    >>> s = MemoryState()
    >>> [s.try_acquire("a", now=0.0, window=60.0, limit=2) for _ in range(3)]
    [True, True, False]
    >>> s.try_acquire("a", now=60.5, window=60.0, limit=2)
    True
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, AgentState] = {}
        self._windows: dict[str, _Window] = {}
        self._groups: dict[str, set[str]] = {}

    def get_state(self, agent_id: str) -> AgentState:
        return self._states.get(agent_id) or AgentState()

    def set_state(self, agent_id: str, state: AgentState) -> None:
        with self._lock:
            self._states[agent_id] = state

    def replace_state(self, agent_id: str, expected: AgentState, new: AgentState) -> bool:
        with self._lock:
            if self._states.get(agent_id, AgentState()) != expected:
                return False
            self._states[agent_id] = new
            return True

    def try_acquire(self, key: str, now: float, window: float, limit: int) -> bool:
        with self._lock:
            w = self._windows.setdefault(key, _Window())
            w.expire(now - window)
            if len(w.events) >= limit:
                return False
            w.events.append((now, 1.0))
            w.sum += 1.0
            return True

    def add(self, key: str, now: float, amount: float) -> None:
        with self._lock:
            w = self._windows.setdefault(key, _Window())
            w.events.append((now, amount))
            w.sum += amount

    def total(self, key: str, now: float, window: float) -> float:
        with self._lock:
            w = self._windows.get(key)
            if w is None:
                return 0.0
            w.expire(now - window)
            return w.sum

    def admit(self, group: str, member: str, limit: int) -> bool:
        with self._lock:
            members = self._groups.setdefault(group, set())
            if member not in members and len(members) >= limit:
                return False
            members.add(member)
            return True


def open_state(url: str | None) -> StateStore:
    """The state store named by `url`: `None` or `memory://` is in-process; `redis://` and `rediss://`
    (see risk.state_redis) are shared by every process using the same server and prefix."""
    if url is None or url == "memory://":
        return MemoryState()
    if url.startswith(("redis://", "rediss://")):
        from risk.state_redis import RedisState  # imported here: the redis package is optional

        return RedisState.from_url(url)
    raise ValueError(f"unsupported state store URL {url!r}; use 'memory://' or 'redis://host:port/db'")
