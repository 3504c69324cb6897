"""The policies of a multi-tenant service, kept in the catalog: the service default (tenant `*`), one per
tenant, and per-agent overrides, most specific first. Every change is one transaction together with its
`policy_change` audit record, which carries the old and the new policy hash.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from risk.catalog import Catalog
from risk.errors import PolicyError
from risk.policy import Policy, load_policy_file

SERVICE_DEFAULT = "*"  # the catalog's tenant name for the policy of every tenant without one of its own


@dataclass(frozen=True, slots=True)
class PolicyView:
    """The policy that governs a tenant or agent, and where it comes from: agent, tenant, default or embedded."""

    policy: Policy
    source: str


class TenantPolicies:
    """The catalog's policies, cached in memory; `load` re-reads them (the caller decides when).

    >>> import tempfile
    >>> policies = TenantPolicies(Catalog(f"sqlite:///{tempfile.mkdtemp()}/catalog.db"), lambda agent, fields: None)
    >>> old, new = policies.set("acme", "", Policy(mode="pause"), actor="admin", subject="acme/*")
    >>> policies.view("acme", "bot").source, policies.view("other", None).source
    ('tenant', 'embedded')
    """

    def __init__(self, catalog: Catalog, record: Callable[[str, dict[str, Any]], None]) -> None:
        self._catalog = catalog
        self._record = record
        self._lock = threading.Lock()
        self._policies: dict[tuple[str, str], Policy] = {}
        self.load()

    def load(self) -> None:
        rows = self._catalog.run("SELECT tenant, agent_id, policy FROM risk_policies").rows
        policies = {(t, a): Policy.model_validate_json(p) for t, a, p in rows}
        with self._lock:
            self._policies = policies

    def view(self, tenant: str, agent_id: str | None) -> PolicyView:
        """The policy governing `tenant` (or one of its agents), and where it comes from."""
        with self._lock:
            if agent_id is not None and (tenant, agent_id) in self._policies:
                return PolicyView(self._policies[(tenant, agent_id)], "agent")
            if (tenant, "") in self._policies:
                return PolicyView(self._policies[(tenant, "")], "tenant")
            if (SERVICE_DEFAULT, "") in self._policies:
                return PolicyView(self._policies[(SERVICE_DEFAULT, "")], "default")
        return PolicyView(Policy(), "embedded")

    def has_own(self, tenant: str, agent_id: str) -> bool:
        with self._lock:
            return (tenant, agent_id) in self._policies

    def overrides(self, tenant: str) -> dict[str, Policy]:
        with self._lock:
            return {agent: p for (t, agent), p in self._policies.items() if t == tenant and agent}

    def set(self, tenant: str, agent: str, policy: Policy | None, *, actor: str, subject: str) -> tuple[str, str]:
        """Set (or with None remove) the policy of `tenant` ("" for the tenant's own, else an agent's) and audit
        the change under `subject`; returns (old hash, new hash), "" for none. Setting the same policy is a no-op.
        """
        new_hash = policy.policy_hash if policy is not None else ""
        with self._catalog.transaction():
            rows = self._catalog.run(
                "SELECT policy_hash FROM risk_policies WHERE tenant = ? AND agent_id = ?", (tenant, agent)
            ).rows
            old_hash = rows[0][0] if rows else ""
            if old_hash == new_hash:
                return old_hash, new_hash
            if policy is None:
                self._catalog.run("DELETE FROM risk_policies WHERE tenant = ? AND agent_id = ?", (tenant, agent))
            else:
                self._catalog.run(
                    "INSERT INTO risk_policies (tenant, agent_id, policy, policy_hash, updated_at) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant, agent_id) DO UPDATE SET "
                    "policy = excluded.policy, policy_hash = excluded.policy_hash, updated_at = excluded.updated_at",
                    (tenant, agent, policy.model_dump_json(), new_hash, datetime.now(UTC).isoformat()),
                )
            self._catalog.run("UPDATE risk_generations SET value = value + 1 WHERE name = 'policies'")
            self._record(
                subject,
                {
                    "kind": "policy_change",
                    "actor": actor,
                    "policy_hash": new_hash or None,
                    "detail": {
                        "old_hash": old_hash or None,
                        "new_hash": new_hash or None,
                        "policy": policy.model_dump(mode="json") if policy is not None else None,
                    },
                },
            )
        self.load()
        return old_hash, new_hash


def policy_file(spec: str) -> tuple[str, str | None, Policy, str]:
    """(tenant, agent or None, policy, file name) from `[TENANT=]FILE`: the service default, or TENANT's policy;
    a file naming `agent_id` is that agent's."""
    tenant, _, path = spec.rpartition("=") if "=" in spec else (SERVICE_DEFAULT, "", spec)
    fields = load_policy_file(path)
    agent = fields.pop("agent_id", None)
    unknown = sorted(set(fields) - set(Policy.model_fields))
    if unknown:
        raise PolicyError(
            f"{path}: field(s) {', '.join(unknown)} cannot be set per policy in the service "
            f"(stores and models come from its settings); accepted: agent_id, {', '.join(Policy.model_fields)}"
        )
    if agent is not None and tenant == SERVICE_DEFAULT:
        raise PolicyError(f"{path} names agent_id {agent!r}: say whose agent it is with TENANT={path}")
    try:
        policy = Policy.build(**fields)
    except PolicyError as exc:
        raise PolicyError(f"{path}: {exc}") from None
    return tenant, agent, policy, Path(path).name
