"""Reading and tampering with the SQLite audit file directly, without the library, as the audit tests do.

The file holds one row per record in the table `audit`: `seq`, a few indexed columns (ts, agent_id, kind, outcome,
action_id), `body` (the exact hashed canonical JSON text of the record's fields but `hash`) and `hash`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

from risk.audit.record import AuditRecord

DEFAULTS: dict[str, Any] = {
    f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    for f in dataclasses.fields(AuditRecord)
    if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
}


def spec_canonical(value: Any) -> bytes:
    """Canonical JSON written from the specification, independently of risk.audit.record."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def spec_hash(prev_hash: str, text: bytes) -> str:
    """hash = SHA-256(0x01 || prev_hash || SHA-256(0x00 || canonical JSON of the fields but `hash`))."""
    leaf = hashlib.sha256(b"\x00" + text).digest()
    return hashlib.sha256(b"\x01" + bytes.fromhex(prev_hash) + leaf).hexdigest()


def stored_row(conn: sqlite3.Connection, seq: int) -> dict[str, Any]:
    cursor = conn.execute("SELECT * FROM audit WHERE seq = ?", (seq,))
    return dict(zip([d[0] for d in cursor.description], cursor.fetchone(), strict=True))


def stored_rows(path: Path) -> list[dict[str, Any]]:
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        cursor = conn.execute("SELECT * FROM audit ORDER BY seq")
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, values, strict=True)) for values in cursor]


def decode(row: dict[str, Any]) -> dict[str, Any]:
    """The record's fields exactly as hashed, plus `hash`."""
    return {**json.loads(row["body"]), "hash": row["hash"]}


def hashed_text(row: dict[str, Any]) -> bytes:
    return str(row["body"]).encode()


def raw_rows(path: Path) -> list[dict[str, Any]]:
    """Every record in the file, decoded without the library, fields left out of the record at their defaults."""
    return [{**DEFAULTS, **decode(row)} for row in stored_rows(path)]


def edit(conn: sqlite3.Connection, seq: int, **changes: Any) -> None:
    """Change fields of one record consistently: in its hashed text (all but `hash`) and in its columns."""
    row = stored_row(conn, seq)
    fields = json.loads(row["body"])
    fields.update({k: v for k, v in changes.items() if k != "hash"})
    sets: dict[str, Any] = {"body": spec_canonical(fields).decode()}
    sets.update({k: v for k, v in changes.items() if k in row and k != "body"})
    assignments = ", ".join(f"{column} = ?" for column in sets)
    conn.execute(f"UPDATE audit SET {assignments} WHERE seq = ?", (*sets.values(), seq))


def recompute_hash(conn: sqlite3.Connection, seq: int) -> str:
    """What an attacker does after editing a record: recompute its own hash from its text and its prev_hash."""
    row = stored_row(conn, seq)
    new_hash = spec_hash(decode(row)["prev_hash"], hashed_text(row))
    conn.execute("UPDATE audit SET hash = ? WHERE seq = ?", (new_hash, seq))
    return new_hash
