"""Verification of the hash chain: every hash is recomputed from the stored text, never trusted."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from risk.audit.record import GENESIS_HASH, INDEXED, StoredRecord, chain_hash

_HASH = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class Verification:
    ok: bool
    count: int
    head_hash: str
    first_bad_seq: int | None = None
    problem: str = ""


def _purge_text(body: dict[str, Any]) -> str:
    """A retention record, as a message names it: what it purged, when and by whom."""
    detail = body.get("detail")
    detail = detail if isinstance(detail, dict) else {}
    return (
        f"the purge through seq {detail.get('purged_through_seq')} on {str(body.get('ts'))[:10]} "
        f"by {body.get('actor')} (retention record seq {body.get('seq')})"
    )


def verify_chain(
    records: Iterable[StoredRecord],
    *,
    anchor_hash: str = GENESIS_HASH,
    first_seq: int = 1,
    expected_head: str | None = None,
) -> Verification:
    """Recompute the chain over `records` (in storage order) and report the first record that does not fit.

    `anchor_hash` and `first_seq` say where the chain starts: the genesis, or the last record a retention
    purge removed. A chain that starts after seq 1 must itself hold, after the start, the `retention` record of
    that purge (naming `first_seq - 1` and `anchor_hash`): an anchor only a record outside the verified chain
    vouches for is no anchor. `expected_head` is a head hash kept elsewhere; if given, the chain must contain
    it, which catches records cut off the end.
    """
    if not _HASH.fullmatch(anchor_hash):
        return Verification(False, 0, GENESIS_HASH, 1, f"records 1..{first_seq - 1} are missing with no purge")
    expected_prev, expected_seq, count = anchor_hash, first_seq, 0
    head_seen = expected_head is None or expected_head == anchor_hash
    purges: list[dict[str, Any]] = []  # the retention records in the verified chain, in order

    def bad(seq: int, problem: str) -> Verification:
        return Verification(False, count, expected_prev, seq, problem)

    for stored in records:
        if stored.seq != expected_seq:
            if stored.seq < 1:
                return bad(stored.seq, f"a record at seq {stored.seq} precedes the chain's start (seq 1): it was added")
            missing = "missing or reordered" if stored.seq > expected_seq else "reordered or duplicated"
            return bad(stored.seq, f"expected seq {expected_seq}: {missing}")
        if not isinstance(stored.text, str) or not isinstance(stored.hash, str):  # a BLOB, a NULL: not as written
            return bad(stored.seq, "record text or hash is not text: it was edited")
        try:
            body = json.loads(stored.text)
        except (ValueError, RecursionError):  # RecursionError: brackets nested past what the decoder can hold
            return bad(stored.seq, "record text is not JSON: it was edited")
        if not isinstance(body, dict):
            return bad(stored.seq, "record text is not a JSON object: it was edited")
        if body.get("seq") != stored.seq or body.get("prev_hash") != expected_prev:
            return bad(stored.seq, "record does not follow the one before: a record was removed or reordered")
        recomputed = chain_hash(expected_prev, stored.text.encode("utf-8", "surrogatepass"))
        if recomputed != stored.hash:
            return bad(stored.seq, "record was edited: its hash does not match its contents")
        edited = [c for c in INDEXED if stored.columns.get(c) != body.get(c)]
        if edited:
            return bad(stored.seq, f"column(s) {', '.join(edited)} were edited: they differ from the hashed record")
        if body.get("kind") == "retention":
            purges.append(body)
        expected_prev, expected_seq, count = recomputed, expected_seq + 1, count + 1
        head_seen = head_seen or recomputed == expected_head
    if first_seq > 1:
        vouching = [
            p
            for p in purges
            if isinstance(p.get("detail"), dict)
            and p["detail"].get("purged_through_seq") == first_seq - 1
            and p["detail"].get("anchor_hash") == anchor_hash
        ]
        if not vouching:
            return Verification(
                False,
                count,
                expected_prev,
                1,
                f"records 1..{first_seq - 1} are missing with no purge: no retention record in the chain after "
                f"them names seq {first_seq - 1} and the hash the chain starts from",
            )
    if not head_seen:
        if purges:
            relied = "; ".join(_purge_text(p) for p in purges)
            cause = (
                "records were cut off the end, or the head's record was deleted by a purge since the head was "
                f"kept (purges in this chain: {relied})"
            )
        else:
            cause = "records were cut off the end"
        return bad(expected_seq, f"head {expected_head} not found: {cause}")
    return Verification(True, count, expected_prev)
