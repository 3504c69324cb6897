"""API keys for the service: who is calling (tenant) and what they may do (role).

A key is `rk_<key id>_<secret>`: the id finds its row in one indexed read, the secret is 32 random bytes.
Only a per-key salt and SHA-256(salt ‖ secret) are stored, and the comparison takes constant time; since
the secret is random and long, a salted fast hash is as strong as a slow one and keeps every request cheap.
"""

from __future__ import annotations

import enum
import fnmatch
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from risk.catalog import Catalog

TENANT_PATTERN = re.compile(r"[a-z0-9_-]{1,64}")
_TOKEN = re.compile(r"rk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
# A revoked agent key stops working on every worker within this time. Only agent keys are cached: they make
# the checks, which must not wait on the catalog; a reviewer's, auditor's or admin's key is looked up at every
# request, so a revoked admin key cannot mint a new key on another worker in the meantime.
CACHE_SECONDS = 5.0


class Role(enum.StrEnum):
    """What a key may do; roles are not nested (see the README's role table)."""

    AGENT = "agent"
    REVIEWER = "reviewer"
    AUDITOR = "auditor"
    ADMIN = "admin"


def check_tenant(name: str) -> str:
    """`name` if it is a valid tenant name, else ValueError.

    >>> check_tenant("team-a"), check_tenant("ops_1")
    ('team-a', 'ops_1')
    """
    if not isinstance(name, str) or not TENANT_PATTERN.fullmatch(name):
        raise ValueError(f"tenant {name!r} must be 1-64 characters of a-z, 0-9, _ and -")
    return name


def check_agents(agents: list[str] | None, role: Role) -> tuple[str, ...] | None:
    """`agents` as a key stores them, if an agent key may be bound to them, else ValueError.

    >>> check_agents(["bot-1", "billing-*"], Role.AGENT)
    ('bot-1', 'billing-*')
    """
    if agents is None:
        return None
    if role is not Role.AGENT:
        raise ValueError(f"only agent keys are bound to agents; {role.value} keys act for no agent")
    if not agents or not all(isinstance(p, str) and 0 < len(p) <= 128 for p in agents):
        raise ValueError("agents must be one or more agent ids or patterns of 1-128 characters")
    return tuple(agents)


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    tenant: str
    role: Role
    created_at: str
    revoked_at: str | None = None
    note: str = ""
    # Agent ids an agent key may act as (fnmatch patterns, case-sensitive); None: any agent of its tenant.
    # Bound, a paused or terminated agent cannot go on under another agent id.
    agents: tuple[str, ...] | None = None

    def may_act_as(self, agent_id: str) -> bool:
        """Whether this key may send actions of `agent_id`.

        >>> key = ApiKey("0" * 16, "team-a", Role.AGENT, "", agents=("bot-1", "billing-*"))
        >>> key.may_act_as("billing-eu"), key.may_act_as("bot-2"), key.may_act_as("Billing-eu")
        (True, False, False)
        """
        return self.agents is None or any(fnmatch.fnmatchcase(agent_id, p) for p in self.agents)


@dataclass(frozen=True, slots=True)
class _Entry:
    key: ApiKey
    salt: bytes
    digest: bytes
    fetched: float


class KeyStore:
    """Creates, authenticates, lists and revokes keys in the catalog.

    >>> import tempfile
    >>> keys = KeyStore(Catalog(f"sqlite:///{tempfile.mkdtemp()}/catalog.db"))
    >>> key, token = keys.create("team-a", "reviewer")
    >>> wrong = token[:-1] + ("y" if token.endswith("x") else "x")
    >>> keys.authenticate(token) == key, keys.authenticate(wrong)
    (True, None)
    """

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog
        self._cache: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def create(
        self, tenant: str, role: Role | str, note: str = "", agents: list[str] | None = None
    ) -> tuple[ApiKey, str]:
        """A new key for `tenant` with `role`, and its token: shown once, never stored. `agents` binds an agent key
        to those agent ids (patterns); ValueError for another role or an empty list."""
        bound = check_agents(agents, Role(role))
        key = ApiKey(secrets.token_hex(8), check_tenant(tenant), Role(role), _now(), None, note, bound)
        secret = secrets.token_urlsafe(32)
        salt = secrets.token_bytes(16)
        self._catalog.run(
            "INSERT INTO risk_keys (key_id, tenant, role, salt, digest, created_at, note, agents) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (key.key_id, key.tenant, key.role.value, salt.hex(), _digest(salt, secret).hex(), key.created_at, note,
             None if bound is None else json.dumps(bound)),
        )  # fmt: skip
        return key, f"rk_{key.key_id}_{secret}"

    def authenticate(self, token: str) -> ApiKey | None:
        """The live key `token` belongs to, or None. Raises CatalogError if the catalog cannot be read."""
        known, key = self.cached(token)
        if known:
            return key
        key_id, secret = _split(token)
        entry = self._fetch(key_id)
        return None if entry is None else _verified(entry, secret)

    def cached(self, token: str) -> tuple[bool, ApiKey | None]:
        """Authenticate from memory alone: (True, the key or None) when memory can tell, (False, None) when only
        the catalog can (a key not looked up in the last CACHE_SECONDS, or not an agent key). Never does I/O."""
        match = _TOKEN.fullmatch(token)
        if match is None:
            return True, None
        key_id, secret = match.groups()
        entry = self._cache.get(key_id)
        if entry is None or entry.key.role is not Role.AGENT or time.monotonic() - entry.fetched > CACHE_SECONDS:
            return False, None
        return True, _verified(entry, secret)

    def list(self, tenant: str) -> list[ApiKey]:
        rows = self._catalog.run(f"SELECT {_FIELDS} FROM risk_keys WHERE tenant = ? ORDER BY created_at", (tenant,))
        return [_key(row) for row in rows.rows]

    def revoke(self, tenant: str, key_id: str) -> bool:
        """Revoke `tenant`'s key `key_id`; False if the tenant has no such live key."""
        changed = self._catalog.run(
            "UPDATE risk_keys SET revoked_at = ? WHERE key_id = ? AND tenant = ? AND revoked_at IS NULL",
            (_now(), key_id, tenant),
        ).rowcount
        with self._lock:
            self._cache.pop(key_id, None)
        return changed == 1

    def _fetch(self, key_id: str) -> _Entry | None:
        rows = self._catalog.run(f"SELECT {_FIELDS}, salt, digest FROM risk_keys WHERE key_id = ?", (key_id,)).rows
        if not rows:
            return None
        row = rows[0]
        entry = _Entry(_key(row), bytes.fromhex(row[-2]), bytes.fromhex(row[-1]), time.monotonic())
        with self._lock:
            self._cache[key_id] = entry
        return entry


_FIELDS = "key_id, tenant, role, created_at, revoked_at, note, agents"


def _split(token: str) -> tuple[str, str]:
    """(key id, secret) of a token `cached` found well-formed."""
    match = _TOKEN.fullmatch(token)
    if match is None:
        raise ValueError("not an API key")
    key_id, secret = match.groups()
    return key_id, secret


def _verified(entry: _Entry, secret: str) -> ApiKey | None:
    """The entry's key if `secret` is its secret and it is not revoked."""
    if not hmac.compare_digest(_digest(entry.salt, secret), entry.digest) or entry.key.revoked_at is not None:
        return None
    return entry.key


def _key(row: tuple[object, ...]) -> ApiKey:
    key_id, tenant, role, created_at, revoked_at, note, agents = row[:7]
    revoked = str(revoked_at) if revoked_at is not None else None
    bound = tuple(json.loads(str(agents))) if agents is not None else None
    return ApiKey(str(key_id), str(tenant), Role(str(role)), str(created_at), revoked, str(note), bound)


def _digest(salt: bytes, secret: str) -> bytes:
    return hashlib.sha256(salt + secret.encode()).digest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")
