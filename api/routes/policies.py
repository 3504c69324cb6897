"""Policies per tenant and per agent (admin keys change them, auditors may read them); every change is audited."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request

from api.auth import allow
from api.limits import OrjsonRoute
from api.schemas import AGENT_REGEX, AGENT_RULE, PolicyChangeOut, PolicyOut
from risk.keys import ApiKey, Role
from risk.policy import Policy
from risk.tenant_policies import PolicyView

router = APIRouter(prefix="/v1/policies", tags=["policies"], route_class=OrjsonRoute)
Admin = Annotated[ApiKey, Depends(allow(Role.ADMIN))]
Reader = Annotated[ApiKey, Depends(allow(Role.ADMIN, Role.AUDITOR))]
AgentPath = Annotated[str, Path(pattern=AGENT_REGEX, description=AGENT_RULE)]


def _out(view: PolicyView, agents: list[str] | None = None) -> PolicyOut:
    policy = view.policy
    return PolicyOut(
        policy=policy.model_dump(mode="json"), policy_hash=policy.policy_hash, source=view.source, agents=agents or []
    )


def _change(old: str, new: str) -> PolicyChangeOut:
    return PolicyChangeOut(old_hash=old or None, new_hash=new or None)


@router.get("", response_model=PolicyOut, summary="The tenant's policy")
def get_policy(request: Request, key: Reader) -> PolicyOut:
    tenants = request.app.state.service.tenants
    return _out(tenants.policy(key.tenant), sorted(tenants.agent_overrides(key.tenant)))


@router.put("", response_model=PolicyChangeOut, summary="Set the tenant's policy")
def put_policy(policy: Policy, request: Request, key: Admin) -> PolicyChangeOut:
    return _change(*request.app.state.service.tenants.set_policy(key.tenant, None, policy, actor=key.key_id))


@router.get("/agents/{agent_id}", response_model=PolicyOut, summary="The policy governing one agent")
def get_agent_policy(agent_id: AgentPath, request: Request, key: Reader) -> PolicyOut:
    return _out(request.app.state.service.tenants.policy(key.tenant, agent_id))


@router.put("/agents/{agent_id}", response_model=PolicyChangeOut, summary="Give one agent a policy of its own")
def put_agent_policy(agent_id: AgentPath, policy: Policy, request: Request, key: Admin) -> PolicyChangeOut:
    return _change(*request.app.state.service.tenants.set_policy(key.tenant, agent_id, policy, actor=key.key_id))


@router.delete("/agents/{agent_id}", response_model=PolicyChangeOut, summary="Put the agent back under the tenant's")
def delete_agent_policy(agent_id: AgentPath, request: Request, key: Admin) -> PolicyChangeOut:
    return _change(*request.app.state.service.tenants.set_policy(key.tenant, agent_id, None, actor=key.key_id))
