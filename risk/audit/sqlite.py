"""The embedded audit store: one SQLite file in WAL mode.

`sqlite:///path.db` (relative) or `sqlite:////abs/path.db`; `?timeout=S` is how long an append waits for
another process's write lock before it fails (and the action is denied), 5 s by default. Commits use
`synchronous=NORMAL` by default: a record survives the process crashing the instant after `append`
returns, and a power loss may lose the last few commits. `?synchronous=FULL` fsyncs every record, for
the cost of a disk flush per action.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from risk.audit.record import FIELDS, GENESIS_HASH, JSON_FIELDS, AuditRecord, seal
from risk.audit.store import AuditQuery, Head
from risk.errors import AuditError

_COLUMNS = ", ".join(FIELDS)
_PLACEHOLDERS = ", ".join("?" for _ in FIELDS)
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS audit (
    {", ".join(("seq INTEGER PRIMARY KEY" if f == "seq" else f) for f in FIELDS)}
);
CREATE INDEX IF NOT EXISTS audit_agent_ts ON audit (agent_id, ts);
"""
# One index only: each one costs about a third more per append on the hot path. Queries without an
# agent scan in sequence order, which is time order.


def _parse_url(url: str) -> tuple[str, str, float]:
    """The file, the synchronous level and the lock timeout (seconds) named by a sqlite:/// URL."""
    path = url[len("sqlite:///") :].split("?", 1)[0] if url.startswith("sqlite:///") else ""
    if not path:
        raise ValueError(f"audit URL {url!r} names no file; use sqlite:///relative.db or sqlite:////abs/path.db")
    options = parse_qs(urlsplit(url).query)
    synchronous = options.get("synchronous", ["NORMAL"])[0].upper()
    if synchronous not in ("NORMAL", "FULL", "EXTRA"):
        raise ValueError(f"synchronous must be NORMAL, FULL or EXTRA, got {synchronous!r}")
    try:
        timeout = float(options.get("timeout", ["5"])[0])
    except ValueError:
        raise ValueError(f"timeout must be a number of seconds, in {url!r}") from None
    return path, synchronous, timeout


class SQLiteAuditStore:
    """Append-only, hash-chained audit records in SQLite. Safe for threads and for several processes.

    >>> import tempfile, os
    >>> store = SQLiteAuditStore("sqlite:///" + os.path.join(tempfile.mkdtemp(), "a.db"))
    >>> rec = store.append({"record_id": "r1", "ts": "2026-01-01T00:00:00+00:00", "kind": "decision", "agent_id": "a"})
    >>> rec.seq, store.head().count
    (1, 1)
    """

    def __init__(self, url: str) -> None:
        self.url = url
        path, synchronous, timeout = _parse_url(url)
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=timeout)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(f"PRAGMA synchronous={synchronous}")
            self._conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise AuditError(f"cannot open audit store {url}: {exc}") from exc

    def append(self, body: dict[str, Any]) -> AuditRecord:
        with self._lock:
            conn = self._conn
            try:
                # IMMEDIATE takes the write lock before reading the head, so two processes cannot fork the chain.
                conn.execute("BEGIN IMMEDIATE")
                try:
                    row = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
                    seq, prev = (row[0] + 1, row[1]) if row else (1, GENESIS_HASH)
                    record = seal(body, seq, prev)
                    conn.execute(f"INSERT INTO audit ({_COLUMNS}) VALUES ({_PLACEHOLDERS})", _to_row(record))
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise AuditError(f"audit record not written to {self.url}: {exc}") from exc
            return record

    def records(self, after_seq: int = 0) -> Iterator[AuditRecord]:
        sql = f"SELECT {_COLUMNS} FROM audit WHERE seq > ? ORDER BY seq LIMIT 1000"
        while page := self._read(sql, (after_seq,)):
            for row in page:
                yield _from_row(row)
            after_seq = page[-1][0]

    def query(self, query: AuditQuery) -> list[AuditRecord]:
        clauses, params = [], []
        for column, value in (("agent_id", query.agent_id), ("outcome", query.outcome), ("kind", query.kind)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if query.since is not None:
            clauses.append("ts >= ?")
            params.append(query.since)
        if query.until is not None:
            clauses.append("ts < ?")
            params.append(query.until)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT {_COLUMNS} FROM audit {where} ORDER BY seq LIMIT ? OFFSET ?"
        return [_from_row(row) for row in self._read(sql, (*params, query.limit, query.offset))]

    def head(self) -> Head:
        count, seq = self._read("SELECT COUNT(*), MAX(seq) FROM audit", ())[0]
        last = self._read("SELECT hash FROM audit WHERE seq = ?", (seq or 0,))
        return Head(count=count, seq=seq or 0, hash=last[0][0] if last else GENESIS_HASH)

    def first_seq_at_or_after(self, ts: str) -> int | None:
        value = self._read("SELECT MIN(seq) FROM audit WHERE ts >= ?", (ts,))[0][0]
        return int(value) if value is not None else None

    def delete_through(self, seq: int) -> int:
        with self._lock:
            try:
                return self._conn.execute("DELETE FROM audit WHERE seq <= ?", (seq,)).rowcount
            except sqlite3.Error as exc:
                raise AuditError(f"purge failed on {self.url}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _read(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise AuditError(f"cannot read audit store {self.url}: {exc}") from exc


def _to_row(record: AuditRecord) -> tuple[Any, ...]:
    return tuple(
        json.dumps(getattr(record, f), sort_keys=True, default=str) if f in JSON_FIELDS else getattr(record, f)
        for f in FIELDS
    )


def _from_row(row: tuple[Any, ...]) -> AuditRecord:
    values = {f: (json.loads(v) if f in JSON_FIELDS and v is not None else v) for f, v in zip(FIELDS, row, strict=True)}
    return AuditRecord(**values)
