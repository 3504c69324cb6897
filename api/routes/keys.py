"""API keys of the caller's tenant (admin keys)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Request

from api.auth import allow
from api.limits import OrjsonRoute
from api.schemas import KeyCreatedOut, KeyCreateRequest, KeyOut, KeysOut
from risk.keys import ApiKey, Role

router = APIRouter(prefix="/v1/keys", tags=["keys"], route_class=OrjsonRoute)
Admin = Annotated[ApiKey, Depends(allow(Role.ADMIN))]


def _out(key: ApiKey) -> KeyOut:
    return KeyOut(key_id=key.key_id, tenant=key.tenant, role=key.role.value, created_at=key.created_at,
                  revoked_at=key.revoked_at, note=key.note,
                  agents=list(key.agents) if key.agents is not None else None)  # fmt: skip


@router.get("", response_model=KeysOut, summary="The tenant's keys (never the keys themselves)")
def list_keys(request: Request, key: Admin) -> KeysOut:
    return KeysOut(keys=[_out(k) for k in request.app.state.service.keys.list(key.tenant)])


@router.post("", response_model=KeyCreatedOut, status_code=201, summary="Make a key; it is shown once")
def create_key(body: KeyCreateRequest, request: Request, key: Admin) -> KeyCreatedOut:
    made, token = request.app.state.service.keys.create(key.tenant, body.role, note=body.note, agents=body.agents)
    bound_to = {"agents": list(made.agents)} if made.agents is not None else {}
    request.app.state.service.tenants.record(
        f"{key.tenant}/*", {"kind": "key_created", "actor": key.key_id, "detail": {"key_id": made.key_id,
                                                                                  "role": made.role.value, **bound_to}}
    )  # fmt: skip
    return KeyCreatedOut(**_out(made).model_dump(), key=token)


@router.delete("/{key_id}", response_model=KeyOut, summary="Revoke a key of this tenant")
def revoke_key(key_id: Annotated[str, Path(pattern="^[0-9a-f]{16}$")], request: Request, key: Admin) -> KeyOut:
    service = request.app.state.service
    if not service.keys.revoke(key.tenant, key_id):
        raise HTTPException(404, f"this tenant has no live key {key_id}")
    service.tenants.record(f"{key.tenant}/*", {"kind": "key_revoked", "actor": key.key_id,
                                               "detail": {"key_id": key_id}})  # fmt: skip
    return next(_out(k) for k in service.keys.list(key.tenant) if k.key_id == key_id)
