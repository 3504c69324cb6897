"""What tests need of the machine: what to do when a service (PostgreSQL, Redis) is not there, and free ports."""

from __future__ import annotations

import os
import socket

import pytest

# CI sets this: there the services run, so a missing one is a failure, not a reason to skip.
REQUIRED = os.environ.get("RISK_REQUIRE_SERVICES") == "1"


def unavailable(why: str) -> None:
    """Skip the test, or fail it when RISK_REQUIRE_SERVICES=1."""
    if REQUIRED:
        pytest.fail(f"{why} (RISK_REQUIRE_SERVICES=1)")
    pytest.skip(why)


def free_port() -> int:
    """A loopback port nothing listens on (until someone binds it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port
