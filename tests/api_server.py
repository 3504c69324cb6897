"""The real service under uvicorn on a free loopback port, in a thread, for tests that talk to it with httpx."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import uvicorn
from fastapi import FastAPI

from api.app import create_app
from api.settings import Settings
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
