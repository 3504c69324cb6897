"""Where a `POST /v1/check` request's time goes inside the app, layer by layer, against the bare endpoint.

bench_service.py measures the service over HTTP, where the load generator and uvicorn share the CPUs. This
calls each ASGI app directly in one process (no sockets, no HTTP parsing), on the embedded default stores
(SQLite audit, in-process state, the default model), so each layer's cost is a difference of two rows:

* bare: bench_service's bare endpoint (the same body model, a constant answer);
* + key check: the same with the agent-key dependency every `/v1/check` request passes;
* + decision body: the same answering a fixed decision through the `DecisionOut` response model;
* service, decision given: the real app, its decision point replaced by one that returns a fixed decision;
* service: the real app.

The bodies are bench_service's (32 agents in turn). Rounds alternate the order of the layers; the table shows
the median over rounds of each layer's mean time per request.

Usage: python bench/bench_service_layers.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from bench_service import bare_app, check_body, configurations, prepared
from fastapi import FastAPI

from api.app import create_app
from api.limits import OrjsonRoute
from api.routes.decisions import Agent
from api.schemas import CheckRequest, DecisionOut
from api.settings import Settings
from risk.tenants import ActionRequest

CONNECTIONS = 32  # bodies in turn, as bench_service's connections


def layered_app(service: Any, answer: dict[str, Any] | None) -> FastAPI:
    """The bare endpoint plus the key check, and with `answer` the decision response model too."""
    app = FastAPI()
    app.router.route_class = OrjsonRoute
    app.state.service = service
    if answer is None:

        @app.post("/check")
        async def checked(body: CheckRequest, key: Agent) -> dict[str, Any]:
            return {"allowed": True}

    else:

        @app.post("/check", response_model=DecisionOut)
        async def decided(body: CheckRequest, key: Agent) -> dict[str, Any]:
            return answer

    return app


async def call(app: Any, path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    """One request straight into the ASGI app; fails unless it answers 200."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [*headers, (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
    }  # fmt: skip
    sent: list[dict[str, Any]] = []
    given = False

    async def receive() -> dict[str, Any]:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client stays: no disconnect
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    if sent[0]["status"] != 200:
        raise SystemExit(f"{path}: HTTP {sent[0]['status']}: {sent[-1].get('body', b'')[:200]!r}")


async def mean_us(app: Any, path: str, headers: list[tuple[bytes, bytes]], bodies: list[bytes], n: int) -> float:
    for i in range(n // 10):  # warm up
        await call(app, path, headers, bodies[i % len(bodies)])
    start = time.perf_counter()
    for i in range(n):
        await call(app, path, headers, bodies[i % len(bodies)])
    return (time.perf_counter() - start) / n * 1e6


def run(rounds: int, n: int) -> dict[str, float]:
    bodies = [orjson.dumps(check_body(i)) for i in range(CONNECTIONS)]
    with tempfile.TemporaryDirectory() as tmp:
        env = next(env for name, env, _ in configurations(Path(tmp)) if name == "sqlite")
        assert env is not None
        with prepared(env) as token:
            os.environ.update(env)
            service_app = create_app(Settings.from_env())
            given_app = create_app(Settings.from_env())
            given_service = given_app.state.service
            first = given_service.tenants.check("bench", ActionRequest(**check_body(0)))
            given_service.tenants.check = lambda *args, **kwargs: first
            json_headers = [(b"content-type", b"application/json")]
            keyed = [*json_headers, (b"authorization", f"Bearer {token}".encode())]
            service = service_app.state.service
            apps: list[tuple[str, Any, str, list[tuple[bytes, bytes]]]] = [
                ("bare", bare_app(), "/check", json_headers),
                ("+ key check", layered_app(service, None), "/check", keyed),
                ("+ decision body", layered_app(service, first.to_dict()), "/check", keyed),
                ("service, decision given", given_app, "/v1/check", keyed),
                ("service", service_app, "/v1/check", keyed),
            ]
            samples: dict[str, list[float]] = {name: [] for name, *_ in apps}
            for r in range(rounds):
                for name, app, path, headers in apps if r % 2 == 0 else apps[::-1]:
                    samples[name].append(asyncio.run(mean_us(app, path, headers, bodies, n)))
            for app in (service_app, given_app):
                app.state.service.close()
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few requests, 2 rounds: a smoke test")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    means = run(rounds=2 if args.quick else 5, n=300 if args.quick else 3000)
    decision = means["service"] - means["service, decision given"]
    derived = {
        "in_process_check_vs_bare": means["bare"] / means["service"],
        "decision_share_of_a_check": decision / means["service"],
    }
    if args.json:
        print(json.dumps({"mean_us": means, **derived}, indent=2))
        return
    print(f"POST /v1/check in process (ASGI, no sockets), SQLite stores; Python {sys.version.split()[0]}")
    print(f"{'layer':28} {'µs/request':>11} {'added':>8}")
    previous = 0.0
    for name, value in means.items():
        print(f"{name:28} {value:11.1f} {value - previous:+8.1f}")
        previous = value
    print(f"the decision (tenants.check): {decision:.1f} µs, {derived['decision_share_of_a_check']:.0%} of a check")
    print(f"bare / service throughput in process: {derived['in_process_check_vs_bare']:.0%}")


if __name__ == "__main__":
    main()
