"""Two `risk serve` processes on one PostgreSQL (audit trail, keys, policies, approvals) and one Redis (state):
the guarantees that must hold across workers. Skips when the servers are not reachable, unless
RISK_REQUIRE_SERVICES=1."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest
from api_server import make_key, risk_serve

from risk.audit.store import AuditQuery, open_audit, verify_store

ALLOWED = {"agent_id": "bot", "action_type": "database_query", "resource": "data.deidentified.claims"}
BLOCKED = {"agent_id": "bot", "action_type": "database_query", "resource": "data.phi.patients"}


@contextmanager
def two_services(home: Path, env: dict[str, str], policy: Path) -> Iterator[list[str]]:
    with ExitStack() as stack:
        yield [stack.enter_context(risk_serve(home / name, "--policy", str(policy), env=env)) for name in "ab"]


@pytest.fixture
def deployment(tmp_path: Path, database: str, redis_url: str) -> tuple[Path, dict[str, str], str]:
    """Where the services keep their files, the environment naming the shared stores, and a fresh tenant."""
    env = {"RISK_DATABASE_URL": database, "RISK_REDIS_URL": redis_url, "RISK_MODEL": "none"}
    return tmp_path, env, f"t-{uuid.uuid4().hex[:10]}"


def headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def policy_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path


def test_a_burst_of_10x_the_rate_limit_over_both_services_admits_the_limit(
    deployment: tuple[Path, dict[str, str], str],
) -> None:
    home, env, tenant = deployment
    policy = policy_file(home, "max_actions_per_minute: 20\nmode: block\n")
    agent = make_key(home, tenant, "agent", env)
    with two_services(home, env, policy) as urls, ThreadPoolExecutor(16) as pool:
        targets = [urls[i % 2] for i in range(200)]
        answers = list(pool.map(lambda url: httpx.post(f"{url}/v1/check", json=ALLOWED, headers=headers(agent)),
                                targets))  # fmt: skip
    assert all(a.status_code == 200 for a in answers)
    outcomes = [a.json() for a in answers]
    assert sum(o["allowed"] for o in outcomes) == 20
    assert {o["reasons"][0]["code"] for o in outcomes if not o["allowed"]} == {"rate_limited"}


def test_a_pause_through_one_service_holds_on_the_other(deployment: tuple[Path, dict[str, str], str]) -> None:
    home, env, tenant = deployment
    policy = policy_file(home, "blocked_resources: ['data.phi.*']\nmode: pause\n")
    agent = make_key(home, tenant, "agent", env)
    with two_services(home, env, policy) as (one, two):
        assert httpx.post(f"{one}/v1/check", json=BLOCKED, headers=headers(agent)).json()["outcome"] == "paused"
        after = httpx.post(f"{two}/v1/check", json=ALLOWED, headers=headers(agent)).json()
        assert (after["allowed"], after["reasons"][0]["code"]) == (False, "agent_paused")


def test_approvals_survive_a_restart_and_the_paused_action_runs_once(
    deployment: tuple[Path, dict[str, str], str],
) -> None:
    home, env, tenant = deployment
    policy = policy_file(home, "blocked_resources: ['data.phi.*']\nmode: pause\n")
    agent, reviewer = make_key(home, tenant, "agent", env), make_key(home, tenant, "reviewer", env)
    with two_services(home, env, policy) as (one, _):
        paused = httpx.post(f"{one}/v1/check", json=BLOCKED, headers=headers(agent)).json()
        assert paused["outcome"] == "paused"

    with two_services(home, env, policy) as (one, two):  # both restarted
        pending = httpx.get(f"{two}/v1/approvals", headers=headers(reviewer)).json()["approvals"]
        assert [p["pending_action_id"] for p in pending] == [paused["action_id"]]
        approved = httpx.post(f"{two}/v1/agents/bot/approve", headers=headers(reviewer)).json()
        assert approved["approved_action_id"] == paused["action_id"]
        again = httpx.post(f"{one}/v1/agents/bot/approve", headers=headers(reviewer))
        assert again.status_code == 409  # it is running now: nothing left to approve

        with ThreadPoolExecutor(8) as pool:  # the approved action, retried at once on both services
            retries = list(pool.map(lambda url: httpx.post(f"{url}/v1/check", json=BLOCKED, headers=headers(agent)),
                                    [one, two] * 4))  # fmt: skip
        outcomes = sorted(r.json()["outcome"] for r in retries)
        assert outcomes.count("allowed") == 1
        assert set(outcomes) == {"allowed", "paused"}


def test_10000_concurrent_checks_leave_10000_records_and_a_chain_that_verifies(
    deployment: tuple[Path, dict[str, str], str],
) -> None:
    home, env, tenant = deployment
    policy = policy_file(home, "mode: block\n")
    agent = make_key(home, tenant, "agent", env)
    total, concurrency = 10_000, 32

    async def drive(urls: list[str]) -> list[int]:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(total):
            queue.put_nowait(i)
        statuses: list[int] = []
        # Idle connections dropped before the services drop theirs (5 s): on a loaded machine a worker can
        # wait that long, and a request on a connection being closed fails without reaching the service.
        limits = httpx.Limits(max_connections=concurrency, keepalive_expiry=2.0)
        async with httpx.AsyncClient(headers=headers(agent), timeout=60, limits=limits) as client:

            async def worker() -> None:
                while not queue.empty():
                    i = queue.get_nowait()
                    body = {**ALLOWED, "agent_id": f"bot-{i % 50}", "payload": {"i": i}}
                    statuses.append((await client.post(f"{urls[i % 2]}/v1/check", json=body)).status_code)

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        return statuses

    with two_services(home, env, policy) as urls:
        statuses = asyncio.run(drive(urls))
    assert statuses == [200] * total

    store = open_audit(env["RISK_DATABASE_URL"], create=False)
    try:
        decisions = store.query(AuditQuery(kind="decision", agent_prefix=f"{tenant}/", limit=2 * total))
        assert len(decisions) == total
        assert len({r.action_id for r in decisions}) == total
        assert verify_store(store).ok
    finally:
        store.close()
