"""Fixtures shared by the test modules."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import pytest
from services import unavailable

from risk import Guard


@pytest.fixture
def guards() -> Iterator[Callable[..., Guard]]:
    """A Guard factory: every guard it makes is closed when the test ends."""
    made: list[Guard] = []

    def make(**kwargs: Any) -> Guard:
        made.append(Guard(**kwargs))
        return made[-1]

    yield make
    for guard in made:
        guard.close()


# ---- real PostgreSQL and Redis, isolated per test module ----------------------------------------------------

POSTGRES_URL = os.environ.get("RISK_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("RISK_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    """A PostgreSQL URL whose tables live in a fresh schema, dropped afterwards."""
    try:
        import psycopg

        admin = psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=3)
    except Exception as exc:
        unavailable(f"PostgreSQL is not reachable at {POSTGRES_URL}: {exc}")
    schema = f"risk_api_{uuid.uuid4().hex[:16]}"
    admin.execute(f"CREATE SCHEMA {schema}")
    parts = urlsplit(POSTGRES_URL)
    query = dict(parse_qsl(parts.query))
    query["options"] = f"{query.get('options', '')} -csearch_path={schema}".strip()
    query["application_name"] = schema
    yield urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))
    admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = %s AND pid <> pg_backend_pid()",
        (schema,),
    )
    admin.execute(f"DROP SCHEMA {schema} CASCADE")
    admin.close()


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A Redis state URL with a fresh key prefix; its keys are deleted afterwards."""
    try:
        import redis

        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=5)
        client.ping()
    except Exception as exc:
        unavailable(f"Redis is not reachable at {REDIS_URL}: {exc}")
    prefix = f"risk-api-test:{uuid.uuid4().hex}:"
    parts = urlsplit(REDIS_URL)
    yield urlunsplit(parts._replace(query=f"{parts.query}&prefix={prefix}" if parts.query else f"prefix={prefix}"))
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()
