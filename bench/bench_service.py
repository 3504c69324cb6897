"""The HTTP service's throughput and latency against a bare FastAPI endpoint, measured in one run.

For each store configuration, two servers run with the same worker count under uvicorn (httptools, uvloop):

* bare: a FastAPI app whose one route, async like `POST /v1/check`, parses the same body model and returns a constant;
* service: the real app (`api.app:create_app`), an agent key, the default model, the bench_guard patterns.

A load generator (wrk when installed; else asyncio + httpx in several processes) keeps a fixed number of
connections busy with `POST /v1/check` (and the bare route) for a fixed time and reports throughput and
latency percentiles; then it drives `POST /v1/check/batch` with 100 actions a request over fewer connections
(4: enough to keep both workers busy, few enough that requests finish within a phase). Responses are checked
(the httpx generator checks every one; with wrk, a sample before the phase and any non-2xx or socket error
during it): a check must be allowed and carry no `*_unavailable` reason, or the run stops.

Configurations: `sqlite` (the embedded default: SQLite audit trail and catalog, in-process state; the
benchmark runs its two workers side by side, which a real deployment must not do without Redis, since no
rate limit or pause is exercised here) and `postgres+redis` (RISK_TEST_POSTGRES_URL, RISK_TEST_REDIS_URL;
skipped with a note when they are not reachable).

Usage: python bench/bench_service.py [--quick] [--json] [--workers 2] [--connections 32] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
from common import ALLOW_RESOURCE, ALLOWED, BLOCKED, PAYLOAD, percentile
from fastapi import FastAPI

from api.limits import OrjsonRoute
from api.schemas import CheckRequest
from risk.catalog import Catalog
from risk.keys import KeyStore
from risk.policy import Policy
from risk.tenants import Tenants

BENCH_DIR = Path(__file__).resolve().parent
POSTGRES_URL = os.environ.get("RISK_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("RISK_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
BATCH = 100
TARGET_RATIO, TARGET_P99_MS, TARGET_BATCH = 0.70, 10.0, 30_000


def bare_app() -> FastAPI:
    """The baseline: the same body model and JSON parsing as the check route, no auth, no decision."""
    app = FastAPI()
    app.router.route_class = OrjsonRoute

    @app.post("/check")
    async def check(body: CheckRequest) -> dict[str, Any]:
        return {"allowed": True}

    return app


# ---- servers ---------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@contextmanager
def uvicorn_server(target: str, workers: int, env: dict[str, str]) -> Iterator[str]:
    """`uvicorn --factory target` with `workers` workers until the block ends; yields its URL."""
    port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", target, "--factory", "--host", "127.0.0.1", "--port", str(port),
        "--workers", str(workers), "--loop", "uvloop", "--http", "httptools", "--no-access-log",
        "--log-level", "warning", "--app-dir", str(BENCH_DIR),
    ]  # fmt: skip
    process = subprocess.Popen(command, env={**os.environ, **env})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise SystemExit(f"{target} exited with {process.returncode}")
            try:
                if httpx.get(f"{url}/healthz" if "create_app" in target else f"{url}/docs", timeout=1).is_success:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{target} did not start within 60 s") from None
            time.sleep(0.1)
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ---- load ------------------------------------------------------------------------------------------------------


def check_body(i: int) -> dict[str, Any]:
    return {"agent_id": f"agent-{i}", "action_type": "database_query", "resource": ALLOW_RESOURCE, "payload": PAYLOAD}


async def _drive(url: str, path: str, headers: dict[str, str], bodies: list[bytes], warmup: float,
                 seconds: float) -> dict[str, Any]:  # fmt: skip
    """Keep len(bodies) connections busy; latencies (ns) of requests started after the warmup."""
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=len(bodies))
    latencies: list[int] = []
    failures: list[str] = []
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30.0) as client:
        start = time.perf_counter_ns()
        measure_from = start + int(warmup * 1e9)
        stop = measure_from + int(seconds * 1e9)
        request_headers = {**headers, "content-type": "application/json"}

        async def connection(body: bytes) -> None:
            while (t0 := time.perf_counter_ns()) < stop:
                response = await client.post(path, content=body, headers=request_headers)
                t1 = time.perf_counter_ns()
                problem = _problem(path, response)
                if problem:
                    failures.append(problem)
                    return
                if t0 >= measure_from:
                    latencies.append(t1 - t0)

        await asyncio.gather(*(connection(b) for b in bodies))
    return {"latencies": latencies, "failures": failures[:3]}


def _problem(path: str, response: httpx.Response) -> str:
    if response.status_code != 200:
        return f"{path}: HTTP {response.status_code}: {response.text[:200]}"
    if path == "/check":
        return ""
    decisions = response.json()["decisions"] if path.endswith("/batch") else [response.json()]
    for decision in decisions:
        codes = [r["code"] for r in decision["reasons"]]
        if not decision["allowed"] or any(code.endswith("_unavailable") for code in codes):
            return f"{path}: unexpected decision {decision['outcome']} {codes}"
    return ""


def _client_process(args: tuple[str, str, dict[str, str], list[bytes], float, float]) -> dict[str, Any]:
    return asyncio.run(_drive(*args))


def load(
    url: str, path: str, headers: dict[str, str], bodies: list[bytes], args: argparse.Namespace
) -> dict[str, float]:
    """Drive `path` with `bodies` (one per connection) and check that every answer is what it should be."""
    with httpx.Client(base_url=url, headers={**headers, "content-type": "application/json"}) as client:
        for body in bodies[:4]:
            problem = _problem(path, client.post(path, content=body))
            if problem:
                raise SystemExit(f"stopping: {problem}")
    if args.load == "wrk":
        return wrk(url, path, headers, bodies, args)
    return load_httpx(url, path, headers, bodies, args.clients, args.warmup, args.seconds)


def wrk(
    url: str, path: str, headers: dict[str, str], bodies: list[bytes], args: argparse.Namespace
) -> dict[str, float]:
    """The same load from wrk (C, far cheaper per request than any Python client), bodies in turn."""
    lines = ['wrk.method = "POST"', 'wrk.headers["Content-Type"] = "application/json"']
    lines += [f'wrk.headers["{name}"] = "{value}"' for name, value in headers.items()]
    lines.append("local bodies = {" + ", ".join(f"[==[{b.decode()}]==]" for b in bodies) + "}")
    lines.append("local n = 0")
    lines.append(f'request = function() n = n + 1; return wrk.format(nil, "{path}", nil, bodies[n % #bodies + 1]) end')
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write("\n".join(lines) + "\n")
    threads = str(min(args.clients, len(bodies)))
    common = ["wrk", "-t", threads, "-c", str(len(bodies)), "-s", script.name, "--timeout", "10s"]
    try:
        subprocess.run([*common, "-d", f"{max(1, round(args.warmup))}s", url], check=True, capture_output=True)
        measured = [*common, "-d", f"{max(1, round(args.seconds))}s", "--latency", url]
        out = subprocess.run(measured, check=True, capture_output=True, text=True).stdout
    finally:
        os.unlink(script.name)
    bad = [line for line in out.splitlines() if "Non-2xx" in line or "Socket errors" in line]
    if bad:
        raise SystemExit(f"stopping: wrk on {path}: {'; '.join(b.strip() for b in bad)}")
    values = {"50%": float("nan"), "99%": float("nan"), "rps": 0.0, "requests": 0.0}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("50%", "99%"):
            values[parts[0]] = _ms(parts[1])
        elif line.startswith("Requests/sec:"):
            values["rps"] = float(parts[1])
        elif "requests in" in line:
            values["requests"] = float(parts[0])
    return {"requests_per_s": values["rps"], "p50_ms": values["50%"], "p99_ms": values["99%"],
            "requests": values["requests"]}  # fmt: skip


def _ms(text: str) -> float:
    for unit, factor in (("us", 1e-3), ("ms", 1.0), ("s", 1e3), ("m", 6e4)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    raise ValueError(f"cannot read wrk latency {text!r}")


def load_httpx(url: str, path: str, headers: dict[str, str], bodies: list[bytes], processes: int, warmup: float,
               seconds: float) -> dict[str, float]:  # fmt: skip
    """Spread the connections over `processes` client processes; throughput and latency percentiles."""
    shares = [bodies[i::processes] for i in range(processes)]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        results = pool.map(_client_process, [(url, path, headers, share, warmup, seconds) for share in shares])
    failures = [f for r in results for f in r["failures"]]
    if failures:
        raise SystemExit(f"stopping: {failures[0]}")
    latencies = sorted(x for r in results for x in r["latencies"])
    if not latencies:
        raise SystemExit(f"stopping: no {path} request started after the warmup finished; raise --seconds")
    return {
        "requests_per_s": len(latencies) / seconds,
        "p50_ms": percentile(latencies, 0.50) / 1e6,
        "p99_ms": percentile(latencies, 0.99) / 1e6,
        "requests": float(len(latencies)),
    }


# ---- configurations --------------------------------------------------------------------------------------------


def reachable(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


def configurations(home: Path) -> list[tuple[str, dict[str, str] | None, str]]:
    """(name, service environment or None when unavailable, note)."""
    sqlite = {"RISK_HOME": str(home / "sqlite")}
    pg_ok = reachable("127.0.0.1", 5432)  # the default URLs' host and port; a custom URL is tried as given
    redis_ok = reachable("127.0.0.1", 6379)
    prefix = f"risk-bench:{uuid.uuid4().hex}:"
    schema = f"risk_bench_{uuid.uuid4().hex[:12]}"
    postgres = {
        "RISK_HOME": str(home / "postgres"),
        "RISK_DATABASE_URL": f"{POSTGRES_URL}{'&' if '?' in POSTGRES_URL else '?'}options=-csearch_path%3D{schema}",
        "RISK_REDIS_URL": f"{REDIS_URL}{'&' if '?' in REDIS_URL else '?'}prefix={prefix}",
        "RISK_BENCH_SCHEMA": schema,
    }
    missing = "" if (pg_ok and redis_ok) else "PostgreSQL or Redis not reachable"
    return [("sqlite", sqlite, ""), ("postgres+redis", None if missing else postgres, missing)]


@contextmanager
def prepared(env: dict[str, str]) -> Iterator[str]:
    """The configuration's stores with a policy and an agent key; yields the key. Drops a bench schema after."""
    schema = env.get("RISK_BENCH_SCHEMA")
    admin = None
    if schema:
        import psycopg

        admin = psycopg.connect(POSTGRES_URL, autocommit=True)
        admin.execute(f"CREATE SCHEMA {schema}")
    try:
        database = env.get("RISK_DATABASE_URL")
        home = Path(env["RISK_HOME"])
        catalog = Catalog(database or f"sqlite:///{home / 'catalog.db'}")
        from risk.audit.store import open_audit
        from risk.state import MemoryState

        audit = open_audit(database or f"sqlite:///{home / 'audit.db'}")
        tenants = Tenants(catalog, audit, MemoryState(), model=None)
        policy = Policy.build(allowed_resources=ALLOWED, blocked_resources=BLOCKED, mode="block")
        tenants.set_policy("*", None, policy, actor="bench")
        _, token = KeyStore(catalog).create("bench", "agent")
        audit.close()
        catalog.close()
        yield token
    finally:
        if admin is not None:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")
            admin.close()
        if env.get("RISK_REDIS_URL"):
            import redis

            client = redis.Redis.from_url(REDIS_URL)
            prefix = env["RISK_REDIS_URL"].rsplit("prefix=", 1)[1]
            keys = list(client.scan_iter(match=f"{prefix}*"))
            if keys:
                client.delete(*keys)
            client.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    bodies = [orjson.dumps(check_body(i)) for i in range(args.connections)]
    batch_bodies = [
        orjson.dumps({"actions": [check_body(i * BATCH + j) for j in range(BATCH)]})
        for i in range(args.batch_connections)
    ]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, env, note in configurations(Path(tmp)):
            if env is None:
                results[name] = {"skipped": note}
                continue
            with prepared(env) as token:
                headers = {"Authorization": f"Bearer {token}"}
                with uvicorn_server("bench_service:bare_app", args.workers, {}) as bare_url:
                    bare = load(bare_url, "/check", {}, bodies, args)
                with uvicorn_server("api.app:create_app", args.workers, env) as url:
                    check = load(url, "/v1/check", headers, bodies, args)
                    batch = load(url, "/v1/check/batch", headers, batch_bodies, args)
            batch["actions_per_s"] = batch["requests_per_s"] * BATCH
            results[name] = {"bare": bare, "check": check, "batch": batch,
                             "ratio": check["requests_per_s"] / bare["requests_per_s"]}  # fmt: skip
    return results


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"service benchmark ({args.load}): {args.workers} workers, {args.connections} connections over "
          f"{args.clients} client processes or threads, {args.seconds:g} s per phase after {args.warmup:g} s warmup; "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}")  # fmt: skip
    print(f"{'config':<16}{'endpoint':<22}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}")
    for name, result in results.items():
        if "skipped" in result:
            print(f"{name:<16}skipped: {result['skipped']}")
            continue
        for row, label in (
            ("bare", "bare POST /check"),
            ("check", "POST /v1/check"),
            ("batch", "POST /v1/check/batch"),
        ):
            r = result[row]
            print(f"{name:<16}{label:<22}{r['requests_per_s']:>10,.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}")
        ratio, p99, actions = result["ratio"], result["check"]["p99_ms"], result["batch"]["actions_per_s"]
        print(f"{'':<16}check/bare throughput {ratio:.0%} (target >= {TARGET_RATIO:.0%}: "
              f"{'MET' if ratio >= TARGET_RATIO else 'NOT MET'}); check p99 {p99:.2f} ms (target <= "
              f"{TARGET_P99_MS:g}: {'MET' if p99 <= TARGET_P99_MS else 'NOT MET'}); batch {actions:,.0f} actions/s "
              f"(target >= {TARGET_BATCH:,}: {'MET' if actions >= TARGET_BATCH else 'NOT MET'})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 s phases: a smoke test")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--batch-connections", type=int, default=4, help="connections for the batch phase")
    parser.add_argument("--clients", type=int, default=2, help="load-generator processes (wrk: threads)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--load", choices=("wrk", "httpx"), default="wrk" if shutil.which("wrk") else "httpx",
                        help="load generator (default: wrk when installed, else asyncio + httpx)")  # fmt: skip
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.warmup = 2.0, 0.5
    results = run(args)
    if args.json:
        print(json.dumps({"settings": vars(args), "results": results}))
    else:
        report(results, args)


if __name__ == "__main__":
    main()
