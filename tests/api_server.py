"""The real service under uvicorn on a free loopback port, in a thread, for tests that talk to it with httpx."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from services import free_port

from api.app import create_app
from api.settings import Settings
from risk import catalog
from risk.catalog import Catalog
from risk.idempotency import RETENTION, IdempotencyKeys
from risk.keys import Role


@dataclass
class Running:
    """A started service: its app (for its stores), its base URL, and a client per (tenant, role)."""

    app: FastAPI
    url: str

    def client(self, tenant: str | None = None, role: Role | str | None = None) -> httpx.Client:
        """A client with a new key of `tenant` and `role`, or with no key at all."""
        headers = {}
        if tenant is not None and role is not None:
            _, token = self.app.state.service.keys.create(tenant, role)
            headers["Authorization"] = f"Bearer {token}"
        return httpx.Client(base_url=self.url, headers=headers, timeout=30.0)


@contextmanager
def serve(settings: Settings, port: int = 0) -> Iterator[Running]:
    """Run the app built from `settings` until the block ends, on `port` (default: a free one)."""
    app = create_app(settings)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port a stopped service just left
    sock.bind(("127.0.0.1", port))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", loop="asyncio", lifespan="on"))
    started = threading.Event()

    original_startup = server.startup

    async def startup(sockets: list[socket.socket] | None = None) -> None:
        await original_startup(sockets=sockets)
        started.set()

    server.startup = startup  # type: ignore[method-assign]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    if not started.wait(120):  # a ceiling for a loaded machine, not a speed check
        raise RuntimeError("the service did not start within 120 s")
    try:
        yield Running(app, f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


# ---- `risk serve` as a user runs it ---------------------------------------------------------------------------

RISK = str(Path(sys.executable).with_name("risk"))


@contextmanager
def risk_serve(home: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """`risk serve` in a subprocess until the block ends; yields its URL once /healthz answers."""
    port = free_port()
    environment = {**os.environ, "RISK_HOME": str(home), "RISK_MODEL": "none", **(env or {})}
    process = subprocess.Popen(
        [RISK, "serve", "--port", str(port), *args], env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # a ceiling for a loaded machine, not a speed check
        while True:
            if process.poll() is not None:
                raise AssertionError(f"risk serve exited: {process.stdout.read().decode() if process.stdout else ''}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.1)  # polling for the port to open: there is nothing to wait on
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout:
            process.stdout.close()


def make_key(home: Path, tenant: str, role: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [RISK, "keys", "create", "--tenant", tenant, "--role", role],
        env={**os.environ, "RISK_HOME": str(home), **(env or {})},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def catalog_before_bound_keys(url: str) -> str:
    """A catalog at schema version 1 (before agent keys could be bound to agents) holding one agent key of tenant
    `acme`, made as that version made it; the key's token."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(catalog, "_MIGRATIONS", catalog._MIGRATIONS[:1])
        old = catalog.Catalog(url)
    key_id, secret, salt = "0123456789abcdef", "s" * 43, bytes(16)
    old.run(
        "INSERT INTO risk_keys (key_id, tenant, role, salt, digest, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        (key_id, "acme", "agent", salt.hex(), hashlib.sha256(salt + secret.encode()).hexdigest(), "2026-01-01"),
    )
    assert old.run("SELECT max(version) FROM risk_catalog_version").rows == [(1,)]
    old.close()
    return f"rk_{key_id}_{secret}"


def check_idempotency_keys_expire(store: Catalog) -> None:
    """Keys are remembered for their retention, then deleted (every `purge_every` claims, or by `purge`) and new.

    The clock stands in 1970, so a purge deletes no record another test made with the real clock."""
    now = [1_000.0]
    tenant = f"t-{uuid.uuid4().hex[:10]}"
    keys = IdempotencyKeys(store, purge_every=3, clock=lambda: now[0])
    assert keys.claim(tenant, "old", "d") is None
    keys.settle(tenant, "old", {"n": 1})
    now[0] += RETENTION - 1
    assert keys.claim(tenant, "new", "d") is None
    keys.settle(tenant, "new", {"n": 2})
    assert keys.claim(tenant, "old", "d") == {"n": 1}  # the third claim purged first: "old" is not past it yet
    now[0] += 2
    assert keys.purge() == 1
    assert keys.claim(tenant, "old", "d") is None  # forgotten: answered afresh
    assert keys.claim(tenant, "new", "d") == {"n": 2}
    now[0] += RETENTION + 10
    assert keys.claim(tenant, "last", "d") is None  # the sixth claim purges the rest first
    assert store.run("SELECT idem_key FROM risk_idempotency WHERE tenant = ?", (tenant,)).rows == [("last",)]
