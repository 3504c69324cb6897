"""A StateStore in Redis, so several processes or workers share kill-switch status, limits and approvals.

Every read-modify-write runs in Redis as one Lua script or one atomic command, so a burst from many workers
never admits more than a rate limit allows and a one-time approval (part of the agent's state, replaced by
compare-and-set) is used exactly once. Windows are
measured on the caller's clock (the Guard's `now`), not on Redis time; Redis only expires idle keys.

Keys (all under a prefix, `risk:` by default, set with `?prefix=` in the URL):

    {prefix}state:{agent_id}     string   the AgentState as JSON
    {prefix}rate:{key}           zset     try_acquire's sliding-window log: member unique, score = time
    {prefix}vol:{key}            zset     add's events: member "amount:unique", score = time
    {prefix}volsum:{key}         hash     add/total's running sum ("sum") and key lifetime in ms ("ttl")
    {prefix}members:{group}      set      admit's members of a group (the service: a tenant's agents)
    {prefix}profile:{agent_id}   string   RedisProfiles: the agent's profile but its sets, as JSON
    {prefix}profile:{agent_id}:{set}  set  RedisProfiles: its seen resources, prefixes, destinations, ...

Unlike MemoryState, a key counted with try_acquire and the same key summed with add/total are two windows;
the Guard never mixes them (it uses `rate:<agent>`, `rows:<agent>` and `bytes:<agent>`).

Usage (needs the `redis` package and a running server)::

    guard = Guard(state="redis://127.0.0.1:6379/0?prefix=risk:", ...)
"""

from __future__ import annotations

import json
import math
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from risk.actions import AgentStatus
from risk.errors import StateError
from risk.profiles import (
    MAX_REMEMBERED,
    PROFILE_SETS,
    ActionSeen,
    AgentProfile,
    Probe,
    profile_core,
    profile_from_core,
)
from risk.state import AgentState

if TYPE_CHECKING:
    import redis

T = TypeVar("T")

DEFAULT_PREFIX = "risk:"
DEFAULT_TIMEOUT = 2.0  # seconds; a guard must not hang on a Redis that does not answer

