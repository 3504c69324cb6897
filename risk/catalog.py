"""The service catalog: API keys, tenant policies, idempotency records and pending approvals, in one database.

`sqlite:///path.db` (the embedded default, a file of its own next to the audit trail) or `postgresql://...`
(the same database as the audit trail, tables `risk_*`). Statements are written once with `?` placeholders.
The schema is versioned like the PostgreSQL audit table: a list of migrations, applied once under a lock
(an advisory lock in PostgreSQL, `BEGIN IMMEDIATE` in SQLite). Never edit a migration once released.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from risk.audit.sqlite import connect_wal
from risk.errors import RiskError

# Each entry brings the schema from version i to i + 1; the SQL is the same for SQLite and PostgreSQL.
_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE risk_keys (
        key_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, role TEXT NOT NULL, salt TEXT NOT NULL,
        digest TEXT NOT NULL, created_at TEXT NOT NULL, revoked_at TEXT, note TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX risk_keys_tenant ON risk_keys (tenant);
    CREATE TABLE risk_policies (
        tenant TEXT NOT NULL, agent_id TEXT NOT NULL, policy TEXT NOT NULL, policy_hash TEXT NOT NULL,
        updated_at TEXT NOT NULL, PRIMARY KEY (tenant, agent_id)
    );
    CREATE TABLE risk_generations (name TEXT PRIMARY KEY, value BIGINT NOT NULL);
    INSERT INTO risk_generations (name, value) VALUES ('policies', 0), ('model', 0);
    CREATE TABLE risk_idempotency (
        tenant TEXT NOT NULL, idem_key TEXT NOT NULL, request_hash TEXT NOT NULL, decision TEXT,
        claimed_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (tenant, idem_key)
    );
    CREATE TABLE risk_pending (agent_id TEXT PRIMARY KEY, action_id TEXT NOT NULL, decision TEXT NOT NULL);
    """,
    # The agent ids an agent key is bound to, a JSON list of patterns; NULL: any agent of its tenant.
    "ALTER TABLE risk_keys ADD COLUMN agents TEXT",
    # Idempotency records older than their retention are deleted by age (risk.idempotency.RETENTION).
    "CREATE INDEX risk_idempotency_claimed ON risk_idempotency (claimed_at)",
)
_VERSION_TABLE = "risk_catalog_version"
_MIGRATION_LOCK = 0x7269736B63617461  # "riskcata" in ASCII; the audit table uses another


class CatalogError(RiskError):
    """The catalog (keys, policies, idempotency records) could not be read or written."""


class Result(NamedTuple):
    rows: list[tuple[Any, ...]]
    rowcount: int


