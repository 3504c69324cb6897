"""The audit store protocol, its URL dispatch, and the operations built on any store (verify, purge)."""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, cast, runtime_checkable

from risk.audit.chain import Verification, verify_chain
from risk.audit.record import GENESIS_HASH, AuditRecord, Sealed, StoredRecord, seal
from risk.errors import AuditError, AuditRecordError, RetentionError

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


StoreAll = Callable[[list[tuple[Sealed, dict[str, Any]]]], bool]


@dataclass(slots=True)
class _Waiting:
    """One append in a group: its body, and once the group is stored, its sealed record or its error."""

    body: dict[str, Any]
    result: Sealed | AuditError | None = None


class ChainAppender:
    """Optimistic, grouped appends to a chain whose `seq` is the table's primary key.

    Appends that arrive while another is being stored wait and then go together: one thread seals them in
    order onto the cached head and stores them in one transaction, so a group pays one commit (on PostgreSQL a
    flush of its write-ahead log, about a millisecond) instead of one per record. Each append returns once its
    own record is committed, so a record is as durable on return as before; a lone append is one statement.

    If another writer (a thread of another store, another process) took one of the group's seqs first, the
    transaction is refused whole, the head is re-read and the group sealed again. A loser needs two round trips
    to the winner's one, so against a writer in a tight loop it can lose hundreds of times running (measured):
    a short random pause breaks the lockstep, and a time budget bounds the whole.

    `read_head` returns (seq, hash) of the last record; `insert` stores sealed records (with their bodies) all
    or none and says whether it could take their seqs. Both raise AuditError for anything else, which fails
    every append of the group and forgets the cached head; AuditRecordError (a record the store cannot hold)
    has the group's records stored one by one instead, so that only that one fails.
    """

    def __init__(self, read_head: Callable[[], tuple[int, str]], insert: StoreAll, budget: float) -> None:
        self._read_head = read_head
        self._insert = insert
        self._budget = budget
        self._head: tuple[int, str] | None = None
        self._turn = threading.Condition()
        self._waiting: list[_Waiting] = []
        self._storing = False

    def append(self, body: dict[str, Any], where: str) -> Sealed:
        (result,) = self.append_many([body], where)
        if isinstance(result, AuditError):
            raise result
        return result

    def append_many(self, bodies: list[dict[str, Any]], where: str) -> list[Sealed | AuditError]:
        """Seal and store `bodies` in order, in one group (one transaction unless a record fails alone); each
        one's sealed record or its error."""
        mine = [_Waiting(body) for body in bodies]
        with self._turn:
            self._waiting.extend(mine)
            while mine[-1].result is None:  # a group is answered whole, and ours went into groups in order
                if self._storing:
                    self._turn.wait()
                    continue
                self._storing = True
                group, self._waiting = self._waiting, []
                self._turn.release()
                try:
                    self._store(group, where)
                finally:
                    for waiting in group:  # only an exception escaping _store leaves one unanswered
                        if waiting.result is None:
                            waiting.result = AuditError(f"audit record not written to {where}: interrupted")
                    self._turn.acquire()
                    self._storing = False
                    self._turn.notify_all()
        results = [waiting.result for waiting in mine]
        assert None not in results, "a group is answered whole"
        return cast(list[Sealed | AuditError], results)

    def _store(self, group: list[_Waiting], where: str) -> None:
        """Seal and store `group` in order, answering each of its appends."""
        deadline = time.monotonic() + self._budget
        collisions = 0
        while True:
            try:
                if self._head is None:
                    self._head = self._read_head()
                sealed = self._seal(group, self._head, where)
                if not sealed:
                    return
                inserted = self._insert([(record, waiting.body) for waiting, record in sealed])
            except AuditError as exc:
                self._head = None
                unanswered = [waiting for waiting in group if waiting.result is None]
                if isinstance(exc, AuditRecordError) and len(unanswered) > 1:  # one bad record fails alone
                    for waiting in unanswered:
                        self._store([waiting], where)
                    return
                for waiting in unanswered:
                    waiting.result = type(exc)(str(exc))
                return
            if inserted:
                last = sealed[-1][1]
                self._head = (last.seq, last.hash)
                for waiting, record in sealed:
                    waiting.result = record
                return
            self._head = None
            collisions += 1
            if time.monotonic() >= deadline:
                busy = f"other writers kept it busy for {self._budget:g} s"
                for waiting, _ in sealed:
                    waiting.result = AuditError(f"audit record not written to {where}: {busy}")
                return
            if collisions > 1:
                time.sleep(random.uniform(0, 0.0001 * min(collisions, 100)))

    @staticmethod
    def _seal(group: list[_Waiting], head: tuple[int, str], where: str) -> list[tuple[_Waiting, Sealed]]:
        """The group's unanswered records chained onto `head`; one that cannot be sealed fails alone."""
        seq, prev = head
        sealed = []
        for waiting in group:
            if waiting.result is not None:
                continue
            try:
                record = seal(waiting.body, seq + 1, prev)
            except (ValueError, TypeError) as exc:
                waiting.result = AuditError(f"audit record not written to {where}: {exc}")
                continue
            sealed.append((waiting, record))
            seq, prev = record.seq, record.hash
        return sealed


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