# KEYS[1] the log. ARGV: now, cutoff, limit, ttl in ms (0: never expire), a unique member.
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[5])
if tonumber(ARGV[4]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return 1
"""

# KEYS[1] the events, KEYS[2] the running sum. ARGV: now, amount, member ("amount:unique").
# The keys get the lifetime the last `total` recorded; before any `total` they do not expire.
_ADD = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[3])
local sum = tonumber(redis.call('HGET', KEYS[2], 'sum') or '0') + tonumber(ARGV[2])
redis.call('HSET', KEYS[2], 'sum', string.format('%.17g', sum))
local ttl = tonumber(redis.call('HGET', KEYS[2], 'ttl') or '0')
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
return 1
"""

# KEYS[1] the events, KEYS[2] the running sum. ARGV: cutoff, ttl in ms (0: never expire).
# Drops events at or before the cutoff, subtracts them from the sum and returns the sum as a string
# (a Lua number would come back truncated to an integer).
_TOTAL = """
local sum = tonumber(redis.call('HGET', KEYS[2], 'sum') or '0')
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if #gone > 0 then
  for _, member in ipairs(gone) do
    sum = sum - tonumber(string.match(member, '^[^:]+'))
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
end
if redis.call('ZCARD', KEYS[1]) == 0 then
  sum = 0
end
local text = string.format('%.17g', sum)
redis.call('HSET', KEYS[2], 'sum', text, 'ttl', ARGV[2])
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
else
  redis.call('PERSIST', KEYS[1])
  redis.call('PERSIST', KEYS[2])
end
return text
"""


# Replace a profile's scalar part only if it still is what the caller last saw (the empty string: no profile
# yet), add to its sets up to the cap (a set at the cap grows no more) and remove from them, in one round trip.
# Returns 0, changing nothing, if another worker wrote the profile in between.
# KEYS: the scalar part, then the sets; ARGV: the expected part, the new part, the cap, then per set a count n and
# n members to add, a count m and m members to remove.
# KEYS[1] the group's set; ARGV: member, limit. 1 if the member is in the set (added if there was room).
_ADMIT = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 1 end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
return 1
"""
# The members go in chunks (unpack fails past about 8,000 values, after the writes before it: Redis does not
# undo a script) and never past the cap, as in memory; the scalar part is written last, so a script that fails
# leaves it as it was and the update is tried again whole.
_REPLACE_PROFILE = """
local current = redis.call('GET', KEYS[1]) or ''
if current ~= ARGV[1] then return 0 end
local cap = tonumber(ARGV[3])
local at = 4
for i = 2, #KEYS do
  local n = tonumber(ARGV[at])
  local first, last = at + 1, at + n
  local size = redis.call('SCARD', KEYS[i])
  while first <= last and size < cap do
    local upto = math.min(last, first + math.min(1000, cap - size) - 1)
    redis.call('SADD', KEYS[i], unpack(ARGV, first, upto))
    first = upto + 1
    size = redis.call('SCARD', KEYS[i])
  end
  -- then the members to remove from it
  n = tonumber(ARGV[last + 1])
  first, last = last + 2, last + 1 + n
  while first <= last do
    local upto = math.min(last, first + 999)
    redis.call('SREM', KEYS[i], unpack(ARGV, first, upto))
    first = upto + 1
  end
  at = last + 1
end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""
PROFILE_UPDATE_ATTEMPTS = 100  # optimistic retries; each loses only to another worker's completed update
LAST_SEEN_AGENTS = 4096  # profiles whose last-seen scalar part a RedisProfiles keeps, to skip a read


def parse_state_url(url: str) -> tuple[str, str]:
    """Split a state URL into the Redis URL (without `prefix`) and the key prefix.

    >>> parse_state_url("redis://127.0.0.1:6379/0?prefix=test:&socket_timeout=2")
    ('redis://127.0.0.1:6379/0?socket_timeout=2', 'test:')
    >>> parse_state_url("rediss://cache.internal:6380/1")
    ('rediss://cache.internal:6380/1', 'risk:')
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"not a Redis URL: {_redacted(url)!r}; use redis://host:port/db or rediss://...")
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefixes = [value for name, value in query if name == "prefix"]
    rest = [(name, value) for name, value in query if name != "prefix"]
    return urlunsplit(parts._replace(query=urlencode(rest))), prefixes[-1] if prefixes else DEFAULT_PREFIX


class RedisState:
    """Kill-switch status, sliding windows and one-time approvals in Redis, shared by every process using it.

    Connects lazily: constructing one does no I/O. Any Redis failure (unreachable, timeout, a refused
    command) raises StateError. `client` is a `redis.Redis`; `from_url` is the usual way to make one.

    A key's sliding window is trimmed with the caller's `now`; Redis expiry (set to the window, in real time)
    only reclaims idle keys, so a clock moved by hand in tests works as long as the test takes less real time
    than the window.

    If a reply is lost (a timeout after Redis ran the command), the call raises StateError, and if the client
    retries, a counted event may count twice: that errs on the side of denying.
    """

    def __init__(self, client: redis.Redis, prefix: str = DEFAULT_PREFIX, *, where: str = "redis") -> None:
        import redis as redis_module

        self._client = client
        self.prefix = prefix
        self._where = where
        self._redis_error = redis_module.RedisError
        self._epoch: str | None = None  # the token this process found (or put) under the epoch key; see get_state
        self._acquire = client.register_script(_ACQUIRE)
        self._add = client.register_script(_ADD)
        self._total = client.register_script(_TOTAL)
        self._admit = client.register_script(_ADMIT)

    @classmethod
    def from_url(cls, url: str) -> RedisState:
        """A store for `redis://[user:password@]host:port/db[?prefix=risk:&socket_timeout=5]` (or `rediss://`).

        Query arguments other than `prefix` go to `redis.Redis.from_url`; the socket timeouts default to 2 s.
        """
        try:
            import redis as redis_module
        except ModuleNotFoundError as exc:
            raise ModuleNotFoundError(
                f"the state store {_redacted(url)!r} needs the redis package: pip install redis", name=exc.name
            ) from exc
        redis_url, prefix = parse_state_url(url)
        client = redis_module.Redis.from_url(
            redis_url, socket_timeout=DEFAULT_TIMEOUT, socket_connect_timeout=DEFAULT_TIMEOUT
        )
        return cls(client, prefix, where=_redacted(url))

    def __repr__(self) -> str:
        return f"RedisState({self._where!r}, prefix={self.prefix!r})"

    # ---- kill-switch status ------------------------------------------------------------------

    def get_state(self, agent_id: str) -> AgentState:
        """The agent's kill-switch state, read with the store's epoch: a token this process finds (or puts) under
        one key on first use. A Redis that lost its data (restarted without persistence, flushed, evicted) has no
        agent stopped any more, and every paused or terminated agent would read as running: with the token gone
        or changed, the read fails (StateError, so checks deny) until this process restarts and takes the new
        one, as an operator does once they know what was lost."""
        with self._errors("read the state of agent", agent_id):
            if self._epoch is None:
                self._epoch = self._take_epoch()
            raw, epoch = self._client.mget(self._key("state", agent_id), self._key("epoch", "token"))
        if self._epoch is not None and _text(epoch) != self._epoch:
            raise StateError(
                f"the Redis state store {self._where} lost its data since this process first used it (its epoch "
                f"token is {'gone' if epoch is None else 'another'}): the pauses and terminations it held are gone, "
                "so no agent's state can be trusted; restart this service once that is known (see the README)"
            )
        return self._decode(agent_id, raw)

    def _take_epoch(self) -> str | None:
        """The epoch token under its key, put there if there is none; None while Redis refuses writes (out of
        memory) and holds none, when the next read tries again."""
        import redis as redis_module

        key, token = self._key("epoch", "token"), os.urandom(8).hex()
        found: Any
        ours: str | None = token  # what the key holds when it held nothing before
        try:
            found = self._client.set(key, token, nx=True, get=True)  # the value that was there, if any
        except redis_module.ResponseError:  # a write refused: reads still answer
            found, ours = self._client.get(key), None
        return _text(found) if isinstance(found, bytes | str) else ours

    def set_state(self, agent_id: str, state: AgentState) -> None:
        with self._errors("write the state of agent", agent_id):
            self._client.set(self._key("state", agent_id), _encode(state))

    def replace_state(self, agent_id: str, expected: AgentState, new: AgentState) -> bool:
        """Compare-and-set with WATCH/MULTI: a write by another client between the read and the SET fails it."""
        import redis as redis_module

        key = self._key("state", agent_id)
        stamped = replace(new, write=os.urandom(8).hex())
        with self._errors("update the state of agent", agent_id), self._client.pipeline() as pipe:
            try:
                pipe.watch(key)  # type: ignore[no-untyped-call]
                if self._decode(agent_id, pipe.get(key)) != expected:
                    return False
                pipe.multi()
                pipe.set(key, _encode(stamped))
                pipe.execute()
                return True
            except redis_module.WatchError:
                # redis-py reports a reply lost on EXEC (a timeout, a dropped connection) as a WatchError too,
                # though the write may have been made: then the key holds this write's own stamp. Taken as lost,
                # a resume that took effect was answered 409 and never recorded. The stamp, not the state, tells:
                # another worker's identical move (using the same approval) has its own.
                return self._decode(agent_id, self._client.get(key)).write == stamped.write

    def _decode(self, agent_id: str, raw: bytes | str | None) -> AgentState:
        if raw is None:
            return AgentState()
        try:
            fields = json.loads(raw)
            return AgentState(
                status=AgentStatus(fields["status"]),
                reason=str(fields.get("reason", "")),
                actor=str(fields.get("actor", "")),
                pending_action_id=fields.get("pending_action_id"),
                pending_fingerprint=fields.get("pending_fingerprint"),
                approved_fingerprint=fields.get("approved_fingerprint"),
                write=str(fields.get("write", "")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise StateError(
                f"the state of agent {agent_id!r} in {self._where} is not valid ({exc}): "
                f"fix or delete the key {self._key('state', agent_id)!r}"
            ) from exc

    # ---- sliding windows ---------------------------------------------------------------------

    def try_acquire(self, key: str, now: float, window: float, limit: int) -> bool:
        """Count one event in `key`'s sliding window if fewer than `limit` are in it; say whether it was.

        Atomic across every client of the server: concurrent callers never admit more than `limit`.
        """
        args: list[str | int] = [repr(float(now)), repr(float(now - window)), int(limit), _ttl_ms(window)]
        args.append(os.urandom(12).hex())
        with self._errors("count an event in window", key):
            admitted = self._acquire(keys=[self._key("rate", key)], args=args)
        return bool(admitted)

    def add(self, key: str, now: float, amount: float) -> None:
        """Add `amount` at time `now` to `key`'s window. `amount` must be finite."""
        amount = float(amount)
        if not math.isfinite(amount):
            raise ValueError(f"cannot add {amount} to window {key!r}: amounts must be finite")
        text = repr(amount)
        args = [repr(float(now)), text, f"{text}:{os.urandom(12).hex()}"]
        with self._errors("add to window", key):
            self._add(keys=[self._key("vol", key), self._key("volsum", key)], args=args)

    def total(self, key: str, now: float, window: float) -> float:
        """The sum of amounts added to `key` within the last `window` seconds."""
        args: list[str | int] = [repr(float(now - window)), _ttl_ms(window)]
        with self._errors("sum window", key):
            text = self._total(keys=[self._key("vol", key), self._key("volsum", key)], args=args)
        return float(text)

    # ---- bounded groups ----------------------------------------------------------------------

    def admit(self, group: str, member: str, limit: int) -> bool:
        """Whether `member` is in `group`, added if it has fewer than `limit`: atomic, so concurrent callers
        never take the group past `limit`."""
        with self._errors("admit a member to group", group):
            return bool(self._admit(keys=[self._key("members", group)], args=[member, int(limit)]))

    # ---- plumbing ----------------------------------------------------------------------------

    def ping(self) -> None:
        """Raise StateError unless the server answers."""
        with self._errors("reach the server for", "ping"):
            self._client.ping()

    def close(self) -> None:
        """Close the client's connections; the store reconnects if used again."""
        self._client.close()

    def _key(self, kind: str, name: str) -> str:
        return f"{self.prefix}{kind}:{name}"

    @contextmanager
    def _errors(self, doing: str, name: str) -> Iterator[None]:
        try:
            yield
        except self._redis_error as exc:
            raise StateError(
                f"could not {doing} {name!r} in the Redis state store {self._where} "
                f"({type(exc).__name__}: {exc}); check that Redis is running and the state URL is right"
            ) from exc


class RedisProfiles:
    """Agents' behavioral profiles in the Redis of a RedisState, so every worker scores against the same baseline.

    A read is one round trip: the profile's scalar part and membership of just the probed members in its sets.
    An update is optimistic: apply the same AgentProfile methods as in memory to the scalar part as last seen,
    and replace it with one script that checks it is unchanged and adds to (or removes from) the sets. The part
    last seen is kept from the read a decision made just before, so an update usually costs that one round trip; if
    another worker updated the agent first, the update reads the part again and retries, so concurrent
    updates are all kept.
    """

    def __init__(self, state: RedisState) -> None:
        # Weakly: the guards keep these profiles in a WeakKeyDictionary keyed by the state store, and a strong
        # reference back kept every store (its Redis connections too) alive for good.
        self._state: RedisState = weakref.proxy(state)
        self._replace = state._client.register_script(_REPLACE_PROFILE)
        self._last_seen: OrderedDict[str, str] = OrderedDict()  # agent -> its scalar part as last read or written
        self._lock = threading.Lock()

    def read(self, agent_id: str, probe: Probe, use: Callable[[AgentProfile], T]) -> T:
        asked = {
            "resources": [probe.resource, probe.prefix],  # a prefix touched as a resource is not new
            "prefixes": [probe.prefix],
            "destinations": list(probe.destinations),
            "denied_destinations": list(probe.destinations),
            "habits": [probe.habit] if probe.habit else [],
        }
        with self._state._errors("read the profile of agent", agent_id):
            pipe = self._state._client.pipeline(transaction=False)
            pipe.get(self._key(agent_id))
            for name, members in asked.items():
                if members:
                    pipe.smismember(self._key(agent_id, name), members)
            replies = iter(pipe.execute())
        raw = _text(next(replies))
        sets = {name: {m for m, found in zip(members, next(replies), strict=True) if found} if members else set()
                for name, members in asked.items()}  # fmt: skip
        profile = self._load(agent_id, raw, sets)
        self._remember(agent_id, raw)
        return use(profile)

    def record(
        self, agent_id: str, *, denied: bool, blamed: tuple[str, ...], action: ActionSeen | None,
        cleared: tuple[str, ...] = (),
    ) -> None:  # fmt: skip
        def update(profile: AgentProfile) -> None:
            profile.record_decision(denied, blamed)
            if action is not None:
                action.fold_into(profile)

        self._update(agent_id, update, {"denied_destinations": cleared})

    def record_outcome(self, agent_id: str, ts: float, error: bool, volume: float) -> None:
        self._update(agent_id, lambda profile: profile.record_outcome(ts, error, volume))

    def _update(
        self, agent_id: str, update: Callable[[AgentProfile], None], removed: dict[str, tuple[str, ...]] | None = None
    ) -> None:
        """Apply `update` to the agent's profile; `removed` names members to take out of its sets, after the
        additions (an update applied to a profile whose sets start empty can only add)."""
        key = self._key(agent_id)
        keys = [key, *(self._key(agent_id, name) for name in PROFILE_SETS)]
        with self._lock:
            seen = self._last_seen.get(agent_id)
        with self._state._errors("update the profile of agent", agent_id):
            for _ in range(PROFILE_UPDATE_ATTEMPTS):
                if seen is None:
                    seen = _text(self._state._client.get(key))
                profile = self._load(agent_id, seen)
                update(profile)  # its sets start empty: they collect just this update's additions
                written = json.dumps(profile_core(profile), separators=(",", ":"))
                args: list[Any] = [seen or "", written, MAX_REMEMBERED]
                for name in PROFILE_SETS:
                    added, gone = getattr(profile, name), (removed or {}).get(name, ())
                    args += [len(added), *added, len(gone), *gone]
                if self._replace(keys=keys, args=args):
                    self._remember(agent_id, written)
                    return
                seen = None  # another worker wrote it first: read it again
        raise StateError(f"the profile of agent {agent_id!r} kept changing under {PROFILE_UPDATE_ATTEMPTS} updates")

    def _remember(self, agent_id: str, raw: str | None) -> None:
        with self._lock:
            if raw is None:
                self._last_seen.pop(agent_id, None)
                return
            self._last_seen[agent_id] = raw
            self._last_seen.move_to_end(agent_id)
            if len(self._last_seen) > LAST_SEEN_AGENTS:
                self._last_seen.popitem(last=False)

    def _load(self, agent_id: str, raw: str | None, sets: dict[str, set[str]] | None = None) -> AgentProfile:
        """The profile stored as `raw` (None: a new agent's), with `sets` (or empty ones)."""
        try:
            return profile_from_core(agent_id, None if raw is None else json.loads(raw), sets)
        except (ValueError, KeyError, TypeError) as exc:
            raise StateError(
                f"the profile of agent {agent_id!r} in {self._state._where} is not valid ({exc}): "
                f"fix or delete the key {self._key(agent_id)!r}"
            ) from exc

    def _key(self, agent_id: str, part: str = "") -> str:
        return self._state._key("profile", f"{agent_id}:{part}" if part else agent_id)


def _text(raw: bytes | str | None) -> str | None:
    """A reply as text: a client made without decode_responses answers bytes."""
    return raw.decode() if isinstance(raw, bytes) else raw


def _ttl_ms(window: float) -> int:
    """A key's lifetime for a window of `window` seconds, in ms; 0 means never expire."""
    ms = float(window) * 1000.0
    if not math.isfinite(ms) or ms >= 2.0**53:
        return 0
    return max(1, math.ceil(ms))


def _redacted(url: str) -> str:
    """`url` as it may be shown: no user name, password or query (a query may hold `password=`)."""
    parts = urlsplit(url)
    try:
        host, port = parts.hostname or "", parts.port
    except ValueError:  # a malformed port
        host, port = "?", None
    if ":" in host:
        host = f"[{host}]"
    return urlunsplit((parts.scheme, host + (f":{port}" if port else ""), parts.path, "", ""))


def _encode(state: AgentState) -> str:
    return json.dumps(
        {
            "status": state.status.value,
            "reason": state.reason,
            "actor": state.actor,
            "pending_action_id": state.pending_action_id,
            "pending_fingerprint": state.pending_fingerprint,
            "approved_fingerprint": state.approved_fingerprint,
            "write": state.write,
        },
        separators=(",", ":"),
    )
