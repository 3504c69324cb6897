"""Idempotency keys: a repeated key gets the first answer given under it, and nothing is decided or recorded again.

Each key (per tenant) is claimed in the catalog before deciding, with the digest of the action it names; the
decision is stored once made. A second request with the key waits for the first decision (at most `WAIT`
seconds, then 409), gets it, or is refused (409) if it names another action. A claim left without a decision
for `STALE` seconds belonged to a request that died and is taken over. A process dying after its decision
was audited but before it was stored leaves that decision's record, and the retry records a second one.

A key is remembered for `RETENTION` (7 days) from its claim: every outcome the service records claims one, so
kept forever the table would grow with every action. Every `PURGE_EVERY` claims a process deletes expired
records (see `purge`); a key used again after it is new.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from typing import Any

from risk.catalog import Catalog
from risk.errors import RiskError

WAIT = 5.0  # seconds a repeated key waits for the first request's decision
STALE = 60.0  # a claim older than this with no decision belongs to a request that died
RETENTION = 7 * 86_400.0  # seconds a key is remembered
PURGE_EVERY = 1_000  # claims between two deletions of expired keys, per process


class IdempotencyConflict(RiskError):
    """The key names another action, or its first request is still being decided."""


class IdempotencyKeys:
    """First decisions by (tenant, key), in the catalog.

    >>> import tempfile
    >>> keys = IdempotencyKeys(Catalog(f"sqlite:///{tempfile.mkdtemp()}/catalog.db"))
    >>> keys.claim("acme", "k1", "digest") is None
    True
    >>> keys.settle("acme", "k1", {"action_id": "a1"})
    >>> keys.claim("acme", "k1", "digest")
    {'action_id': 'a1'}
    """

    def __init__(
        self,
        catalog: Catalog,
        *,
        retention: float = RETENTION,
        purge_every: int = PURGE_EVERY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._catalog = catalog
        self._retention = retention
        self._purge_every = purge_every
        self._clock = clock
        self._claims = itertools.count(1)

    def claim(
        self, tenant: str, key: str, fingerprint: str, *, fresh_for: float | None = None
    ) -> dict[str, Any] | None:
        """None when this request may answer under `key`; the first answer (as settled) when there is one. With
        `fresh_for`, an answer older than that many seconds is not given: the key is claimed afresh (a repeat
        that late is no retry, but a new request)."""
        if next(self._claims) % self._purge_every == 0:
            self.purge()
        deadline = time.monotonic() + WAIT
        while True:
            now = self._clock()
            inserted = self._catalog.run(
                "INSERT INTO risk_idempotency (tenant, idem_key, request_hash, decision, claimed_at) "
                "VALUES (?, ?, ?, NULL, ?) ON CONFLICT (tenant, idem_key) DO NOTHING",
                (tenant, key, fingerprint, now),
            ).rowcount
            if inserted == 1:
                return None
            rows = self._catalog.run(
                "SELECT request_hash, decision, claimed_at FROM risk_idempotency WHERE tenant = ? AND idem_key = ?",
                (tenant, key),
            ).rows
            if not rows:
                continue  # the first request failed and gave the key back: claim it again
            request_hash, stored, claimed_at = rows[0]
            if request_hash != fingerprint:
                raise IdempotencyConflict(f"idempotency key {key!r} was used for a different action; use a new key")
            if stored is not None and (fresh_for is None or now - claimed_at <= fresh_for):
                return json.loads(stored)  # type: ignore[no-any-return]
            # An answer too old to be a retry's, or a claim whose request died before it settled: taken over for
            # this request, unless another one changed the key since it was read (then it is read again).
            if stored is not None or now - claimed_at > STALE:
                if self._take_over(tenant, key, claimed_at, now, settled=stored is not None):
                    return None
                continue
            if time.monotonic() > deadline:
                raise IdempotencyConflict(f"a request with idempotency key {key!r} is still being decided; retry")
            time.sleep(0.01)

    def _take_over(self, tenant: str, key: str, claimed_at: float, now: float, *, settled: bool) -> bool:
        """Claim `key` for this request if it is still as read: claimed at `claimed_at`, with an answer or not."""
        answered = "IS NOT NULL" if settled else "IS NULL"
        return bool(
            self._catalog.run(
                "UPDATE risk_idempotency SET decision = NULL, claimed_at = ? "
                f"WHERE tenant = ? AND idem_key = ? AND claimed_at = ? AND decision {answered}",
                (now, tenant, key, claimed_at),
            ).rowcount
            == 1
        )

    def settle(self, tenant: str, key: str, answer: dict[str, Any]) -> None:
        """Keep the answer given under `key` (a decision's fields, say) for every repeat."""
        self._catalog.run(
            "UPDATE risk_idempotency SET decision = ? WHERE tenant = ? AND idem_key = ?",
            (json.dumps(answer), tenant, key),
        )

    def purge(self) -> int:
        """Delete keys claimed more than the retention ago (of every tenant), the oldest first and at most four
        times PURGE_EVERY, so that a claim which purges waits for a bounded delete and a backlog (a first purge
        after an upgrade) still drains; how many."""
        cutoff = self._clock() - self._retention
        return self._catalog.run(
            "DELETE FROM risk_idempotency WHERE (tenant, idem_key) IN (SELECT tenant, idem_key FROM risk_idempotency "
            "WHERE claimed_at < ? ORDER BY claimed_at LIMIT ?)",
            (cutoff, 4 * self._purge_every),
        ).rowcount

    def release(self, tenant: str, key: str) -> None:
        """Give back a claim whose request failed before deciding."""
        self._catalog.run(
            "DELETE FROM risk_idempotency WHERE tenant = ? AND idem_key = ? AND decision IS NULL", (tenant, key)
        )
