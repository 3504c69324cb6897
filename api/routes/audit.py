"""The audit trail: query a tenant's records, verify the chain, read its head (auditor keys)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request

from api.auth import allow
from api.limits import OrjsonRoute
from api.schemas import AGENT_REGEX, AuditPage, HeadOut, Text, VerifyOut
from risk.audit.store import AuditQuery, utc_time, verify_store
from risk.keys import ApiKey, Role

router = APIRouter(prefix="/v1/audit", tags=["audit"], route_class=OrjsonRoute)
Auditor = Annotated[ApiKey, Depends(allow(Role.AUDITOR))]


def _time(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return utc_time(value)
    except ValueError as exc:
        raise HTTPException(422, [{"loc": ["query", name], "msg": str(exc), "type": "value_error"}]) from None


@router.get("", response_model=AuditPage, summary="This tenant's audit records, oldest first, a page at a time")
def query(
    request: Request,
    key: Auditor,
    agent_id: Annotated[str | None, Query(pattern=AGENT_REGEX)] = None,
    kind: Annotated[Text | None, Query(max_length=64)] = None,
    outcome: Annotated[Text | None, Query(max_length=64)] = None,
    since: Annotated[str | None, Query(description="ISO date or time, inclusive", max_length=64)] = None,
    until: Annotated[str | None, Query(description="ISO date or time, exclusive", max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(pattern="^[0-9]{1,18}$", description="next_cursor of the last page")] = None,
) -> AuditPage:
    """Records are returned as stored (agent ids carry the tenant prefix, `tenant/agent`), so each one can be
    checked against its hash."""
    tenant = key.tenant
    found = request.app.state.service.audit.query(
        AuditQuery(
            agent_id=f"{tenant}/{agent_id}" if agent_id else None,
            agent_prefix=None if agent_id else f"{tenant}/",
            kind=kind,
            outcome=outcome,
            since=_time("since", since),
            until=_time("until", until),
            limit=limit,
            after_seq=int(cursor or 0),
        )
    )
    next_cursor = str(found[-1].seq) if len(found) == limit else None
    return AuditPage(records=[r.to_dict() for r in found], next_cursor=next_cursor)


@router.get("/verify", response_model=VerifyOut, summary="Recompute every hash of the service's chain")
def verify(
    request: Request,
    key: Auditor,
    head: Annotated[str | None, Query(pattern="^[0-9a-f]{64}$", description="a head kept elsewhere")] = None,
) -> VerifyOut:
    """The chain is one for the whole service: the answer counts every tenant's records, but shows none."""
    result = verify_store(request.app.state.service.audit, expected_head=head)
    return VerifyOut(
        ok=result.ok,
        count=result.count,
        head=result.head_hash,
        first_bad_seq=None if result.ok else result.first_bad_seq,
        problem=None if result.ok else result.problem,
    )


@router.get("/head", response_model=HeadOut, summary="The chain's record count and head hash, to keep elsewhere")
def head(request: Request, key: Auditor) -> HeadOut:
    h = request.app.state.service.audit.head()
    return HeadOut(count=h.count, seq=h.seq, head=h.hash)
