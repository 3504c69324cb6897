"""Helpers shared by the benchmarks in this folder: timing, percentiles, and the vaultak 0.7.0 baseline.

The scripts run as `python bench/<script>.py`, which puts this folder on sys.path, so they import this module
as `common`.
"""

from __future__ import annotations

import math
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

# `bench/.venv-*/` is already in .gitignore, and ruff skips git-ignored folders, so `make lint` never sees
# vaultak's own sources.
VENDOR_DIR = Path(__file__).resolve().parent / ".venv-vaultak"
VAULTAK_VERSION = "0.7.0"
DRAIN_TIMEOUT_S = 15.0

# The scenario every baseline comparison uses: the same patterns for every system, one allow and one deny path.
ALLOWED = ["data.deidentified.*", "/reports/readonly/*"]
BLOCKED = ["data.phi.*", "*.pii", "prod.*"]
ALLOW_RESOURCE = "data.deidentified.claims"
DENY_RESOURCE = "data.phi.patients"
PAYLOAD = {"sql": "SELECT count(*) FROM claims"}
# Large enough that neither SDK's rate limit ever fires during the run.
RATE_LIMIT = 10**9
# vaultak keeps the last 1000 allowed actions and scans them on every call: fill the deque once so every
# round measures its steady state rather than a ramp.
VAULTAK_HISTORY = 1000


def ensure_vaultak() -> Any:
    """Install vaultak into the vendor folder on first use and import VaultakMonitor from there only."""
    if not (VENDOR_DIR / f"vaultak-{VAULTAK_VERSION}.dist-info").is_dir():
        print(f"installing vaultak=={VAULTAK_VERSION} into {VENDOR_DIR} ...", file=sys.stderr)
        command = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--upgrade",
            "--target",
            str(VENDOR_DIR),
            f"vaultak=={VAULTAK_VERSION}",
        ]
        # pip's chatter goes to stderr so that --json keeps stdout a single JSON object.
        if subprocess.run(command, stdout=sys.stderr, stderr=sys.stderr, check=False).returncode != 0:
            raise SystemExit(f"could not install vaultak=={VAULTAK_VERSION} into {VENDOR_DIR}")
    sys.path.insert(0, str(VENDOR_DIR))
    import vaultak  # type: ignore[import-not-found]  # installed at run time, not a project dependency
    from vaultak.core import VaultakMonitor  # type: ignore[import-not-found]

    # A vaultak installed elsewhere (site-packages) must not be what we measure.
    if vaultak.__version__ != VAULTAK_VERSION or not Path(vaultak.__file__).resolve().is_relative_to(VENDOR_DIR):
        raise SystemExit(f"imported vaultak {vaultak.__version__} from {vaultak.__file__}, not {VENDOR_DIR}")
    return VaultakMonitor


def closed_port() -> int:
    """A loopback port nothing listens on, so vaultak's POST is refused at once instead of timing out."""
    for _ in range(20):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except ConnectionRefusedError:
            return port
        except OSError:
            continue
    raise SystemExit("could not find a closed loopback port")


def keep_loopback_off_proxies() -> None:
    # With an HTTP proxy configured, urllib would send vaultak's POST to the proxy rather than to the closed port.
    if urllib.request.getproxies() and not urllib.request.proxy_bypass("127.0.0.1"):
        extra = os.environ.get("no_proxy") or os.environ.get("NO_PROXY") or ""
        os.environ["no_proxy"] = os.environ["NO_PROXY"] = ",".join(filter(None, (extra, "127.0.0.1", "localhost")))


def new_vaultak_monitor(monitor_class: Any, port: int) -> Any:
    """A VaultakMonitor with the shared patterns, its backend a closed loopback port."""
    return monitor_class("bench", "vtk_bench", f"http://127.0.0.1:{port}", 30, 60, 85, ALLOWED, BLOCKED, RATE_LIMIT)


def fill_vaultak_history(monitor: Any) -> None:
    """Fill vaultak's action history so its rate check scans the full deque from the first measured call."""
    for _ in range(VAULTAK_HISTORY):
        monitor._intercept("file_read", ALLOW_RESOURCE, PAYLOAD)


def foreign_threads() -> int:
    """Running threads that are not agent-risk's own (its threads are named risk-*, such as a SQLite store's
    checkpoint thread, which lives as long as its guard)."""
    return sum(1 for thread in threading.enumerate() if not thread.name.startswith("risk-"))


def wait_for_threads(baseline: int) -> float:
    """Wait until vaultak's per-call POST threads are gone (`baseline` is `foreign_threads()` before any
    started); returns the seconds waited (-1 on timeout)."""
    start = time.perf_counter()
    while foreign_threads() > baseline:
        if time.perf_counter() - start > DRAIN_TIMEOUT_S:
            return -1.0
        time.sleep(0.005)
    return time.perf_counter() - start


def measure(call: Callable[[], object], n: int) -> list[int]:
    """`n` timings of `call()` in nanoseconds."""
    samples = [0] * n
    clock = time.perf_counter_ns
    for i in range(n):
        start = clock()
        call()
        samples[i] = clock() - start
    return samples


def percentile(ordered: list[int], q: float) -> float:
    """Nearest-rank percentile, so p99 is a latency that was actually observed."""
    return float(ordered[max(0, math.ceil(q * len(ordered)) - 1)])


def summarize(samples: list[int]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_us": percentile(ordered, 0.50) / 1000,
        "p99_us": percentile(ordered, 0.99) / 1000,
        "mean_us": statistics.fmean(ordered) / 1000,
        "n": float(len(ordered)),
    }


def speedup(results: dict[str, Any], ours: str, theirs: str, stat: str) -> float:
    """How many times faster `ours` is than `theirs` (below 1 means slower)."""
    return float(results[theirs][stat] / results[ours][stat])


def describe(factor: float) -> str:
    return f"{factor:.2f}x faster" if factor >= 1 else f"{1 / factor:.2f}x slower"
