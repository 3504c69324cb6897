"""Compiling the scoring loops: numba turns a Python loop over numpy arrays into machine code."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba  # type: ignore[import-untyped, unused-ignore]

F = TypeVar("F", bound=Callable[..., Any])


def kernel(function: F) -> F:
    """`function` compiled by numba on its first call, releasing the GIL while it runs.

    The machine code is cached beside the module (or in the user's cache folder) so later processes skip
    the ~0.5 s compile; where neither can be written (a read-only install without a home folder) each
    process compiles once instead of failing to import.
    """
    try:
        return cast(F, numba.njit(cache=True, nogil=True)(function))
    except RuntimeError:  # numba found no writable place for its cache
        return cast(F, numba.njit(nogil=True)(function))
