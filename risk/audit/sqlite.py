"""The embedded audit store: one SQLite file in WAL mode.

`sqlite:///path.db` (relative) or `sqlite:////abs/path.db`; `?timeout=S` is how long an append waits for
another process's write lock before it fails (and the action is denied), 5 s by default. Commits use
`synchronous=NORMAL` by default: a record survives the process crashing the instant after `append`
returns, and a power loss may lose the last few commits. `?synchronous=FULL` fsyncs every record, for
the cost of a disk flush per action.

Copying the write-ahead log into the database file (a checkpoint) happens in a background thread with its own
connection, every half second. SQLite's automatic checkpoint would instead run inside whichever commit crosses
1,000 log pages and stall that action's decision for milliseconds. These checkpoints are PASSIVE: they never
wait for a writer. But the log only starts over when a checkpoint has copied all of it before the next commit,
which a steady stream of decisions never allows, so on their own they let it grow without end (about 13 KB
per record). Once it is longer than WAL_LIMIT_BYTES, the passive checkpoint is followed by a RESTART one, which
holds new writers off while it copies the little the passive one left, so that the next commit writes the log
from its start again: the log stays within one round's growth, for an append held off now and then for up to
about 10 ms (bench/bench_audit.py measures both). It waits at most RESTART_WAIT_MS for a writer or reader,
else tries again next round. The file keeps the largest size the log reached; closing the store empties it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from risk.audit.record import COLUMNS, GENESIS_HASH, INDEXED, AuditRecord, Sealed, StoredRecord
from risk.audit.store import AuditQuery, ChainAppender, Head, where_clause
from risk.errors import AuditError, AuditRecordError

log = logging.getLogger("risk")

CHECKPOINT_SECONDS = 0.5
WAL_LIMIT_BYTES = 16 * 1024 * 1024
RESTART_WAIT_MS = 100  # a held-off append retries meanwhile (see ChainAppender), within its own timeout
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM audit"
# A record goes in only if no row has its seq or a later one: a writer whose cached head is stale (another process
# appended, or purged the seqs it would take) is refused and reseals onto the real head, instead of forking the
# chain at a seq a purge freed. The probe is one lookup in the primary key.
_INSERT = (
    f"INSERT INTO audit ({', '.join(COLUMNS)}) SELECT {', '.join('?' for _ in COLUMNS)} "
    "WHERE NOT EXISTS (SELECT 1 FROM audit WHERE seq >= ?)"
)
# Two indexes only: each costs every append a few µs (about a fifth of the insert). By agent and time for the
# trail's queries; by action, since an outcome reported to a worker that did not decide the action (or long
# after) finds its agent there: without it that lookup read the whole trail (0.14 s at 200,000 records). Other
# queries scan in sequence order, which is time order.
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY, {", ".join(f"{c} TEXT" for c in INDEXED)}, body TEXT NOT NULL, hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_agent_ts ON audit (agent_id, ts);
CREATE INDEX IF NOT EXISTS audit_action ON audit (action_id);
"""


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


def connect_wal(path: str, *, timeout: float, synchronous: str = "NORMAL") -> sqlite3.Connection:
    """A connection to the SQLite file `path` in WAL mode, waiting up to `timeout` for other writers.

    Switching a file to WAL while another connection holds its write lock (two processes opening a new file at
    once, say) fails at once with "database is locked": SQLite does not call the busy handler there. So the
    switch is retried until `timeout`.
    """
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=timeout)
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={synchronous}")
            return conn
        except sqlite3.OperationalError as exc:
            busy = exc.sqlite_errorcode in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
            if not busy or time.monotonic() >= deadline:
                conn.close()
                raise
            time.sleep(0.01)


