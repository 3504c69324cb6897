"""Verification of the hash chain: every hash is recomputed from the record's fields, never trusted."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from risk.audit.record import GENESIS_HASH, AuditRecord, chain_hash


@dataclass(frozen=True, slots=True)
class Verification:
    ok: bool
    count: int
    head_hash: str
    first_bad_seq: int | None = None
    problem: str = ""


def verify_chain(
    records: Iterable[AuditRecord],
    *,
    anchor_hash: str = GENESIS_HASH,
    first_seq: int = 1,
    expected_head: str | None = None,
) -> Verification:
    """Recompute the chain over `records` (in storage order) and report the first record that does not fit.

    `anchor_hash` and `first_seq` say where the chain starts: the genesis, or the last record a retention
    purge removed. `expected_head` is a head hash kept elsewhere; if given, the chain must contain it, which
    catches records cut off the end.
    """
    expected_prev = anchor_hash
    expected_seq = first_seq
    count = 0
    head_seen = expected_head is None or expected_head == anchor_hash
    for record in records:
        if record.seq != expected_seq:
            missing = "missing or reordered" if record.seq > expected_seq else "reordered or duplicated"
            return Verification(False, count, expected_prev, record.seq, f"expected seq {expected_seq}: {missing}")
        recomputed = chain_hash(expected_prev, record.hashed_fields())
        if record.prev_hash != expected_prev or recomputed != record.hash:
            return Verification(
                False, count, expected_prev, record.seq, "record was edited, or one before it was removed"
            )
        expected_prev = recomputed
        expected_seq += 1
        count += 1
        head_seen = head_seen or recomputed == expected_head
    if not head_seen:
        return Verification(
            False, count, expected_prev, expected_seq, f"head {expected_head} not found: records were cut off the end"
        )
    return Verification(True, count, expected_prev)
