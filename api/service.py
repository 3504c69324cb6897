"""What every route works with: the tenants' decision point, the keys and the metrics, built from Settings."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from functools import cached_property
from typing import TypeVar

from starlette.concurrency import run_in_threadpool

from api.metrics import Metrics
from api.settings import Settings
from risk.audit.store import AuditStore, open_audit
from risk.catalog import Catalog
from risk.keys import KeyStore
from risk.state import StateStore, open_state
from risk.tenants import Tenants

T = TypeVar("T")


@dataclass
class Service:
    settings: Settings
    audit: AuditStore
    state: StateStore
    catalog: Catalog
    tenants: Tenants
    keys: KeyStore
    metrics: Metrics

    @classmethod
    def start(cls, settings: Settings) -> Service:
        """Open the stores named by `settings` and apply its policy files."""
        audit = open_audit(settings.audit_url)
        state = open_state(settings.state_url)
        catalog = Catalog(settings.catalog_url)
        tenants = Tenants(
            catalog,
            audit,
            state,
            model=settings.model,
            online=settings.online,
            home=settings.home,
            max_agents=settings.max_agents,
        )
        for spec in settings.policy_files:
            tenants.apply_policy_file(spec)
        metrics = Metrics()
        metrics.model_in_use(tenants.model_version)
        return cls(settings, audit, state, catalog, tenants, KeyStore(catalog), metrics)

    @cached_property
    def local(self) -> bool:
        """Whether every store is on this machine: SQLite files and in-process state (asked on every decision)."""
        settings = self.settings
        return settings.audit_url.startswith("sqlite:") and settings.state_url.startswith("memory:")

    async def decide(self, work: Callable[[], T]) -> T:
        """Run a decision's work. With local stores it runs on the event loop itself: it takes well under a
        millisecond and never waits on a network, and handing each request to a thread and back cost more
        than the decision (measured: about half the throughput of one worker). With a store across the
        network it runs in a worker thread, so a slow database holds up that request, not the worker's others.
        """
        if self.local:
            return work()
        return await run_in_threadpool(work)

    def close(self) -> None:
        """Close every store, even when one before it fails to (busy behind a stalled statement), then raise."""
        with ExitStack() as closing:
            close_state = getattr(self.state, "close", None)
            if close_state is not None:
                closing.callback(close_state)
            closing.callback(self.catalog.close)
            closing.callback(self.audit.close)
