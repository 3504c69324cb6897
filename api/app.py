"""The FastAPI application: `create_app()` builds the service from the environment (see api.settings).

uvicorn --factory api.app:create_app      # or: risk serve
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from api.auth import check_key
from api.limits import BodyLimit
from api.routes import agents, audit, decisions, health, keys, models, policies
from api.schemas import ErrorOut
from api.service import Service
from api.settings import Settings
from risk.catalog import CatalogError
from risk.errors import AuditError, StateError
from risk.idempotency import IdempotencyConflict
from risk.scoring.model import ModelError
from risk.tenants import ConflictError, NotFoundError

log = logging.getLogger("risk.api")

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": text}
    for code, text in (
        (401, "missing, unknown or revoked API key"),
        (403, "the key's role may not do this"),
        (404, "no such thing in this tenant"),
        (409, "conflicts with the current state"),
        (413, "request body over the limit"),
        (422, "the request breaks the schema; `detail` names the field"),
        (503, "a store or the model is unavailable; nothing was allowed"),
    )
}


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service over the stores `settings` names (default: from the environment)."""
    settings = settings or Settings.from_env()
    service = Service.start(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()

    app = FastAPI(
        title="agent-risk",
        summary="Runtime governance and risk scoring for AI agents: one decision point for every agent action.",
        version="1",
        lifespan=lifespan,
        responses=_ERRORS,
    )
    app.state.service = service
    for module in (decisions, agents, audit, policies, keys, models, health):
        app.include_router(module.router)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    _handle_errors(app, service)
    return app


def _handle_errors(app: FastAPI, service: Service) -> None:
    """Map library errors to statuses. A failing store is a 503: the caller gets no decision, so it denies."""

    def reply(status: int, detail: Any) -> JSONResponse:
        return JSONResponse({"detail": detail}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Any:
        try:  # the key first: a body that is not JSON is refused before the route's key check runs
            await check_key(request)
        except HTTPException as refused:
            return await http_exception_handler(request, refused)
        # The offending input is left out: it may be a megabyte long.
        errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return reply(422, errors)

    async def conflict(request: Request, exc: Exception) -> JSONResponse:
        return reply(409, str(exc))

    app.add_exception_handler(ConflictError, conflict)
    app.add_exception_handler(IdempotencyConflict, conflict)

    @app.exception_handler(NotFoundError)
    async def not_found(request: Request, exc: NotFoundError) -> JSONResponse:
        return reply(404, str(exc))

    @app.exception_handler(ValueError)  # PolicyError too: bad input that got past the schema
    async def bad_value(request: Request, exc: ValueError) -> JSONResponse:
        return reply(422, str(exc))

    for error, store in (
        (AuditError, "audit"),
        (StateError, "state"),
        (CatalogError, "catalog"),
        (ModelError, "model"),
    ):

        async def unavailable(request: Request, exc: Exception, store: str = store) -> JSONResponse:
            log.error("%s %s failed on the %s store: %s", request.method, request.url.path, store, exc)
            service.metrics.store_errors.labels(store).inc()
            return reply(503, f"the {store} store is unavailable: {exc}")

        app.add_exception_handler(error, unavailable)
