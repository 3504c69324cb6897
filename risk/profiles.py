"""What the guard knows of each agent's normal behavior: a profile per agent, kept in a state store.

A profile is counts and sets, updated once per allowed action in a few microseconds: which action types,
resources, resource prefixes and outbound destinations the agent has used, at which hours, in which order,
how fast, and how its recent decisions and outcomes went. `risk.features` reads it to describe how far a
new action is from that normal.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

# Sets of seen resources and destinations stop growing here; past it, unseen values still count as new.
MAX_REMEMBERED = 50_000
RECENT = 20  # decisions and outcomes in the "recent denial / error rate" features
RATE_HORIZON_MINUTES = 60


@dataclass
class AgentProfile:
    """One agent's behavior so far. Only allowed actions shape it, so a denied attacker cannot teach it."""

    agent_id: str
    actions: int = 0
    type_counts: dict[str, int] = field(default_factory=dict)
    resources: set[str] = field(default_factory=set)
    prefixes: set[str] = field(default_factory=set)
    destinations: set[str] = field(default_factory=set)
    denied_destinations: set[str] = field(default_factory=set)
    hour_counts: list[int] = field(default_factory=lambda: [0] * 24)
    transitions: dict[tuple[str, str], int] = field(default_factory=dict)
    transitions_from: dict[str, int] = field(default_factory=dict)
    prev_type: str | None = None
    first_ts: float | None = None
    last_ts: float | None = None
    recent_resources: deque[str] = field(default_factory=lambda: deque(maxlen=RECENT))
    active_minutes: int = 0
    minutes: deque[list[int]] = field(default_factory=deque)  # [minute, count] for the last hour
    recent_denied: deque[bool] = field(default_factory=lambda: deque(maxlen=RECENT))
    recent_errors: deque[bool] = field(default_factory=lambda: deque(maxlen=RECENT))
    volume: deque[tuple[float, float]] = field(default_factory=deque)  # (ts, rows + bytes/1000) last hour
    volume_baseline: float = 0.0  # long-run mean volume per reported outcome

    def record_decision(self, denied: bool, blamed_destinations: tuple[str, ...] = ()) -> None:
        """Count a decision; a denial for what the action itself did marks its destinations as suspect."""
        self.recent_denied.append(denied)
        for d in blamed_destinations:
            _remember(self.denied_destinations, d)

    def record_action(
        self, ts: float, action_type: str, resource: str, prefix: str, destinations: tuple[str, ...]
    ) -> None:
        """Fold one allowed action into the profile."""
        self.actions += 1
        self.type_counts[action_type] = self.type_counts.get(action_type, 0) + 1
        _remember(self.resources, resource)
        _remember(self.prefixes, prefix)
        for d in destinations:
            _remember(self.destinations, d)
        self.hour_counts[int(ts // 3600) % 24] += 1
        if self.prev_type is not None:
            key = (self.prev_type, action_type)
            self.transitions[key] = self.transitions.get(key, 0) + 1
            self.transitions_from[self.prev_type] = self.transitions_from.get(self.prev_type, 0) + 1
        self.prev_type = action_type
        self.recent_resources.append(resource)
        if self.first_ts is None:
            self.first_ts = ts
        self.last_ts = ts
        minute = int(ts // 60)
        if self.minutes and self.minutes[-1][0] == minute:
            self.minutes[-1][1] += 1
        else:
            self.minutes.append([minute, 1])
            self.active_minutes += 1
            while self.minutes and self.minutes[0][0] <= minute - RATE_HORIZON_MINUTES:
                self.minutes.popleft()

    def record_outcome(self, ts: float, error: bool, volume: float) -> None:
        self.recent_errors.append(error)
        if volume:
            self.volume.append((ts, volume))
            self.volume_baseline += (volume - self.volume_baseline) * 0.01
        while self.volume and self.volume[0][0] <= ts - 3600:
            self.volume.popleft()

    def count_since(self, ts: float, seconds: float) -> int:
        """Allowed actions in the last `seconds` (whole minutes, up to an hour)."""
        first = int((ts - seconds) // 60) + 1
        return sum(count for minute, count in self.minutes if minute >= first)


def _remember(seen: set[str], value: str) -> None:
    if len(seen) < MAX_REMEMBERED:
        seen.add(value)


class ProfileStore(Protocol):
    def get(self, agent_id: str) -> AgentProfile:
        """The agent's profile, created empty on first use. The caller mutates it under `lock`."""
        ...

    lock: threading.Lock


class MemoryProfiles:
    """Profiles in this process (the embedded default).

    >>> profiles = MemoryProfiles()
    >>> profiles.get("a").record_action(0.0, "file_read", "/r/x", "/r", ())
    >>> profiles.get("a").actions
    1
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._profiles: dict[str, AgentProfile] = {}

    def get(self, agent_id: str) -> AgentProfile:
        profile = self._profiles.get(agent_id)
        if profile is None:
            profile = self._profiles.setdefault(agent_id, AgentProfile(agent_id))
        return profile
