"""Deciding actions and recording their outcomes (agent keys)."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from api.auth import allow, refusal
from api.limits import OrjsonRoute
from api.schemas import (
    BatchOut,
    BatchRequest,
    CheckRequest,
    DecisionOut,
    OutcomeOut,
    OutcomeRequest,
    ReportOut,
    ReportRequest,
)
from api.service import Service
from risk.keys import ApiKey, Role
from risk.tenants import ActionRequest, NotBoundError

router = APIRouter(prefix="/v1", tags=["decisions"], route_class=OrjsonRoute)
Agent = Annotated[ApiKey, Depends(allow(Role.AGENT))]


def _decide(service: Service, key: ApiKey, body: CheckRequest) -> dict[str, Any]:
    """The decision as the response fields; FastAPI checks them against DecisionOut once, as it writes them."""
    start = time.perf_counter()
    decision = service.tenants.check(key.tenant, _action(body), body.idempotency_key, caller=key)
    service.metrics.decided(decision, time.perf_counter() - start)
    return decision.to_dict()


def _decide_many(service: Service, key: ApiKey, bodies: list[CheckRequest]) -> list[dict[str, Any]]:
    start = time.perf_counter()
    actions = [(_action(body), body.idempotency_key) for body in bodies]
    decisions = service.tenants.check_many(key.tenant, actions, caller=key)
    each = (time.perf_counter() - start) / len(decisions)  # the batch's time, shared out
    for decision in decisions:
        service.metrics.decided(decision, each)
    return [decision.to_dict() for decision in decisions]


def _action(body: CheckRequest) -> ActionRequest:
    return ActionRequest(body.agent_id, body.action_type.value, body.resource, body.payload, body.session_id, body.task)


@router.post("/check", response_model=DecisionOut, summary="Decide one action before it runs")
async def check(body: CheckRequest, request: Request, key: Agent) -> dict[str, Any]:
    """The same decision as `Guard.check`: `allowed` says whether the action may run; it is audited first."""
    service: Service = request.app.state.service
    return await service.decide(lambda: _decide(service, key, body))


@router.post("/check/batch", response_model=BatchOut, summary="Decide several actions, in order")
async def check_batch(body: BatchRequest, request: Request, key: Agent) -> dict[str, Any]:
    """As `/v1/check` for each action in turn; their audit records are committed together, before the answer."""
    service: Service = request.app.state.service
    return await service.decide(lambda: {"decisions": _decide_many(service, key, body.actions)})


@router.post("/outcome", response_model=OutcomeOut, summary="Report what an allowed action did")
def outcome(body: OutcomeRequest, request: Request, key: Agent) -> OutcomeOut:
    try:
        agent, _ = request.app.state.service.tenants.record_outcome(
            key.tenant, body.action_id, success=body.success, error=body.error, rows=body.rows, bytes=body.bytes,
            caller=key,
        )  # fmt: skip
    except NotBoundError as exc:  # refused as a key of the wrong role is: 403, audited
        raise refusal(request, 403, str(exc), key) from None
    return OutcomeOut(action_id=body.action_id, agent_id=agent)


@router.post("/reports", response_model=ReportOut, summary="Store what a client let run while the service was down")
def reports(body: ReportRequest, request: Request, key: Agent) -> ReportOut:
    """A client with `on_error="allow"` spools each action it let through unchecked (and outcomes it could not
    send); it sends them here once the service answers. Each is stored once, marked as reported, never as decided."""
    service = request.app.state.service
    records = [r.model_dump(mode="json", exclude_none=True) for r in body.records]
    result = service.tenants.report(key.tenant, records, actor=f"client:{key.key_id}", caller=key)
    service.metrics.fail_open.inc(result.fail_open)
    return ReportOut(accepted=result.accepted, duplicates=result.duplicates, rejected=result.rejected)
