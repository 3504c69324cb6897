"""The service's configuration, from the environment: where its stores are and how big a request may be."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from risk.scoring.model import DEFAULT_MODEL
from risk.tenants import DEFAULT_MAX_AGENTS

MIB = 1 << 20


@dataclass(frozen=True)
class Settings:
    """`RISK_HOME` (default `./.risk`), `RISK_DATABASE_URL` (audit trail, keys, policies; default SQLite files
    under RISK_HOME), `RISK_REDIS_URL` (kill-switch status, limits, approvals; default in process),
    `RISK_MAX_BODY_BYTES` (default 1 MiB), `RISK_MAX_AGENTS` (agent ids per tenant; default 10,000, 0 for no
    limit), `RISK_MODEL` (a model name or path, `none` for rules only; default
    the shipped model), `RISK_ONLINE=1` (also the streaming model), `RISK_POLICY_FILES` (`[TENANT=]FILE`
    entries separated by the path separator, applied at start).
    """

    home: Path = Path(".risk")
    database_url: str | None = None
    redis_url: str | None = None
    max_body_bytes: int = MIB
    max_agents: int | None = DEFAULT_MAX_AGENTS
    model: str | None = DEFAULT_MODEL
    online: bool = False
    policy_files: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        model = env.get("RISK_MODEL", DEFAULT_MODEL)
        files = env.get("RISK_POLICY_FILES", "")
        return cls(
            home=Path(env.get("RISK_HOME", ".risk")),
            database_url=env.get("RISK_DATABASE_URL") or None,
            redis_url=env.get("RISK_REDIS_URL") or None,
            max_body_bytes=int(env.get("RISK_MAX_BODY_BYTES", MIB)),
            max_agents=int(env.get("RISK_MAX_AGENTS", DEFAULT_MAX_AGENTS)) or None,
            model=None if model.lower() in ("", "none") else model,
            online=env.get("RISK_ONLINE", "") in ("1", "true", "yes"),
            policy_files=tuple(f for f in files.split(os.pathsep) if f),
        )

    @property
    def audit_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'audit.db'}"

    @property
    def catalog_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'catalog.db'}"

    @property
    def state_url(self) -> str:
        return self.redis_url or "memory://"
