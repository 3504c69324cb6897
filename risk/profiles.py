"""What the guard knows of each agent's normal behavior: a profile per agent, kept in a state store.

A profile is counts and sets, updated once per action that ran in a few microseconds: which action types,
resources, resource prefixes, outbound destinations and ranges of amounts the agent has used, at which
hours, in which order, how fast, and how its recent decisions and outcomes went. `risk.features` reads it
to describe how far a new action is from that normal.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

# Sets of seen resources and destinations stop growing here; past it, unseen values still count as new.
MAX_REMEMBERED = 50_000
RECENT = 20  # decisions and outcomes in the "recent denial / error rate" features
RATE_HORIZON_MINUTES = 60


@dataclass
class AgentProfile:
    """One agent's behavior so far. Only actions that ran shape it, and a flagged one (alerted) not with where it
    sent or how much, so an attacker the guard flagged cannot teach it."""

    agent_id: str
    actions: int = 0
    type_counts: dict[str, int] = field(default_factory=dict)
    resources: set[str] = field(default_factory=set)
    prefixes: set[str] = field(default_factory=set)
    destinations: set[str] = field(default_factory=set)
    denied_destinations: set[str] = field(default_factory=set)
    habits: set[str] = field(default_factory=set)  # habit_key of each action type and resource it ran unflagged
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
    # [minute, rows + bytes/1000 reported in it] for the last hour: one entry per minute, not per outcome, so an
    # agent reporting hundreds of outcomes a minute keeps 60 entries, read and stored in a few microseconds.
    volume: deque[list[float]] = field(default_factory=deque)
    volume_baseline: float = 0.0  # long-run mean volume per reported outcome
    amounts: dict[str, list[float]] = field(default_factory=dict)  # amount name -> [uses, min, max] of log10

    def record_decision(
        self, denied: bool, blamed_destinations: tuple[str, ...] = (), cleared_destinations: tuple[str, ...] = ()
    ) -> None:
        """Count a decision; a denial for what the action itself did marks its destinations as suspect, and a
        reviewer's approval of one clears the suspect destinations it goes to."""
        self.recent_denied.append(denied)
        for d in blamed_destinations:
            _remember(self.denied_destinations, d)
        self.denied_destinations.difference_update(cleared_destinations)

    def record_action(
        self,
        ts: float,
        action_type: str,
        resource: str,
        prefix: str,
        destinations: tuple[str, ...],
        amounts: tuple[tuple[str, float], ...] = (),
        habit: str = "",
    ) -> None:
        """Fold one allowed action into the profile, and its `habit_key` (none for one flagged or approved)."""
        for name, x in amounts:
            seen = self.amounts.get(name)
            if seen is None:
                self.amounts[name] = [1, x, x]
            else:
                seen[:] = [seen[0] + 1, min(seen[1], x), max(seen[2], x)]
        self.actions += 1
        self.type_counts[action_type] = self.type_counts.get(action_type, 0) + 1
        _remember(self.resources, resource)
        _remember(self.prefixes, prefix)
        if habit:
            _remember(self.habits, habit)
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
        minute = int(ts // 60)
        if volume:
            self.add_volume(minute, volume)
            self.volume_baseline += (volume - self.volume_baseline) * 0.01
        while self.volume and self.volume[0][0] <= minute - RATE_HORIZON_MINUTES:
            self.volume.popleft()

    def add_volume(self, minute: int, volume: float) -> None:
        """Count `volume` in its minute. A report timed before the latest minute (workers' clocks disagree) counts
        in the latest, so the minutes stay in order and expire from the front."""
        if self.volume and self.volume[-1][0] >= minute:
            self.volume[-1][1] += volume
        else:
            self.volume.append([minute, volume])

    def volume_last_hour(self, ts: float) -> float:
        """Rows and bytes/1000 reported in the hour before `ts`, by whole minutes as `counts_since` counts. Older
        minutes leave `volume` only when the next outcome comes, so after a quiet hour they are still there.

        >>> p = AgentProfile("a"); p.volume.extend([[0, 5.0], [30, 2.0]])
        >>> p.volume_last_hour(30 * 60.0), p.volume_last_hour(60 * 60.0), p.volume_last_hour(200 * 60.0)
        (7.0, 2.0, 0.0)
        """
        first = int(ts // 60) - RATE_HORIZON_MINUTES + 1
        return sum((v for minute, v in self.volume if minute >= first), 0.0)

    def counts_since(self, ts: float, windows: tuple[float, ...]) -> list[int]:
        """Allowed actions in each of the last `windows` seconds (whole minutes, up to an hour), shortest first,
        counted in one pass from the newest minute back.

        >>> p = AgentProfile("a"); p.minutes.extend([[0, 2], [9, 1], [10, 4]])
        >>> p.counts_since(650.0, (60.0, 600.0, 3600.0))
        [4, 5, 7]
        """
        firsts = [int((ts - seconds) // 60) + 1 for seconds in windows]
        counts = [0] * len(windows)
        total, w = 0, 0
        for minute, count in reversed(self.minutes):
            while minute < firsts[w]:
                counts[w] = total
                w += 1
                if w == len(windows):
                    return counts
            total += count
        counts[w:] = [total] * (len(windows) - w)
        return counts


def habit_key(action_type: str, resource: str) -> str:
    """How a profile's `habits` name an action type on a resource, given by its `Readings.identity`.

    >>> habit_key("file_read", '["/reports/q3.csv"]')
    'file_read ["/reports/q3.csv"]'
    """
    return f"{action_type} {resource}"


def _remember(seen: set[str], value: str) -> None:
    if len(seen) < MAX_REMEMBERED:
        seen.add(value)


PROFILE_SETS = ("resources", "prefixes", "destinations", "denied_destinations", "habits")


def profile_core(profile: AgentProfile) -> dict[str, Any]:
    """Everything in a profile but its sets, as JSON-ready fields (a shared store keeps the sets apart).

    >>> p = AgentProfile("a"); p.record_action(90.0, "file_read", "/r/x", "/r", ("host:x",))
    >>> q = profile_from_core("a", profile_core(p)); (q.actions, q.minutes, q.resources)
    (1, deque([[1, 1]]), set())
    """
    return {
        "actions": profile.actions,
        "type_counts": profile.type_counts,
        "hour_counts": profile.hour_counts,
        "transitions": [[a, b, n] for (a, b), n in profile.transitions.items()],
        "transitions_from": profile.transitions_from,
        "prev_type": profile.prev_type,
        "first_ts": profile.first_ts,
        "last_ts": profile.last_ts,
        "recent_resources": list(profile.recent_resources),
        "active_minutes": profile.active_minutes,
        "minutes": list(profile.minutes),
        "recent_denied": list(profile.recent_denied),
        "recent_errors": list(profile.recent_errors),
        "volume_minutes": list(profile.volume),
        "volume_baseline": profile.volume_baseline,
        "amounts": profile.amounts,
    }


def profile_from_core(
    agent_id: str, core: dict[str, Any] | None, sets: dict[str, set[str]] | None = None
) -> AgentProfile:
    """The profile `profile_core` described, with `sets` (or empty ones); None gives a new agent's profile."""
    profile = AgentProfile(agent_id)
    for name, members in (sets or {}).items():
        setattr(profile, name, members)
    if core is None:
        return profile
    profile.actions = int(core["actions"])
    profile.type_counts = dict(core["type_counts"])
    profile.hour_counts = list(core["hour_counts"])
    profile.transitions = {(a, b): int(n) for a, b, n in core["transitions"]}
    profile.transitions_from = dict(core["transitions_from"])
    profile.prev_type = core["prev_type"]
    profile.first_ts = core["first_ts"]
    profile.last_ts = core["last_ts"]
    profile.recent_resources.extend(core["recent_resources"])
    profile.active_minutes = int(core["active_minutes"])
    profile.minutes.extend([int(m), int(c)] for m, c in core["minutes"])
    profile.recent_denied.extend(bool(d) for d in core["recent_denied"])
    profile.recent_errors.extend(bool(e) for e in core["recent_errors"])
    if "volume_minutes" in core:
        profile.volume.extend([int(m), float(v)] for m, v in core["volume_minutes"])
    else:  # stored before volumes were kept by the minute: one (ts, volume) per outcome
        for t, v in core["volume"]:
            profile.add_volume(int(float(t) // 60), float(v))
    profile.volume_baseline = float(core["volume_baseline"])
    # A profile stored before amounts were kept has none: its amounts' ranges start from now.
    ranges = core.get("amounts", {})
    if not isinstance(ranges, dict):
        raise ValueError(f"amounts must be an object of [uses, min, max], got {type(ranges).__name__}")
    profile.amounts = {str(name): [int(n), float(lo), float(hi)] for name, (n, lo, hi) in ranges.items()}
    return profile


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Probe:
    """The members one action asks a profile's sets about (a remote store fetches only these)."""

    resource: str
    prefix: str
    destinations: tuple[str, ...]
    habit: str = ""  # the action's habit_key


class ProfileStore(Protocol):
    """Where profiles live. Reads see a consistent profile; each update is applied whole."""

    def read(self, agent_id: str, probe: Probe, use: Callable[[AgentProfile], T]) -> T:
        """`use(profile)` on the agent's profile as it is now (created empty on first use). The profile's
        sets need only answer membership for the probe's members; `use` must not change it."""
        ...

    def record(
        self, agent_id: str, *, denied: bool, blamed: tuple[str, ...], action: ActionSeen | None,
        cleared: tuple[str, ...] = (),
    ) -> None:  # fmt: skip
        """Fold one decision in: `AgentProfile.record_decision`, then `record_action` if it ran."""
        ...

    def record_outcome(self, agent_id: str, ts: float, error: bool, volume: float) -> None: ...


@dataclass(frozen=True, slots=True)
class ActionSeen:
    """An allowed action, as `AgentProfile.record_action` takes it."""

    ts: float
    action_type: str
    resource: str
    prefix: str
    destinations: tuple[str, ...]
    amounts: tuple[tuple[str, float], ...] = ()
    habit: str = ""  # its habit_key, if it makes one

    def fold_into(self, profile: AgentProfile) -> None:
        profile.record_action(
            self.ts, self.action_type, self.resource, self.prefix, self.destinations, self.amounts, self.habit
        )


class MemoryProfiles:
    """Profiles in this process (the embedded default).

    >>> profiles = MemoryProfiles()
    >>> profiles.record("a", denied=False, blamed=(), action=ActionSeen(0.0, "file_read", "/r/x", "/r", ()))
    >>> profiles.read("a", Probe("/r/x", "/r", ()), lambda p: (p.actions, "/r/x" in p.resources))
    (1, True)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._profiles: dict[str, AgentProfile] = {}

    def read(self, agent_id: str, probe: Probe, use: Callable[[AgentProfile], T]) -> T:
        with self._lock:
            return use(self._get(agent_id))

    def record(
        self, agent_id: str, *, denied: bool, blamed: tuple[str, ...], action: ActionSeen | None,
        cleared: tuple[str, ...] = (),
    ) -> None:  # fmt: skip
        with self._lock:
            profile = self._get(agent_id)
            profile.record_decision(denied, blamed, cleared)
            if action is not None:
                action.fold_into(profile)

    def record_outcome(self, agent_id: str, ts: float, error: bool, volume: float) -> None:
        with self._lock:
            self._get(agent_id).record_outcome(ts, error, volume)

    def _get(self, agent_id: str) -> AgentProfile:
        profile = self._profiles.get(agent_id)
        if profile is None:
            profile = self._profiles[agent_id] = AgentProfile(agent_id)
        return profile
