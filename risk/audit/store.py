"""The audit store protocol, its URL dispatch, and the operations built on any store (verify, purge)."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from risk.audit.chain import Verification, verify_chain
from risk.audit.record import GENESIS_HASH, AuditRecord, Sealed, StoredRecord, seal
from risk.errors import AuditError, RetentionError

# HIPAA asks that compliance documentation be kept six years (45 CFR 164.316(b)(2)).
DEFAULT_RETENTION = timedelta(days=6 * 365 + 2)


@dataclass(frozen=True, slots=True)
class AuditQuery:
    agent_id: str | None = None
    since: str | None = None
    until: str | None = None
    outcome: str | None = None
    kind: str | None = None
    limit: int = 100
    offset: int = 0
    agent_prefix: str | None = None  # only agents whose id starts with this (a tenant's namespace)
    after_seq: int = 0  # only records after this one: keyset pagination
    action_id: str | None = None
    newest_first: bool = False


class ChainAppender:
    """Optimistic appends to a chain whose `seq` is the table's primary key.

    The next record is sealed onto the cached head and inserted in one statement; if another writer (a thread
    of another store, another process) took that seq first, the insert is refused, and the head is re-read
    and the record chained onto it. A loser needs two round trips to the winner's one, so against a writer in
    a tight loop it can lose hundreds of times running (measured): a short random pause breaks the lockstep,
    and a time budget bounds the whole.

    `read_head` returns (seq, hash) of the last record; `insert` stores a sealed record and says whether it
    took its seq. Both raise AuditError for anything else, which forgets the cached head.
    """

    def __init__(
        self, read_head: Callable[[], tuple[int, str]], insert: Callable[[Sealed, dict[str, Any]], bool], budget: float
    ) -> None:
        self._read_head = read_head
        self._insert = insert
        self._budget = budget
        self._head: tuple[int, str] | None = None

    def append(self, body: dict[str, Any], where: str) -> Sealed:
        deadline = time.monotonic() + self._budget
        collisions = 0
        while True:
            try:
                if self._head is None:
                    self._head = self._read_head()
                try:
                    sealed = seal(body, self._head[0] + 1, self._head[1])
                except (ValueError, TypeError) as exc:
                    raise AuditError(f"audit record not written to {where}: {exc}") from exc
                inserted = self._insert(sealed, body)
            except AuditError:
                self._head = None
                raise
            if inserted:
                self._head = (sealed.seq, sealed.hash)
                return sealed
            self._head = None
            collisions += 1
            if time.monotonic() >= deadline:
                busy = f"other writers kept it busy for {self._budget:g} s"
                raise AuditError(f"audit record not written to {where}: {busy}")
            if collisions > 1:
                time.sleep(random.uniform(0, 0.0001 * min(collisions, 100)))


def where_clause(query: AuditQuery, placeholder: str) -> tuple[str, list[Any]]:
    """The SQL WHERE (if any) and ORDER BY clauses and their parameters for `query`, with the driver's placeholder."""
    clauses: list[str] = []
    params: list[Any] = []
    filters = (
        ("agent_id", query.agent_id),
        ("outcome", query.outcome),
        ("kind", query.kind),
        ("action_id", query.action_id),
    )
    for column, value in filters:
        if value is not None:
            clauses.append(f"{column} = {placeholder}")
            params.append(value)
    if query.since is not None:
        clauses.append(f"ts >= {placeholder}")
        params.append(query.since)
    if query.until is not None:
        clauses.append(f"ts < {placeholder}")
        params.append(query.until)
    if query.agent_prefix:
        # A range rather than LIKE: it uses the agent index and needs no escaping of % and _ in the prefix.
        clauses.append(f"agent_id >= {placeholder} AND agent_id < {placeholder}")
        params += [query.agent_prefix, query.agent_prefix[:-1] + chr(ord(query.agent_prefix[-1]) + 1)]
    if query.after_seq:
        clauses.append(f"seq > {placeholder}")
        params.append(query.after_seq)
    order = "ORDER BY seq DESC" if query.newest_first else "ORDER BY seq"
    return (f"WHERE {' AND '.join(clauses)} {order}" if clauses else order), params


@dataclass(frozen=True, slots=True)
class Head:
    count: int
    seq: int
    hash: str