@runtime_checkable  # so a Guard can refuse a value that is not a store (a list has an append too)
class AuditStore(Protocol):
    url: str

    def append(self, body: dict[str, Any]) -> Sealed:
        """Seal `body` into the chain and store it before returning; raise AuditError if it can't."""
        ...

    def append_many(self, bodies: list[dict[str, Any]]) -> list[Sealed | AuditError]:
        """Seal `bodies` into the chain in order and store them together (one commit); each one's record, or
        the AuditError that kept it out. A record the store cannot hold fails alone."""
        ...

    def stored(self, after_seq: int | None = None) -> Iterator[StoredRecord]:
        """Every row as stored, in sequence order, starting after `after_seq` (None: every row, whatever its seq,
        so that verification sees a row someone put before the chain's start)."""
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


def records(store: AuditStore, after_seq: int | None = None) -> Iterator[AuditRecord]:
    """Every record in `store`, decoded, in sequence order."""
    return (stored.record() for stored in store.stored(after_seq))


def verify_store(store: AuditStore, expected_head: str | None = None) -> Verification:
    """Verify every row in `store`: the chain from seq 1, or from just after the last retention purge.

    Every stored row is read, whatever its seq: a row before the chain's start fails verification, as queries
    would show it. A chain that starts after seq 1 starts from the hash its first record claims to follow, and
    passes only if the retention record of the purge that removed the records before it (naming that seq and
    that hash) is itself one of the verified records after them.
    """
    # The head first: every row stored by then has a seq up to its seq (later ones come after it), so the rows
    # read up to it must number its count, or some were never read: rows sharing a seq (a table that lost its
    # key) are paged past, and one of them could hold what queries show and the chain does not.
    head = store.head()
    upto_head = 0

    def counted(rows: Iterator[StoredRecord]) -> Iterator[StoredRecord]:
        nonlocal upto_head
        for row in rows:
            upto_head += row.seq <= head.seq
            yield row

    first = next(store.stored(), None)
    anchor, first_seq = GENESIS_HASH, 1
    if first is not None and first.seq > 1:  # after a purge: from the hash the first record claims to follow
        try:
            claimed = json.loads(first.text).get("prev_hash")
        except (TypeError, ValueError, RecursionError, AttributeError):  # the chain names the edit at its seq
            claimed = None
        anchor, first_seq = (claimed if isinstance(claimed, str) else ""), first.seq
    result = verify_chain(counted(store.stored()), anchor_hash=anchor, first_seq=first_seq, expected_head=expected_head)
    if result.ok and upto_head != head.count:
        return Verification(
            False, result.count, result.head_hash, None,
            f"the trail holds {head.count} rows up to seq {head.seq} but {upto_head} were read in order: rows "
            "share a seq (the table's key on seq was removed), and one the chain never reached may be shown by "
            "queries",
        )  # fmt: skip
    return result


def purge(store: AuditStore, before: datetime, *, retention: timedelta = DEFAULT_RETENTION, actor: str = "cli") -> int:
    """Delete records older than `before`, refusing if that reaches into the retention period.

    The purge leaves a `retention` record in the chain naming the last deleted record's hash, so the
    remaining chain still verifies from that anchor.
    """
    now = datetime.now(UTC)
    before = (before if before.tzinfo else before.replace(tzinfo=UTC)).astimezone(UTC)
    checked = verify_store(store)  # the purge record vouches for what it removes: a trail that fails, never
    if not checked.ok:
        raise RetentionError(
            f"refusing to purge a trail that does not verify (at seq {checked.first_bad_seq}: {checked.problem}); "
            "a purge would remove the evidence"
        )
    if before > now - retention:
        keep_until = (now - retention).date().isoformat()
        raise RetentionError(
            f"refusing to purge records younger than the retention period ({retention.days} days): "
            f"choose a date on or before {keep_until}"
        )
    # The head first: a record appended after it is read is never deleted, whether or not the boundary sees it.
    head = store.head()
    boundary = store.first_seq_at_or_after(before.isoformat(timespec="microseconds"))
    last = head.seq if boundary is None else min(boundary - 1, head.seq)
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
