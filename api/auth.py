"""Who is calling and may they: `Authorization: Bearer <key>`, one role per key, every refusal audited."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from risk.keys import ApiKey, Role

log = logging.getLogger("risk.api")

bearer = HTTPBearer(auto_error=False, description="an API key made by `risk keys create`")
_CHECKS: set[Callable[..., Awaitable[ApiKey]]] = set()  # every route's key check, made by `allow`


def allow(*roles: Role) -> Callable[..., Awaitable[ApiKey]]:
    """A dependency admitting a live key with one of `roles`: 401 without one, 403 with another role."""
    names = ", ".join(r.value for r in roles)

    async def caller(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
    ) -> ApiKey:
        # Async: a key seen in the last few seconds is checked without I/O, so no request pays a thread handoff
        # for it. The catalog and the audit trail are asked from a thread.
        service = request.app.state.service
        if credentials is None:
            raise await run_in_threadpool(refusal, request, 401, "missing Authorization: Bearer <key>", None)
        key: ApiKey | None
        known, key = service.keys.cached(credentials.credentials)
        if not known:
            key = await run_in_threadpool(service.keys.authenticate, credentials.credentials)
        if key is None:
            raise await run_in_threadpool(refusal, request, 401, "unknown, malformed or revoked API key", None)
        if key.role not in roles:
            why = f"a key with role {key.role.value} may not do this; it needs role {names}"
            raise await run_in_threadpool(refusal, request, 403, why, key)
        return key

    _CHECKS.add(caller)
    return caller


async def check_key(request: Request) -> None:
    """Run the key check of the route `request` reached, if it has one: its 401 or 403 (audited) is raised.

    FastAPI decodes a JSON body before it runs a route's dependencies, so a body that is not JSON at all is
    refused (422) before the key is looked at; the 422 handler calls this first, so that a request without a
    valid key, or of the wrong role, is 401 or 403 and audited whatever its body is."""
    dependant = getattr(request.scope.get("route"), "dependant", None)
    pending = list(dependant.dependencies) if dependant is not None else []
    while pending:
        dependency = pending.pop()
        if dependency.call in _CHECKS:
            await dependency.call(request, await bearer(request))
            return
        pending.extend(dependency.dependencies)


def refusal(request: Request, status: int, why: str, key: ApiKey | None) -> HTTPException:
    """Record the refusal in the audit trail (under the key's tenant when there is one); the error to raise."""
    service = request.app.state.service
    try:
        service.tenants.record(
            f"{key.tenant}/*" if key else "*",
            {
                "kind": "access_denied",
                "actor": key.key_id if key else None,
                "outcome": "denied",
                "detail": {"status": status, "method": request.method, "path": request.url.path, "reason": why},
            },
        )
    except Exception:  # the refusal stands either way
        log.exception("refusal of %s %s not audited", request.method, request.url.path)
        service.metrics.store_errors.labels("audit").inc()
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return HTTPException(status, why, headers=headers)