class AuditStore(Protocol):
    url: str

    def append(self, body: dict[str, Any]) -> Sealed:
        """Seal `body` into the chain and store it before returning; raise AuditError if it can't."""
        ...

    def stored(self, after_seq: int = 0) -> Iterator[StoredRecord]:
        """Every record as stored, in sequence order, starting after `after_seq`."""
        ...

    def query(self, query: AuditQuery) -> list[AuditRecord]: ...

    def head(self) -> Head: ...

    def delete_through(self, seq: int) -> int:
        """Delete records with sequence number <= `seq`; only `purge` calls this."""
        ...

    def first_seq_at_or_after(self, ts: str) -> int | None: ...

    def close(self) -> None: ...


def default_home() -> Path:
    return Path(os.environ.get("RISK_HOME", ".risk"))


def default_audit_url() -> str:
    return f"sqlite:///{default_home() / 'audit.db'}"


def open_audit(url: str | None = None, *, create: bool = True) -> AuditStore:
    """The audit store named by `url` (`sqlite:///path.db`, `postgresql://...`); `None` means SQLite under
    `$RISK_HOME`.
    With `create=False`, a store that does not exist yet is an AuditError instead of a new empty one."""
    url = url or os.environ.get("RISK_AUDIT_URL") or default_audit_url()
    if url.startswith("sqlite://"):
        from risk.audit.sqlite import SQLiteAuditStore

        return SQLiteAuditStore(url, create=create)
    if url.startswith(("postgresql://", "postgres://")):
        from risk.audit.postgres import PostgresAuditStore

        return PostgresAuditStore(url, create=create)
    raise ValueError(
        f"unsupported audit store URL {url!r}; use sqlite:///path/to/audit.db or postgresql://user@host/database"
    )


def utc_time(value: str) -> str:
    """An ISO date or time as the audit trail's UTC timestamps are written, for range filters.

    >>> utc_time("2026-03-02")
    '2026-03-02T00:00:00.000000+00:00'
    """
    try:
        parsed = datetime.fromisoformat(value)
        parsed = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: a UTC offset that pushes year 1 or 9999 out of range
        raise ValueError(
            f"{value!r} is not an ISO date or time such as 2026-03-02 or 2026-03-02T09:00:00+00:00"
        ) from None
    return parsed.isoformat(timespec="microseconds")


def records(store: AuditStore, after_seq: int = 0) -> Iterator[AuditRecord]:
    """Every record in `store`, decoded, in sequence order."""
    return (stored.record() for stored in store.stored(after_seq))


def verify_store(store: AuditStore, expected_head: str | None = None) -> Verification:
    """Verify the whole chain in `store`, starting after the last retention purge if there was one."""
    first = next(store.stored(), None)
    anchor, first_seq = GENESIS_HASH, 1
    if first is not None and first.seq != 1:
        purges = store.query(AuditQuery(kind="retention", limit=1_000_000))
        match = next((p for p in purges if p.detail.get("purged_through_seq") == first.seq - 1), None)
        if match is None:
            return Verification(False, 0, GENESIS_HASH, 1, f"records 1..{first.seq - 1} are missing with no purge")
        anchor, first_seq = str(match.detail["anchor_hash"]), first.seq
    return verify_chain(store.stored(), anchor_hash=anchor, first_seq=first_seq, expected_head=expected_head)


def purge(store: AuditStore, before: datetime, *, retention: timedelta = DEFAULT_RETENTION, actor: str = "cli") -> int:
    """Delete records older than `before`, refusing if that reaches into the retention period.

    The purge leaves a `retention` record in the chain naming the last deleted record's hash, so the
    remaining chain still verifies from that anchor.
    """
    now = datetime.now(UTC)
    before = (before if before.tzinfo else before.replace(tzinfo=UTC)).astimezone(UTC)
    if before > now - retention:
        keep_until = (now - retention).date().isoformat()
        raise RetentionError(
            f"refusing to purge records younger than the retention period ({retention.days} days): "
            f"choose a date on or before {keep_until}"
        )
    boundary = store.first_seq_at_or_after(before.isoformat(timespec="microseconds"))
    head = store.head()
    last = (boundary - 1) if boundary is not None else head.seq
    first = next(store.stored(), None)
    if first is None or last < first.seq:
        return 0
    anchor = next(store.stored(after_seq=last - 1))
    store.append(
        {
            "record_id": os.urandom(16).hex(),
            "ts": now.isoformat(timespec="microseconds"),
            "kind": "retention",
            "agent_id": "*",
            "actor": actor,
            "detail": {
                "purged_through_seq": last,
                "anchor_hash": anchor.hash,
                "before": before.isoformat(timespec="microseconds"),
            },
        }
    )
    return store.delete_through(last)