class Catalog:
    """One connection to the catalog database, used under a lock; safe for threads and processes.

    >>> import tempfile
    >>> catalog = Catalog(f"sqlite:///{tempfile.mkdtemp()}/catalog.db")
    >>> catalog.run("SELECT value FROM risk_generations WHERE name = ?", ("model",)).rows
    [(0,)]
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock: AbstractContextManager[Any] = threading.RLock()
        if url.startswith("sqlite:///"):
            self._postgres = False
            self.where = url
            self._conn: Any = self._connect_sqlite()
        elif url.startswith(("postgresql://", "postgres://")):
            from risk.audit.postgres import ConnectionWatch, _redacted

            self._postgres = True
            self.where = _redacted(url)
            self._watch = self._lock = ConnectionWatch(f"the catalog {self.where}", CatalogError)
            with self._lock:  # the opening statements are watched as every other
                self._conn = self._connect_postgres()
                self._used = time.monotonic()
        else:
            raise ValueError(f"unsupported catalog URL {url!r}; use sqlite:///path.db or postgresql://user@host/db")
        self._migrate()

    def run(self, sql: str, params: tuple[Any, ...] = ()) -> Result:
        """Execute one statement (`?` placeholders); its rows (if any) and the count of rows it changed."""
        if self._postgres:
            sql = sql.replace("?", "%s")
        with self._lock:
            try:
                cursor = self._connection().execute(sql, params)
                rows = cursor.fetchall() if cursor.description else []
                return Result(rows, cursor.rowcount)
            except (sqlite3.Error, ValueError) as exc:
                raise CatalogError(f"catalog {self.where}: {exc}") from exc
            except Exception as exc:
                if self._postgres and _is_psycopg_error(exc):
                    raise CatalogError(f"catalog {self.where}: {self._watch.failure(exc)}") from exc
                raise

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Statements run inside one transaction, serialized with every other catalog transaction."""
        with self._lock:
            conn = self._connection()
            try:
                if self._postgres:
                    with conn.transaction():
                        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                        # Idle in the transaction while the body does other work (an audit append): each of
                        # its statements is watched on its own, and so is the COMMIT (or ROLLBACK).
                        self._watch.idle()
                        try:
                            yield
                        finally:
                            self._watch.watch(conn)
                else:
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        yield
                    except BaseException:
                        conn.execute("ROLLBACK")
                        raise
                    conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise CatalogError(f"catalog {self.where}: {exc}") from exc
            except CatalogError:
                raise
            except Exception as exc:
                if self._postgres and _is_psycopg_error(exc):
                    raise CatalogError(f"catalog {self.where}: {self._watch.failure(exc)}") from exc
                raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()
            if self._postgres:
                self._watch.close()

    def _connection(self) -> Any:
        if self._postgres:
            self._conn = self._watch.ready(self._conn, self._used, self._connect_postgres)
            self._used = time.monotonic()
        return self._conn

    def _connect_sqlite(self) -> sqlite3.Connection:
        path = self.url[len("sqlite:///") :].split("?", 1)[0]
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = connect_wal(path, timeout=5.0)
        except sqlite3.Error as exc:
            raise CatalogError(f"cannot open the catalog {self.url}: {exc}") from exc
        return conn

    def _connect_postgres(self) -> Any:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict

        from risk.audit.postgres import connection_defaults

        try:
            conn = psycopg.connect(self.url, autocommit=True, **connection_defaults(conninfo_to_dict(self.url)))
        except psycopg.Error as exc:
            raise CatalogError(f"cannot connect to the catalog {self.where}: {exc}") from None
        try:
            self._watch.adopt(conn)
        except psycopg.Error as exc:
            conn.close()
            raise CatalogError(
                f"cannot configure the connection to the catalog {self.where}: {self._watch.failure(exc)}"
            ) from exc
        return conn

    def _migrate(self) -> None:
        if self._postgres:
            from risk.audit.postgres import apply_migrations
            from risk.errors import AuditError

            try:
                with self._lock:
                    apply_migrations(
                        self._connection(), _MIGRATIONS, table=_VERSION_TABLE, lock=_MIGRATION_LOCK, what="catalog",
                        where=self.where, watch=self._watch,
                    )  # fmt: skip
            except AuditError as exc:
                raise CatalogError(str(exc)) from exc
            except Exception as exc:
                if _is_psycopg_error(exc):
                    raise CatalogError(
                        f"cannot prepare the catalog in {self.where}: {self._watch.failure(exc)}"
                    ) from exc
                raise
            return
        with self.transaction():
            self.run(f"CREATE TABLE IF NOT EXISTS {_VERSION_TABLE} (version INTEGER PRIMARY KEY, applied_at TEXT)")
            version = self.run(f"SELECT coalesce(max(version), 0) FROM {_VERSION_TABLE}").rows[0][0]
            if version > len(_MIGRATIONS):
                raise CatalogError(
                    f"the catalog {self.where} has schema version {version}, newer than this agent-risk "
                    f"understands ({len(_MIGRATIONS)}): upgrade agent-risk"
                )
            for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
                for statement in filter(str.strip, script.split(";")):
                    self.run(statement)
                self.run(f"INSERT INTO {_VERSION_TABLE} (version, applied_at) VALUES (?, datetime('now'))", (number,))


def _is_psycopg_error(exc: BaseException) -> bool:
    try:
        import psycopg
    except ImportError:
        return False
    return isinstance(exc, psycopg.Error)


def default_catalog_url() -> str:
    """$RISK_DATABASE_URL (the audit trail's database), else a SQLite file beside the audit trail in $RISK_HOME."""
    from risk.audit.store import default_home

    return os.environ.get("RISK_DATABASE_URL") or f"sqlite:///{default_home() / 'catalog.db'}"
