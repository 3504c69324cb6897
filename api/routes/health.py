"""Liveness, readiness and metrics: no key needed."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from api.metrics import CONTENT_TYPE
from api.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is up")
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}}, summary="Every store answers")
async def readyz(request: Request) -> Response:
    service = request.app.state.service
    stores = await run_in_threadpool(service.tenants.ready)
    ready = all(answer == "ok" for answer in stores.values())
    for name, answer in stores.items():
        if answer != "ok":
            service.metrics.store_errors.labels(name).inc()
    body = Health(status="ready" if ready else "unavailable", stores=stores)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}}}})  # fmt: skip
async def metrics(request: Request) -> Response:
    return Response(request.app.state.service.metrics.render(), media_type=CONTENT_TYPE)
