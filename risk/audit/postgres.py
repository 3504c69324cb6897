"""The shared audit store: one PostgreSQL table, for agents on several hosts writing one chain.

`postgresql://user@host:5432/db` (or `postgres://...`); every libpq URL parameter works, for example
`?options=-csearch_path%3Dmy_schema` to keep the tables in a schema of their own, or `sslmode=require`.
An append waits at most 5 s for a lock another session holds before it fails (and the action is denied),
unless the URL, the role or the database sets `lock_timeout` itself (`options=-clock_timeout%3D2s`); a
connection attempt gives up after 10 s unless the URL sets `connect_timeout`, a server gone silent is
noticed within about 10 s (TCP keepalives, `tcp_user_timeout`) unless the URL sets those, and a statement
left unanswered by a server that stalls with its connection up fails after 15 s, or the server's own
`statement_timeout` and 5 s more (see `ConnectionWatch`).

Records go in `risk_audit` with the same layout as the SQLite store: the exact hashed text (`body`), its
chain hash, and a few columns copied out for queries. Appends are optimistic, as in SQLite (see
`ChainAppender`): the store keeps the head it last wrote or read, inserts the next records at head + 1 on in
one statement (the appends its threads made while the previous commit ran, in one transaction), and if
another writer took one of those `seq`s first (the primary key) rolls back, re-reads the head and seals
again. Nothing holds a lock across the round trips, so writers on many hosts only wait for each other on a
real collision. A record is durable once `append` returns, as far as the server's `synchronous_commit` (on
by default) makes it.

The schema is versioned by a short list of SQL migrations and a `risk_schema_version` table, applied in
one transaction under a PostgreSQL advisory lock, so processes starting at once neither race nor apply a
migration twice. Alembic would be a heavy dependency for one table; the list below is all it takes. Never
edit a migration once released: append a new one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

from risk.audit.record import COLUMNS, GENESIS_HASH, AuditRecord, Sealed, StoredRecord
from risk.audit.store import AuditQuery, ChainAppender, Head, where_clause
from risk.errors import AuditError, AuditRecordError

try:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict
except ImportError:  # psycopg is optional: the SQLite store does not need it, and this module stays importable
    _DRIVER_MISSING = True
else:
    _DRIVER_MISSING = False

log = logging.getLogger("risk")

# Each entry brings the schema from version i to i + 1. Written out rather than built from INDEXED, so a
# migration that has run somewhere never changes. COLLATE "C" orders `ts` bytewise, as SQLite does, whatever
# the database's collation: a language collation may skip punctuation and mis-order ISO timestamps.
_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE risk_audit (
        seq BIGINT PRIMARY KEY,
        ts TEXT COLLATE "C",
        agent_id TEXT COLLATE "C",
        kind TEXT COLLATE "C",
        outcome TEXT COLLATE "C",
        action_id TEXT COLLATE "C",
        body TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    -- One index only, as in SQLite: every index costs each append; queries without an agent scan in seq order.
    CREATE INDEX risk_audit_agent_ts ON risk_audit (agent_id, ts);
    """,
    # As in SQLite: an outcome reported to a worker that did not decide its action finds the agent by the action.
    # Built while the migration holds the table, so on a large trail appends wait out the build once, at upgrade.
    """
    CREATE INDEX risk_audit_action ON risk_audit (action_id);
    """,
)
# The advisory lock serializing migrations: any constant no other application uses ("riskaudt" in ASCII).
_MIGRATION_LOCK = 0x7269736B61756474

