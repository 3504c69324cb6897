"""One audit record and the hash chain that links it to the one before.

A record is stored as the exact canonical JSON text that was hashed, next to a few columns copied out of
it for queries. Hashing follows RFC 6962's domain separation: the leaf hash is SHA-256(0x00 || text) and
the chain hash is SHA-256(0x01 || previous chain hash || leaf hash). The text carries its own `seq` and
`prev_hash`, so editing a field, deleting or reordering records changes every later chain hash; cutting
records off the end is caught by comparing the head against one kept elsewhere (`risk audit head`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

GENESIS_HASH = "0" * 64


# Copied out of the hashed text into columns of their own, for queries; verification checks they agree.
INDEXED = ("ts", "agent_id", "kind", "outcome", "action_id")
# A record as every store's table holds it: its place in the chain, the indexed columns, the text and its hash.
COLUMNS = ("seq", *INDEXED, "body", "hash")


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """A single, immutable line of the audit trail. `seq` starts at 1 and has no gaps.

    `kind` is one of: decision (on an action), outcome (what its tool reported), killswitch (a transition),
    rollback (one undo step), policy (the policy a guard started with) and retention (a purge).
    """

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
    task_digest: str | None = None  # SHA-256 of the check's task (its UTF-8), when it had one
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


FIELDS: tuple[str, ...] = tuple(AuditRecord.__dataclass_fields__)
_BODY_FIELDS = frozenset(FIELDS) - {"seq", "prev_hash", "hash"}


class Sealed(NamedTuple):
    """A record ready to store: its place in the chain, the exact hashed text, and its chain hash."""

    seq: int
    text: str
    hash: str

    def row(self, body: dict[str, Any]) -> tuple[Any, ...]:
        """The values of COLUMNS for this record, whose fields are `body`."""
        return (self.seq, *(body.get(c) for c in INDEXED), self.text, self.hash)


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A record as a store returns it: the hashed text, its stored hash, and the indexed columns."""

    seq: int
    text: str
    hash: str
    columns: dict[str, Any]

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> StoredRecord:
        """The record a table row of COLUMNS holds."""
        return cls(seq=row[0], text=row[-2], hash=row[-1], columns=dict(zip(INDEXED, row[1:-2], strict=True)))

    def record(self) -> AuditRecord:
        return AuditRecord(**json.loads(self.text), hash=self.hash)


_ORJSON_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS


def canonical_json(value: Any) -> bytes:
    """Deterministic UTF-8 JSON: sorted keys, no whitespace; values JSON lacks become their string form (NaN and
    ±Infinity the strings "NaN", "Infinity" and "-Infinity", not null).

    orjson keeps this off the hot path's bill (a tenth of the standard encoder's time); what it refuses
    (integers beyond 64 bits, unpaired surrogates) takes the standard encoder.

    >>> canonical_json({"b": 1, "a": [None, 0.5, "é"]}).decode()
    '{"a":[null,0.5,"é"],"b":1}'
    """
    try:
        out = orjson.dumps(value, default=str, option=_ORJSON_OPTIONS)
        # orjson writes NaN and ±Infinity as null, which would give them None's digest: they are written as the
        # strings "NaN", "Infinity" and "-Infinity" instead. Only a text with a null can hold one.
        if b"null" in out and _may_hold_non_finite(value):
            return orjson.dumps(_finite(value), default=str, option=_ORJSON_OPTIONS)
        return out
    except TypeError:
        text = json.dumps(_finite(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
        # An unpaired surrogate cannot be UTF-8; its backslash escape is the same JSON string, and valid.
        return text.encode("utf-8", "backslashreplace")


def _may_hold_non_finite(value: Any) -> bool:
    """Whether a null in `value`'s JSON may stand for a NaN or infinity. An audit record's nulls are nearly all
    its unset fields: one more dump without them is a few µs, where walking every value is tens."""
    if not isinstance(value, dict):
        return True
    rest = {k: v for k, v in value.items() if v is not None}
    return b"null" in orjson.dumps(rest, default=str, option=_ORJSON_OPTIONS)


def _finite(value: Any) -> Any:
    """`value` with each NaN or infinite float in its dicts and lists replaced by "NaN", "Infinity" or "-Infinity",
    and each key as text, as orjson writes it (keys of mixed types cannot be sorted, a tuple key not written)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {_key_text(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _key_text(key: Any) -> str:
    """A dict key as orjson writes it (null, true, 12, 1.5), or its text."""
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, bool | float):
        return orjson.dumps(key).decode()
    return str(key)  # an int of any size, a tuple, a Decimal


def chain_hash(prev_hash: str, text: bytes) -> str:
    """The chain hash of the record whose hashed text is `text`."""
    leaf = hashlib.sha256(b"\x00" + text).digest()
    return hashlib.sha256(b"\x01" + bytes.fromhex(prev_hash) + leaf).hexdigest()


def seal(body: dict[str, Any], seq: int, prev_hash: str) -> Sealed:
    """Give `body` (the record's fields but seq, prev_hash and hash) its place in the chain."""
    unknown = body.keys() - _BODY_FIELDS
    if unknown:
        raise ValueError(f"unknown audit fields: {sorted(unknown)}")
    text = canonical_json({**body, "seq": seq, "prev_hash": prev_hash})
    return Sealed(seq, text.decode(), chain_hash(prev_hash, text))
