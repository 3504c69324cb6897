"""Prometheus metrics of the service: decisions by outcome, decision latency, model version, fail-open count and
store errors. With several workers, `PROMETHEUS_MULTIPROC_DIR` makes every worker's counts add up."""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from risk.actions import Decision

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Decisions take tens of microseconds to a few milliseconds; the buckets resolve that range.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    """One set of metrics per app, in a registry of its own (several apps may live in one test process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.decisions = Counter("risk_decisions", "Decisions made, by outcome.", ["outcome"], registry=self.registry)
        self.latency = Histogram(
            "risk_decision_seconds", "Time to decide one action.", buckets=LATENCY_BUCKETS, registry=self.registry
        )
        self.fail_open = Counter(
            "risk_fail_open",
            "Actions clients let run unchecked while the service was unreachable (on_error='allow'), as reported.",
            registry=self.registry,
        )
        self.store_errors = Counter(
            "risk_store_errors", "Requests that failed on a store, by store.", ["store"], registry=self.registry
        )
        self.model = Gauge(
            "risk_model_info", "The behavioral model in use (1 for the active version).", ["version"],
            registry=self.registry, multiprocess_mode="liveall",
        )  # fmt: skip

    def decided(self, decision: Decision, seconds: float) -> None:
        self.decisions.labels(decision.outcome.value).inc()
        self.latency.observe(seconds)
        for reason in decision.reasons:
            if reason.code in ("audit_unavailable", "state_unavailable"):
                self.store_errors.labels(reason.code.removesuffix("_unavailable")).inc()

    def model_in_use(self, version: str | None) -> None:
        self.model.clear()
        self.model.labels(version or "rules-only").set(1)

    def render(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # prometheus_client leaves it untyped
            return generate_latest(registry)
        return generate_latest(self.registry)
