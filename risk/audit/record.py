"""One audit record and the hash chain that links it to the one before.

Hashing follows RFC 6962's domain separation: a record's leaf hash is SHA-256(0x00 || canonical JSON of its
fields) and its chain hash is SHA-256(0x01 || previous chain hash || leaf hash). Editing any field, deleting
or reordering records changes every later chain hash; cutting records off the end is caught by comparing
the head against one kept elsewhere (`risk audit head`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import MISSING, dataclass, field
from typing import Any

GENESIS_HASH = "0" * 64

# Record kinds: a decision on an action, the outcome the tool reported, a kill-switch transition,
# one rollback step, a policy change, and a retention purge.
KINDS = ("decision", "outcome", "killswitch", "rollback", "policy", "retention")


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """A single, immutable line of the audit trail. `seq` starts at 1 and has no gaps."""

    seq: int
    record_id: str
    ts: str
    kind: str
    agent_id: str
    session_id: str | None = None
    action_id: str | None = None
    action_type: str | None = None
    resource: str | None = None
    resource_normalized: str | None = None
    payload_digest: str | None = None
    payload: Any = None
    risk_score: float | None = None
    reasons: list[dict[str, Any]] = field(default_factory=list)
    decision: str | None = None
    outcome: str | None = None
    mode: str | None = None
    policy_hash: str | None = None
    model_version: str | None = None
    actor: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    prev_hash: str = GENESIS_HASH
    hash: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in FIELDS}

    def hashed_fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in HASHED_FIELDS}


FIELDS: tuple[str, ...] = tuple(AuditRecord.__dataclass_fields__)
HASHED_FIELDS: tuple[str, ...] = tuple(name for name in FIELDS if name != "hash")
JSON_FIELDS = frozenset({"payload", "reasons", "detail"})


def canonical_json(value: Any) -> bytes:
    """Deterministic JSON: sorted keys, no whitespace, UTF-8. Non-JSON values become their string form."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def chain_hash(prev_hash: str, body: dict[str, Any]) -> str:
    """The chain hash of a record whose fields (without `hash`) are `body`."""
    leaf = hashlib.sha256(b"\x00" + canonical_json(body)).digest()
    return hashlib.sha256(b"\x01" + bytes.fromhex(prev_hash) + leaf).hexdigest()


def seal(body: dict[str, Any], seq: int, prev_hash: str) -> AuditRecord:
    """Give `body` (some of the record's fields) its place in the chain: sequence number, previous hash
    and its own hash, computed over every field so that a default left out here is hashed too."""
    unknown = body.keys() - _DEFAULTS.keys()
    if unknown:
        raise ValueError(f"unknown audit fields: {sorted(unknown)}")
    full = {**_DEFAULTS, "reasons": [], "detail": {}, **body, "seq": seq, "prev_hash": prev_hash}
    return AuditRecord(**full, hash=chain_hash(prev_hash, full))


def payload_digest(payload: Any) -> str:
    return hashlib.sha256(canonical_json(payload)).hexdigest()


_DEFAULTS: dict[str, Any] = {
    name: (f.default if f.default is not MISSING else None)
    for name, f in AuditRecord.__dataclass_fields__.items()
    if name not in ("seq", "prev_hash", "hash")
}
