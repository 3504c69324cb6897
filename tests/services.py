"""What tests need of the machine: what to do when a service (PostgreSQL, Redis) is not there, and free ports."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time

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


class StallingProxy:
    """A TCP proxy on 127.0.0.1 in front of `host:port` that passes bytes both ways until `stall` is set, and
    then holds what either side sends, keeping every connection open: a server (or a pooler, or a proxy) that
    stops answering while TCP sees nothing wrong. Once `stall` is cleared, connections pass bytes again."""

    def __init__(self, host: str, port: int) -> None:
        self.stall = threading.Event()
        self._target = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                while self.stall.is_set():
                    time.sleep(0.05)
                sink.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()
