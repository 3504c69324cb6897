"""Agent status and the human side of the kill switch (reviewer keys; auditors may read status)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request

from api.auth import allow
from api.limits import OrjsonRoute
from api.schemas import (
    AGENT_REGEX,
    AGENT_RULE,
    AgentOut,
    ApprovalOut,
    ApprovalsOut,
    ApproveOut,
    DecisionOut,
    RollbackOut,
    StepOut,
    TerminateRequest,
)
from risk.keys import ApiKey, Role
from risk.state import AgentState

router = APIRouter(prefix="/v1", tags=["agents"], route_class=OrjsonRoute)
Reviewer = Annotated[ApiKey, Depends(allow(Role.REVIEWER))]
Reader = Annotated[ApiKey, Depends(allow(Role.REVIEWER, Role.AUDITOR))]
AgentPath = Annotated[str, Path(pattern=AGENT_REGEX, description=AGENT_RULE)]


def _agent(agent_id: str, state: AgentState) -> AgentOut:
    return AgentOut(
        agent_id=agent_id,
        status=state.status.value,
        reason=state.reason,
        actor=state.actor,
        pending_action_id=state.pending_action_id,
    )


@router.get("/agents/{agent_id}", response_model=AgentOut, summary="An agent's kill-switch status")
def status(agent_id: AgentPath, request: Request, key: Reader) -> AgentOut:
    return _agent(agent_id, request.app.state.service.tenants.status(key.tenant, agent_id))


@router.post("/agents/{agent_id}/approve", response_model=ApproveOut, summary="Resume and allow the paused action once")
def approve(agent_id: AgentPath, request: Request, key: Reviewer) -> ApproveOut:
    approved = request.app.state.service.tenants.approve(key.tenant, agent_id, actor=key.key_id)
    return ApproveOut(agent_id=agent_id, approved_action_id=approved)


@router.post("/agents/{agent_id}/resume", response_model=AgentOut, summary="Resume; the paused action stays denied")
def resume(agent_id: AgentPath, request: Request, key: Reviewer) -> AgentOut:
    tenants = request.app.state.service.tenants
    tenants.resume(key.tenant, agent_id, actor=key.key_id)
    return _agent(agent_id, tenants.status(key.tenant, agent_id))


@router.post("/agents/{agent_id}/terminate", response_model=AgentOut, summary="Stop an agent until reset")
def terminate(agent_id: AgentPath, request: Request, key: Reviewer, body: TerminateRequest | None = None) -> AgentOut:
    tenants = request.app.state.service.tenants
    tenants.terminate(key.tenant, agent_id, actor=key.key_id, reason=(body or TerminateRequest()).reason)
    return _agent(agent_id, tenants.status(key.tenant, agent_id))


@router.post("/agents/{agent_id}/reset", response_model=AgentOut, summary="Revive a terminated or paused agent")
def reset(agent_id: AgentPath, request: Request, key: Reviewer) -> AgentOut:
    tenants = request.app.state.service.tenants
    tenants.reset(key.tenant, agent_id, actor=key.key_id)
    return _agent(agent_id, tenants.status(key.tenant, agent_id))


@router.post("/agents/{agent_id}/rollback", response_model=RollbackOut, summary="Undo the agent's recent actions")
def rollback(agent_id: AgentPath, request: Request, key: Reviewer) -> RollbackOut:
    report = request.app.state.service.tenants.rollback(key.tenant, agent_id, actor=key.key_id)
    steps = [StepOut(action_id=s.action_id, description=s.description, status=s.status.value, error=s.error)
             for s in report.steps]  # fmt: skip
    return RollbackOut(agent_id=agent_id, complete=report.complete, steps=steps)


@router.get("/approvals", response_model=ApprovalsOut, summary="Paused agents and the action waiting for approval")
def approvals(request: Request, key: Reviewer) -> ApprovalsOut:
    found = request.app.state.service.tenants.approvals(key.tenant)
    return ApprovalsOut(
        approvals=[
            ApprovalOut(
                agent_id=a.agent_id,
                reason=a.state.reason,
                paused_by=a.state.actor,
                pending_action_id=a.state.pending_action_id,
                decision=DecisionOut.model_validate(a.decision),
            )
            for a in found
        ]
    )
