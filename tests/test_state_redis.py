"""RedisState against a real Redis: the StateStore contract, and correctness across threads and processes.

Redis is found at $RISK_TEST_REDIS_URL (default redis://127.0.0.1:6379/0). When it is not reachable the tests
skip, unless RISK_REQUIRE_SERVICES=1, when they fail. Each test works under its own random key prefix and
deletes its keys afterwards.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import multiprocessing
import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from services import unavailable
from together import run_together

from risk import ActionType, AgentStatus, Guard, KillSwitchMode, Outcome, StateError
from risk.audit.store import AuditQuery
from risk.killswitch import KillSwitch
from risk.profiles import ActionSeen, MemoryProfiles, Probe
from risk.scoring.behavior import BehaviorScorer
from risk.state import AgentState, MemoryState, open_state
from risk.state_redis import RedisProfiles, RedisState, parse_state_url
from risk.traces import read_trace
from risk.train import replay

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_800_000_000.0
REDIS_URL = os.environ.get("RISK_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="module")
def server() -> Any:
    """A raw redis client for setup and cleanup; skips (or fails) the module when Redis is not there."""
    try:
        import redis
    except ModuleNotFoundError:
        unavailable("the redis package is not installed")
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        unavailable(f"Redis is not reachable at {REDIS_URL}: {exc}")
    yield client
    client.close()


@pytest.fixture
def url(server: Any) -> Iterator[str]:
    """A state URL with a fresh prefix; every key under it is deleted after the test."""
    prefix = f"risk-test:{uuid.uuid4().hex}:"
    yield _with_prefix(REDIS_URL, prefix)
    keys = list(server.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        server.delete(*keys)


@pytest.fixture
def store(url: str) -> Iterator[RedisState]:
    s = RedisState.from_url(url)
    yield s
    s.close()


def _with_prefix(redis_url: str, prefix: str) -> str:
    parts = urlsplit(redis_url)
    query = f"{parts.query}&prefix={prefix}" if parts.query else f"prefix={prefix}"
    return urlunsplit(parts._replace(query=query))


# ---- the contract, as MemoryState defines it -----------------------------------------------------


def test_the_memory_state_doctest_holds(store: RedisState) -> None:
    assert [store.try_acquire("a", now=0.0, window=60.0, limit=2) for _ in range(3)] == [True, True, False]
    assert store.try_acquire("a", now=60.5, window=60.0, limit=2) is True


def test_open_state_dispatches_redis_urls_and_reads_the_prefix(url: str) -> None:
    s = open_state(url)
    assert isinstance(s, RedisState)
    assert s.prefix.startswith("risk-test:")
    assert isinstance(open_state(None), MemoryState)
    with pytest.raises(ValueError, match="redis://"):
        open_state("postgres://nowhere")


def test_parse_state_url_defaults_the_prefix_and_keeps_other_arguments() -> None:
    assert parse_state_url("redis://h:1/2") == ("redis://h:1/2", "risk:")
    assert parse_state_url("redis://h/0?prefix=a:b:&db=3") == ("redis://h/0?db=3", "a:b:")
    with pytest.raises(ValueError, match="not a Redis URL"):
        parse_state_url("http://user:secret@h/0")


def test_rate_limit_of_10_per_minute_slides_with_a_hand_moved_clock(store: RedisState) -> None:
    acquire = store.try_acquire
    assert all(acquire("rate:a", float(t), 60.0, 10) for t in range(10))  # t = 0..9
    assert not acquire("rate:a", 9.5, 60.0, 10)
    assert not acquire("rate:a", 59.9, 60.0, 10)
    assert acquire("rate:a", 60.0, 60.0, 10)  # the event at t=0 is out of (0, 60]
    assert not acquire("rate:a", 60.0, 60.0, 10)
    assert acquire("rate:a", 61.0, 60.0, 10)  # t=1 left
    assert not acquire("rate:a", 61.5, 60.0, 10)
    assert all(acquire("rate:a", 200.0, 60.0, 10) for _ in range(10))  # everything expired
    assert not acquire("rate:a", 200.0, 60.0, 10)
    assert acquire("rate:b", 9.5, 60.0, 10)  # keys are independent


def test_rate_limit_of_5000_per_minute(store: RedisState) -> None:
    limit = 5000
    times = [i * 0.01 for i in range(limit)]  # 5000 events over 50 s
    assert all(store.try_acquire("rate:big", t, 60.0, limit) for t in times)
    assert not store.try_acquire("rate:big", 50.0, 60.0, limit)
    assert not store.try_acquire("rate:big", 59.999, 60.0, limit)
    # at 60.5 the events at t <= 0.5 (51 of them) have left the window
    assert sum(store.try_acquire("rate:big", 60.5, 60.0, limit) for _ in range(60)) == 51


def test_sliding_windows_match_memory_state_on_random_sequences(store: RedisState) -> None:
    """The same calls on MemoryState and RedisState give the same answers (rate limits and volume sums)."""
    rng = random.Random(7)
    memory = MemoryState()
    now = 1_800_000_000.0
    for step in range(1500):
        now += rng.choice([0.0, 0.01, 0.5, 3.0, 17.0, 61.0])
        key = rng.choice(["x", "y"])
        op = rng.random()
        if op < 0.5:
            limit, window = rng.choice([(1, 1.0), (3, 10.0), (7, 60.0)])
            want = memory.try_acquire(f"r{key}{limit}", now, window, limit)
            assert store.try_acquire(f"r{key}{limit}", now, window, limit) is want, step
        elif op < 0.8:
            amount = float(rng.randint(0, 10_000))
            memory.add(f"v{key}", now, amount)
            store.add(f"v{key}", now, amount)
        else:
            assert store.total(f"v{key}", now, 120.0) == memory.total(f"v{key}", now, 120.0), step


def test_add_and_total_sum_a_sliding_window(store: RedisState) -> None:
    assert store.total("rows:a", 0.0, 60.0) == 0.0
    store.add("rows:a", 0.0, 100.0)
    store.add("rows:a", 10.0, 0.25)
    store.add("rows:a", 10.0, 0.25)  # the same amount at the same time counts twice
    store.add("rows:b", 10.0, 7.0)
    assert store.total("rows:a", 10.0, 60.0) == 100.5
    assert store.total("rows:a", 60.0, 60.0) == 0.5  # t=0 is out of (0, 60]
    assert store.total("rows:a", 70.0, 60.0) == 0.0
    assert store.total("rows:b", 70.0, 61.0) == 7.0
    store.add("rows:a", 80.0, 1e15)
    store.add("rows:a", 81.0, 3.0)
    assert store.total("rows:a", 81.0, 60.0) == 1e15 + 3.0
    with pytest.raises(ValueError, match="finite"):
        store.add("rows:a", 81.0, float("inf"))


def test_keys_live_under_the_prefix_and_expire_with_the_window(server: Any, store: RedisState) -> None:
    now = time.time()
    store.try_acquire("rate:a", now, 60.0, 5)
    store.add("rows:a", now, 5.0)
    store.set_state("a", AgentState(AgentStatus.PAUSED, "why", "me"))
    store.admit("agents:t", "a", 10)
    keys = {k.decode() for k in server.scan_iter(match=f"{store.prefix}*")}
    p = store.prefix
    assert keys == {f"{p}rate:rate:a", f"{p}vol:rows:a", f"{p}volsum:rows:a", f"{p}state:a", f"{p}members:agents:t"}
    assert 0 < server.pttl(f"{p}rate:rate:a") <= 60_000
    assert server.pttl(f"{p}vol:rows:a") == -1  # no window known before the first total
    store.total("rows:a", now, 3600.0)
    assert 3_590_000 < server.pttl(f"{p}vol:rows:a") <= 3_600_000
    assert 3_590_000 < server.pttl(f"{p}volsum:rows:a") <= 3_600_000
    store.add("rows:a", now + 1, 5.0)  # refreshes the lifetime the last total recorded
    assert 3_590_000 < server.pttl(f"{p}vol:rows:a") <= 3_600_000
    other = RedisState.from_url(_with_prefix(REDIS_URL, f"{p}other:"))
    assert other.get_state("a") == AgentState()
    assert other.total("rows:a", now + 1, 60.0) == 0.0


def test_state_set_by_one_instance_is_read_by_another(url: str) -> None:
    a, b = RedisState.from_url(url), RedisState.from_url(url)
    assert b.get_state("agent-1") == AgentState()
    paused = AgentState(AgentStatus.PAUSED, "too risky", "guard", "action-1", "fp-1")
    a.set_state("agent-1", paused)
    assert b.get_state("agent-1") == paused
    b.set_state("agent-1", AgentState(AgentStatus.TERMINATED, "enough", "reviewer"))
    assert a.get_state("agent-1").status is AgentStatus.TERMINATED
    assert a.get_state("agent-2") == AgentState()


def test_corrupt_state_raises_state_error(server: Any, store: RedisState) -> None:
    server.set(f"{store.prefix}state:a", b'{"status": "sleeping"}')
    with pytest.raises(StateError, match="not valid"):
        store.get_state("a")


def test_state_with_an_approval_round_trips_and_the_approval_is_used_by_exactly_one_of_8_workers(url: str) -> None:
    stores = [RedisState.from_url(url) for _ in range(8)]
    approved = AgentState(AgentStatus.RUNNING, "approved", "reviewer", approved_fingerprint="fp")
    stores[0].set_state("agent", approved)
    assert stores[1].get_state("agent") == approved
    for round_ in range(25):
        stores[0].set_state("agent", approved)
        switches = [KillSwitch(s, lambda agent, fields: None) for s in stores]
        results = run_together([functools.partial(k.use_approval, "agent", approved) for k in switches])
        assert results.count(True) == 1, (round_, results)
        assert stores[0].get_state("agent") == AgentState(AgentStatus.RUNNING, "approved", "reviewer")


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_admit_keeps_each_group_within_its_limit_and_readmits_members(kind: str, url: str) -> None:
    stores = [MemoryState()] * 8 if kind == "memory" else [RedisState.from_url(url) for _ in range(8)]
    results = run_together(
        [lambda s=s, n=n: [s.admit("agents:acme", f"a{n}-{i}", 50) for i in range(20)] for n, s in enumerate(stores)]
    )  # 160 new members race for 50 places
    admitted = [f"a{n}-{i}" for n, row in enumerate(results) for i, ok in enumerate(row) if ok]
    assert len(admitted) == 50
    assert all(stores[-1].admit("agents:acme", member, 50) for member in admitted)  # members stay members
    assert not stores[-1].admit("agents:acme", "newcomer", 50)
    assert stores[-1].admit("agents:other", "newcomer", 50)  # another group has its own places


# ---- bursts from several instances ----------------------------------------------------------------


def _burst(url: str, key: str, now: float, limit: int, attempts: int) -> int:
    s = RedisState.from_url(url)
    try:
        return sum(s.try_acquire(key, now, 60.0, limit) for _ in range(attempts))
    finally:
        s.close()


@pytest.mark.parametrize("limit", [1, 10, 250])
def test_a_burst_from_two_threads_admits_exactly_the_limit(url: str, limit: int) -> None:
    attempts = 5 * limit  # each of the two sends five times the limit: ten times in all
    admitted = run_together([lambda: _burst(url, "rate:a", 1000.0, limit, attempts) for _ in range(2)])
    assert sum(admitted) == limit, admitted


def _process_burst(url: str, limit: int, attempts: int, barrier: Any, results: Any) -> None:
    """Runs in a spawned process: wait for the other, then try `attempts` times."""
    s = RedisState.from_url(url)
    s.ping()  # connect before the race starts
    barrier.wait(timeout=60)
    admitted = sum(s.try_acquire("rate:a", 1000.0, 60.0, limit) for _ in range(attempts))
    results.put(admitted)


@pytest.mark.slow
def test_a_burst_from_two_processes_admits_exactly_the_limit(url: str) -> None:
    limit = 200
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_process_burst, args=(url, limit, 5 * limit, barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    try:
        admitted = [results.get(timeout=120) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
    assert [p.exitcode for p in procs] == [0, 0]
    assert sum(admitted) == limit, admitted
    assert all(n > 0 for n in admitted), admitted  # both really took part


# ---- the Guard on a shared Redis ------------------------------------------------------------------


class Clock:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def _guard(tmp_path: Path, url: str | MemoryState, name: str, clock: Clock, **kwargs: Any) -> Guard:
    kwargs = {"mode": KillSwitchMode.PAUSE, "allowed_resources": ["data.deidentified.*"],
              "blocked_resources": ["data.phi.*"], **kwargs}  # fmt: skip
    return Guard(
        audit=f"sqlite:///{tmp_path}/{name}.db",
        home=tmp_path / name,
        state=url,
        clock=clock,
        **kwargs,
    )


def test_a_pause_issued_by_one_guard_is_enforced_by_another(tmp_path: Path, url: str) -> None:
    clock = Clock()
    one, two = _guard(tmp_path, url, "one", clock), _guard(tmp_path, url, "two", clock)
    assert two.check(ActionType.DATABASE_QUERY, "data.deidentified.claims").allowed
    paused = one.check(ActionType.DATABASE_QUERY, "data.phi.patients")
    assert paused.outcome is Outcome.PAUSED
    d = two.check(ActionType.DATABASE_QUERY, "data.deidentified.claims")
    assert (d.allowed, d.outcome, d.reasons[0].code) == (False, Outcome.PAUSED, "agent_paused")
    assert two.status().status is AgentStatus.PAUSED

    # the reviewer approves through the second guard; the first may run the paused action once
    assert two.approve(actor="reviewer") == paused.action_id
    assert one.check(ActionType.DATABASE_QUERY, "data.phi.patients").allowed
    assert two.check(ActionType.DATABASE_QUERY, "data.phi.patients").outcome is Outcome.PAUSED

    two.resume()
    assert one.check(ActionType.DATABASE_QUERY, "data.deidentified.claims").allowed
    one.terminate(reason="stop")
    assert two.check(ActionType.DATABASE_QUERY, "data.deidentified.claims").outcome is Outcome.TERMINATED
    two.reset()
    assert one.check(ActionType.DATABASE_QUERY, "data.deidentified.claims").allowed
    one.close()
    two.close()


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_replace_state_sets_only_over_the_expected_state(kind: str, url: str) -> None:
    store = MemoryState() if kind == "memory" else RedisState.from_url(url)
    paused = AgentState(AgentStatus.PAUSED, "why", "guard", "a1", "f1")
    assert not store.replace_state("x", paused, AgentState(AgentStatus.RUNNING))  # it is running, not paused
    assert store.replace_state("x", AgentState(), paused)  # an agent never seen counts as running
    assert store.get_state("x") == paused
    assert not store.replace_state("x", AgentState(), AgentState(AgentStatus.TERMINATED))
    assert store.get_state("x") == paused


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_of_8_reviewers_approving_at_once_exactly_one_grants_the_action(tmp_path: Path, kind: str, url: str) -> None:
    """The paused action runs once however many reviewers (or workers) approve it at the same moment."""
    state: str | MemoryState = MemoryState() if kind == "memory" else url  # in memory: one store, shared
    clock = Clock()
    guards = [_guard(tmp_path, state, f"g{i}", clock) for i in range(8)]
    paused = guards[0].check(ActionType.DATABASE_QUERY, "data.phi.patients")
    assert paused.outcome is Outcome.PAUSED

    def approve(guard: Guard) -> str | StateError | None:
        try:
            return guard.approve(actor=f"reviewer-{id(guard)}")
        except StateError as exc:
            return exc

    results = run_together([functools.partial(approve, g) for g in guards])
    assert [r for r in results if not isinstance(r, StateError)] == [paused.action_id]
    assert all("not paused" in str(r) for r in results if isinstance(r, StateError))
    retries = [g.check(ActionType.DATABASE_QUERY, "data.phi.patients") for g in guards]
    assert [d.allowed for d in retries].count(True) == 1  # the approved action, once
    for g in guards:
        g.close()


def test_guards_sharing_redis_share_the_rate_and_volume_limits(tmp_path: Path, url: str) -> None:
    clock = Clock()
    common = {"mode": KillSwitchMode.BLOCK, "max_actions_per_minute": 5, "max_rows_per_window": 100}
    one, two = _guard(tmp_path, url, "one", clock, **common), _guard(tmp_path, url, "two", clock, **common)
    decisions = [g.check(ActionType.DATABASE_QUERY, "data.deidentified.claims") for g in (one, two) * 3]
    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    assert decisions[-1].reasons[0].code == "rate_limited"

    clock.now += 61
    d = one.check(ActionType.DATABASE_QUERY, "data.deidentified.claims")
    assert d.allowed
    one.record_outcome(d.action_id, rows=100)
    d = two.check(ActionType.DATABASE_QUERY, "data.deidentified.claims")
    assert (d.allowed, d.reasons[0].code) == (False, "data_volume_exceeded")
    one.close()
    two.close()


# ---- failures -------------------------------------------------------------------------------------


def test_an_unreachable_redis_raises_state_error() -> None:
    s = RedisState.from_url("redis://127.0.0.1:1/0?prefix=nowhere:")
    calls: list[Callable[[], object]] = [
        lambda: s.get_state("a"),
        lambda: s.set_state("a", AgentState()),
        lambda: s.try_acquire("k", 0.0, 60.0, 1),
        lambda: s.add("k", 0.0, 1.0),
        lambda: s.total("k", 0.0, 60.0),
        lambda: s.admit("agents:t", "a", 10),
        s.ping,
    ]
    for call in calls:
        with pytest.raises(StateError, match=r"Redis state store redis://127\.0\.0\.1:1/0.*check that Redis"):
            call()


def test_error_messages_do_not_show_the_password() -> None:
    for url in ("redis://user:hunter2@127.0.0.1:1/0", "redis://127.0.0.1:1/0?password=hunter2&prefix=p:"):
        s = RedisState.from_url(url)
        with pytest.raises(StateError) as info:
            s.get_state("a")
        assert "hunter2" not in str(info.value)
        assert "hunter2" not in repr(s)


def test_a_server_that_does_not_answer_raises_state_error_after_the_timeout() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts connections, never replies
        s = RedisState.from_url(f"redis://127.0.0.1:{silent.getsockname()[1]}/0?socket_timeout=0.2")
        started = time.perf_counter()
        with pytest.raises(StateError, match="Timeout"):
            s.try_acquire("k", 0.0, 60.0, 1)
        assert time.perf_counter() - started < 5


def test_a_guard_on_an_unreachable_redis_denies_and_says_why(tmp_path: Path) -> None:
    guard = _guard(tmp_path, "redis://127.0.0.1:1/0", "down", Clock())
    d = guard.check(ActionType.DATABASE_QUERY, "data.deidentified.claims")
    assert (d.allowed, d.outcome, d.reasons[0].code) == (False, Outcome.BLOCKED, "state_unavailable")
    assert "Redis state store redis://127.0.0.1:1/0" in d.reasons[0].message
    d = guard.check(ActionType.DATABASE_QUERY, "data.phi.patients")  # would pause: the pause cannot be stored
    assert (d.allowed, d.outcome) == (False, Outcome.BLOCKED)
    with pytest.raises(StateError):  # a reviewer's call says the store is down
        guard.terminate()
    guard.close()


@contextmanager
def redis_refusing_writes(server: Any) -> Iterator[None]:
    """Redis out of memory (maxmemory 1 byte, no eviction): reads answer, every write is refused."""
    saved = server.config_get("maxmemory*")
    server.config_set("maxmemory-policy", "noeviction")
    server.config_set("maxmemory", 1)
    try:
        yield
    finally:
        server.config_set("maxmemory", saved["maxmemory"])
        server.config_set("maxmemory-policy", saved["maxmemory-policy"])


def test_a_profile_that_cannot_be_updated_leaves_the_recorded_decision_standing(
    tmp_path: Path, server: Any, url: str
) -> None:
    """The decision is audited before the profile learns it: a write refused then must not turn into an exception
    from check (the trail would say allowed, the caller would see an error); the outcome says what was lost."""
    clock = Clock()
    guard = _guard(tmp_path, url, "oom", clock, mode=KillSwitchMode.BLOCK, model=None, online=True)
    for i in range(3):
        clock.now += 30
        guard.record_outcome(guard.check(ActionType.DATABASE_QUERY, f"data.deidentified.t{i}").action_id)
    clock.now += 30
    with redis_refusing_writes(server):
        decision = guard.check(ActionType.DATABASE_QUERY, "data.deidentified.t9")
        guard.record_outcome(decision.action_id, rows=5)
    assert decision.allowed
    [recorded] = guard.audit.query(AuditQuery(action_id=decision.action_id, kind="decision"))
    assert recorded.outcome == "allowed"
    [outcome] = guard.audit.query(AuditQuery(action_id=decision.action_id, kind="outcome"))
    assert "profile" in outcome.detail["state_error"]
    guard.close()


@pytest.mark.parametrize(("mode", "status"), [(KillSwitchMode.PAUSE, AgentStatus.PAUSED),
                                              (KillSwitchMode.TERMINATE, AgentStatus.TERMINATED)])  # fmt: skip
def test_a_stop_the_state_store_refuses_is_held_by_the_guard_until_the_store_takes_it(
    tmp_path: Path, server: Any, url: str, mode: KillSwitchMode, status: AgentStatus
) -> None:
    guard = _guard(tmp_path, url, "held", Clock(), mode=mode, model=None)
    with redis_refusing_writes(server):
        tripped = guard.check(ActionType.DATABASE_QUERY, "data.phi.patients")
        later = guard.check(ActionType.DATABASE_QUERY, "data.deidentified.claims")
        assert guard.status().status is AgentStatus.RUNNING  # the store never took the stop
    assert tripped.outcome.value == mode.value.replace("pause", "paused").replace("terminate", "terminated")
    assert not later.allowed and "held by this guard" in later.reasons[0].message
    [unsaved] = guard.audit.query(AuditQuery(kind="killswitch", outcome="unsaved"))
    assert unsaved.action_id == tripped.action_id and unsaved.detail["to"] == status.value
    again = guard.check(ActionType.DATABASE_QUERY, "data.deidentified.claims")  # writes work again
    assert not again.allowed and guard.status().status is status
    guard.close()


# ---- behavioral profiles in Redis ------------------------------------------------------------------------------


def test_redis_profiles_give_the_same_features_as_memory_profiles_on_a_trace(url: str) -> None:
    """Every feature and habit of every action of a real trace, measured against profiles in Redis and in memory."""
    actions = sorted(read_trace(ROOT / "data" / "synthetic" / "train.jsonl"), key=lambda a: a.ts)[:400]
    in_memory = [
        (a.features, a.prior_discount) for _, _, a in replay(actions, BehaviorScorer(None, None, MemoryProfiles()))
    ]
    state = RedisState.from_url(url)
    redis = BehaviorScorer(None, None, RedisProfiles(state))
    in_redis = [(a.features, a.prior_discount) for _, _, a in replay(actions, redis)]
    state.close()
    assert len({a.agent_id for a in actions}) > 1
    assert 0 < sum(discount > 0 for _, discount in in_memory) < len(actions)  # habits, and first times
    assert in_redis == in_memory


def test_a_cleared_destination_leaves_the_suspects_in_redis_as_in_memory(url: str) -> None:
    state = RedisState.from_url(url)
    suspects = ("email:eve@evil.example", "domain:evil.example")
    probe = Probe("mail.send/eve@evil.example", "mail.send", suspects)
    for profiles in (RedisProfiles(state), MemoryProfiles()):
        profiles.record("mailer", denied=True, blamed=suspects, action=None)
        profiles.record("mailer", denied=False, blamed=(), action=None, cleared=suspects[:1])
        assert profiles.read("mailer", probe, lambda p: set(p.denied_destinations)) == {"domain:evil.example"}
    state.close()


def test_concurrent_profile_updates_from_8_threads_are_all_kept(url: str) -> None:
    state = RedisState.from_url(url)
    profiles = RedisProfiles(state)

    def work(worker: int) -> None:
        for i in range(25):
            seen = ActionSeen(T0 + i, "api_call", f"svc/{worker}/{i}", f"svc/{worker}", (f"host:h{worker}",))
            profiles.record("shared", denied=False, blamed=(), action=seen)

    run_together([functools.partial(work, w) for w in range(8)])
    probe = Probe("svc/3/7", "svc/3", ("host:h5", "host:never"))
    actions, resources, dests = profiles.read(
        "shared", probe, lambda p: (p.actions, set(p.resources), set(p.destinations))
    )
    assert actions == 200
    assert resources == {"svc/3/7"} and dests == {"host:h5"}
    state.close()


def test_an_update_over_a_stale_view_of_the_profile_is_retried_and_both_are_kept(url: str) -> None:
    """One worker updates after another changed the profile it had read: its update must land on the new one."""
    state = RedisState.from_url(url)
    one, two = RedisProfiles(state), RedisProfiles(state)
    one.record("agent", denied=False, blamed=(), action=ActionSeen(T0, "api_call", "svc/a", "svc", ()))
    assert one.read("agent", Probe("r", "p", ()), lambda p: p.actions) == 1  # what one last saw
    two.record("agent", denied=False, blamed=(), action=ActionSeen(T0 + 1, "api_call", "svc/b", "svc", ()))
    one.record("agent", denied=True, blamed=(), action=None)
    one.record_outcome("agent", T0 + 2, True, 5.0)
    seen = two.read("agent", Probe("svc/b", "svc", ()), lambda p: (p.actions, set(p.resources), list(p.recent_denied)))
    assert seen == (2, {"svc/b"}, [False, False, True])
    assert two.read("agent", Probe("r", "p", ()), lambda p: list(p.recent_errors)) == [True]
    state.close()


def test_guards_sharing_redis_share_one_behavioral_baseline(tmp_path: Path, url: str) -> None:
    """A destination one worker's guard learned is not new to another's; one neither saw still is."""
    clock = Clock()
    one, two = (
        _guard(tmp_path, url, name, clock, mode="alert", allowed_resources=None, blocked_resources=())
        for name in ("one", "two")
    )
    for i in range(12):
        clock.now = T0 + 60 * i
        d = one.check(ActionType.API_CALL, "mail.send", {"to": "alice@corp.example"})
        one.record_outcome(d.action_id)
    clock.now = T0 + 3600
    known = two.check(ActionType.API_CALL, "mail.send", {"to": "alice@corp.example"})
    novel = two.check(ActionType.API_CALL, "mail.send", {"to": "mallory@evil.example"})
    assert "new_destination" not in known.reason_codes
    assert "new_destination" in novel.reason_codes
    one.close()
    two.close()


def test_a_corrupt_profile_raises_state_error(server: Any, url: str) -> None:
    state = RedisState.from_url(url)
    server.set(f"{state.prefix}profile:bad", b"{not json")
    with pytest.raises(StateError, match="profile of agent 'bad'"):
        RedisProfiles(state).read("bad", Probe("r", "p", ()), lambda p: p.actions)
    state.close()


def test_a_redis_that_lost_its_data_fails_closed_until_the_process_restarts(
    tmp_path: Path, server: Any, url: str
) -> None:
    """A Redis restarted without persistence (or flushed) holds no stop any more: read as running, every paused
    or terminated agent was let go. The epoch token the process found on first use is gone with the data, so
    its checks deny instead; a process started afterwards takes the new token, knowing what was lost."""
    guard = _guard(tmp_path, url, "stopped", Clock(), mode=KillSwitchMode.TERMINATE, model=None)
    assert guard.check(ActionType.DATABASE_QUERY, "data.phi.patients").outcome.value == "terminated"
    prefix = RedisState.from_url(url).prefix
    server.delete(*server.scan_iter(match=f"{prefix}*"))  # what a restart without persistence leaves
    after = guard.check(ActionType.DATABASE_QUERY, "data.deidentified.claims")
    assert not after.allowed and after.reasons[0].code == "state_unavailable"
    assert "lost its data" in after.reasons[0].message
    guard.close()
    restarted = _guard(tmp_path / "again", url, "stopped", Clock(), model=None)
    assert restarted.check(ActionType.DATABASE_QUERY, "data.deidentified.claims").allowed
    restarted.close()


@contextmanager
def dropping_exec_replies(url: str) -> Iterator[str]:
    """A TCP proxy in front of `url`'s Redis that forwards everything, but cuts the client off right after
    passing on a transaction's EXEC: Redis runs it, and its reply is lost, as on a timeout. Yields the URL."""
    import threading

    parts = urlsplit(url)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def pump(source: socket.socket, sink: socket.socket, to_redis: bool, cut: threading.Event) -> None:
        try:
            while data := source.recv(65536):
                if not to_redis and cut.is_set():
                    break  # the transaction's reply: never passed on
                if to_redis and b"EXEC" in data:
                    cut.set()
                sink.sendall(data)
                if cut.is_set() and to_redis:
                    time.sleep(0.2)  # Redis runs the transaction before either side closes
                    break
        except OSError:
            pass
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def serve() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379))
            cut = threading.Event()
            threading.Thread(target=pump, args=(client, upstream, True, cut), daemon=True).start()
            threading.Thread(target=pump, args=(upstream, client, False, cut), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield urlunsplit(parts._replace(netloc=f"127.0.0.1:{port}"))
    finally:
        listener.close()


def test_a_kill_switch_move_whose_reply_is_lost_counts_as_made_and_an_approval_is_still_used_once(url: str) -> None:
    """redis-py reports a reply lost on EXEC as a WatchError, as it does another client's write: a resume that
    took effect was answered 409 and never recorded. Each write's own stamp now tells the two apart."""
    paused = AgentState(AgentStatus.PAUSED, "why", "me", "act-1", "fp-1")
    direct = RedisState.from_url(url)
    direct.set_state("a", paused)
    with dropping_exec_replies(url) as proxied:
        lossy = RedisState.from_url(proxied)
        resumed = AgentState(AgentStatus.RUNNING, "resumed", "reviewer")
        assert lossy.replace_state("a", paused, resumed)  # the reply was lost; the write is there, and is ours
        lossy.close()
    assert direct.get_state("a") == resumed
    direct.close()


def test_guards_made_and_closed_over_a_redis_url_leave_no_connections_behind(
    tmp_path: Path, url: str, server: Any
) -> None:
    """Guard.close closed only the audit store, and the profiles kept beside each RedisState held it for good:
    every guard made over a URL kept its Redis connection open."""
    clients = len(server.client_list())
    for i in range(20):
        guard = _guard(tmp_path, url, f"g{i}", Clock(), model=None, online=False)
        assert guard.check(ActionType.DATABASE_QUERY, "data.deidentified.claims").allowed
        guard.close()
    del guard
    gc.collect()
    assert len(server.client_list()) <= clients + 1  # connections still closing on the server's side, at most
    assert not [o for o in gc.get_objects() if isinstance(o, RedisState)]


def test_an_action_with_thousands_of_new_destinations_is_kept_whole_and_the_cap_holds(
    url: str, server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past about 8,000 members the script's unpack failed after it had written the count: every such action kept
    its count and lost its destinations. And the cap was checked once per set, so a set could grow past it."""
    state = RedisState.from_url(url)
    profiles = RedisProfiles(state)
    many = tuple(f"recipient:r{i}" for i in range(9000))
    profiles.record("agent", denied=False, blamed=(), action=ActionSeen(T0, "api_call", "chat", "chat", many))
    probe = Probe("chat", "chat", ("recipient:r0", "recipient:r8999"))
    assert profiles.read("agent", probe, lambda p: (p.actions, len(p.destinations))) == (1, 2)
    (key,) = [k for k in server.scan_iter(match=f"{state.prefix}*destinations*")]
    assert server.scard(key) == 9000
    monkeypatch.setattr("risk.state_redis.MAX_REMEMBERED", 9500)
    more = tuple(f"recipient:s{i}" for i in range(2000))
    profiles.record("agent", denied=False, blamed=(), action=ActionSeen(T0 + 1, "api_call", "chat", "chat", more))
    assert server.scard(key) == 9500
    state.close()