class SQLiteAuditStore:
    """Append-only, hash-chained audit records in SQLite. Safe for threads and for several processes.

    >>> import tempfile, os
    >>> store = SQLiteAuditStore("sqlite:///" + os.path.join(tempfile.mkdtemp(), "a.db"))
    >>> rec = store.append({"record_id": "r1", "ts": "2026-01-01T00:00:00+00:00", "kind": "decision", "agent_id": "a"})
    >>> rec.seq, store.head().count
    (1, 1)
    """

    def __init__(self, url: str, *, create: bool = True) -> None:
        self.url = url
        path, synchronous, timeout = _parse_url(url)
        if path != ":memory:":
            if not create and not Path(path).is_file():
                raise AuditError(f"there is no audit trail at {path}: check --audit or $RISK_HOME")
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._appender = ChainAppender(self._read_head, self._insert, budget=timeout)
        try:
            self._conn = connect_wal(path, timeout=timeout, synchronous=synchronous)
            self._conn.executescript(_SCHEMA)
            # Appends do not wait in SQLite's busy handler, which sleeps a millisecond or more per try: a write lock
            # another process holds is treated like a lost race, retried after a pause of tens of µs (ChainAppender).
            self._conn.execute("PRAGMA busy_timeout=0")
            self._checkpointer = None if path == ":memory:" else _Checkpointer(path, timeout)
            if self._checkpointer is not None:
                self._conn.execute("PRAGMA wal_autocheckpoint=0")
        except sqlite3.Error as exc:
            raise AuditError(f"cannot open audit store {url}: {exc}") from exc
        # The database and its log as opened (both exist once a WAL connection is open). SQLite goes on writing to
        # a file that was deleted or replaced under it, and says nothing: the records would be lost, or another
        # process would chain into a new file beside them. Each append checks the paths still name these files.
        # Absolute: a relative path read after a chdir names another file.
        here = os.path.abspath(path)
        self._files = () if path == ":memory:" else tuple((p, _identity(p)) for p in (here, f"{here}-wal"))

    def append(self, body: dict[str, Any]) -> Sealed:
        return self._appender.append(body, self.url)

    def append_many(self, bodies: list[dict[str, Any]]) -> list[Sealed | AuditError]:
        return self._appender.append_many(bodies, self.url)

    def _insert(self, records: list[tuple[Sealed, dict[str, Any]]]) -> bool:
        """The records in one transaction (one alone: one autocommit INSERT); False when another writer
        already took one of their seqs or a later one, or holds the write lock."""
        rows = [(*sealed.row(body), sealed.seq) for sealed, body in records]
        with self._lock:
            self._check_files()
            try:
                if len(rows) == 1:
                    return bool(self._conn.execute(_INSERT, rows[0]).rowcount == 1)
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    if self._conn.executemany(_INSERT, rows).rowcount != len(rows):
                        self._conn.execute("ROLLBACK")
                        return False
                    self._conn.execute("COMMIT")
                except BaseException:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise
            except sqlite3.IntegrityError:
                return False
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                    return False  # another process is writing: the appender pauses briefly and chains onto its head
                raise AuditError(f"audit record not written to {self.url}: {exc}") from exc
            except (sqlite3.DataError, ValueError, TypeError) as exc:  # ValueError: an unpaired surrogate
                raise AuditRecordError(f"audit record not written to {self.url}: {exc}") from exc
            except sqlite3.Error as exc:
                raise AuditError(f"audit record not written to {self.url}: {exc}") from exc
        return True

    def _check_files(self) -> None:
        for path, opened in self._files:
            if _identity(path) != opened:
                raise AuditError(
                    f"audit record not written to {self.url}: {path} was deleted or replaced since the store opened "
                    "it, so records written now would be lost; move that same file back, or restart to open the trail "
                    "at that path (a copy restored there is another file)"
                )

    def _read_head(self) -> tuple[int, str]:
        row = self._read("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", ())
        return (row[0][0], row[0][1]) if row else (0, GENESIS_HASH)

    def stored(self, after_seq: int | None = None) -> Iterator[StoredRecord]:
        sql = f"{_SELECT} WHERE seq > ? ORDER BY seq LIMIT 1000"
        page = (
            self._read(f"{_SELECT} ORDER BY seq LIMIT 1000", ()) if after_seq is None else self._read(sql, (after_seq,))
        )
        while page:
            for row in page:
                yield StoredRecord.from_row(row)
            page = self._read(sql, (page[-1][0],))

    def query(self, query: AuditQuery) -> list[AuditRecord]:
        where, params = where_clause(query, "?")
        sql = f"{_SELECT} {where} LIMIT ? OFFSET ?"
        return [StoredRecord.from_row(row).record() for row in self._read(sql, (*params, query.limit, query.offset))]

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
        if self._checkpointer is not None:
            self._checkpointer.close()
        with self._lock:
            self._conn.close()

    def _read(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise AuditError(f"cannot read audit store {self.url}: {exc}") from exc


def _identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of the file at `path`; None if there is none."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino


class _Checkpointer:
    """Checkpoints the WAL off the append path: PASSIVE every round, and RESTART when the log grew too long."""

    def __init__(self, path: str, timeout: float) -> None:
        self._wal = Path(f"{path}-wal")
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=timeout)
        self._conn.execute(f"PRAGMA busy_timeout={RESTART_WAIT_MS}")  # PASSIVE never waits; the others this long
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="risk-audit-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(CHECKPOINT_SECONDS):
            try:
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                if self._wal_bytes() > WAL_LIMIT_BYTES:
                    self._conn.execute("PRAGMA wal_checkpoint(RESTART)")
            except sqlite3.Error:  # the next round tries again; the log only grows meanwhile
                log.warning("audit WAL checkpoint failed", exc_info=True)

    def _wal_bytes(self) -> int:
        try:
            return self._wal.stat().st_size
        except FileNotFoundError:
            return 0

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        try:  # empties the log unless another process is using the file; then it stays for that one to reuse
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            log.warning("audit WAL checkpoint on close failed", exc_info=True)
        self._conn.close()
