"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

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