_SELECT = f"SELECT {', '.join(COLUMNS)} FROM risk_audit"
# ON CONFLICT DO NOTHING rather than catching the unique violation: the lost race is reported by the row
# count, and the server does not log an ERROR for every collision between writers.
_INSERT_INTO = f"INSERT INTO risk_audit ({', '.join(COLUMNS)})"
# Typed, as a VALUES list in a subquery takes its column types from its values, not from the table.
_ROW = "(" + ", ".join("%s::bigint" if c == "seq" else "%s::text" for c in COLUMNS) + ")"
_PAGE = 1000  # rows per round trip when reading the whole chain
_ROWS_PER_INSERT = 1000  # a statement takes at most 65,535 parameters
_APPEND_BUDGET = 5.0  # seconds an append may keep losing races to other writers before it fails
_LOCK_TIMEOUT = "5s"  # as the SQLite store's default `timeout`
_CONNECT_TIMEOUT = 10  # seconds; psycopg's own default (130 s) would hang a guard's start for minutes
# Unless the URL sets them: a server gone silent (a network partition, a host that died) is noticed within
# about 10 s, by TCP keepalives on an idle connection and by the kernel's limit on data it sent and never saw
# acknowledged, instead of after the kernel's own retries (15 minutes), every request of the process waiting.
_CONNECTION_DEFAULTS: dict[str, Any] = {
    "connect_timeout": _CONNECT_TIMEOUT,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,  # ms
}


IDLE_CHECK_SECONDS = 1.0


def still_open(conn: psycopg.Connection[Any], used: float) -> bool:
    """Whether `conn`, last used at `used` (monotonic), can take the next statement. A connection the server or
    the network dropped while it sat idle is known only when a statement fails on it, which failed the request
    (a terminate went unrecorded, /readyz said 503) after every restart or failover: past a second of quiet, a
    round trip tells first."""
    if conn.closed:
        return False
    if time.monotonic() - used < IDLE_CHECK_SECONDS:
        return True
    try:
        conn.execute("SELECT 1")
    except psycopg.Error:
        with contextlib.suppress(psycopg.Error):
            conn.close()
        return False
    return True


def connection_defaults(params: dict[str, Any]) -> dict[str, Any]:
    """The connection settings a PostgreSQL store adds to those of its URL (`params`), which win."""
    return {name: value for name, value in _CONNECTION_DEFAULTS.items() if not params.get(name)}


# Seconds a statement may go unanswered before its connection is cut off, when the server sets no
# statement_timeout; with one, that plus STATEMENT_GRACE, so the server's own error comes first.
STATEMENT_DEADLINE = 15.0
STATEMENT_GRACE = 5.0
WATCH_INTERVAL = 0.25  # seconds between the watchdog's looks: a cut comes at most this late


