"""The behavioral models: which is in use, which are installed, reload (admin keys; auditors may read)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from api.auth import allow
from api.limits import OrjsonRoute
from api.schemas import ModelsOut, ReloadOut
from risk.keys import ApiKey, Role

router = APIRouter(prefix="/v1/models", tags=["models"], route_class=OrjsonRoute)


@router.get("", response_model=ModelsOut, summary="The model in use and the models installed")
def list_models(request: Request, key: Annotated[ApiKey, Depends(allow(Role.ADMIN, Role.AUDITOR))]) -> ModelsOut:
    tenants = request.app.state.service.tenants
    return ModelsOut(active=tenants.model_version, online=tenants.online, available=tenants.models())


@router.post("/reload", response_model=ReloadOut, summary="Load the configured model again, in every worker")
def reload_model(request: Request, key: Annotated[ApiKey, Depends(allow(Role.ADMIN))]) -> ReloadOut:
    """Models are the service's, not a tenant's: the operator installs them, any admin may have them re-read."""
    service = request.app.state.service
    previous, active = service.tenants.reload_model(actor=f"{key.tenant}:{key.key_id}", tenant=key.tenant)
    service.metrics.model_in_use(active)
    return ReloadOut(previous=previous, active=active)
