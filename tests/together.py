"""Running work in several threads released at the same moment, to make races happen."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def run_together(workers: list[Callable[[], Any]], timeout: float = 120.0) -> list[Any]:
    """Run each worker in its own thread, all released by one barrier; their results in order.
    Re-raises the first failure, so a worker that broke cannot pass as one that returned nothing."""
    barrier = threading.Barrier(len(workers))
    results: list[Any] = [None] * len(workers)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = workers[i]()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    if errors:
        raise errors[0]
    return results