class ConnectionWatch:
    """The lock a store's one connection is used under (reentrant), and a bound on how long a statement may go
    unanswered on it.

    A server that stalls with its connection up (a proxy or a pooler holding requests, a host hung behind a
    live address) sends no error, and TCP sees nothing wrong, as the data it sent was acknowledged: a statement
    waited for ever, and every request of the process queued behind the lock. A watchdog thread now shuts down
    the socket of a statement past its deadline, so the statement fails at once as on a dropped connection,
    the action is denied, and the next use reconnects. Waiting for the lock is bounded by the same deadline:
    behind a statement that will not answer, a request fails with `busy(message)` instead of waiting its turn
    to stall too.
    """

    def __init__(self, where: str, busy: Callable[[str], Exception]) -> None:
        self.where = where
        self.seconds = STATEMENT_DEADLINE
        self._busy = busy
        self._lock = threading.RLock()
        self._cutting = threading.Lock()  # a cut and the end of the statement it cuts come one after the other
        self._conn: psycopg.Connection[Any] | None = None
        # A descriptor of the watched connection's socket of our own: the connection may close its own, and the
        # number then name another file, by the time the watchdog cuts.
        self._socket: socket.socket | None = None
        self._since: float | None = None
        self._cut = False  # whether the watchdog cut the watched connection off
        _watch(self)

    def adopt(self, conn: psycopg.Connection[Any]) -> None:
        """Watch a new connection from its first statement (call with the lock held, before any other statement
        on it: a pooler that takes the connection and then holds its queries would stall there), and take the
        deadline from the server's statement_timeout (pg_settings gives it in ms)."""
        self.watch(conn)
        row = conn.execute("SELECT setting::bigint FROM pg_settings WHERE name = 'statement_timeout'").fetchone()
        timeout_ms = int(row[0]) if row else 0
        self.seconds = timeout_ms / 1000 + STATEMENT_GRACE if timeout_ms else STATEMENT_DEADLINE

    def watch(self, conn: psycopg.Connection[Any], *, bounded: bool = True) -> None:
        """Statements on `conn` from now until this hold of the lock is released must answer within the deadline
        (call with the lock held); `bounded=False` lets them take as long as the server allows (a purge)."""
        with self._cutting:
            if conn is not self._conn:
                self._forget_socket()
                self._conn = conn
                self._cut = False
                if not conn.closed:
                    self._socket = socket.socket(fileno=os.dup(conn.fileno()))
            self._since = time.monotonic() if bounded else None

    def ready(
        self, conn: psycopg.Connection[Any], used: float, reconnect: Callable[[], psycopg.Connection[Any]], *,
        bounded: bool = True,
    ) -> psycopg.Connection[Any]:  # fmt: skip
        """`conn`, last used at `used`, or a new one from `reconnect` where the server dropped it (`still_open`)
        or the watchdog cut it off, watched from the idle check on (see `watch`). Call with the lock held;
        `reconnect` is called with it held, and should `adopt` the new connection before any other statement."""
        self.watch(conn, bounded=bounded)
        # A cut may come just after the statement's answer: the connection is dead, though it looks whole for
        # the idle check's second.
        if not self._cut and still_open(conn, used):
            return conn
        with contextlib.suppress(psycopg.Error):
            conn.close()
        conn = reconnect()
        self.watch(conn, bounded=bounded)
        return conn

    def failure(self, exc: BaseException) -> str:
        """Why a statement on the watched connection failed with `exc`, for a message: after a cut, psycopg's
        own words ("server closed the connection unexpectedly") would blame the server for closing it."""
        if self._cut:
            return f"no answer within {self.seconds:g} s, so the connection was cut off"
        return str(exc)

    def close(self) -> None:
        with self._cutting:
            self._forget_socket()
            self._conn = None

    def __enter__(self) -> None:
        if not self._lock.acquire(timeout=self.seconds + WATCH_INTERVAL):
            raise self._busy(
                f"{self.where} is busy: a statement on its connection has not been answered for {self.seconds:g} s"
            )

    def __exit__(self, *exc: object) -> None:
        # Every hold ends with its statements answered, so a transaction whose body holds the lock again for
        # each statement is not cut off while it does other work between them (see Catalog.transaction).
        self.idle()
        self._lock.release()

    def idle(self) -> None:
        """The statements so far are answered: none is under way until the next `watch`."""
        with self._cutting:
            self._since = None

    def _forget_socket(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _cut_if_late(self, now: float) -> None:
        with self._cutting:
            if self._socket is None or self._since is None or now - self._since <= self.seconds:
                return
            self._cut = True
            with contextlib.suppress(OSError):
                self._socket.shutdown(socket.SHUT_RDWR)
            self._since = None
        log.warning("no answer from %s within %g s: its connection was cut off", self.where, self.seconds)


_watched: weakref.WeakSet[ConnectionWatch] = weakref.WeakSet()
_watched_lock = threading.Lock()
_watchdog_pid: int | None = None  # the process the watchdog thread runs in (a forked child has none)


def _watch(watch: ConnectionWatch) -> None:
    global _watchdog_pid
    with _watched_lock:
        _watched.add(watch)
        if _watchdog_pid != os.getpid():
            _watchdog_pid = os.getpid()
            threading.Thread(target=_watchdog, name="risk-postgres-watchdog", daemon=True).start()


def _forget_in_child() -> None:
    """A forked child holds copies of the parent's watches, whose sockets are the parent's connections: a cut
    from the child's watchdog would break the parent's connection, and a statement the parent was running at
    the fork would look unanswered there for ever. The child watches only what it opens itself."""
    global _watched, _watched_lock, _watchdog_pid
    _watched, _watched_lock, _watchdog_pid = weakref.WeakSet(), threading.Lock(), None


os.register_at_fork(after_in_child=_forget_in_child)


def _watchdog() -> None:
    while True:
        time.sleep(WATCH_INTERVAL)
        with _watched_lock:
            watches = list(_watched)
        now = time.monotonic()
        for watch in watches:
            watch._cut_if_late(now)


class PostgresAuditStore:
    """Append-only, hash-chained audit records in PostgreSQL. Safe for threads, processes and hosts.

    One connection per store, used under a lock: appends waiting on it go as one statement, so a pool would
    buy little. A connection the server dropped fails the call in flight (the action is denied) and is
    replaced on the next call.
    """

    def __init__(self, url: str, *, create: bool = True) -> None:
        self.url = url
        self._where = _redacted(url)  # for messages: never print a password
        if _DRIVER_MISSING:
            raise AuditError(f"the PostgreSQL audit store {self._where} needs psycopg 3: pip install 'psycopg[binary]'")
        self._lock = ConnectionWatch(f"the audit store {self._where}", AuditError)
        self._appender = ChainAppender(self._read_head, self._insert, budget=_APPEND_BUDGET)
        self._closed = False
        with self._lock:  # the opening statements are watched as every other
            self._conn = self._connect()
            self._used = time.monotonic()
            try:
                _migrate(self._conn, create=create, where=self._where, watch=self._lock)
            except psycopg.Error as exc:
                self._conn.close()
                raise AuditError(f"cannot prepare the audit table in {self._where}: {self._lock.failure(exc)}") from exc
            except BaseException:
                self._conn.close()
                raise

    def append(self, body: dict[str, Any]) -> Sealed:
        return self._appender.append(body, self._where)

    def append_many(self, bodies: list[dict[str, Any]]) -> list[Sealed | AuditError]:
        return self._appender.append_many(bodies, self._where)

    def _read_head(self) -> tuple[int, str]:
        rows = self._read("SELECT seq, hash FROM risk_audit ORDER BY seq DESC LIMIT 1", ())
        return (int(rows[0][0]), str(rows[0][1])) if rows else (0, GENESIS_HASH)

    def _insert(self, records: list[tuple[Sealed, dict[str, Any]]]) -> bool:
        """One INSERT of every record, in a transaction when there are several; False when another writer
        already took one of their seqs (and then nothing is stored)."""
        rows = [sealed.row(body) for sealed, body in records]
        with self._lock:
            try:
                conn = self._connection()
                if len(rows) == 1:
                    return bool(conn.execute(*_inserting(rows)).rowcount == 1)
                with conn.transaction():
                    for start in range(0, len(rows), _ROWS_PER_INSERT):
                        chunk = rows[start : start + _ROWS_PER_INSERT]
                        if conn.execute(*_inserting(chunk)).rowcount != len(chunk):
                            raise psycopg.Rollback()
                    return True
                return False  # rolled back
            except (psycopg.DataError, ValueError, TypeError) as exc:
                # DataError is a NUL in an indexed column; ValueError an unpaired surrogate.
                raise AuditRecordError(f"audit record not written to {self._where}: {exc}") from exc
            except psycopg.Error as exc:
                raise AuditError(f"audit record not written to {self._where}: {self._lock.failure(exc)}") from exc

    def stored(self, after_seq: int | None = None) -> Iterator[StoredRecord]:
        # Keyset pagination: each page starts after the last seq seen, so a page costs the same however deep.
        sql = f"{_SELECT} WHERE seq > %s ORDER BY seq LIMIT %s"
        first = (f"{_SELECT} ORDER BY seq LIMIT %s", (_PAGE,)) if after_seq is None else (sql, (after_seq, _PAGE))
        page = self._read(*first)
        while page:
            for row in page:
                yield StoredRecord.from_row(row)
            page = self._read(sql, (page[-1][0], _PAGE))

    def query(self, query: AuditQuery) -> list[AuditRecord]:
        where, params = where_clause(query, "%s")
        sql = f"{_SELECT} {where} LIMIT %s OFFSET %s"
        return [StoredRecord.from_row(row).record() for row in self._read(sql, (*params, query.limit, query.offset))]

    def head(self) -> Head:
        # One statement, so the count, the last seq and its hash come from the same snapshot.
        sql = "SELECT count(*), max(seq), (SELECT hash FROM risk_audit ORDER BY seq DESC LIMIT 1) FROM risk_audit"
        count, seq, last = self._read(sql, ())[0]
        return Head(count=count, seq=seq or 0, hash=last or GENESIS_HASH)

    def first_seq_at_or_after(self, ts: str) -> int | None:
        value = self._read("SELECT min(seq) FROM risk_audit WHERE ts >= %s", (ts,))[0][0]
        return int(value) if value is not None else None

    def delete_through(self, seq: int) -> int:
        with self._lock:
            try:
                conn = self._connection(bounded=False)  # a purge of years may take as long as the server lets it
                return conn.execute("DELETE FROM risk_audit WHERE seq <= %s", (seq,)).rowcount
            except psycopg.Error as exc:
                raise AuditError(f"purge failed on {self._where}: {self._lock.failure(exc)}") from exc

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._conn.close()
            self._lock.close()

    def _read(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._connection().execute(sql, params).fetchall()
            except psycopg.Error as exc:
                raise AuditError(f"cannot read audit store {self._where}: {self._lock.failure(exc)}") from exc

    def _connection(self, *, bounded: bool = True) -> psycopg.Connection[tuple[Any, ...]]:
        """The open connection, replacing one the server dropped, watched until the lock is released (see
        `ConnectionWatch`). Call with the lock held."""
        if self._closed:
            raise AuditError(f"the audit store {self._where} is closed")
        self._conn = self._lock.ready(self._conn, self._used, self._connect, bounded=bounded)
        self._used = time.monotonic()
        return self._conn

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        try:
            params = conninfo_to_dict(self.url)
        except psycopg.Error as exc:
            raise ValueError(f"invalid PostgreSQL audit URL {self._where}: {exc}") from None
        try:
            conn = psycopg.connect(self.url, autocommit=True, **connection_defaults(params))
        except psycopg.Error as exc:
            reason = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
            raise AuditError(
                f"cannot connect to the PostgreSQL audit store at {_server(params)} ({self._where}): {reason}"
            ) from None
        try:
            self._lock.adopt(conn)
            # Bound lock waits unless the URL, role or database already chose a limit ("0" means none).
            if _setting(conn, "lock_timeout") == "0":
                conn.execute(f"SET lock_timeout = '{_LOCK_TIMEOUT}'")
        except psycopg.Error as exc:
            conn.close()
            raise AuditError(f"cannot configure the connection to {self._where}: {self._lock.failure(exc)}") from exc
        return conn


def _inserting(rows: list[tuple[Any, ...]]) -> tuple[str, list[Any]]:
    """One INSERT of `rows` (in seq order) that skips a row whose seq is taken, and every row if any row has the
    first one's seq or a later one (the caller compares the row count).

    The second condition refuses a writer whose cached head is stale because another process purged the seqs
    it would take: it rereads the head and reseals instead of forking the chain there. The probe is one descent
    of the primary key, written as max(seq): PostgreSQL answers a max from the index at any table size. Written
    as `NOT EXISTS (... WHERE seq >= first)` it was planned, on a table not analyzed yet, as a scan of every row,
    and the statement prepared once kept that plan: each append took longer as the trail grew (measured: from
    0.35 to 0.85 ms over its first 8,000 records).
    """
    values = ", ".join([_ROW] * len(rows))
    sql = (
        f"{_INSERT_INTO} SELECT * FROM (VALUES {values}) AS new ({', '.join(COLUMNS)}) "
        "WHERE coalesce((SELECT max(seq) FROM risk_audit), 0) < %s ON CONFLICT (seq) DO NOTHING"
    )
    return sql, [*(value for row in rows for value in row), rows[0][0]]


def _migrate(conn: psycopg.Connection[tuple[Any, ...]], *, create: bool, where: str, watch: ConnectionWatch) -> None:
    """Bring the schema up to date, or check that it already is (the usual case: no lock taken)."""
    if not create and _version(conn) is None:
        raise AuditError(f"there is no audit trail in {where}: check --audit and the schema (search_path)")
    apply_migrations(
        conn, _MIGRATIONS, table="risk_schema_version", lock=_MIGRATION_LOCK, what="audit table", where=where,
        watch=watch,
    )  # fmt: skip


def apply_migrations(
    conn: psycopg.Connection[tuple[Any, ...]], migrations: tuple[str, ...], *, table: str, lock: int, what: str,
    where: str, watch: ConnectionWatch,
) -> None:  # fmt: skip
    """Apply the `migrations` not yet recorded in the version `table`, once, under the advisory `lock`.

    Each entry brings the schema from version i to i + 1; processes starting at once wait for each other on
    the lock, and whoever waited finds the work done. A schema newer than `migrations` is an AuditError.
    Call with `watch` held on `conn`: the check is bounded as any statement, the migrations are not (an index
    built on a large trail, or another process's build waited for, takes as long as it takes).
    """
    version = _version(conn, table)
    if version == len(migrations):
        return
    watch.watch(conn, bounded=False)
    with conn.transaction():
        # Held until the transaction ends. Whoever waited finds the work done when it gets the lock.
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock,))
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {table} ("
            "version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        version = _version(conn, table) or 0
        if version > len(migrations):
            raise AuditError(
                f"the {what} in {where} has schema version {version}, newer than this agent-risk "
                f"understands ({len(migrations)}): upgrade agent-risk"
            )
        for number, sql in enumerate(migrations[version:], start=version + 1):
            conn.execute(sql)
            conn.execute(f"INSERT INTO {table} (version) VALUES (%s)", (number,))


def _version(conn: psycopg.Connection[tuple[Any, ...]], table: str = "risk_schema_version") -> int | None:
    """The schema version applied, or None where there is no version table (nothing created yet)."""
    # to_regclass finds the table through search_path as every other statement here does, without the
    # error (logged by the server) that selecting from a missing table would cause.
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
    if row is None or not row[0]:
        return None
    row = conn.execute(f"SELECT coalesce(max(version), 0) FROM {table}").fetchone()
    return int(row[0]) if row is not None else 0


def _setting(conn: psycopg.Connection[tuple[Any, ...]], name: str) -> str:
    row = conn.execute("SELECT current_setting(%s)", (name,)).fetchone()
    return str(row[0]) if row else ""


def _server(params: dict[str, Any]) -> str:
    """host and port as libpq would pick them, for an error message."""
    host = params.get("host") or params.get("hostaddr") or os.environ.get("PGHOST") or "localhost (Unix socket)"
    port = params.get("port") or os.environ.get("PGPORT") or "5432"
    return f"host {host} port {port}"


def _redacted(url: str) -> str:
    """`url` with any password replaced by ***; otherwise exactly as given."""
    userinfo, at, _ = urlsplit(url).netloc.rpartition("@")
    if at and ":" in userinfo:
        url = url.replace(f"{userinfo}@", f"{userinfo.split(':', 1)[0]}:***@", 1)
    return re.sub(r"(?i)([?&]password=)[^&]*", r"\1***", url)
