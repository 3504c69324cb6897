"""`risk keys` and `risk serve`: keys made on the command line, and the real service started as a user starts it."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest
from api_server import RISK, make_key, risk_serve
from services import free_port, unavailable
from typer.testing import CliRunner

from risk.catalog import Catalog
from risk.cli import app
from risk.keys import KeyStore, Role

REDIS_URL = os.environ.get("RISK_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ALLOWED = {"agent_id": "bot", "action_type": "database_query", "resource": "data.deidentified.claims"}
BLOCKED = {"agent_id": "bot", "action_type": "database_query", "resource": "data.phi.patients"}


def test_keys_create_prints_a_working_key_once_and_list_and_revoke_manage_it(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path}/catalog.db"
    runner = CliRunner()
    made = runner.invoke(app, ["keys", "create", "--tenant", "acme", "--role", "reviewer", "--database", database])
    assert made.exit_code == 0, made.output
    token = made.stdout.strip().splitlines()[-1]
    keys = KeyStore(Catalog(database))
    key = keys.authenticate(token)
    assert key is not None and (key.tenant, key.role) == ("acme", Role.REVIEWER)
    stored = Catalog(database).run("SELECT salt, digest FROM risk_keys").rows
    assert token.split("_")[-1] not in repr(stored)  # only the salted hash is kept
    listed = runner.invoke(app, ["keys", "list", "--tenant", "acme", "--database", database])
    assert key.key_id in listed.stdout and token not in listed.stdout
    assert (
        runner.invoke(app, ["keys", "revoke", key.key_id, "--tenant", "other", "--database", database]).exit_code == 1
    )
    assert runner.invoke(app, ["keys", "revoke", key.key_id, "--tenant", "acme", "--database", database]).exit_code == 0
    assert KeyStore(Catalog(database)).authenticate(token) is None


def test_keys_create_binds_an_agent_key_to_agents_and_list_shows_them(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path}/catalog.db"
    runner = CliRunner()
    args = ["keys", "create", "--tenant", "acme", "--role", "agent", "--database", database]
    made = runner.invoke(app, [*args, "--agent", "bot-1", "--agent", "billing-*"])
    assert made.exit_code == 0 and "bound to agents bot-1, billing-*" in " ".join(made.stderr.split()), made.output
    key = KeyStore(Catalog(database)).authenticate(made.stdout.strip().splitlines()[-1])
    assert key is not None and key.agents == ("bot-1", "billing-*")
    assert key.may_act_as("billing-eu") and not key.may_act_as("bot-2")
    assert runner.invoke(app, args).exit_code == 0  # unbound: any agent of the tenant
    listed = runner.invoke(app, ["keys", "list", "--tenant", "acme", "--database", database])
    assert [json.loads(line)["agents"] for line in listed.stdout.splitlines()] == [["bot-1", "billing-*"], None]
    reviewer = runner.invoke(app, ["keys", "create", "--tenant", "acme", "--role", "reviewer", "--agent", "bot-1",
                                   "--database", database])  # fmt: skip
    assert reviewer.exit_code == 2 and "--agent binds agent keys only" in " ".join(reviewer.output.split())
    assert len(KeyStore(Catalog(database)).list("acme")) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--tenant", "Acme Corp", "--role", "agent"], "tenant"), (["--tenant", "acme", "--role", "root"], "--role")],
)
def test_keys_create_refuses_bad_tenants_and_roles(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["keys", "create", *args, "--database", f"sqlite:///{tmp_path}/c.db"])
    assert result.exit_code == 2 and message in result.output


def test_serve_runs_the_service_with_a_policy_file(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("blocked_resources: ['data.phi.*']\nmode: block\n")
    home = tmp_path / "home"
    token = make_key(home, "acme", "agent")
    with risk_serve(home, "--policy", str(policy)) as url:
        headers = {"Authorization": f"Bearer {token}"}
        assert httpx.post(f"{url}/v1/check", json=ALLOWED, headers=headers).json()["allowed"] is True
        assert httpx.post(f"{url}/v1/check", json=BLOCKED, headers=headers).json()["outcome"] == "blocked"
        assert httpx.get(f"{url}/docs").status_code == 200
    assert (home / "audit.db").is_file() and (home / "catalog.db").is_file()


def test_serve_refuses_several_workers_without_shared_state(tmp_path: Path) -> None:
    environment = {k: v for k, v in os.environ.items() if k != "RISK_REDIS_URL"}
    result = subprocess.run(
        [RISK, "serve", "--workers", "2", "--port", str(free_port())],
        env={**environment, "RISK_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "RISK_REDIS_URL" in result.stderr


def test_two_workers_share_state_and_metrics_add_up(tmp_path: Path) -> None:
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except Exception as exc:
        unavailable(f"Redis is not reachable at {REDIS_URL}: {exc}")
    prefix = f"risk-serve-test:{uuid.uuid4().hex}:"
    env = {"RISK_REDIS_URL": f"{REDIS_URL}?prefix={prefix}", "PROMETHEUS_MULTIPROC_DIR": ""}
    home = tmp_path / "home"
    policy = tmp_path / "policy.yaml"
    policy.write_text("blocked_resources: ['data.phi.*']\nmode: pause\n")
    agent = make_key(home, "acme", "agent", env)
    try:
        with risk_serve(home, "--workers", "2", "--policy", str(policy), env=env) as url:
            headers = {"Authorization": f"Bearer {agent}"}
            # A new connection per request spreads them over both workers; the pause holds on whichever answers.
            outcomes = [httpx.post(f"{url}/v1/check", json=BLOCKED, headers=headers).json()["outcome"]]
            outcomes += [httpx.post(f"{url}/v1/check", json=ALLOWED, headers=headers).json()["outcome"]
                         for _ in range(19)]  # fmt: skip
            assert outcomes == ["paused"] * 20
            for _ in range(6):  # whichever worker answers counts every worker's decisions
                metrics = httpx.get(f"{url}/metrics").text
                total = sum(float(line.split()[-1]) for line in metrics.splitlines()
                            if line.startswith("risk_decisions_total{"))  # fmt: skip
                assert total == 20
    finally:
        client_redis = redis.Redis.from_url(REDIS_URL)
        keys = list(client_redis.scan_iter(match=f"{prefix}*"))
        if keys:
            client_redis.delete(*keys)
        client_redis.close()
