"""What a test does when a service it needs (PostgreSQL, Redis) is not there."""

from __future__ import annotations

import os

import pytest

# CI sets this: there the services run, so a missing one is a failure, not a reason to skip.
REQUIRED = os.environ.get("RISK_REQUIRE_SERVICES") == "1"


def unavailable(why: str) -> None:
    """Skip the test, or fail it when RISK_REQUIRE_SERVICES=1."""
    if REQUIRED:
        pytest.fail(f"{why} (RISK_REQUIRE_SERVICES=1)")
    pytest.skip(why)
